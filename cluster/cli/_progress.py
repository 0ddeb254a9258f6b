"""The live line under a followed job's logs: its status, and a step bar when the job reports steps.

A job drives the bar by printing lines of the form

    raytron: step N/TOTAL <anything: epoch, loss, throughput>

(the training loop prints one every `train.log_every_steps`). The line itself still goes to stdout
with the rest of the log; the bar only exists on a terminal (stderr), so piped or redirected output
is the plain log.
"""

from __future__ import annotations

import re
import sys
from typing import NamedTuple

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

__all__ = ["StepLine", "parse_step_line", "JobLine"]

_STEP_RE = re.compile(r"^raytron: step (\d+)/(\d+)\b[,:]?\s*(.*)$")
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the `(Actor pid=...)` prefix


class StepLine(NamedTuple):
    """A `raytron: step N/TOTAL ...` log line."""

    step: int
    total: int
    detail: str


def parse_step_line(line: str) -> StepLine | None:
    """The step report in one log line, or None. Ray prefixes worker output with `(Actor pid=...)`."""
    text = _ANSI_RE.sub("", line).strip()
    if text.startswith("("):
        text = text.split(") ", 1)[-1]
    m = _STEP_RE.match(text)
    if m is None or int(m.group(2)) <= 0:
        return None
    return StepLine(int(m.group(1)), int(m.group(2)), m.group(3).strip())


class _BarWhenKnown(BarColumn):
    """No bar (rather than a pulsing one) until the job has reported its total."""

    def render(self, task: Task):
        return Text("") if task.total is None else super().render(task)


class _RemainingWhenKnown(TimeRemainingColumn):
    def render(self, task: Task):
        return Text("") if task.total is None else super().render(task)


class JobLine:
    """Status and step bar on `console` while the log streams to stdout above it.

    When stdout is the same terminal, `rich.progress.Progress` takes over stdout while it is live, so
    log text written with `sys.stdout.write` scrolls above the bar instead of tearing it; when stdout
    goes to a file or a pipe it is left alone and receives the plain log.
    """

    def __init__(self, console: Console, job_id: str):
        self.job_id = job_id
        self._partial = ""
        self._steps = ""
        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), _BarWhenKnown(bar_width=30), TextColumn("{task.fields[steps]}"),
            _RemainingWhenKnown(), console=console, transient=False, redirect_stdout=sys.stdout.isatty(), redirect_stderr=False,
        )
        self._task = self._progress.add_task(f"{job_id} PENDING", total=None, steps="")

    def __enter__(self) -> "JobLine":
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def status(self, styled_status: str, elapsed: str) -> None:
        self._progress.update(self._task, description=f"{self.job_id} {styled_status} {elapsed}")

    def feed(self, log_text: str) -> None:
        """Look for step reports in new log text (which may end in the middle of a line)."""
        lines = (self._partial + log_text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            found = parse_step_line(line)
            if found is not None:
                detail = f" {found.detail}" if found.detail else ""
                self._progress.update(self._task, total=found.total, completed=min(found.step, found.total),
                                      steps=f"step {found.step}/{found.total}{detail}")
