"""The inspection wing: looking at a network and its results without training it. `tracer` follows
one forward pass (its handlers per op in `traceops`, its records in `tracefacts`); `rules` turns
that into the receptive-field table and the course-rule verdicts; `summary` prints the layer
table; `metrics` counts predictions; `compare` puts run folders side by side; `findings` writes
what a run shows; `gradcam`, `lrplot` (the LR range test's text and figure) and `plots` make the
figures. Nothing here trains: the LR range test itself is in `training.lrfind`."""
