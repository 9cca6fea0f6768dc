"""Progress of long work with an ETA: a redrawn bar on a terminal, plain lines in a log.

A tqdm bar written to a file or a pipe (CI, `make run > log`, a Prefect worker) is one endless line of carriage
returns; there a line every `every_s` seconds says the same (done, rate, ETA) and stays readable.
"""

from __future__ import annotations

import sys
import time
from typing import Any

LOG_EVERY_S = 30.0


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True, leave: bool = True) -> Any:
    """A progress bar over `total` `unit`s: tqdm on a terminal, `LogLines` elsewhere, silent when not `enabled`.
    Both take `update(n)`, `set_postfix(**values)`, `close()` and `with`."""
    from tqdm.auto import tqdm

    if not enabled or sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, mininterval=2.0, leave=leave)
    return LogLines(total, desc, unit)


class LogLines:
    """A progress report as plain lines on stderr: at most one every `every_s` seconds, and one at the end."""

    def __init__(self, total: int, desc: str, unit: str, every_s: float = LOG_EVERY_S):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.done, self.postfix = 0, ""
        self.started = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            print(self.line(now), file=sys.stderr, flush=True)

    def line(self, now: float) -> str:
        """`desc: done/total unit (pct), rate unit/s, ETA m:ss[, postfix]`."""
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = "?" if left == float("inf") else f"{int(left // 60)}:{int(left % 60):02d}"
        share = f" ({100 * self.done / self.total:.0f} %)" if self.total else ""
        text = f"{self.desc}: {self.done:,}/{self.total:,} {self.unit}{share}, {rate:,.1f} {self.unit}/s, ETA {eta}"
        return text + (f", {self.postfix}" if self.postfix else "")

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        pass

    def __enter__(self) -> LogLines:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
