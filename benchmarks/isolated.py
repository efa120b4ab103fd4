"""Run one benchmark step in a fresh Python process and measure it from outside.

A fresh process per step, because a step run after another inherits its imports, caches and
allocator high-water mark: the peak RSS read here is that step's alone (`os.wait4` gives the
rusage of exactly the child it reaps), and a step that runs too long is killed without taking
the benchmark down with it. The child reports what only it can know (its own wall time around
the work, excluding interpreter start and imports) as one JSON object on its last stdout line.
Linux keeps a process's peak across exec, so a child reports at least its parent's RSS at the
fork: the process that runs the steps must stay small (bench_table_growth.py writes its history
in a step of its own for that).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True, slots=True)
class StepResult:
    report: dict[str, Any] | None
    """The child's JSON report, or None when it timed out or failed."""
    peak_rss_bytes: int
    elapsed_seconds: float
    """Wall time seen from outside, interpreter start and imports included."""
    timed_out: bool
    returncode: int

    @property
    def failure(self) -> str:
        """Why there is no report, as a results table says it."""
        return "timed out" if self.timed_out else f"failed, exit {self.returncode}"

    @property
    def peak_rss(self) -> str:
        return f"{self.peak_rss_bytes / 2**20:,.0f} MiB"


def run_step(arguments: list[str], *, log: Path, timeout_seconds: float) -> StepResult:
    """Run `python arguments...` with stdout and stderr in `log`; kill it after the timeout."""
    start = time.perf_counter()
    with log.open("w") as output:
        child = subprocess.Popen(
            [sys.executable, *arguments],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so a kill reaches the child's own workers too
        )
    finished = timed_out = False
    try:
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                finished = True
                break
            if time.perf_counter() - start > timeout_seconds:
                timed_out = True
                break
            time.sleep(0.1)
    finally:
        # On a timeout, and when this process is interrupted: no child is left running on.
        if not finished:
            os.killpg(child.pid, signal.SIGKILL)
            _, status, usage = os.wait4(child.pid, 0)
    # Popen must not reap the child again, and must not warn that it is still running.
    child.returncode = returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - start
    report = None
    if returncode == 0 and not timed_out:
        report = json.loads(log.read_text().strip().splitlines()[-1])
    return StepResult(report, usage.ru_maxrss * 1024, elapsed, timed_out, returncode)


def print_report(report: dict[str, Any]) -> None:
    """The child's side of the protocol: its report as the last line of its stdout."""
    print(json.dumps(report), flush=True)


def log_tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
