"""What only the DynamoDB store does: its table, its item shapes, Queries instead of Scans, and
conditions evaluated by DynamoDB itself. The shared behaviours are in test_progress_stores."""

import dataclasses
import json
import math
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from smartgo_exporter.config import DynamoProgressConfig
from smartgo_exporter.config_loader import load_config
from smartgo_exporter.progress import load_progress_store
from smartgo_exporter.progress.dynamodb import DynamoProgressStore
from smartgo_exporter.run_records import RunRecord, RunStatus
from tests.servers.moto import MotoServer
from tests.test_progress_stores import record


def item_key(saved: RunRecord) -> dict[str, Any]:
    """The DynamoDB key of a saved run."""
    started = saved.started_at.isoformat(timespec="microseconds")
    return {"pk": {"S": f"DAY#{saved.business_date}"}, "sk": {"S": f"{started}#{saved.run_id}"}}


@pytest.fixture
def client(moto_server: MotoServer) -> Any:
    return moto_server.client("dynamodb")


@pytest.fixture
def store(client: Any) -> Iterator[DynamoProgressStore]:
    opened = DynamoProgressStore(client, f"progress-{uuid.uuid4().hex[:12]}", create_table=True)
    yield opened
    opened.close()


def test_the_table_is_created_on_demand_with_ttl_on_expires_at(
    client: Any, store: DynamoProgressStore
) -> None:
    table = client.describe_table(TableName=store.table)["Table"]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert {index["IndexName"] for index in table["GlobalSecondaryIndexes"]} == {
        "history",
        "succeeded",
    }
    ttl = client.describe_time_to_live(TableName=store.table)["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}


def test_opening_an_existing_table_leaves_it_as_it_is(
    client: Any, store: DynamoProgressStore
) -> None:
    store.save(record("r1", date(2026, 11, 1)))
    again = DynamoProgressStore(client, store.table, create_table=True)
    assert [r.run_id for r in again.runs_on(date(2026, 11, 1))] == ["r1"]


def test_a_run_is_stored_with_numbers_and_an_epoch_ttl(
    client: Any, store: DynamoProgressStore
) -> None:
    saved = record("r1", date(2026, 11, 1))
    store.save(saved)
    item = client.get_item(
        TableName=store.table,
        Key=item_key(saved),
    )["Item"]
    assert item["expires_at"] == {"N": str(math.ceil(saved.expires_at.timestamp()))}
    assert item["run"]["M"]["counts"]["M"]["written"] == {"N": "8"}
    assert item["run"]["M"]["status"] == {"S": "SUCCEEDED"}


def test_a_run_saved_before_counts_had_normalised_reads_back_with_none(
    client: Any, store: DynamoProgressStore
) -> None:
    saved = record("r1", date(2026, 11, 1))
    store.save(saved)
    client.update_item(
        TableName=store.table,
        Key=item_key(saved),
        UpdateExpression="REMOVE #run.counts.normalised",
        ExpressionAttributeNames={"#run": "run"},
    )
    [read] = store.runs_on(date(2026, 11, 1))
    assert (read.counts.normalised, read.counts.written) == (0, 8)
    assert store.summary().rows_written == 8


def test_day_history_summary_and_last_success_are_served_by_queries_never_scans(
    client: Any, store: DynamoProgressStore
) -> None:
    store.save(record("r1", date(2026, 11, 1)))
    calls: list[tuple[str, str | None]] = []

    def note(model: Any, params: dict[str, Any], **_: Any) -> None:
        calls.append((model.name, json.loads(params["body"]).get("IndexName")))

    client.meta.events.register("before-call.dynamodb", note)
    store.runs_on(date(2026, 11, 1))
    store.recent(5)
    store.summary()
    store.last_succeeded_day()
    assert {operation for operation, _ in calls} == {"Query"}
    assert {index for _, index in calls} == {None, "history", "succeeded"}


def test_an_expired_item_not_yet_deleted_by_dynamodb_is_left_out(
    client: Any, store: DynamoProgressStore
) -> None:
    expired = record("old", date(2026, 11, 1), expires=datetime.now(UTC) - timedelta(minutes=1))
    store.save(expired)
    key = {
        "pk": {"S": "DAY#2026-11-01"},
        "sk": {"S": f"{expired.started_at.isoformat(timespec='microseconds')}#old"},
    }
    assert "Item" in client.get_item(TableName=store.table, Key=key)
    assert store.runs_on(date(2026, 11, 1)) == []
    assert store.recent(5) == []
    assert store.summary().runs == 0
    assert store.last_succeeded_day() is None


def test_a_late_running_update_from_another_writer_is_dropped(
    moto_server: MotoServer, store: DynamoProgressStore
) -> None:
    running = record("r1", date(2026, 11, 1), RunStatus.RUNNING)
    store.save(running)
    store.save(dataclasses.replace(running, status=RunStatus.SUCCEEDED))
    slow_writer = DynamoProgressStore(moto_server.client("dynamodb"), store.table)
    slow_writer.save(dataclasses.replace(running, status=RunStatus.RUNNING))
    assert [r.status for r in store.runs_on(date(2026, 11, 1))] == [RunStatus.SUCCEEDED]


def test_a_lease_lapses_by_the_same_ttl_attribute_as_the_runs(
    client: Any, store: DynamoProgressStore
) -> None:
    store.acquire_lease("window:smartgo:2026-11-26", "run-a", ttl_seconds=60)
    item = client.get_item(
        TableName=store.table,
        Key={"pk": {"S": "LEASE#window:smartgo:2026-11-26"}, "sk": {"S": "LEASE"}},
    )["Item"]
    assert item["owner"] == {"S": "run-a"}
    assert float(item["lease_until"]["N"]) <= int(item["expires_at"]["N"])


def test_the_configured_table_is_named_for_its_stage(moto_server: MotoServer) -> None:
    stage = f"test{uuid.uuid4().hex[:8]}"
    config = DynamoProgressConfig(
        type="dynamodb", stage=stage, endpoint_url=moto_server.endpoint_url, create_table=True
    )
    store = load_progress_store(config, retention_days=30)
    assert isinstance(store, DynamoProgressStore)
    assert (store.table, store.retention_days) == (f"smartgo-exporter-{stage}-progress", 30)
    store.close()


def test_the_progress_section_selects_dynamodb_by_type() -> None:
    settings = load_config(
        source={"type": "rest", "url": "https://pos.example/sales"},
        progress={"type": "dynamodb", "stage": "prod", "region": "eu-central-1"},
    )
    assert isinstance(settings.progress, DynamoProgressConfig)
    assert settings.progress.table_name == "smartgo-exporter-prod-progress"
