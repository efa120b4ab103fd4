"""The production progress store: one DynamoDB table, on demand, records expired by TTL.

Every question the store answers is a Query on a key; nothing ever Scans the table.

    a run     pk            DAY#<business_date>     sk            <started_at>#<run_id>
              history_pk    RUNS#<yyyy-mm>          history_sk    <started_at>#<run_id>
              succeeded_pk  SUCCEEDED               succeeded_sk  <business_date>
                            (only on a SUCCEEDED run)
    a lease   pk            LEASE#<name>            sk            LEASE

`started_at` is written in UTC with microseconds, so its text sorts as its time does; a run's day
and start never change, so its key is as stable as its run_id.

- One day's runs: Query pk = `DAY#<day>` on the table itself, strongly consistent, in start order.
- Recent history: the `history` index (all attributes projected) partitions runs by the month
  they started in. `recent(n)` Queries it newest first, one month after another back from this
  month, until it has n runs. Monthly partitions, rather than one constant partition, keep what a
  Query can touch bounded by the retention window even if TTL were switched off, and at one
  partition per month no partition is ever hot.
- Summary: the same index, one Query per month of the retention window (90 days: at most four
  months), with a projection of only status, trigger, day, start, counts, failures and cost,
  totalled client-side by `summarise`. Counters kept in the table were the alternative; they
  would need every save to add a run's difference from its previous version, and would go on
  counting runs after TTL deleted them. At a handful of runs a day, reading at most a few
  hundred small projections is cheaper than that bookkeeping is worth.
- Last succeeded day: the `succeeded` index is sparse: only a SUCCEEDED run carries its keys
  (a put replaces the whole item, so a run that stops being SUCCEEDED leaves the index too). It
  holds only keys and `expires_at`, under one partition sorted by day, so the answer is the first
  unexpired item of a Query newest first: the same answer as the SQLite store's
  `max(business_date)`, with no marker item that a failed second write could leave stale.

A run item holds the `RunRecord` document as the map `run` (numbers as DynamoDB Numbers), and a
top-level `expires_at`: the record's expiry in epoch seconds, rounded up, the table's TTL
attribute. DynamoDB deletes expired items up to a few days late, so every read also filters on
`expires_at`. Runs that started before the retention window are not reached by `recent` or
`summary` even if their records were written with a longer expiry; `runs_on` still finds them.

A save of a RUNNING record is a put conditional on the stored run being absent or RUNNING, so a
late progress update can never overwrite a finished run; when the condition fails the update is
dropped as "already finished". A finished record is put unconditionally.

A lease item holds `owner`, `lease_until` (epoch seconds with milliseconds, what conditions
compare) and `expires_at` (the same instant rounded up, so TTL clears leases of crashed runs).
Taking, renewing and releasing are each one conditional write.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import boto3
import structlog
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config

from smartgo_exporter.costs import RunCost
from smartgo_exporter.progress import RunSummary, check_lease_ttl, summarise
from smartgo_exporter.run_records import RunCounts, RunRecord, RunStatus

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import (
        AttributeValueTypeDef,
        CreateTableInputTypeDef,
        QueryInputTypeDef,
    )

    from smartgo_exporter.config import DynamoProgressConfig

log = structlog.get_logger(__name__)

HISTORY_INDEX = "history"
SUCCEEDED_INDEX = "succeeded"
TTL_ATTRIBUTE = "expires_at"

_LEASE_SK = "LEASE"
_SUCCEEDED = "SUCCEEDED"
_PAGE = 25
"""Items a Query evaluates per page while looking for a few: expired ones are filtered after."""

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def table_definition(name: str) -> CreateTableInputTypeDef:
    """The table's keys and indexes, as CreateTable takes them; deploy/ must declare the same."""
    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": attribute, "AttributeType": "S"}
            for attribute in (
                "pk",
                "sk",
                "history_pk",
                "history_sk",
                "succeeded_pk",
                "succeeded_sk",
            )
        ],
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": HISTORY_INDEX,
                "KeySchema": [
                    {"AttributeName": "history_pk", "KeyType": "HASH"},
                    {"AttributeName": "history_sk", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            },
            {
                "IndexName": SUCCEEDED_INDEX,
                "KeySchema": [
                    {"AttributeName": "succeeded_pk", "KeyType": "HASH"},
                    {"AttributeName": "succeeded_sk", "KeyType": "RANGE"},
                ],
                "Projection": {
                    "ProjectionType": "INCLUDE",
                    "NonKeyAttributes": [TTL_ATTRIBUTE],
                },
            },
        ],
    }


class DynamoProgressStore:
    """ProgressStore in a DynamoDB table; see the module docstring for its keys and indexes.

    Takes a ready client, so the caller chooses credentials, region and endpoint (tests point it
    at a local server); `from_config` builds one from the default credential chain.
    """

    def __init__(
        self,
        client: DynamoDBClient,
        table: str,
        *,
        retention_days: int = 90,
        create_table: bool = False,
    ) -> None:
        self._client = client
        self.table = table
        self.retention_days = retention_days
        if create_table:
            self._create_table_if_missing()

    @classmethod
    def from_config(
        cls, config: DynamoProgressConfig, *, retention_days: int = 90
    ) -> DynamoProgressStore:
        # Short timeouts and few retries: the export waits on every save, and a store that does
        # not answer within seconds is better skipped (NonFatalProgressStore) than waited for.
        client = boto3.client(
            "dynamodb",
            region_name=config.region,
            endpoint_url=config.endpoint_url,
            config=Config(
                connect_timeout=5,
                read_timeout=10,
                retries={"mode": "standard", "max_attempts": 3},
            ),
        )
        return cls(
            client,
            config.table_name,
            retention_days=retention_days,
            create_table=config.create_table,
        )

    # --- runs ----------------------------------------------------------------------------------

    def save(self, record: RunRecord) -> None:
        started = _sortable(record.started_at)
        item: dict[str, AttributeValueTypeDef] = {
            "pk": {"S": f"DAY#{record.business_date.isoformat()}"},
            "sk": {"S": f"{started}#{record.run_id}"},
            "history_pk": {"S": f"RUNS#{started[:7]}"},
            "history_sk": {"S": f"{started}#{record.run_id}"},
            TTL_ATTRIBUTE: {"N": str(math.ceil(record.expires_at.timestamp()))},
            "run": _serializer.serialize(record.to_document()),
        }
        if record.status is RunStatus.SUCCEEDED:
            item["succeeded_pk"] = {"S": _SUCCEEDED}
            item["succeeded_sk"] = {"S": record.business_date.isoformat()}
        if record.finished:
            self._client.put_item(TableName=self.table, Item=item)
            return
        try:
            self._client.put_item(
                TableName=self.table,
                Item=item,
                ConditionExpression="attribute_not_exists(pk) OR #run.#status = :running",
                ExpressionAttributeNames={"#run": "run", "#status": "status"},
                ExpressionAttributeValues={":running": {"S": RunStatus.RUNNING}},
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            log.info("progress_update_dropped_run_already_finished", run_id=record.run_id)

    def runs_on(self, day: date) -> list[RunRecord]:
        query: QueryInputTypeDef = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": f"DAY#{day.isoformat()}"}},
            "ConsistentRead": True,
        }
        return [_record(item) for item in self._unexpired(query)]

    def recent(self, limit: int) -> list[RunRecord]:
        records: list[RunRecord] = []
        for month in self._months():
            if len(records) >= limit:
                break
            query: QueryInputTypeDef = {
                "TableName": self.table,
                "IndexName": HISTORY_INDEX,
                "KeyConditionExpression": "history_pk = :month",
                "ExpressionAttributeValues": {":month": {"S": f"RUNS#{month}"}},
                "ScanIndexForward": False,
                "Limit": max(limit, _PAGE),
            }
            for item in self._unexpired(query):
                records.append(_record(item))
                if len(records) >= limit:
                    break
        return records

    def summary(self) -> RunSummary:
        outcomes: list[_Outcome] = []
        for month in self._months():
            query: QueryInputTypeDef = {
                "TableName": self.table,
                "IndexName": HISTORY_INDEX,
                "KeyConditionExpression": "history_pk = :month",
                "ExpressionAttributeValues": {":month": {"S": f"RUNS#{month}"}},
                "ProjectionExpression": (
                    "#run.#status, #run.#trigger, #run.business_date, #run.counts,"
                    " #run.failures, #run.started_at, #run.cost"
                ),
                "ExpressionAttributeNames": {
                    "#run": "run",
                    "#status": "status",
                    "#trigger": "trigger",
                },
            }
            outcomes.extend(_outcome(item) for item in self._unexpired(query))
        return summarise(outcomes)

    def last_succeeded_day(self) -> date | None:
        query: QueryInputTypeDef = {
            "TableName": self.table,
            "IndexName": SUCCEEDED_INDEX,
            "KeyConditionExpression": "succeeded_pk = :succeeded",
            "ExpressionAttributeValues": {":succeeded": {"S": _SUCCEEDED}},
            "ScanIndexForward": False,
            "Limit": _PAGE,
        }
        for item in self._unexpired(query):
            return date.fromisoformat(item["succeeded_sk"]["S"])
        return None

    # --- leases --------------------------------------------------------------------------------

    def acquire_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        check_lease_ttl(ttl_seconds)
        now = time.time()
        try:
            self._client.put_item(
                TableName=self.table,
                Item={
                    "pk": {"S": f"LEASE#{name}"},
                    "sk": {"S": _LEASE_SK},
                    "owner": {"S": owner},
                    **_lease_expiry(now + ttl_seconds),
                },
                ConditionExpression=(
                    "attribute_not_exists(pk) OR #owner = :owner OR lease_until <= :now"
                ),
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":owner": {"S": owner}, ":now": _number(now)},
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def renew_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        check_lease_ttl(ttl_seconds)
        expiry = _lease_expiry(time.time() + ttl_seconds)
        try:
            self._client.update_item(
                TableName=self.table,
                Key={"pk": {"S": f"LEASE#{name}"}, "sk": {"S": _LEASE_SK}},
                UpdateExpression="SET lease_until = :until, #expires = :expires",
                ConditionExpression="#owner = :owner",
                ExpressionAttributeNames={"#owner": "owner", "#expires": TTL_ATTRIBUTE},
                ExpressionAttributeValues={
                    ":owner": {"S": owner},
                    ":until": expiry["lease_until"],
                    ":expires": expiry[TTL_ATTRIBUTE],
                },
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def release_lease(self, name: str, owner: str) -> None:
        try:
            self._client.delete_item(
                TableName=self.table,
                Key={"pk": {"S": f"LEASE#{name}"}, "sk": {"S": _LEASE_SK}},
                ConditionExpression="#owner = :owner",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":owner": {"S": owner}},
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            log.info("lease_not_released_held_by_another_owner", lease=name, owner=owner)

    def close(self) -> None:
        self._client.close()

    # --- internals -----------------------------------------------------------------------------

    def _unexpired(self, query: QueryInputTypeDef) -> Iterator[dict[str, AttributeValueTypeDef]]:
        """The query's items whose expiry has not passed, page after page, read lazily."""
        query = query.copy()
        query["FilterExpression"] = "#expires > :now"
        query["ExpressionAttributeNames"] = {
            **query.get("ExpressionAttributeNames", {}),
            "#expires": TTL_ATTRIBUTE,
        }
        query["ExpressionAttributeValues"] = {
            **query.get("ExpressionAttributeValues", {}),
            ":now": {"N": str(int(time.time()))},
        }
        while True:
            page = self._client.query(**query)
            yield from page["Items"]
            last = page.get("LastEvaluatedKey")
            if not last:
                return
            query["ExclusiveStartKey"] = last

    def _months(self) -> list[str]:
        """The history partitions that can hold unexpired runs, newest first.

        From tomorrow's month, so a run stamped by a clock slightly ahead is still found.
        """
        now = datetime.now(UTC)
        newest, oldest = now + timedelta(days=1), now - timedelta(days=self.retention_days)
        year, month = newest.year, newest.month
        months = []
        while (year, month) >= (oldest.year, oldest.month):
            months.append(f"{year:04d}-{month:02d}")
            year, month = (year, month - 1) if month > 1 else (year - 1, 12)
        return months

    def _create_table_if_missing(self) -> None:
        waiter = self._client.get_waiter("table_exists")
        try:
            self._client.describe_table(TableName=self.table)
            return
        except self._client.exceptions.ResourceNotFoundException:
            pass
        try:
            self._client.create_table(**table_definition(self.table))
        except self._client.exceptions.ResourceInUseException:
            # Another process is creating it at this moment, and will switch TTL on.
            waiter.wait(TableName=self.table, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
            return
        waiter.wait(TableName=self.table, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        self._client.update_time_to_live(
            TableName=self.table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
        )
        log.info("progress_table_created", table=self.table)


@dataclasses.dataclass(frozen=True, slots=True)
class _Outcome:
    """A run as the summary projection returns it: only what `summarise` reads."""

    status: str
    trigger: str
    business_date: date
    counts: RunCounts
    failures: dict[str, int]
    started_at: datetime
    cost: RunCost | None


def _document(item: dict[str, AttributeValueTypeDef]) -> dict[str, Any]:
    document: dict[str, Any] = _plain(_deserializer.deserialize(item["run"]))
    return document


def _record(item: dict[str, AttributeValueTypeDef]) -> RunRecord:
    return RunRecord.from_document(_document(item))


def _outcome(item: dict[str, AttributeValueTypeDef]) -> _Outcome:
    document = _document(item)
    return _Outcome(
        status=document["status"],
        trigger=document["trigger"],
        business_date=date.fromisoformat(document["business_date"]),
        counts=RunCounts(**document["counts"]),
        failures=document["failures"],
        started_at=datetime.fromisoformat(document["started_at"]),
        cost=RunCost.from_document(document["cost"]) if document.get("cost") else None,
    )


def _plain(value: Any) -> Any:
    """A deserialized document with its Numbers back as ints: the document only holds counts."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else value
    if isinstance(value, dict):
        return {key: _plain(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [_plain(inner) for inner in value]
    return value


def _sortable(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _number(seconds: float) -> AttributeValueTypeDef:
    return {"N": f"{seconds:.3f}"}


def _lease_expiry(until: float) -> dict[str, AttributeValueTypeDef]:
    return {"lease_until": _number(until), TTL_ATTRIBUTE: {"N": str(math.ceil(until))}}
