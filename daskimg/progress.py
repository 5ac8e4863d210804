"""Progress for humans while a run goes, and the summary it ends with."""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO

from ._types import Status

__all__ = ["Progress", "Summary"]


@dataclass
class Summary:
    """What a run did. ``counts`` covers the whole output, resumed chunks included."""

    output: str
    rows: int
    counts: dict[str, int]
    seconds: float
    processed: int = 0
    resumed_chunks: int = 0
    failed_chunks: dict[int, str] = field(default_factory=dict)
    dashboard: str | None = None

    @property
    def ok(self) -> int:
        return self.counts.get(Status.OK, 0)

    @property
    def complete(self) -> bool:
        """Every chunk written (some URLs may still have failed: that is data, not an error)."""
        return not self.failed_chunks

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        failed = sum(n for s, n in self.counts.items() if s != Status.OK)
        kinds = ", ".join(f"{s} {n}" for s, n in sorted(self.counts.items()) if s != Status.OK)
        lines = [
            f"daskimg: {self.rows} rows -> {self.output}",
            f"  ok {self.ok}, failed {failed}" + (f" ({kinds})" if failed else ""),
            f"  {self.processed} rows processed in {self.seconds:.1f} s ({self.images_per_second:.1f} img/s)"
            + (f"; {self.resumed_chunks} chunks were already done" if self.resumed_chunks else ""),
        ]
        for chunk, error in sorted(self.failed_chunks.items())[:5]:
            lines.append(f"  chunk {chunk} NOT written: {error}")
        if self.failed_chunks:
            lines.append(f"  {len(self.failed_chunks)} chunks not written; run the same command again to redo them")
        return "\n".join(lines)


class Progress:
    """A one-line progress bar: done/total, img/s, ok/failed and ETA, redrawn at most every 0.5 s."""

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total, self.done, self.resumed = total, 0, 0
        self.counts: Counter[str] = Counter()
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.monotonic()
        self._drawn = 0.0
        self._last_decile = -1
        self._printed_rows = -1
        self.writing: int | None = None  # set when a stop was asked for: chunks still being written

    def finishing(self, chunks: int) -> None:
        """A stop was asked for: say so, and how many chunks are still written before the run ends."""
        self.writing = chunks
        self.draw(force=True)

    def resume(self, rows: int, counts: dict[str, int]) -> None:
        """Start from what earlier runs did; the rate counts only what this run does."""
        self.resumed = rows
        self.update(rows, counts)

    def update(self, rows: int, counts: dict[str, int]) -> None:
        self.done += rows
        self.counts.update(counts)
        self.draw()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = (self.done - self.resumed) / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta != float("inf") else "--:--:--"
        width = 24
        filled = int(width * self.done / self.total) if self.total else width
        ok, later = self.counts.get(Status.OK, 0), self.counts.get(Status.DEFERRED, 0)
        return (f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                f"{rate:6.1f} img/s  ok {ok} failed {self.done - ok - later}"
                + (f" refetching {later}" if later else "")
                + (f"  finishing: writing {self.writing} fetched chunks; signal again to abort"
                   if self.writing is not None else f"  ETA {eta_s}"))

    def draw(self, final: bool = False, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            if final or force or now - self._drawn >= 0.5:
                self.stream.write("\r" + self.line() + ("\n" if final else ""))
                self.stream.flush()
                self._drawn = now
            return
        decile = 10 * self.done // self.total if self.total else 10
        if decile > self._last_decile or force or (final and self._printed_rows != self.done):  # a line every 10%
            self._last_decile, self._printed_rows = decile, self.done
            self.stream.write(self.line() + "\n")
            self.stream.flush()
