"""Progress of a run on stderr: a live bar on a terminal, one line per event otherwise (cron logs)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .domain import RunEvent, format_usd
from .records import JobRecord

FINAL = {RunEvent.SUCCEEDED, RunEvent.FAILED, RunEvent.REJECTED, RunEvent.UNCERTAIN, RunEvent.CANCELLED}


class ProgressReporter:
    """Counts done / failed / in flight and spend against the budget; thread-safe."""

    def __init__(
        self,
        verbose: int = 0,
        stream: TextIO | None = None,
        live: bool | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.stream = stream or sys.stderr
        self.clock = clock
        self.verbose = verbose
        self.live = self.stream.isatty() if live is None else live
        self.lock = threading.Lock()
        self.total = 0
        self.done = self.failed = 0
        self._flying: set[Any] = set()  # submitted and not finished: the jobs in flight
        self.spent = 0
        self.budget: int | None = None
        self.started = time.monotonic()
        self._progress: Progress | None = None
        self._task: Any = None
        # fal's status answers with logs=1 carry the whole log of the request so far, every time.
        # We count the lines printed per job and attempt (not by timestamp: fal's log list only
        # grows, and several lines may share one timestamp); a new attempt is a new request whose
        # log starts again from its first line.
        self._logged: dict[Any, tuple[int | None, int]] = {}

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def _line(self, text: str) -> None:
        """One line on stderr: above the live bar, else plain and stamped (UTC, to the second),
        so a cron log says when each thing happened."""
        if self._progress is not None:
            self._progress.console.print(text, highlight=False)
        else:
            print(f"{self.clock().astimezone(UTC):%Y-%m-%dT%H:%M:%SZ} {text}", file=self.stream, flush=True)

    def _new_log_lines(self, job_id: Any, attempt: int | None, lines: Sequence[str]) -> Sequence[str]:
        """The lines of a job's cumulative log that were not printed yet."""
        seen_attempt, count = self._logged.get(job_id, (attempt, 0))
        if seen_attempt != attempt or count > len(lines):
            count = 0  # another request, or a log that started over: all of it is new
        self._logged[job_id] = (attempt, len(lines))
        return lines[count:]

    def _status(self) -> str:
        budget = f" of ${format_usd(self.budget)}" if self.budget is not None else ""
        return f"failed {self.failed}  in flight {len(self._flying)}  spent ${format_usd(self.spent)}{budget}"

    def _start(self, run: str, total: int, budget: int | None) -> None:
        """The run begins: a live bar on a terminal, else one line with the work and the budget."""
        self.total, self.budget = total, budget
        if not self.live:
            self._line(
                f"run {run}: {total} job(s) to do" + (f", budget ${format_usd(budget)}" if budget is not None else "")
            )
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(file=self.stream),
            transient=False,
        )
        self._task = self._progress.add_task("run", total=total, status=self._status())
        self._progress.start()

    def event(self, kind: RunEvent, job: JobRecord | None, **info: Any) -> None:
        with self.lock:
            if kind == RunEvent.START:
                self._start(info["run"], info["total"], info.get("budget_micro_usd"))
                return
            job_id = job.id if job else None
            name = f"job {job_id} ({_short(job)})" if job else "run"
            if kind == RunEvent.SUBMITTED:
                self._flying.add(job_id)
                if self.verbose:
                    self._line(f"{name}: submitted as {info.get('request_id')}")
            elif kind in FINAL:
                self._flying.discard(job_id)
                self._logged.pop(job_id, None)
                if kind == RunEvent.SUCCEEDED:
                    self.done += 1
                    self.spent += info.get("billed_micro_usd", 0)
                else:
                    self.failed += 1
                if not self.live or kind != RunEvent.SUCCEEDED:
                    extra = f": {info['error']}" if info.get("error") else ""
                    self._line(
                        f"{name} {kind.value}{extra}  [{self.done + self.failed}/{self.total}, {self._status()}]"
                    )
            elif kind == RunEvent.RETRY:
                self._flying.discard(job_id)
                self._line(f"{name}: will retry in {info.get('delay_s', 0):.0f} s: {info.get('error')}")
            elif kind == RunEvent.QUEUED and self.verbose:
                self._line(f"{name}: queue position {info.get('position')}")
            elif kind == RunEvent.LOG and self.verbose:
                for message in self._new_log_lines(job_id, info.get("attempt"), info.get("lines", ())):
                    self._line(f"{name}: {message}")
            elif kind in (RunEvent.ERROR, RunEvent.LOST):
                self._flying.discard(job_id)
                self._line(f"{name}: {info.get('error')}")
            elif kind == RunEvent.WARNING:
                self._line(f"warning: {info.get('message')}")
            elif kind == RunEvent.OUTAGE:  # once per outage (the pool's circuit breaker opened)
                self._line(f"fal unreachable: {info.get('message')}")
            elif kind == RunEvent.RESUMED:
                self._line(f"fal reachable again: {info.get('message')}; resuming")
            elif kind == RunEvent.FOLLOW_LATER and self.verbose:
                self._line(f"{name}: followed again later: {info.get('error')}")
            if self._progress is not None:
                self._progress.update(self._task, completed=self.done + self.failed, status=self._status())


def _short(job: JobRecord) -> str:
    src = job.source or job.output_path or ""
    return src.rsplit("/", 1)[-1] or job.key[:10]
