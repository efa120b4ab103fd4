"""When a failed photo is fetched again: its reason decides whether the next run retries it or
a back-off of 1, 2, 4, 8 days (then never) does; the sale's own row remembers the schedule."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from smartgo_exporter.config import PhotoConfig
from smartgo_exporter.photo_retries import (
    PhotoFailure,
    RetryPolicy,
    failed_row,
    is_permanent,
)
from smartgo_exporter.reuse import changed_rows, plan_batch
from smartgo_exporter.run_records import RunCounts
from smartgo_exporter.sales import Sale
from smartgo_exporter.schema import Embedding, EmbeddingStatus, SaleRow, StoredRows, rows_to_arrow
from tests.test_schema import SALE

FAILED_AT = datetime(2026, 11, 2, 3, 0, tzinfo=UTC)
POLICY = RetryPolicy()

# The photo fetcher's and the models' reasons (photo_fetcher.py, embedders/), by what a second
# fetch of the same URL would meet.
PERMANENT = (
    "http_404 http_410 http_403 invalid_url unsupported_scheme userinfo_in_url refused_address"
    " too_many_redirects too_large too_many_pixels not_an_image embedding_decode_failed"
    " embedding_too_many_pixels embedding_too_large embedding_validation"
).split()
TRANSIENT = (
    "timeout connection_error http_500 http_503 http_429 http_408 embedding_timeout"
    " embedding_unreachable embedding_throttled embedding_service_error embedding_model_error"
    " embedding_degenerate_embedding a_reason_of_a_later_version"
).split()


def after(days: float) -> datetime:
    return FAILED_AT + timedelta(days=days)


def stored(*rows: SaleRow) -> StoredRows:
    table = rows_to_arrow(list(rows), source="smartgo", run_id="r0", exported_at=FAILED_AT)
    return StoredRows(table, {row.sale.key: n for n, row in enumerate(rows)})


def failed_earlier(reason: str, failures: int = 1, sale: Sale = SALE) -> StoredRows:
    return stored(
        SaleRow(sale, EmbeddingStatus.failed(reason), failures=failures, failed_at=FAILED_AT)
    )


def plan(rows: StoredRows, now: datetime) -> tuple[list[Sale], RunCounts]:
    counts = RunCounts()
    batch = plan_batch([SALE], rows, "model-a", counts, retries=POLICY, now=now)
    return batch.to_fetch, counts


@pytest.mark.parametrize("reason", PERMANENT)
def test_a_reason_the_same_url_would_meet_again_is_permanent(reason: str) -> None:
    assert is_permanent(reason)


@pytest.mark.parametrize("reason", TRANSIENT)
def test_a_reason_that_may_pass_or_is_unknown_is_transient(reason: str) -> None:
    assert not is_permanent(reason)


@pytest.mark.parametrize("reason", TRANSIENT)
def test_a_transient_failure_is_due_on_the_next_run(reason: str) -> None:
    assert POLICY.due(PhotoFailure(reason, 7, FAILED_AT), after(0.001))


@pytest.mark.parametrize(("failures", "days"), [(1, 1), (2, 2), (3, 4), (4, 8)])
def test_a_permanent_failure_waits_1_2_4_then_8_days(failures: int, days: int) -> None:
    failure = PhotoFailure("http_404", failures, FAILED_AT)
    assert not POLICY.due(failure, after(days - 0.5))
    assert POLICY.due(failure, after(days))


def test_a_nightly_run_a_few_seconds_early_still_finds_a_one_day_back_off_over() -> None:
    assert POLICY.due(PhotoFailure("http_404", 1, FAILED_AT), after(1) - timedelta(seconds=5))


def test_after_its_fifth_failure_a_permanent_failure_is_never_due_again() -> None:
    assert not POLICY.due(PhotoFailure("http_410", 5, FAILED_AT), after(3650))


def test_retry_failed_makes_every_failure_due() -> None:
    forced = RetryPolicy(retry_failed=True)
    assert forced.due(PhotoFailure("http_404", 1, FAILED_AT), after(0.001))
    assert forced.due(PhotoFailure("not_an_image", 9, FAILED_AT), after(0.001))


def test_the_back_off_comes_from_the_photo_settings() -> None:
    policy = RetryPolicy.of(PhotoConfig(retry_backoff_days=[3]))
    assert not policy.due(PhotoFailure("http_404", 1, FAILED_AT), after(2))
    assert policy.due(PhotoFailure("http_404", 1, FAILED_AT), after(3))
    assert not policy.due(PhotoFailure("http_404", 2, FAILED_AT), after(300))


def test_a_failure_recorded_before_the_schedule_existed_is_due_at_once() -> None:
    assert POLICY.due(PhotoFailure("http_404", 0, None), FAILED_AT)


def test_a_permanent_failure_not_yet_due_keeps_its_stored_row_and_is_counted_deferred() -> None:
    rows = failed_earlier("http_404")
    to_fetch, counts = plan(rows, after(0.5))
    assert to_fetch == []
    assert counts.deferred == 1
    kept = plan_batch([SALE], rows, "model-a", RunCounts(), retries=POLICY, now=after(0.5))
    [row] = kept.settled
    assert (row.status, row.failures, row.failed_at) == ("failed:http_404", 1, FAILED_AT)
    assert changed_rows(kept.settled, rows, RunCounts()) == []  # nothing to write


def test_a_permanent_failure_whose_back_off_has_passed_is_fetched() -> None:
    to_fetch, counts = plan(failed_earlier("http_404"), after(1))
    assert to_fetch == [SALE]
    assert counts.deferred == 0


def test_a_transient_failure_is_fetched_on_the_next_run() -> None:
    to_fetch, _ = plan(failed_earlier("http_500"), after(0.001))
    assert to_fetch == [SALE]


def test_a_failed_photo_whose_url_changed_is_fetched_at_once() -> None:
    moved = dataclasses.replace(SALE, image_url="https://photos.example/old.jpg", fetch_url=None)
    to_fetch, _ = plan(failed_earlier("http_404", failures=5, sale=moved), after(0.001))
    assert to_fetch == [SALE]


def test_a_photo_failing_again_for_the_same_reason_counts_one_failure_more() -> None:
    row = failed_row(SALE, "http_404", failed_earlier("http_404", failures=2), after(2))
    assert (row.status, row.failures, row.failed_at) == ("failed:http_404", 3, after(2))


def test_a_photo_failing_for_another_reason_starts_counting_again() -> None:
    row = failed_row(SALE, "http_404", failed_earlier("timeout", failures=6), after(1))
    assert (row.failures, row.failed_at) == (1, after(1))


def test_a_photo_failing_again_is_a_changed_row_since_its_count_and_time_moved() -> None:
    rows = failed_earlier("http_404")
    again = failed_row(SALE, "http_404", rows, after(1))
    assert changed_rows([again], rows, RunCounts()) == [again]


def test_a_photo_that_succeeds_at_last_is_written_with_its_failure_columns_cleared() -> None:
    vector = np.full(4, 0.5, dtype=np.float32)
    ok = SaleRow(SALE, EmbeddingStatus.OK, Embedding(vector, "model-a", "ab" * 32, 64, 64))
    batch = rows_to_arrow([ok], source="smartgo", run_id="r1", exported_at=after(1))
    assert batch["photo_failures"].to_pylist() == [None]
    assert batch["photo_failed_at"].to_pylist() == [None]


def test_a_failure_stored_by_a_table_without_the_failure_columns_is_fetched() -> None:
    rows = failed_earlier("http_404")
    older = StoredRows(rows.table.drop_columns(["photo_failures", "photo_failed_at"]), rows.index)
    to_fetch, _ = plan(older, after(0.001))
    assert to_fetch == [SALE]
