"""Progress that reaches a log: a tqdm bar on a terminal, a steady line everywhere else.

    bar = progress_bar(total=len(records), desc="outputs", unit="answer")
    bar.update(16)                  # terminal: the usual bar; nohup, a pipe, a scheduler: a line every 30 s
    bar.close()                     # prints `outputs: 805 of 805 answers (100%), 2.58 answers/s, done in 5m 12s`

tqdm hides its bar when stderr is not a terminal, and a bar redrawn with carriage returns is unreadable in
a log file anyway. `LogProgress` prints instead, at most every `ALPACA_PROGRESS_INTERVAL_S` seconds
(default 30), one line with the count, the rate since the run (or its resumption) started, and the time
left at that rate. `alpaca_lib.training.trainlog.TrainerLogProgress` does the same for the Trainer's steps.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Optional, TextIO

INTERVAL_ENV = "ALPACA_PROGRESS_INTERVAL_S"
DEFAULT_INTERVAL_S = 30.0


def interval_s() -> float:
    """Seconds between progress lines: $ALPACA_PROGRESS_INTERVAL_S, or 30."""
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def on_terminal(stream: Optional[TextIO] = None) -> bool:
    """Whether `stream` (default stderr) is a terminal, where a tqdm bar shows."""
    stream = stream if stream is not None else sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def duration(seconds: float) -> str:
    """`42s`, `5m 12s`, `2h 03m`."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def _amount(n: float, total: Optional[float], unit: str, scale: bool) -> str:
    """`30 of 100 answers`, `1.0 of 4.0 MB`, or `30 answers` without a total."""
    bytes_ = scale and unit == "B"
    count = f"{n / 1e6:.1f}" if bytes_ else str(int(n))
    name = "MB" if bytes_ else (f"{unit}s" if unit else "")
    if total:
        count += f" of {total / 1e6:.1f}" if bytes_ else f" of {int(total)}"
    return f"{count} {name}".rstrip()


class LogProgress:
    """A progress line at a steady interval; the subset of tqdm's interface the project uses.

    Args:
        total: the count at the end (None if unknown).
        desc: what is counted, at the start of each line (`outputs`, `judge`, `training`).
        unit: the unit's name (`answer`, `step`, `B` for bytes).
        initial: what an earlier run already did (a resumed run); not counted in the rate.
        unit_scale: show bytes as MB (with unit="B").
        stream: where the lines go (default stderr).
        every_s: seconds between lines (default `interval_s()`).
        heartbeat: also print when the count has not moved for `every_s` (a thread does; a long wait
            for a server, a slow first batch), so a log never falls silent.
    """

    def __init__(self, total: Optional[float] = None, desc: str = "", unit: str = "it", initial: float = 0,
                 unit_scale: bool = False, stream: Optional[TextIO] = None, every_s: Optional[float] = None,
                 clock=time.monotonic, heartbeat: bool = False, **_tqdm_only: Any):
        self.total, self.desc, self.unit, self.unit_scale = total, desc or "progress", unit, unit_scale
        self.n = self.initial = initial
        self.stream = stream
        self.every_s = interval_s() if every_s is None else every_s
        self.clock = clock
        self.start = self.last = clock()
        self.postfix = ""
        self.printed = initial  # the count of the last line printed
        self.closed = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        if heartbeat and self.every_s > 0:
            threading.Thread(target=self._beat, name="progress-heartbeat", daemon=True).start()

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s / 2):
            finished = self.total is not None and self.n >= self.total  # said once is enough
            if not finished and self.clock() - self.last >= self.every_s:
                self._print()

    def line(self) -> str:
        """The progress line for the count now."""
        elapsed = self.clock() - self.start
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        text = f"{self.desc}: {_amount(self.n, self.total, self.unit, self.unit_scale)}"
        if self.total:
            text += f" ({100 * self.n / self.total:.0f}%)"
        per_s = f"{rate / 1e6:.1f} MB/s" if self.unit_scale and self.unit == "B" else f"{rate:.2f} {self.unit}s/s"
        text += f", {per_s}"
        if self.total and rate > 0 and self.n < self.total:
            text += f", about {duration((self.total - self.n) / rate)} left"
        elif self.n >= (self.total or float("inf")):
            text += f", done in {duration(elapsed)}"
        return text + (f" ({self.postfix})" if self.postfix else "")

    def _print(self) -> None:
        with self._lock:
            print(self.line(), file=self.stream if self.stream is not None else sys.stderr, flush=True)
            self.last, self.printed = self.clock(), self.n

    def update(self, n: float = 1) -> None:
        self.n += n
        if self.clock() - self.last >= self.every_s:
            self._print()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def refresh(self) -> None:
        pass

    @staticmethod
    def write(s: str, file: Optional[TextIO] = None, end: str = "\n") -> None:
        """A message between progress lines, where `tqdm.write` puts it (stdout unless `file` is given)."""
        print(s, file=file if file is not None else sys.stdout, end=end, flush=True)

    def close(self) -> None:
        """Prints the last line, if any work was done since the line before."""
        self._stop.set()
        if not self.closed and self.n != self.printed:
            self._print()
        self.closed = True

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(total: Optional[float] = None, desc: str = "", unit: str = "it", disable: Optional[bool] = None,
                 **kwargs: Any):
    """A tqdm bar on a terminal; a `LogProgress` when stderr is not one; nothing shown with disable=True.

    Args:
        total, desc, unit: as tqdm's.
        disable: True hides progress; False forces the tqdm bar; None (default) picks by stderr.
        **kwargs: other tqdm arguments (`initial`, `unit_scale`, ...).
    """
    from tqdm import tqdm  # tqdm only when a bar is drawn

    if disable is None and not on_terminal():
        return LogProgress(total=total, desc=desc, unit=unit, heartbeat=True, **kwargs)
    return tqdm(total=total, desc=desc or None, unit=unit, disable=bool(disable), **kwargs)
