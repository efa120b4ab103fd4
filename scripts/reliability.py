"""Run the fault matrix (tests/faults) and print it as the Markdown table of RELIABILITY.md.

Every fault test reports its rows through the `fault_report` fixture, which stores each as a
JSON property of its test case in the JUnit XML. This script runs the suite, reads those rows
back, adds up the trials of each fault and prints one line per fault:

    .venv/bin/python scripts/reliability.py            # run the suite, print the table
    .venv/bin/python scripts/reliability.py --write    # ... and put it into RELIABILITY.md
    .venv/bin/python scripts/reliability.py --junit report.xml   # table from an earlier run

It exits with pytest's status, so a failing fault test fails the script too; the rows of a
failing test are still printed, marked, with the figures it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = ROOT / "RELIABILITY.md"
ROW_PROPERTY = "fault_matrix_row"
"""As `tests/faults/conftest.py` names it."""
START, END = "<!-- fault-matrix:start -->", "<!-- fault-matrix:end -->"
AREAS = (
    "photo server",
    "photo",
    "photo URL",
    "source",
    "embedding",
    "table",
    "process",
    "progress store",
    "two runs",
)
"""The matrix's order (the issue's), by how fault names begin; the longest match counts."""
STATUS_ORDER = ("SUCCEEDED", "PARTIAL", "FAILED")


@dataclasses.dataclass
class Line:
    """One fault of the matrix, its trials added up."""

    fault: str
    injected: str
    trials: int = 0
    lost: int = 0
    duplicates: int = 0
    statuses: list[str] = dataclasses.field(default_factory=list)
    converge: list[float | None] = dataclasses.field(default_factory=list)
    failed_tests: set[str] = dataclasses.field(default_factory=set)

    def add(self, row: dict[str, object], test_failed: bool) -> None:
        self.trials += int(str(row.get("trials", 1)))
        self.lost += int(str(row["lost"]))
        self.duplicates += int(str(row["duplicates"]))
        status = str(row["status"])
        if status not in self.statuses:
            self.statuses.append(status)
        seconds = row.get("converge_seconds")
        self.converge.append(None if seconds is None else float(str(seconds)))
        if test_failed:
            self.failed_tests.add(str(row.get("test", "")))

    def cells(self) -> list[str]:
        statuses = sorted(self.statuses, key=lambda s: (s not in STATUS_ORDER, s))
        fault = self.fault + (" **(test failed)**" if self.failed_tests else "")
        return [
            fault,
            self.injected,
            str(self.trials),
            str(self.lost),
            str(self.duplicates),
            ", ".join(statuses),
            _seconds(self.converge),
        ]


def _seconds(values: Sequence[float | None]) -> str:
    if any(value is None for value in values) or not values:
        return "**did not converge**"
    known = sorted(value for value in values if value is not None)
    if known[0] == known[-1]:
        return f"{known[0]:.1f} s"
    return f"{known[0]:.1f}–{known[-1]:.1f} s"


def run_suite(junit: Path, pytest_args: Sequence[str]) -> int:
    """Run tests/faults as CI does, writing the JUnit XML to `junit`; pytest's exit status."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        "tests/faults",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        # xunit1 keeps per-test <properties>, where the rows are.
        "-o",
        "junit_family=xunit1",
        "-q",
        *pytest_args,
    ]
    environment = os.environ | {"CI": "true"}
    # pytest's report goes to stderr: stdout is the table's alone.
    return subprocess.run(command, cwd=ROOT, env=environment, stdout=sys.stderr).returncode


def read_rows(junit: Path) -> Iterable[tuple[dict[str, object], bool]]:
    """Each reported row, with whether its test failed, in the order the tests ran."""
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        for prop in case.iter("property"):
            if prop.get("name") == ROW_PROPERTY:
                yield json.loads(prop.get("value") or "{}"), failed


def matrix(rows: Iterable[tuple[dict[str, object], bool]]) -> list[Line]:
    lines: dict[str, Line] = {}
    for row, failed in rows:
        fault = str(row["fault"])
        line = lines.setdefault(fault, Line(fault, str(row["injected"])))
        line.add(row, failed)

    def area(line: Line) -> int:
        known = [name for name in AREAS if line.fault.startswith(name)]
        return AREAS.index(max(known, key=len)) if known else len(AREAS)

    return sorted(lines.values(), key=area)


def markdown(lines: Sequence[Line]) -> str:
    header = [
        "fault",
        "how injected",
        "trials",
        "sales lost",
        "duplicates",
        "status reported",
        "time to converge on re-run",
    ]
    table = [header, ["---", "---", "---:", "---:", "---:", "---", "---:"]]
    table += [line.cells() for line in lines]
    text = "\n".join("| " + " | ".join(_cell(c) for c in row) + " |" for row in table)
    trials = sum(line.trials for line in lines)
    lost = sum(line.lost for line in lines)
    duplicates = sum(line.duplicates for line in lines)
    return (
        f"{text}\n\n{len(lines)} faults, {trials} trials: {lost} sales lost,"
        f" {duplicates} duplicated.\n"
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_document(table: str, document: Path = DOCUMENT) -> None:
    """Put `table` between the matrix markers of RELIABILITY.md, leaving the rest as it is."""
    text = document.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"{document} has no {START} ... {END} section to replace")
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    document.write_text(f"{before}{START}\n{table}{END}{after}", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--write", action="store_true", help="rewrite RELIABILITY.md's table")
    parser.add_argument(
        "--junit", type=Path, help="read this JUnit XML of an earlier run instead of running"
    )
    parser.add_argument(
        "pytest_args", nargs="*", help="passed on to pytest (after --), e.g. -k photo"
    )
    options = parser.parse_args(argv)
    status = 0
    if options.junit is None:
        with tempfile.TemporaryDirectory() as folder:
            junit = Path(folder) / "faults.xml"
            status = run_suite(junit, options.pytest_args)
            rows = list(read_rows(junit)) if junit.exists() else []
    else:
        rows = list(read_rows(options.junit))
    if not rows:
        print("no fault matrix rows were reported", file=sys.stderr)
        return status or 1
    table = markdown(matrix(rows))
    print(table, end="")
    if options.write:
        write_document(table)
        print(f"wrote the matrix into {DOCUMENT}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
