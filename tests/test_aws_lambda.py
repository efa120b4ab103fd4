"""The Lambda handler, invoked in-process as Lambda would: real events, a context object whose
time runs out, the demo store as the source, the local model and a local Iceberg table. The AWS
backends themselves (Titan, DynamoDB, S3 Tables, SSM) are tested with their own modules.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import structlog
from aws_lambda_powertools import Metrics

from smartgo_exporter import aws_lambda
from smartgo_exporter.aws_lambda import ExportFailed, handler
from smartgo_exporter.config import Settings
from smartgo_exporter.config_loader import load_config
from smartgo_exporter.demo import DemoCatalog, DemoPaths
from smartgo_exporter.demo.bedrock_local import LocalBedrock
from smartgo_exporter.pipeline import STOPPED_EARLY
from smartgo_exporter.progress.sqlite import SqliteProgressStore
from smartgo_exporter.run_records import LOOKBACK_TRIGGER, RunStatus
from tests.demo_store import FIRST_DAY, copy_of_store, distinct_keys, table_rows
from tests.servers.moto import MotoServer
from tests.servers.seaweedfs import Seaweed
from tests.test_progress_stores import record

BATCH = 5

SCHEDULED_EVENT = {
    # EventBridge's documented scheduled event, fired at 03:00 UTC the day after FIRST_DAY.
    "version": "0",
    "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "account": "123456789012",
    "time": "2026-10-06T03:00:00Z",
    "region": "eu-west-1",
    "resources": ["arn:aws:events:eu-west-1:123456789012:rule/smartgo-exporter-dev-nightly"],
    "detail": {},
}
TOMORROW = date.today() + timedelta(days=1)
"""Not over yet in the demo config's business time zone, UTC."""


class FakeContext:
    """Lambda's context object on a clock of its own.

    Each reading of the time left moves the clock `step` seconds on, so time runs out after a
    set number of readings (the handler reads it once at the start and then before each new
    batch), however fast or slow the machine running the test is.
    """

    def __init__(self, seconds: float, *, step: float = 0.0, request_id: str = "req-1") -> None:
        self.aws_request_id = request_id
        self.function_name = "smartgo-exporter-dev"
        self.memory_limit_in_mb = "1024"  # text, as Lambda's Python runtime gives it
        self._left = seconds
        self._step = step

    def get_remaining_time_in_millis(self) -> int:
        self._left -= self._step
        return max(0, int(self._left * 1000))


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of BATCH sales, so a day takes several and time can run out between them."""
    monkeypatch.setenv("SGX_EXPORT__BATCH_SIZE", str(BATCH))


def out_of_time_after_one_batch(request_id: str = "req-1") -> FakeContext:
    """With the default 60 s margin: 75 s left at the start, 50 s after the first batch."""
    return FakeContext(100, step=25, request_id=request_id)


def plenty_of_time(request_id: str = "req-2") -> FakeContext:
    return FakeContext(900, request_id=request_id)


@pytest.fixture
def workspace(
    store: tuple[DemoPaths, DemoCatalog], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DemoPaths]:
    """This test's copy of the store, configured through SGX_CONFIG as the function would be,
    and a cold container: settings, logging and metrics are loaded afresh by the first call."""
    paths = copy_of_store(store[0], tmp_path)
    monkeypatch.setenv("SGX_CONFIG", str(paths.config))
    aws_lambda.warm_runtime.cache_clear()
    yield paths
    aws_lambda.warm_runtime.cache_clear()
    structlog.reset_defaults()


def settings_of(paths: DemoPaths) -> Settings:
    return load_config(paths.config)


def valid_sales_on(catalog: DemoCatalog, day: date) -> int:
    return sum(sale.defect is None and sale.sold_at.date() == day for sale in catalog.sales)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def emf_document(stdout: str) -> dict[str, Any]:
    documents = [line for line in json_lines(stdout) if "_aws" in line]
    assert len(documents) == 1, "one metrics document per invocation"
    return documents[0]


@pytest.mark.usefixtures("small_batches")
def test_a_scheduled_run_out_of_time_is_partial_and_the_next_run_completes_the_day(
    workspace: DemoPaths, store: tuple[DemoPaths, DemoCatalog]
) -> None:
    settings = settings_of(workspace)
    first = handler(SCHEDULED_EVENT, out_of_time_after_one_batch())
    assert first["ok"] is True
    assert first["trigger"] == "schedule"
    assert [(run["date"], run["status"]) for run in first["runs"]] == [("2026-10-05", "PARTIAL")]
    assert "stopped" in first["runs"][0]["message"]
    assert first["not_started"] == []
    assert 0 < table_rows(settings).num_rows <= BATCH

    second = handler(SCHEDULED_EVENT, plenty_of_time())
    assert [run["date"] for run in second["runs"]] == ["2026-10-05"]
    assert "stopped" not in second["runs"][0]["message"]
    rows = table_rows(settings)
    assert rows.num_rows == distinct_keys(rows) == valid_sales_on(store[1], FIRST_DAY)
    history = SqliteProgressStore(settings.progress.path).runs_on(FIRST_DAY)
    assert sorted(str(run.status) for run in history) == sorted(
        [first["runs"][0]["status"], second["runs"][0]["status"]]
    )
    assert {run.trigger for run in history} == {"schedule"}
    json.dumps([first, second])


def test_a_date_event_exports_that_day(
    workspace: DemoPaths, store: tuple[DemoPaths, DemoCatalog]
) -> None:
    result = handler({"date": "2026-10-06"}, plenty_of_time())
    assert result["trigger"] == "manual"
    assert [run["date"] for run in result["runs"]] == ["2026-10-06"]
    rows = table_rows(settings_of(workspace))
    sold_on = {moment.date() for moment in rows["sold_at"].to_pylist()}
    assert sold_on == {date(2026, 10, 6)}
    assert rows.num_rows == valid_sales_on(store[1], date(2026, 10, 6))
    assert result["runs"][0]["counts"]["written"] == rows.num_rows


@pytest.mark.usefixtures("small_batches")
def test_a_range_that_runs_out_of_time_lists_the_days_it_did_not_start(
    workspace: DemoPaths,
) -> None:
    result = handler({"from": "2026-10-05", "to": "2026-10-07"}, out_of_time_after_one_batch())
    assert [(run["date"], run["status"]) for run in result["runs"]] == [("2026-10-05", "PARTIAL")]
    assert result["not_started"] == ["2026-10-06", "2026-10-07"]


def test_each_invocation_prints_its_metrics_in_embedded_metric_format(
    workspace: DemoPaths, capsys: pytest.CaptureFixture[str]
) -> None:
    result = handler({"date": "2026-10-05"}, plenty_of_time(request_id="req-metrics"))
    document = emf_document(capsys.readouterr().out)
    directive = document["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "SmartGoExporter"
    assert ["service", "stage"] in [sorted(dimensions) for dimensions in directive["Dimensions"]]
    assert (document["service"], document["stage"]) == ("smartgo-exporter", "dev")
    names = {metric["Name"] for metric in directive["Metrics"]}
    assert names == {
        "SalesFound",
        "SalesRejected",
        "RowsWritten",
        "EmbeddingsCreated",
        "EmbeddingsReused",
        "EmbeddingsFailed",
        "SalesVoided",
        "RowsRemoved",
        "RunsFailed",
        "RunsPartial",
        "DaysExported",
        "ProgressStoreFailures",
        "ExportDuration",
    }
    counts = result["runs"][0]["counts"]
    assert counts["sales"] > 0
    assert document["SalesFound"] == [counts["sales"]]
    assert document["RowsWritten"] == [counts["written"]]
    assert document["EmbeddingsCreated"] == [counts["embedded"]]
    assert document["ExportDuration"][0] > 0
    assert document["DaysExported"] == [1]
    assert document["ProgressStoreFailures"] == [0]
    assert document["request_id"] == "req-metrics"


def test_every_progress_store_failure_of_an_invocation_is_in_its_metrics(
    workspace: DemoPaths,
    moto_server: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A progress table that is missing (or that the role may not use) is swallowed by design,
    turning the lease and the run history off: the export lands, and the metric the
    deployment alarms on counts each failed call, one per warning logged."""
    config = workspace.config.read_text(encoding="utf-8")
    config = config[: config.index("[progress]")] + (
        f'[progress]\ntype = "dynamodb"\ntable = "missing-{uuid.uuid4().hex}"\n'
        f'endpoint_url = "{moto_server.endpoint_url}"\n'
    )
    workspace.config.write_text(config, encoding="utf-8")
    result = handler({"date": "2026-10-05"}, plenty_of_time())
    assert result["ok"] is True
    assert result["runs"][0]["counts"]["written"] > 0
    output = capsys.readouterr()
    warnings = [
        line
        for line in json_lines(output.err)
        if line["event"].startswith("progress_store_") and line["level"] == "warning"
    ]
    assert len(warnings) >= 3, "the lease, the RUNNING record and the final record"
    document = emf_document(output.out)
    assert document["ProgressStoreFailures"] == [len(warnings)]
    assert document["DaysExported"] == [1]


def test_a_day_exported_is_a_first_export_that_landed_not_a_failure_nor_a_lookback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The 26-hour alarm watches DaysExported: a PARTIAL day landed its rows (RunsPartial
    reports it), a FAILED one did not, and re-reading a day already exported is no new day."""
    runs = [
        dataclasses.replace(record("first", date(2026, 10, 5)), trigger="schedule"),
        record("partial", date(2026, 10, 3), RunStatus.PARTIAL),
        dataclasses.replace(record("again", date(2026, 10, 1)), trigger=LOOKBACK_TRIGGER),
        record("failed", date(2026, 10, 4), RunStatus.FAILED),
    ]
    metrics = Metrics(namespace="SmartGoExporter", service=aws_lambda.SERVICE)
    aws_lambda.publish_metrics(metrics, runs, 1.0, progress_failures=2)
    document = emf_document(capsys.readouterr().out)
    assert document["DaysExported"] == [2]
    assert document["RunsPartial"] == [1]
    assert document["RunsFailed"] == [1]
    assert document["ProgressStoreFailures"] == [2]


def test_the_invocations_gb_seconds_are_shared_among_its_runs_and_stored(
    workspace: DemoPaths, capsys: pytest.CaptureFixture[str]
) -> None:
    result = handler({"from": "2026-10-05", "to": "2026-10-06"}, plenty_of_time())
    seconds = emf_document(capsys.readouterr().out)["ExportDuration"][0]
    progress = SqliteProgressStore(settings_of(workspace).progress.path)
    stored = [progress.runs_on(day)[0] for day in (date(2026, 10, 5), date(2026, 10, 6))]
    shares = [run.cost.usage.lambda_gb_seconds for run in stored if run.cost]
    assert len(shares) == 2
    assert all(share > 0 for share in shares)
    # 1,024 MB is one GB: the shares add up to the invocation's seconds, to their rounding.
    assert abs(sum(shares) - Decimal(str(seconds))) <= Decimal("0.002")
    assert [run["cost_usd"] for run in result["runs"]] == [
        str(run.cost.total) for run in stored if run.cost
    ]


def test_every_log_line_carries_the_request_id(
    workspace: DemoPaths, capsys: pytest.CaptureFixture[str]
) -> None:
    handler({"date": "2026-10-07"}, plenty_of_time(request_id="req-logs"))
    lines = json_lines(capsys.readouterr().err)
    events = {line["event"] for line in lines}
    assert {"invocation_started", "run_started", "batch_committed", "run_finished"} <= events
    assert {line.get("request_id") for line in lines} == {"req-logs"}


def test_a_failed_run_fails_the_invocation_after_its_metrics_are_flushed(
    workspace: DemoPaths, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SGX_SOURCE__URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("SGX_SOURCE__CONNECT_TIMEOUT_SECONDS", "2")
    with pytest.raises(ExportFailed, match="2026-10-05") as raised:
        handler({"date": "2026-10-05"}, plenty_of_time())
    assert raised.value.summary["ok"] is False
    assert [run["status"] for run in raised.value.summary["runs"]] == ["FAILED"]
    output = capsys.readouterr()
    assert emf_document(output.out)["RunsFailed"] == [1]
    finished = [line for line in json_lines(output.err) if line["event"] == "invocation_finished"]
    assert [line["ok"] for line in finished] == [False]


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"date": "2026-13-01"}, "date"),
        ({"date": "5 October"}, "date"),
        ({"date": 20261005}, "date"),
        ({"date": "2026-10-05", "to": "2026-10-06"}, "date"),
        ({"from": "2026-10-05"}, "to"),
        ({"to": "2026-10-05"}, "from"),
        ({"from": "2026-10-07", "to": "2026-10-05"}, "to"),
        ({"from": "2025-01-01", "to": "2026-10-05"}, "to"),
        ({"dat": "2026-10-05"}, "dat"),
        ({"date": str(TOMORROW)}, "date"),
        ({"from": "2026-10-05", "to": str(TOMORROW)}, "to"),
        ({**SCHEDULED_EVENT, "detail-type": "Object Created"}, "detail-type"),
        ({**SCHEDULED_EVENT, "source": "aws.s3"}, "source"),
        ({**SCHEDULED_EVENT, "time": "yesterday"}, "time"),
        ({**SCHEDULED_EVENT, "time": "2026-10-06T03:00:00"}, "time"),
        (["2026-10-05"], "event"),
    ],
)
def test_a_bad_event_is_refused_naming_the_field(
    workspace: DemoPaths, event: object, field: str
) -> None:
    result = handler(event, plenty_of_time())
    assert result["ok"] is False
    assert result["error"]["field"] == field
    assert result["error"]["message"]
    assert not workspace.progress_db.exists(), "nothing was exported"


def test_settings_are_loaded_once_per_container(workspace: DemoPaths) -> None:
    handler({"date": "not a date"}, plenty_of_time())
    handler({"date": "not a date"}, plenty_of_time())
    info = aws_lambda.warm_runtime.cache_info()
    assert (info.misses, info.hits) == (1, 1)


# --- a range through a Bedrock batch job (embedder.batch) ----------------------------------------

BATCH_ROLE_ARN = "arn:aws:iam::123456789012:role/smartgo-exporter-bedrock-batch"
RANGE = {"from": "2026-10-05", "to": "2026-10-07"}
RANGE_DAYS = ["2026-10-05", "2026-10-06", "2026-10-07"]


@pytest.fixture
def batch_workspace(
    large_store: tuple[DemoPaths, DemoCatalog],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    batch_bedrock: LocalBedrock,
    seaweedfs: Seaweed,
    batch_bucket: str,
) -> Iterator[DemoPaths]:
    """A cold container configured for Titan with `batch`, the local Bedrock running its jobs
    on SeaweedFS."""
    paths = copy_of_store(large_store[0], tmp_path)
    embedder = {
        "type": "titan",
        "region": seaweedfs.region,
        "endpoint_url": batch_bedrock.endpoint_url,
        "batch": True,
        "batch_location": f"s3://{batch_bucket}/backfills",
        "batch_role_arn": BATCH_ROLE_ARN,
        "batch_endpoint_url": batch_bedrock.endpoint_url,
        "s3_endpoint_url": seaweedfs.s3_endpoint,
    }
    with paths.config.open("a", encoding="utf-8") as config:
        config.write("\n[embedder]\n")
        config.writelines(f"{key} = {json.dumps(value)}\n" for key, value in embedder.items())
    monkeypatch.setenv("SGX_CONFIG", str(paths.config))
    aws_lambda.warm_runtime.cache_clear()
    yield paths
    aws_lambda.warm_runtime.cache_clear()
    structlog.reset_defaults()


def until_the_job_is_done() -> None:
    """Three invocations of the range: the job is started, then polled twice (Validating,
    InProgress); the local Bedrock has finished it by the next poll."""
    for number in range(3):
        handler(RANGE, plenty_of_time(f"req-wait-{number}"))


def test_a_range_with_batch_on_starts_a_job_and_answers_waiting_for_it(
    batch_workspace: DemoPaths, batch_bedrock: LocalBedrock, capsys: pytest.CaptureFixture[str]
) -> None:
    result = handler(RANGE, plenty_of_time())

    [job] = batch_bedrock.jobs.values()
    [run] = result["runs"]
    assert result["ok"] is True
    assert (run["status"], run["message"]) == ("RUNNING", f"waiting for batch job {job.arn}")
    assert result["not_started"] == [], "no day is due before the job is done"
    assert batch_bedrock.requests == 0, "no photo was embedded on demand"
    assert table_rows(settings_of(batch_workspace)).num_rows == 0
    assert emf_document(capsys.readouterr().out)["DaysExported"] == [0], "a waiting range is no day"


def test_each_invocation_of_the_range_takes_its_job_one_step_on_until_the_days_are_exported(
    batch_workspace: DemoPaths, batch_bedrock: LocalBedrock
) -> None:
    first = handler(RANGE, plenty_of_time("req-1"))
    waiting = [handler(RANGE, plenty_of_time(f"req-{n}"))["runs"][0] for n in (2, 3)]
    done = handler(RANGE, plenty_of_time("req-4"))

    [job] = batch_bedrock.jobs.values()
    assert [run["message"] for run in waiting] == [
        f"waiting for batch job {job.arn} (Validating)",
        f"waiting for batch job {job.arn} (InProgress)",
    ]
    batch, *days = done["runs"]
    assert batch["run_id"] == first["runs"][0]["run_id"]
    assert batch["status"] == "SUCCEEDED"
    assert [day["date"] for day in days] == RANGE_DAYS
    assert all(day["status"] != "FAILED" for day in days)
    assert sum(day["counts"]["embedded"] for day in days) >= job.total
    assert batch_bedrock.requests == 0, "every vector came from the job"
    assert done["not_started"] == []


@pytest.mark.usefixtures("small_batches")
def test_a_batch_range_out_of_time_leaves_the_days_left_to_the_next_invocation(
    batch_workspace: DemoPaths, batch_bedrock: LocalBedrock
) -> None:
    until_the_job_is_done()

    cut = handler(RANGE, out_of_time_after_one_batch("req-cut"))
    rest = handler(RANGE, plenty_of_time("req-rest"))

    batch, first_day = cut["runs"]
    assert batch["status"] == "RUNNING"
    assert "stopped for time" in batch["message"]
    assert (first_day["date"], first_day["status"]) == ("2026-10-05", "PARTIAL")
    assert cut["not_started"] == RANGE_DAYS[1:]
    batch, *days = rest["runs"]
    assert batch["status"] == "SUCCEEDED"
    assert [day["date"] for day in days] == RANGE_DAYS, "the cut day again, then the others"
    assert batch_bedrock.requests == 0


def test_a_day_of_the_range_exported_with_the_job_is_not_exported_again(
    batch_workspace: DemoPaths, batch_bedrock: LocalBedrock, monkeypatch: pytest.MonkeyPatch
) -> None:
    until_the_job_is_done()
    monkeypatch.setenv("SGX_EXPORT__BATCH_SIZE", "150")  # a day a batch
    aws_lambda.warm_runtime.cache_clear()
    # 85 s left at the start, then 15 s less at each reading: out of time after the first day.
    cut = handler(RANGE, FakeContext(100, step=15, request_id="req-cut"))

    rest = handler(RANGE, plenty_of_time("req-rest"))

    [batch, first_day] = cut["runs"]
    assert first_day["date"] == "2026-10-05"
    assert first_day["status"] != "FAILED"
    assert first_day["message"] != STOPPED_EARLY, "the whole day landed"
    assert cut["not_started"] == RANGE_DAYS[1:]
    batch, *days = rest["runs"]
    assert batch["status"] == "SUCCEEDED"
    assert [day["date"] for day in days] == RANGE_DAYS[1:]


def test_a_date_event_with_batch_on_is_embedded_on_demand_within_the_time_budget(
    batch_workspace: DemoPaths, batch_bedrock: LocalBedrock
) -> None:
    result = handler({"date": "2026-10-05"}, plenty_of_time())

    assert batch_bedrock.jobs == {}
    assert batch_bedrock.requests > 0
    [run] = result["runs"]
    assert run["date"] == "2026-10-05"
    assert run["status"] != "FAILED"
    assert run["counts"]["embedded"] > 0
