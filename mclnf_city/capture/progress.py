"""What a processing run shows and records: stage lines with timings, progress bars on a
terminal, and the summary printed at the end and written to `process_summary.json`."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional


@dataclass
class ProcessSummary:
    """What happened, for the final printout, `process_summary.json` and the benchmarks."""

    images_in: int = 0
    registered: int = 0
    dropped: List[str] = field(default_factory=list)
    points: int = 0
    mean_reprojection_error: float = float("nan")
    matching: str = ""
    matching_reason: str = ""
    models: List[int] = field(default_factory=list)  # registered images per model found
    camera_mode: str = ""
    mapping: Dict = field(default_factory=dict)
    city_frame: Dict = field(default_factory=dict)
    video: Optional[Dict] = None
    stage_seconds: Dict[str, float] = field(default_factory=dict)
    output: str = ""

    def to_json(self) -> Dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Reporter:
    """Stage lines with timings (and rich progress bars on a terminal); silent when quiet."""

    def __init__(self, quiet: bool = False):
        from rich.console import Console

        self.quiet = quiet
        self.console = Console(stderr=False, highlight=False, quiet=quiet, soft_wrap=True)
        self.seconds: Dict[str, float] = {}

    def line(self, text: str) -> None:
        self.console.print(text)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage; its duration lands in `seconds` even when it fails."""
        self.line(f"[bold]==> {name}[/bold]")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self.line(f"    {name}: {self.seconds[name]:.1f} s")

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A progress bar (only drawn on a terminal); yields `advance(n)`."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        if self.quiet or not self.console.is_terminal:
            yield lambda n=1: None
            return
        columns = (TextColumn("    {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)


def print_summary(summary: ProcessSummary, reporter: Reporter) -> None:
    """The final report: counts, accuracy and where the time went."""
    frame = summary.city_frame
    reporter.line("[bold]==> summary[/bold]")
    reporter.line(f"    images in:        {summary.images_in}")
    reporter.line(f"    registered:       {summary.registered} ({len(summary.dropped)} dropped)")
    reporter.line(f"    sparse points:    {summary.points}")
    reporter.line(f"    reprojection err: {summary.mean_reprojection_error:.3f} px (mean)")
    reporter.line(f"    city frame:       up from {frame.get('up_from')}, heading from {frame.get('heading_from')}, scale {frame.get('scale')}")
    for name, seconds in summary.stage_seconds.items():
        reporter.line(f"    time {name + ':':<26}{seconds:7.1f} s")
    reporter.line(f"    total time:       {sum(summary.stage_seconds.values()):.1f} s")
    reporter.line(f"    wrote {summary.output}")
