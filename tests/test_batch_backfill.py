"""`backfill` with `embedder.batch`: one Bedrock batch job for the range, a step per call.

End to end on the demo store (its photos served over HTTP), the local Bedrock running the job
on a real S3 (SeaweedFS), and the run records in the workspace's SQLite progress store: each
`backfill` call opens everything anew, as a Lambda invocation would.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest
import structlog
from typer.testing import CliRunner

from smartgo_exporter.backfill import backfill
from smartgo_exporter.cli import app
from smartgo_exporter.config import Settings, SqliteProgressConfig
from smartgo_exporter.config_loader import load_config
from smartgo_exporter.demo import DemoCatalog, DemoPaths
from smartgo_exporter.demo.bedrock_local import LocalBedrock
from smartgo_exporter.embedders.titan_batch import MIN_RECORDS
from smartgo_exporter.errors import ConfigError
from smartgo_exporter.progress.sqlite import SqliteProgressStore
from smartgo_exporter.run_records import BatchJob, RunRecord, RunStatus
from tests.demo_store import FIRST_DAY, copy_of_store, table_rows
from tests.servers.seaweedfs import Seaweed

ROLE_ARN = "arn:aws:iam::123456789012:role/smartgo-exporter-bedrock-batch"
LAST_DAY = FIRST_DAY + timedelta(days=2)
TITAN = "amazon.titan-embed-image-v1:1024"


def batch_settings(
    paths: DemoPaths, bedrock: LocalBedrock, seaweedfs: Seaweed, bucket: str
) -> Settings:
    return load_config(
        paths.config,
        embedder={
            "type": "titan",
            "region": seaweedfs.region,
            "endpoint_url": bedrock.endpoint_url,
            "batch": True,
            "batch_location": f"s3://{bucket}/backfills",
            "batch_role_arn": ROLE_ARN,
            "batch_endpoint_url": bedrock.endpoint_url,
            "s3_endpoint_url": seaweedfs.s3_endpoint,
        },
    )


def stored_runs(settings: Settings, day: date) -> list[RunRecord]:
    assert isinstance(settings.progress, SqliteProgressConfig)
    store = SqliteProgressStore(settings.progress.path)
    try:
        return store.runs_on(day)
    finally:
        store.close()


@pytest.fixture
def settings(
    large_store: tuple[DemoPaths, DemoCatalog],
    tmp_path: Path,
    batch_bedrock: LocalBedrock,
    seaweedfs: Seaweed,
    batch_bucket: str,
) -> Settings:
    return batch_settings(
        copy_of_store(large_store[0], tmp_path), batch_bedrock, seaweedfs, batch_bucket
    )


def test_the_first_call_starts_a_job_and_answers_waiting_with_nothing_exported(
    settings: Settings, batch_bedrock: LocalBedrock
) -> None:
    [record] = backfill(settings, FIRST_DAY, LAST_DAY)

    assert record.status is RunStatus.RUNNING
    assert record.batch_job is not None
    assert record.message == f"waiting for batch job {record.batch_job.job_arn}"
    assert record.batch_job.status == "Submitted"
    [job] = batch_bedrock.jobs.values()
    assert job.arn == record.batch_job.job_arn
    assert batch_bedrock.requests == 0  # no InvokeModel
    assert table_rows(settings).num_rows == 0
    assert record.window_end - record.window_start == timedelta(days=3)


def test_later_calls_find_the_job_in_the_run_record_and_export_once_it_is_done(
    settings: Settings, batch_bedrock: LocalBedrock
) -> None:
    [first] = backfill(settings, FIRST_DAY, LAST_DAY)
    statuses = []
    for _ in range(2):
        [waiting] = backfill(settings, FIRST_DAY, LAST_DAY)
        assert waiting.run_id == first.run_id
        assert waiting.batch_job is not None
        statuses.append(waiting.batch_job.status)

    batch, *days = backfill(settings, FIRST_DAY, LAST_DAY)

    assert statuses == ["Validating", "InProgress"]
    assert len(batch_bedrock.jobs) == 1
    assert batch.run_id == first.run_id
    assert batch.status is RunStatus.SUCCEEDED
    assert [day.business_date for day in days] == [FIRST_DAY, FIRST_DAY + timedelta(1), LAST_DAY]
    assert all(day.status is not RunStatus.FAILED for day in days)
    [job] = batch_bedrock.jobs.values()
    assert sum(day.counts.embedded for day in days) >= job.total >= MIN_RECORDS
    assert batch_bedrock.requests == 0  # every photo's vector came from the job
    rows = table_rows(settings)
    embedded = rows.filter(pc.equal(rows["embedding_status"], "ok"))
    assert embedded.num_rows > 0
    assert set(embedded["embedding_model"].to_pylist()) == {TITAN}
    [saved] = [run for run in stored_runs(settings, FIRST_DAY) if run.run_id == first.run_id]
    assert saved.status is RunStatus.SUCCEEDED
    assert saved.batch_job == BatchJob(job.arn, "Completed")


def test_a_job_bedrock_failed_fails_the_record_and_the_next_call_starts_another(
    settings: Settings, batch_bedrock: LocalBedrock
) -> None:
    batch_bedrock.fail_job = "The service role cannot read the input location."
    backfill(settings, FIRST_DAY, LAST_DAY)

    [failed] = backfill(settings, FIRST_DAY, LAST_DAY)
    batch_bedrock.fail_job = None
    [again] = backfill(settings, FIRST_DAY, LAST_DAY)

    assert failed.status is RunStatus.FAILED
    assert "The service role cannot read the input location." in failed.message
    assert failed.failures == {"embedding:batch_job_failed": 1}
    assert again.run_id != failed.run_id
    assert again.status is RunStatus.RUNNING
    assert len(batch_bedrock.jobs) == 2


def test_a_call_while_another_is_starting_the_ranges_job_does_nothing(
    settings: Settings, batch_bedrock: LocalBedrock
) -> None:
    assert isinstance(settings.progress, SqliteProgressConfig)
    other = SqliteProgressStore(settings.progress.path)
    assert other.acquire_lease(f"batch:smartgo:{FIRST_DAY}:{LAST_DAY}", "other-call", 60)

    [locked] = backfill(settings, FIRST_DAY, LAST_DAY)
    other.close()

    assert locked.status is RunStatus.FAILED
    assert locked.failures == {"run:locked": 1}
    assert batch_bedrock.jobs == {}


def test_a_range_of_fewer_photos_than_a_job_takes_is_embedded_on_demand_saying_so(
    workspace: DemoPaths,
    batch_bedrock: LocalBedrock,
    seaweedfs: Seaweed,
    batch_bucket: str,
) -> None:
    settings = batch_settings(workspace, batch_bedrock, seaweedfs, batch_bucket)

    with structlog.testing.capture_logs() as logs:
        records = backfill(settings, FIRST_DAY, LAST_DAY)

    assert [record.business_date for record in records] == [
        FIRST_DAY,
        FIRST_DAY + timedelta(1),
        LAST_DAY,
    ]
    assert all(record.batch_job is None for record in records)
    assert batch_bedrock.jobs == {}
    assert batch_bedrock.requests > 0
    [warning] = [log for log in logs if log["event"] == "batch_job_too_small_embedding_on_demand"]
    assert warning["log_level"] == "warning"
    assert 0 < warning["photos"] < MIN_RECORDS
    listed = seaweedfs.s3_client().list_objects_v2(Bucket=batch_bucket)
    assert listed.get("Contents", []) == []  # the records written were deleted


def test_a_batch_backfill_on_ray_is_a_config_error(settings: Settings) -> None:
    with pytest.raises(ConfigError, match=r"embedder\.batch"):
        backfill(settings, FIRST_DAY, LAST_DAY, runner="ray")


# The run record's field


def record(**fields: Any) -> RunRecord:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    return RunRecord(
        run_id="20261005-abcdefabcdef",
        business_date=FIRST_DAY,
        window_start=now,
        window_end=now + timedelta(days=3),
        trigger="backfill",
        status=RunStatus.RUNNING,
        started_at=now,
        expires_at=now + timedelta(days=90),
        **fields,
    )


def test_a_run_record_keeps_its_batch_job_through_its_document() -> None:
    job = BatchJob("arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/abc", "InProgress")

    document = record(batch_job=job).to_document()

    assert document["batch_job"] == {"job_arn": job.job_arn, "status": "InProgress"}
    assert RunRecord.from_document(document).batch_job == job


def test_a_run_record_saved_before_batch_jobs_existed_loads_without_one() -> None:
    document = record().to_document()
    del document["batch_job"]

    assert RunRecord.from_document(document).batch_job is None


# The command line


def test_the_backfill_command_says_which_job_it_waits_for(
    large_store: tuple[DemoPaths, DemoCatalog],
    tmp_path: Path,
    batch_bedrock: LocalBedrock,
    seaweedfs: Seaweed,
    batch_bucket: str,
) -> None:
    paths = copy_of_store(large_store[0], tmp_path)
    with paths.config.open("a", encoding="utf-8") as config:
        config.write(
            "\n[embedder]\n"
            'type = "titan"\n'
            f'region = "{seaweedfs.region}"\n'
            f'endpoint_url = "{batch_bedrock.endpoint_url}"\n'
            "batch = true\n"
            f'batch_location = "s3://{batch_bucket}/backfills"\n'
            f'batch_role_arn = "{ROLE_ARN}"\n'
            f'batch_endpoint_url = "{batch_bedrock.endpoint_url}"\n'
            f's3_endpoint_url = "{seaweedfs.s3_endpoint}"\n'
        )

    result = CliRunner().invoke(
        app,
        [
            "backfill",
            "--config",
            str(paths.config),
            "--from",
            str(FIRST_DAY),
            "--to",
            str(LAST_DAY),
        ],
    )

    [job] = batch_bedrock.jobs.values()
    assert result.exit_code == 0, result.output
    assert f"waiting for batch job {job.arn}" in " ".join(result.output.split())
