"""The command line: each command is one library call, with readable output and exit codes."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from smartgo_exporter.cli import app
from smartgo_exporter.cli.demo import DEMO_SALES
from smartgo_exporter.config import SqliteProgressConfig
from smartgo_exporter.config_loader import load_config
from smartgo_exporter.costs import Usage, price
from smartgo_exporter.demo import DemoPaths
from smartgo_exporter.demo.plan import DEFAULT_SALES
from smartgo_exporter.progress.sqlite import SqliteProgressStore
from smartgo_exporter.run_records import RunStatus
from smartgo_exporter.runs import new_run_record
from smartgo_exporter.windows import business_day
from tests.demo_store import FIRST_DAY, held_port, port_of, serve_demo_photos_on

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def exported(workspace: DemoPaths) -> DemoPaths:
    """The workspace after `run --date FIRST_DAY`: a table and a run history to look at."""
    code, output = invoke("run", "--config", str(workspace.config), "--date", str(FIRST_DAY))
    assert code == 0, output
    return workspace


def test_version_names_the_installed_release() -> None:
    code, output = invoke("--version")
    assert code == 0
    assert re.fullmatch(r"smartgo-exporter \d+\.\d+\.\d+\S*\n", output)


def test_loading_the_cli_imports_none_of_the_demo() -> None:
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, smartgo_exporter.cli;"
            " print(any(m.startswith('smartgo_exporter.demo') for m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        check=True,
    )
    assert loaded.stdout == "False\n"


def test_the_demo_command_builds_the_demo_stores_default_size() -> None:
    assert DEMO_SALES == DEFAULT_SALES


def test_run_exports_the_given_day_and_prints_its_counts(workspace: DemoPaths) -> None:
    code, output = invoke("run", "--config", str(workspace.config), "--date", str(FIRST_DAY))
    assert code == 0, output
    assert str(FIRST_DAY) in output
    assert "PARTIAL" in output or "SUCCEEDED" in output


def test_run_over_a_range_exports_each_day(workspace: DemoPaths) -> None:
    code, output = invoke(
        "run", "-c", str(workspace.config), "--from", "2026-10-05", "--to", "2026-10-07"
    )
    assert code == 0, output
    for day in ("2026-10-05", "2026-10-06", "2026-10-07"):
        assert day in output


def test_without_a_terminal_a_run_prints_a_line_as_each_day_finishes(
    workspace: DemoPaths,
) -> None:
    code, output = invoke(
        "run", "-c", str(workspace.config), "--from", "2026-10-05", "--to", "2026-10-07"
    )
    assert code == 0, output
    lines = output.splitlines()
    finished = [line for line in lines if re.match(r"\d{4}-\d\d-\d\d  [A-Z]+ +\d+ sales", line)]
    assert [line[:10] for line in finished] == ["2026-10-05", "2026-10-06", "2026-10-07"]
    counts = (
        r"\d+ sales, \d+ written, \d+ embedded, \d+ reused, \d+ failed, \d+ deferred,"
        r" \d+ rejected, \d+ removed, \d+ normalised"
    )
    for number, line in enumerate(finished, start=1):
        assert re.match(rf"\S+  (SUCCEEDED|PARTIAL  )  {counts}  \({number} of 3 days\)", line)
    # As the days finish: before the table that ends the run.
    [title] = [number for number, line in enumerate(lines) if "Export runs" in line]
    assert lines.index(finished[-1]) < title


def day_line(output: str) -> str:
    [line] = [line for line in output.splitlines() if line.startswith(f"{FIRST_DAY}  ")]
    return line


def test_a_rerun_defers_the_photos_that_are_gone_and_retry_failed_fetches_them(
    workspace: DemoPaths,
) -> None:
    run = ("run", "-c", str(workspace.config), "--date", str(FIRST_DAY))
    first = re.search(r" (\d+) failed, 0 deferred,", day_line(invoke(*run)[1]))
    assert first is not None
    assert int(first[1]) > 0
    code, output = invoke(*run)
    assert code == 0, output
    assert f" 0 failed, {first[1]} deferred," in day_line(output)
    code, output = invoke(*run, "--retry-failed")
    assert code == 0, output
    assert f" {first[1]} failed, 0 deferred," in day_line(output)


def test_history_lists_runs_and_one_days_errors(exported: DemoPaths) -> None:
    code, output = invoke("history", "--config", str(exported.config))
    assert code == 0
    assert str(FIRST_DAY) in output
    code, output = invoke("history", "--config", str(exported.config), "--date", str(FIRST_DAY))
    assert code == 0
    assert re.search(rf"run {FIRST_DAY:%Y%m%d}-[0-9a-f]{{12}}: (PARTIAL|SUCCEEDED)", output)
    assert "source:" in output
    assert "photo:http_404" in output


def test_history_counts_the_sales_whose_currency_was_upper_cased_and_names_them(
    workspace: DemoPaths,
) -> None:
    with sqlite3.connect(workspace.sales_db) as db:
        (sale_id,) = db.execute(
            "SELECT id FROM sales WHERE currency <> 'EUU' AND sold_at >= ? AND sold_at < ?"
            " ORDER BY id LIMIT 1",
            (f"{FIRST_DAY} 06:00:00", f"{FIRST_DAY} 18:00:00"),
        ).fetchone()
        db.execute("UPDATE sales SET currency = lower(currency) WHERE id = ?", (sale_id,))
    config = str(workspace.config)
    assert invoke("run", "--config", config, "--date", str(FIRST_DAY))[0] == 0

    code, output = invoke("history", "--config", config)
    assert code == 0
    lines = [line.split() for line in output.splitlines()]
    [header] = [cells for cells in lines if cells[:2] == ["day", "status"]]
    [row] = [cells for cells in lines if cells[:1] == [str(FIRST_DAY)]]
    # At the 80 columns of a test's console, rich shortens the headers: "normal…".
    assert "normalised".startswith(header[-1].rstrip("…"))
    assert row[-1] == "1"
    code, output = invoke("history", "--config", config, "--date", str(FIRST_DAY))
    assert f"sale {sale_id} [source:currency_normalised]" in output


def test_history_of_a_day_without_runs_says_so(workspace: DemoPaths) -> None:
    code, output = invoke("history", "--config", str(workspace.config), "--date", "2026-01-01")
    assert code == 0
    assert "No runs recorded for 2026-01-01." in output


def test_stats_summarises_runs_and_failures_by_reason(exported: DemoPaths) -> None:
    code, output = invoke("stats", "--config", str(exported.config))
    assert code == 0
    assert "success rate" in output
    assert "photo:http_404" in output


def test_stats_sums_the_estimated_cost_by_month_and_by_day(exported: DemoPaths) -> None:
    code, output = invoke("stats", "--config", str(exported.config))
    assert code == 0
    today = datetime.now(UTC).date()
    lines = output.splitlines()
    by_month = lines.index(next(line for line in lines if "cost by month" in line))
    by_day = lines.index(next(line for line in lines if "cost by day" in line))
    assert by_month < by_day
    # The demo embeds with the local model into local files and SQLite: nothing of AWS's.
    assert re.search(rf"{today:%Y-%m}\s+│\s+\$0\.000000", "\n".join(lines[by_month:by_day]))
    assert re.search(rf"{today}\s+│\s+\$0\.000000", "\n".join(lines[by_day:]))
    assert "not the bill" in output


def test_stats_adds_up_the_runs_costs_in_the_month_and_on_the_day_they_ran(
    workspace: DemoPaths,
) -> None:
    settings = load_config(workspace.config)
    assert isinstance(settings.progress, SqliteProgressConfig)
    progress = SqliteProgressStore(settings.progress.path)
    ran = datetime(2026, 11, 30, 23, 30, tzinfo=UTC)
    for number, started in enumerate((ran, ran + timedelta(hours=1), ran + timedelta(hours=2))):
        run = new_run_record(settings, business_day(FIRST_DAY, "UTC"), "schedule")
        run.started_at, run.status = started, RunStatus.SUCCEEDED
        run.run_id = f"run-{number}"
        run.cost = price(Usage(titan_images=1_000))  # $0.06 each
        progress.save(run)
    progress.close()
    code, output = invoke("stats", "--config", str(workspace.config))
    assert code == 0, output
    assert re.search(r"estimated AWS cost\s+│\s+\$0\.180000", output)
    assert re.search(r"Bedrock Titan\s+│\s+\$0\.180000", output)
    assert re.search(r"2026-11\s+│\s+\$0\.060000", output)
    assert re.search(r"2026-12\s+│\s+\$0\.120000", output)
    assert re.search(r"2026-11-30\s+│\s+\$0\.060000", output)
    assert re.search(r"2026-12-01\s+│\s+\$0\.120000", output)


def test_history_says_what_each_run_cost(exported: DemoPaths) -> None:
    code, output = invoke("history", "--config", str(exported.config))
    assert code == 0
    assert re.search(r"Estimated AWS cost: \$0\.000000 \(Bedrock Titan \$0\.000000,", output)


def test_stats_without_runs_says_so(workspace: DemoPaths) -> None:
    code, output = invoke("stats", "--config", str(workspace.config))
    assert code == 0
    assert "No runs recorded." in output


def test_history_of_a_store_that_cannot_be_opened_is_one_line_naming_it(
    workspace: DemoPaths,
) -> None:
    workspace.progress_db.mkdir()
    code, output = invoke("history", "--config", str(workspace.config))
    assert code == 2
    assert output.splitlines() == [
        f"error: the progress store (SQLite file {workspace.progress_db}) cannot be opened:"
        " unable to open database file"
    ]


def test_stats_of_a_store_that_is_not_a_database_is_one_line_naming_it(
    workspace: DemoPaths,
) -> None:
    workspace.progress_db.write_text("not a database, and long enough to fill its header" * 4)
    code, output = invoke("stats", "--config", str(workspace.config))
    assert code == 2
    assert output.splitlines() == [
        f"error: the progress store (SQLite file {workspace.progress_db}) cannot be opened:"
        " file is not a database"
    ]


def test_sql_before_the_first_export_says_how_the_table_comes_to_exist(
    workspace: DemoPaths,
) -> None:
    code, output = invoke("sql", "--config", str(workspace.config), "SELECT 1")
    assert code == 2
    assert "does not exist; the first export" in " ".join(output.split())


def test_sql_runs_duckdb_over_the_table(exported: DemoPaths) -> None:
    code, output = invoke(
        "sql",
        "--config",
        str(exported.config),
        "SELECT count(DISTINCT tenant_id) AS tenants FROM sales",
    )
    assert code == 0, output
    assert "tenants" in output
    assert "3" in output


def test_sql_finds_the_sales_that_look_most_like_one_sale(exported: DemoPaths) -> None:
    code, output = invoke(
        "sql",
        "--config",
        str(exported.config),
        "WITH new AS (SELECT sale_id, embedding FROM sales WHERE embedding IS NOT NULL LIMIT 1)"
        " SELECT s.sale_id = new.sale_id AS itself,"
        " list_cosine_similarity(s.embedding, new.embedding) AS similarity"
        " FROM sales s, new WHERE s.embedding IS NOT NULL ORDER BY similarity DESC, itself DESC"
        " LIMIT 3",
    )
    assert code == 0, output
    rows = [line.split("│")[1:3] for line in output.splitlines() if line.count("│") == 3]
    # Nothing is more like a sale than the sale itself (other sales of its product tie with it).
    assert [cell.strip() for cell in rows[0]] == ["True", "1"]


def test_a_range_that_ends_before_it_starts_is_refused(workspace: DemoPaths) -> None:
    code, output = invoke(
        "run", "-c", str(workspace.config), "--from", "2026-10-07", "--to", "2026-10-05"
    )
    assert code == 2
    assert "--to 2026-10-05 is before --from 2026-10-07" in output


def test_a_day_not_over_yet_is_refused_naming_it(workspace: DemoPaths) -> None:
    tomorrow = date.today() + timedelta(days=1)  # the demo config's business day is UTC
    code, output = invoke("run", "--config", str(workspace.config), "--date", str(tomorrow))
    assert code == 2
    assert f"{tomorrow} is not over yet" in output


def test_a_bad_config_exits_non_zero_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        '[source]\ntype = "sql"\nurl = "sqlite:///x.db"\ntable = "s"\n[photos]\nconcurrency = -1\n'
    )
    code, output = invoke("run", "--config", str(config))
    assert code == 2
    assert "photos.concurrency" in output


def test_an_unreachable_database_exits_non_zero(workspace: DemoPaths) -> None:
    config = workspace.config.read_text().replace(
        'url = "sqlite:///sales.db"', 'url = "postgresql+psycopg://nobody@127.0.0.1:1/none"'
    )
    workspace.config.write_text(config)
    code, output = invoke("run", "--config", str(workspace.config), "--date", str(FIRST_DAY))
    assert code == 1
    assert "FAILED" in output


def test_the_demo_run_twice_writes_nothing_the_second_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with held_port() as held:
        serve_demo_photos_on(monkeypatch, held)
        demo = ("demo", "--dir", str(tmp_path), "--port", str(port_of(held)), "--sales", "150")
        code, first = invoke(*demo)
        assert code == 0, first
        code, second = invoke(*demo)
        assert code == 0, second
    assert first.count("SUCCEEDED") + first.count("PARTIAL") == 30
    assert "rows written" in first
    assert "Nothing changed in the table" in second
    sales, _written, embedded, _reused, failed, *_ = _totals(first)
    assert _totals(second)[:6] == [sales, 0, 0, embedded, 0, failed]


def _totals(output: str) -> list[int]:
    """The numbers of the summary table's `total` row."""
    [line] = [line for line in output.splitlines() if line.strip().startswith("total")]
    return [int(cell) for cell in line.split()[1:]]
