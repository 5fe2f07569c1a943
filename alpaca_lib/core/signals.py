"""Stop signals (Ctrl-C's SIGINT, the SIGTERM a scheduler sends before a kill) acted on at a safe point.

    stop = StopSignals()                                     # the generator: Ctrl-C or SIGTERM stops it at once...
    stop.install()
    try:
        with stop.deferred():                                # ...except in here: it stops it right after the block
            commit_one_batch()
    finally:
        stop.restore()

    stop = StopSignals((signal.SIGTERM,), poll=True, take_over=True)   # training: a signal is only noted, and
    ... if stop.received is not None: save a checkpoint, then stop     # the loop acts on it at the end of a step

The one mechanism behind `generate_instruction.py`'s clean stop (alpaca_lib/generation/runner.py) and
`train.py`'s checkpoint-then-stop (`StopOnSigterm` in alpaca_lib/training/resumable.py). A stop made of a
signal is what the signal would have done, as an exception, so `finally` blocks still run: SIGINT raises
KeyboardInterrupt, any other signal SystemExit(128 + signal number), 143 for SIGTERM.

A command that Ctrl-C ends says in one line what it kept and exits with status 130 (`on_interrupt`):

    with on_interrupt(lambda: f"{n} answers kept in {journal}; run the same command to continue"):
        answer_everything()
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Any, Callable, Iterator, NoReturn, Optional, Sequence, Union

# The handler a signal has when nobody changed it: Python's own for SIGINT, the system's default for the rest.
_UNCHANGED = {signal.SIGINT: signal.default_int_handler}

# 128 + SIGINT: what a shell reports for a program that Ctrl-C ended.
INTERRUPTED_EXIT_CODE = 128 + signal.SIGINT


def exit_interrupted(kept: str) -> NoReturn:
    """Prints `interrupted (Ctrl-C): <kept>` to stderr and exits with status 130."""
    print(f"interrupted (Ctrl-C): {kept}", file=sys.stderr, flush=True)
    raise SystemExit(INTERRUPTED_EXIT_CODE)


@contextlib.contextmanager
def on_interrupt(kept: Union[str, Callable[[], str]]) -> Iterator[None]:
    """Ctrl-C inside the block ends the program with one line instead of a traceback (`exit_interrupted`).

    Args:
        kept: what the interrupted work left and how to go on, or a function that says it once Ctrl-C came
            (e.g. counting a journal's records).
    """
    try:
        yield
    except KeyboardInterrupt:
        exit_interrupted(kept() if callable(kept) else kept)


def stop_on(signum: int) -> NoReturn:
    """Stops the program as `signum` would have: KeyboardInterrupt for SIGINT, else SystemExit(128 + signum)."""
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


class StopSignals:
    """Catches `signums` between `install()` and `restore()`; `received` is the last one caught and not acted on.

    Outside the main thread, where Python cannot handle signals, `install` does nothing.

    Args:
        signums: the signals caught; by default SIGINT and SIGTERM.
        poll: only note a signal (`received`), for a loop that looks at it at its own safe points. Without it a
            signal stops the program at once (`stop_on`), or, inside a `deferred()` block, right after the block.
        take_over: catch each signal whatever handles it now; without it a signal whose handling someone
            changed (ignored, say) is left alone.
        again_stops: under `poll`, the signals that, caught a second time, stop the program at once (a second
            Ctrl-C when the safe point does not come).
        on_first: under `poll`, called with the first signal caught (to say what happens next).
    """

    def __init__(self, signums: Sequence[int] = (signal.SIGINT, signal.SIGTERM), *, poll: bool = False,
                 take_over: bool = False, again_stops: Sequence[int] = (),
                 on_first: Optional[Callable[[int], None]] = None):
        self.signums = tuple(signums)
        self.poll = poll
        self.take_over = take_over
        self.again_stops = tuple(again_stops)
        self.on_first = on_first
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._deferring = False

    def install(self) -> bool:
        """Catches the signals from now on, remembering their handlers for `restore`.

        Returns:
            False outside the main thread, where nothing is caught; True otherwise.
        """
        if threading.current_thread() is not threading.main_thread():
            return False
        for signum in self.signums:
            if self.take_over or signal.getsignal(signum) is _UNCHANGED.get(signum, signal.SIG_DFL):
                self._previous[signum] = signal.signal(signum, self._handle)
        return True

    def restore(self) -> None:
        """Gives the signals back the handlers they had before `install`."""
        for signum, handler in self._previous.items():
            if handler is not None:  # None: a handler set outside Python, which cannot be put back from here
                signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.poll and signum in self.again_stops and self.received == signum:
            stop_on(signum)
        if self.poll or self._deferring:
            first = self.received is None
            self.received = signum  # acted on later, at a safe point
            if first and self.poll and self.on_first is not None:
                self.on_first(signum)
        else:
            stop_on(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A block that a signal does not interrupt: the stop comes right after it."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self.received is not None and not self.poll:
            signum, self.received = self.received, None
            stop_on(signum)
