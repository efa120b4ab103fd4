"""What a run cost on AWS, estimated from what it did and one table of list prices.

The bill says what a month cost; it does not say which night, or which backfill, spent it. So
each run record carries its estimate (`RunRecord.cost`), and `stats` sums it by day and month.

These are estimates, not the bill. The prices are AWS's public on-demand list prices for
us-east-1 in USD, without free tier, savings plans, credits or tax; other regions differ by a
few per cent. `PRICES` holds every one of them, with the page it comes from and `PRICES_READ`,
the day they were written down; change a price there and nowhere else. A record keeps its
dollars as priced when it was saved, with that day, so a later price change does not rewrite
the history.

What is counted, and from what:

- Bedrock Titan Multimodal Embeddings: one input image per photo sent to the model
  (`counts.model_inputs`: a photo several sales of a batch share is sent once) when the
  embedder is Titan; the local model costs nothing. With `embedder.batch`, an image is a batch
  record, at about half the price (`Usage.titan_batch_records`); the few photos a batch job
  lacked and that were sent on demand are counted as batch records too.
- Lambda: GB-seconds, the function's memory times the invocation's duration, shared among the
  invocation's runs by how long each ran; only the handler knows them (`aws_lambda`). Zero
  elsewhere (the CLI, the scheduler, Ray), whose compute is not billed per run.
- S3 Tables requests, when the table's catalog is `s3tables`. Counted from the run's counts,
  not observed: per batch of `export.batch_size` sales, a key lookup (the table's metadata
  through the catalog, the manifest list, one manifest, one data file: 4 GETs); per commit of
  up to `export.commit_rows` rows written (at least one when rows were removed), the reads
  that plan it (manifest list, manifest: 2 GETs) and its writes (one data file, a manifest,
  a manifest list, the catalog's commit: 4 PUT-class requests).
- DynamoDB write request units, when the progress store is DynamoDB: the RUNNING and the
  final save, each written to the table and to the `history` index at one unit per KB of the
  record, and to the `succeeded` index (one unit) when it succeeded; the lease's take,
  release, and one renewal every third of `export.lease_seconds` the run lasted.

What is left out, as small or not the run's: Titan's text tokens (with `include_title`, some
$0.0008 per 1,000, a title being a few dozen); Lambda's per-request fee ($0.20 per million)
and its init phase; more than one data file per commit (one per tenant and month a commit
touches) and the files a commit rewrites when it replaces or removes stored rows (a GET and
a PUT each), both growing with the table's layout; S3 Tables storage, object monitoring and
compaction, and DynamoDB storage, billed by the month, not by the run; every read of the
progress store (a few per run, at a fifth of a write's price); SSM and KMS, CloudWatch logs
and metrics, and the traffic that fetches photos (a NAT gateway's per-GB charge among it).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from smartgo_exporter.config import DynamoProgressConfig, Settings, TitanEmbedderConfig

if TYPE_CHECKING:
    from smartgo_exporter.run_records import RunRecord

ZERO = Decimal(0)
_CENT_FRACTIONS = Decimal("0.00000001")
"""Dollars are kept to a millionth of a cent: a run's smallest part is a few such."""

_THOUSANDTH = Decimal("0.001")
"""GB-seconds are kept to a thousandth: Lambda bills duration by the millisecond."""
LambdaArchitecture = Literal["x86_64", "arm64"]


@dataclasses.dataclass(frozen=True, slots=True)
class Price:
    """`usd` for every `per` units of `unit`, as published at `source`."""

    usd: Decimal
    per: int
    unit: str
    source: str

    def of(self, quantity: int | Decimal) -> Decimal:
        return self.usd * Decimal(quantity) / self.per


@dataclasses.dataclass(frozen=True, slots=True)
class PriceTable:
    titan_image: Price
    titan_batch_record: Price
    lambda_gb_second_x86_64: Price
    lambda_gb_second_arm64: Price
    s3_tables_write_request: Price
    s3_tables_read_request: Price
    dynamodb_write_unit: Price

    def lambda_gb_second(self, architecture: LambdaArchitecture) -> Price:
        if architecture == "arm64":
            return self.lambda_gb_second_arm64
        return self.lambda_gb_second_x86_64


PRICES_READ = date(2026, 12, 4)
"""When `PRICES` were written down from the pages they cite. That day's machine reached no AWS
site, so they are the pages as last published before it; compare them with `source` before
trusting a figure, and move this date when you do."""

PRICES = PriceTable(
    titan_image=Price(
        Decimal("0.00006"),
        1,
        "input image, on demand (Amazon Titan Multimodal Embeddings G1)",
        "https://aws.amazon.com/bedrock/pricing/",
    ),
    titan_batch_record=Price(
        Decimal("0.00003"),
        1,
        "input image, batch inference: half the on-demand price",
        "https://aws.amazon.com/bedrock/pricing/",
    ),
    lambda_gb_second_x86_64=Price(
        Decimal("0.0000166667"),
        1,
        "GB-second of duration, x86_64, first 6 billion GB-seconds a month",
        "https://aws.amazon.com/lambda/pricing/",
    ),
    lambda_gb_second_arm64=Price(
        Decimal("0.0000133334"),
        1,
        "GB-second of duration, arm64, first 7.5 billion GB-seconds a month",
        "https://aws.amazon.com/lambda/pricing/",
    ),
    s3_tables_write_request=Price(
        Decimal("0.005"),
        1_000,
        "PUT, POST and LIST requests to a table bucket",
        "https://aws.amazon.com/s3/pricing/ (S3 Tables)",
    ),
    s3_tables_read_request=Price(
        Decimal("0.0004"),
        1_000,
        "GET and all other requests to a table bucket",
        "https://aws.amazon.com/s3/pricing/ (S3 Tables)",
    ),
    dynamodb_write_unit=Price(
        Decimal("0.625"),
        1_000_000,
        "write request unit, on-demand capacity, Standard table class",
        "https://aws.amazon.com/dynamodb/pricing/on-demand/",
    ),
)

LOOKUP_READS = 4
"""GETs of one batch's key lookup: table metadata, manifest list, one manifest, one data file."""
COMMIT_READS = 2
"""GETs that plan a commit: the manifest list and a manifest."""
COMMIT_WRITES = 4
"""PUT-class requests of a commit: a data file, a manifest, a manifest list, the commit."""
RECORD_KEY_BYTES = 200
"""What a run item holds beside its document: keys, index keys, expiry, attribute names."""


@dataclasses.dataclass(frozen=True, slots=True)
class Usage:
    """What a run consumed, in the units AWS bills."""

    titan_images: int = 0
    titan_batch_records: int = 0
    lambda_gb_seconds: Decimal = ZERO
    table_write_requests: int = 0
    table_read_requests: int = 0
    dynamodb_write_units: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class RunCost:
    """A run's usage and its estimated price in USD, by service, at the prices of `prices_read`."""

    usage: Usage
    titan: Decimal
    aws_lambda: Decimal
    s3_tables: Decimal
    dynamodb: Decimal
    prices_read: date

    @property
    def total(self) -> Decimal:
        return self.titan + self.aws_lambda + self.s3_tables + self.dynamodb

    def by_service(self) -> dict[str, Decimal]:
        return {
            "Bedrock Titan": self.titan,
            "Lambda": self.aws_lambda,
            "S3 Tables": self.s3_tables,
            "DynamoDB": self.dynamodb,
        }

    def to_document(self) -> dict[str, Any]:
        """Dollars and GB-seconds as text: exact in JSON and in a DynamoDB map alike."""
        usage = dataclasses.asdict(self.usage)
        usage["lambda_gb_seconds"] = str(self.usage.lambda_gb_seconds)
        return {
            "usage": usage,
            "usd": {
                "titan": str(self.titan),
                "lambda": str(self.aws_lambda),
                "s3_tables": str(self.s3_tables),
                "dynamodb": str(self.dynamodb),
            },
            "prices_read": self.prices_read.isoformat(),
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> RunCost:
        usage = dict(document["usage"])
        usage["lambda_gb_seconds"] = Decimal(usage["lambda_gb_seconds"])
        usd = document["usd"]
        return cls(
            usage=Usage(**usage),
            titan=Decimal(usd["titan"]),
            aws_lambda=Decimal(usd["lambda"]),
            s3_tables=Decimal(usd["s3_tables"]),
            dynamodb=Decimal(usd["dynamodb"]),
            prices_read=date.fromisoformat(document["prices_read"]),
        )


def price(usage: Usage, architecture: LambdaArchitecture = "x86_64") -> RunCost:
    """`usage` at the prices of `PRICES`."""
    return RunCost(
        usage=usage,
        titan=_usd(
            PRICES.titan_image.of(usage.titan_images)
            + PRICES.titan_batch_record.of(usage.titan_batch_records)
        ),
        aws_lambda=_usd(PRICES.lambda_gb_second(architecture).of(usage.lambda_gb_seconds)),
        s3_tables=_usd(
            PRICES.s3_tables_write_request.of(usage.table_write_requests)
            + PRICES.s3_tables_read_request.of(usage.table_read_requests)
        ),
        dynamodb=_usd(PRICES.dynamodb_write_unit.of(usage.dynamodb_write_units)),
        prices_read=PRICES_READ,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class CostBasis:
    """What of the settings decides a run's cost: which services are AWS's, and the sizes
    that turn a run's counts into requests."""

    titan: bool
    batch: bool
    """Titan through Bedrock batch inference (`embedder.batch`)."""
    s3_tables: bool
    dynamodb: bool
    batch_size: int
    commit_rows: int
    lease_seconds: float

    @classmethod
    def of(cls, settings: Settings) -> CostBasis:
        return cls(
            titan=isinstance(settings.embedder, TitanEmbedderConfig),
            batch=settings.embeds_in_batch,
            s3_tables=settings.table.catalog.get("type") == "s3tables",
            dynamodb=isinstance(settings.progress, DynamoProgressConfig),
            batch_size=settings.export.batch_size,
            commit_rows=settings.export.commit_rows,
            lease_seconds=settings.export.lease_seconds,
        )


def estimate(
    record: RunRecord,
    basis: CostBasis,
    *,
    lambda_gb_seconds: Decimal = ZERO,
    architecture: LambdaArchitecture = "x86_64",
    extra_saves: int = 0,
) -> RunCost:
    """The cost of the run `record` tells of, as its counts and times stand now.

    `extra_saves` are saves of the finished record beyond the one that follows this estimate
    (the Lambda handler saves it once more, with its GB-seconds).
    """
    return price(
        Usage(
            titan_images=record.counts.model_inputs if basis.titan and not basis.batch else 0,
            titan_batch_records=record.counts.model_inputs if basis.titan and basis.batch else 0,
            lambda_gb_seconds=lambda_gb_seconds,
            table_write_requests=_table_writes(record, basis) if basis.s3_tables else 0,
            table_read_requests=_table_reads(record, basis) if basis.s3_tables else 0,
            dynamodb_write_units=(
                _dynamodb_writes(record, basis, extra_saves) if basis.dynamodb else 0
            ),
        ),
        architecture,
    )


def _commits(record: RunRecord, basis: CostBasis) -> int:
    commits = math.ceil(record.counts.written / basis.commit_rows)
    return commits or (1 if record.counts.removed else 0)


def _table_writes(record: RunRecord, basis: CostBasis) -> int:
    return _commits(record, basis) * COMMIT_WRITES


def _table_reads(record: RunRecord, basis: CostBasis) -> int:
    lookups = math.ceil(record.counts.sales / basis.batch_size)
    return lookups * LOOKUP_READS + _commits(record, basis) * COMMIT_READS


def _dynamodb_writes(record: RunRecord, basis: CostBasis, extra_saves: int) -> int:
    size = len(json.dumps(record.to_document())) + RECORD_KEY_BYTES
    # Compared as text: run_records imports this module, so this one cannot import it back.
    succeeded = record.status == "SUCCEEDED"
    final_save = 2 * math.ceil(size / 1024) + succeeded
    running_save = 2  # a RUNNING record has no errors yet: under a KB, table and index
    lasted = (record.finished_at or record.started_at) - record.started_at
    renewals = int(lasted.total_seconds() // (basis.lease_seconds / 3))
    lease = 2 + renewals  # taken, renewed, released
    return running_save + final_save * (1 + extra_saves) + lease


def lambda_shares(records: Sequence[RunRecord], gb_seconds: Decimal) -> list[Decimal]:
    """An invocation's GB-seconds shared among its runs by how long each ran (equally when
    none took measurable time); each share to a thousandth of a GB-second.

    By duration rather than by sales: a run's time goes to fetching photos and waiting on the
    model and the table as much as to its rows, and the runs of a day read ahead overlap, which
    shares of the whole keep from counting twice. The time after the last run (the index's
    update) is shared the same way.
    """
    lasted = [
        max(((record.finished_at or record.started_at) - record.started_at).total_seconds(), 0)
        for record in records
    ]
    total = sum(lasted)
    if not total:
        lasted, total = [1.0] * len(records), float(len(records))
    return [
        (gb_seconds * Decimal(str(seconds / total))).quantize(_THOUSANDTH) for seconds in lasted
    ]


def _usd(amount: Decimal) -> Decimal:
    return amount.quantize(_CENT_FRACTIONS)
