"""A run's estimated cost: what each AWS part counts, that the local parts cost nothing, and
that prices come from the one table and survive a record's round trip."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from boto3.dynamodb.types import TypeSerializer

from smartgo_exporter.config import Settings
from smartgo_exporter.costs import (
    PRICES,
    PRICES_READ,
    CostBasis,
    LambdaArchitecture,
    Price,
    RunCost,
    Usage,
    estimate,
    lambda_shares,
    price,
)
from smartgo_exporter.run_records import RunCounts, RunRecord, RunStatus
from smartgo_exporter.windows import business_day

STARTED = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
LOCAL = CostBasis(
    titan=False,
    batch=False,
    s3_tables=False,
    dynamodb=False,
    batch_size=500,
    commit_rows=10_000,
    lease_seconds=60,
)
AWS = dataclasses.replace(LOCAL, titan=True, s3_tables=True, dynamodb=True)


def finished_run(
    *,
    sales: int = 1_200,
    written: int = 1_100,
    embedded: int = 900,
    model_inputs: int = 900,
    minutes: float = 4,
) -> RunRecord:
    window = business_day(date(2026, 11, 26), "UTC")
    return RunRecord(
        run_id="20261126-abc",
        business_date=window.day,
        window_start=window.start,
        window_end=window.end,
        trigger="schedule",
        status=RunStatus.SUCCEEDED,
        started_at=STARTED,
        finished_at=STARTED + timedelta(minutes=minutes),
        expires_at=STARTED + timedelta(days=90),
        counts=RunCounts(
            sales=sales, written=written, embedded=embedded, model_inputs=model_inputs
        ),
    )


def test_the_deployed_settings_put_every_aws_part_in_the_estimate() -> None:
    settings = Settings(
        source={"type": "sql", "url": "sqlite:///sales.db", "table": "sales"},
        embedder={"type": "titan", "region": "us-east-1"},
        table={"catalog": {"type": "s3tables", "warehouse": "arn:aws:s3tables:..."}},
        progress={"type": "dynamodb", "region": "us-east-1"},
        export={"batch_size": 250, "commit_rows": 5_000, "lease_seconds": 90},
    )
    assert CostBasis.of(settings) == CostBasis(
        titan=True,
        batch=False,
        s3_tables=True,
        dynamodb=True,
        batch_size=250,
        commit_rows=5_000,
        lease_seconds=90,
    )


def test_the_default_settings_are_all_local() -> None:
    settings = Settings(source={"type": "sql", "url": "sqlite:///sales.db", "table": "sales"})
    assert CostBasis.of(settings) == LOCAL


def test_a_run_on_the_local_model_files_and_sqlite_costs_nothing() -> None:
    cost = estimate(finished_run(), LOCAL)
    assert cost.total == 0
    assert cost.usage == Usage()


def test_titan_is_charged_per_photo_sent_not_per_sale_embedded() -> None:
    """Sales of a product share its photo, which goes to the model once."""
    run = finished_run(embedded=900, model_inputs=450)
    cost = estimate(run, dataclasses.replace(LOCAL, titan=True))
    assert cost.usage.titan_images == 450
    assert cost.titan == 450 * PRICES.titan_image.usd
    assert cost.total == cost.titan


def test_titan_through_a_batch_job_is_charged_per_batch_record() -> None:
    run = finished_run(model_inputs=450)
    cost = estimate(run, dataclasses.replace(LOCAL, titan=True, batch=True))
    assert (cost.usage.titan_images, cost.usage.titan_batch_records) == (0, 450)


def test_a_batch_record_costs_half_an_on_demand_image() -> None:
    on_demand, batch = price(Usage(titan_images=1000)), price(Usage(titan_batch_records=1000))
    assert batch.titan * 2 == on_demand.titan


def test_s3_tables_requests_follow_the_batches_and_commits_of_a_run() -> None:
    # 1,200 sales: 3 lookups of 500; 25,000 rows written: 3 commits of up to 10,000.
    cost = estimate(
        finished_run(sales=1_200, written=25_000), dataclasses.replace(LOCAL, s3_tables=True)
    )
    assert cost.usage.table_read_requests == 3 * 4 + 3 * 2
    assert cost.usage.table_write_requests == 3 * 4
    assert cost.s3_tables == (
        PRICES.s3_tables_read_request.of(18) + PRICES.s3_tables_write_request.of(12)
    )


def test_a_run_that_only_removed_rows_still_made_a_commit() -> None:
    run = finished_run(sales=10, written=0)
    run.counts.removed = 2
    cost = estimate(run, dataclasses.replace(LOCAL, s3_tables=True))
    assert cost.usage.table_write_requests == 4


def test_a_run_with_nothing_to_write_commits_nothing() -> None:
    cost = estimate(finished_run(sales=10, written=0), dataclasses.replace(LOCAL, s3_tables=True))
    assert cost.usage.table_write_requests == 0
    assert cost.usage.table_read_requests == 4


def test_dynamodb_writes_count_saves_indexes_and_lease_renewals() -> None:
    dynamodb = dataclasses.replace(LOCAL, dynamodb=True)
    # Two saves to the table and its history index (the final one under a KB here), one to
    # the succeeded index, the lease taken and released, and renewed every 20 s for 4 minutes.
    assert estimate(finished_run(minutes=4), dynamodb).usage.dynamodb_write_units == (
        2 + 2 + 1 + 2 + 12
    )


def test_a_large_record_costs_a_write_unit_per_kilobyte_of_each_copy() -> None:
    dynamodb = dataclasses.replace(LOCAL, dynamodb=True)
    small = estimate(finished_run(minutes=0), dynamodb).usage.dynamodb_write_units
    large = finished_run(minutes=0)
    large.message = "x" * 3_000
    assert estimate(large, dynamodb).usage.dynamodb_write_units == small + 2 * 3


def test_saving_the_record_again_counts_its_writes_again() -> None:
    dynamodb = dataclasses.replace(LOCAL, dynamodb=True)
    once = estimate(finished_run(minutes=0), dynamodb).usage.dynamodb_write_units
    twice = estimate(finished_run(minutes=0), dynamodb, extra_saves=1).usage.dynamodb_write_units
    assert twice == once + 3


@pytest.mark.parametrize(
    ("architecture", "gb_second"),
    [("x86_64", PRICES.lambda_gb_second_x86_64), ("arm64", PRICES.lambda_gb_second_arm64)],
)
def test_lambda_gb_seconds_are_priced_for_the_functions_architecture(
    architecture: LambdaArchitecture, gb_second: Price
) -> None:
    cost = estimate(
        finished_run(), LOCAL, lambda_gb_seconds=Decimal(300), architecture=architecture
    )
    assert cost.aws_lambda == (300 * gb_second.usd).quantize(Decimal("0.00000001"))


def test_an_invocations_gb_seconds_are_shared_by_how_long_each_run_took() -> None:
    short, long = finished_run(minutes=1), finished_run(minutes=3)
    assert lambda_shares([short, long], Decimal(400)) == [Decimal(100), Decimal(300)]


def test_runs_that_took_no_measurable_time_share_the_gb_seconds_equally() -> None:
    runs = [finished_run(minutes=0), finished_run(minutes=0)]
    assert lambda_shares(runs, Decimal(3)) == [Decimal("1.5"), Decimal("1.5")]


def test_a_cost_is_priced_on_the_day_the_prices_were_read() -> None:
    assert estimate(finished_run(), AWS).prices_read == PRICES_READ


def test_every_price_names_the_page_it_comes_from() -> None:
    for field in dataclasses.fields(PRICES):
        entry: Price = getattr(PRICES, field.name)
        assert entry.usd > 0, field.name
        assert entry.source.startswith("https://aws.amazon.com/"), field.name


def test_a_cost_reads_back_from_its_document_exactly() -> None:
    cost = estimate(finished_run(), AWS, lambda_gb_seconds=Decimal("245.123"))
    document = cost.to_document()
    assert RunCost.from_document(json.loads(json.dumps(document))) == cost


def test_a_cost_document_fits_a_dynamodb_map() -> None:
    # TypeSerializer refuses floats: a dollar amount must not be one.
    document = estimate(finished_run(), AWS, lambda_gb_seconds=Decimal("1.5")).to_document()
    assert TypeSerializer().serialize(document)["M"]


def test_a_record_carries_its_cost_through_its_document() -> None:
    run = finished_run()
    run.cost = estimate(run, AWS)
    assert RunRecord.from_document(json.loads(json.dumps(run.to_document()))) == run


def test_a_record_saved_before_costs_existed_loads_without_one() -> None:
    document = finished_run().to_document()
    del document["cost"]
    assert RunRecord.from_document(document).cost is None
