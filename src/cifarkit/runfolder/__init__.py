"""The run-folder wing: one owner at a time (`lock`), files written atomically under fixed names
(`files`), checkpoints (`checkpoint`), what a folder holds (`state`), stopping cleanly (`signals`)
and which run a call continues (`resume`). Nothing here trains."""
