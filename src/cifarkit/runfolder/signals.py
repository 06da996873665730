"""Stopping cleanly: Ctrl-C and SIGTERM stop training at once, except inside `critical()` sections
(checkpoint and history writes), which always complete first.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}
# the signals that stop a run cleanly: a closed terminal (SIGHUP, where the OS has it) as SIGTERM
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM) + (
    (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()
)
if hasattr(signal, "SIGHUP"):
    SIGNAL_NAMES[signal.SIGHUP] = "SIGHUP (the terminal was closed)"


class RunInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run. A KeyboardInterrupt, so existing handlers still catch it.

    `exit_code` is the shell convention 128 + signal number: 130 for SIGINT, 143 for SIGTERM, 129
    for SIGHUP.
    """

    def __init__(self, signum: int):
        super().__init__(SIGNAL_NAMES.get(signum, signal.Signals(signum).name))
        self.signum = signum
        self.exit_code = 128 + int(signum)


class RunStopped(KeyboardInterrupt):
    """`fit` in Python (a notebook's stop button, Ctrl-C, SIGTERM / SIGHUP): the run was stopped
    after what it had finished was saved. Raised, as a KeyboardInterrupt is, so "Run all" stops at
    this cell and no later cell shows a half run as a result. The message is the one line saying
    what was saved and how to resume; `result` is the stopped run (history so far, the model)."""

    def __init__(self, message: str, result, exit_code: int = 130):
        super().__init__(message)
        self.result, self.exit_code, self.reported = result, exit_code, True


class StopSignals:
    """``with StopSignals() as stop:`` turns SIGINT / SIGTERM into RunInterrupted, raised at once,
    except inside ``with stop.critical():``, where the signal is remembered and raised when the
    section ends, so a checkpoint or history write is never cut short (a second signal there is
    deferred too).

    A network's own code may swallow the RunInterrupted (a bare ``except:`` in its forward). Then
    the run does not stop by itself, so: every later signal raises again, as plain Python does on a
    second Ctrl-C, and `check()`, which the training and evaluation loops call between batches
    (outside the network's code), raises it once more. Only after the caller has received it
    (`delivered()`) are later signals ignored while the run unwinds (SIGKILL still works, and atomic
    writes make it safe).

    Only the main thread can own signal handlers: elsewhere this does nothing. The previous handlers
    are restored on exit.
    """

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS, *, exiting: bool = False):
        self.signals = signals
        # the process ends after the run (the CLI): once stopped, stay deaf to signals
        self.exiting = exiting
        self.pending: int | None = None  # a signal deferred by a critical section
        self.received: int | None = None  # the first signal, once one arrived
        # the caller caught the RunInterrupted: the run is stopping
        self.reached_caller = False
        self._depth = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            if self.exiting and self.received is not None:
                # A second Ctrl-C while the stopped CLI exits would otherwise print a
                # KeyboardInterrupt traceback
                signal.signal(s, signal.SIG_IGN)
                continue
            # None: the old handler was not installed from Python and cannot be put back; use the
            # default
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        self.received = self.received or signum
        if self._depth > 0:
            self.pending = self.pending or signum
        # the first signal, or one after user code swallowed the first
        elif not self.reached_caller:
            raise RunInterrupted(self.received)

    def check(self) -> None:
        """Raise RunInterrupted if a signal arrived and did not reach the caller (user code
        swallowed it)."""
        if self.received is not None and not self.reached_caller and self._depth == 0:
            raise RunInterrupted(self.received)

    def delivered(self) -> None:
        """The caller caught the RunInterrupted and is stopping: ignore later signals while it
        unwinds."""
        self.reached_caller = True

    @contextmanager
    def critical(self) -> Iterator[None]:
        """A section no signal interrupts; a signal that arrives during it is raised right after
        it."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self._depth == 0 and self.pending is not None:
            signum, self.pending = self.pending, None
            raise RunInterrupted(signum)
