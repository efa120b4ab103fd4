"""When a sale whose photo failed has its photo fetched again.

A re-run of a month used to fetch every failed photo again, every time: 70 photos that were
gone (404, 410), not images, too large or timing out, of which the timeouts alone cost five
minutes, for photos that were never going to come back. So a failure is judged by its reason:

- transient: the server or the network may answer next time (`timeout`, `connection_error`,
  `http_5xx`, `http_408`, `http_429`, and a model that failed or could not be reached). Fetched
  again on the next run, as before.
- permanent: the URL itself, or what it serves, is wrong (`http_4xx` but 408 and 429,
  `invalid_url`, `unsupported_scheme`, `userinfo_in_url`, `refused_address`,
  `too_many_redirects`, `too_large`, `too_many_pixels`, `not_an_image`, and the model refusing
  the picture itself: `embedding_decode_failed`, `embedding_too_many_pixels`,
  `embedding_too_large`, `embedding_validation`). Fetched again only once its back-off has
  passed since it last failed: `photos.retry_backoff_days` (1, 2, 4, then 8 days) after the
  1st, 2nd, 3rd, 4th failure in a row; after the last back-off, never, unless the sale's photo
  URL changes or a run is told to retry failed photos (`retry_failed`, `--retry-failed`: after
  a fix on the photo host, or a change of `photos.allow_networks`).

A reason not named here (a new one) counts as transient: fetching again is what every run did
before there was a schedule, so nothing is given up on by mistake.

The schedule's memory is the sale's row in the table, not the progress store, whose records
expire: `photo_failures` (how many runs in a row failed this photo, at this URL, for this same
reason) and `photo_failed_at` (the start of the last run that failed it). A row written before
those columns existed has neither, and is fetched once more to start its schedule.

    retries = RetryPolicy.of(settings.photos, retry_failed=False)
    failure = stored_failure(stored, sale)
    if failure is not None and not retries.due(failure, run_started_at):
        ...  # keep the stored row as it is
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Final

from smartgo_exporter.config import PhotoConfig
from smartgo_exporter.sales import Sale
from smartgo_exporter.schema import EmbeddingStatus, SaleRow, StoredRows

PERMANENT_REASONS: Final = frozenset(
    {
        "invalid_url",
        "unsupported_scheme",
        "userinfo_in_url",
        "refused_address",
        "too_many_redirects",
        "too_large",
        "too_many_pixels",
        "not_an_image",
        # The model refused the picture itself; a failure of the model (degenerate vectors, an
        # error, a timeout, throttling) is not the photo's, and another run or model may pass.
        "embedding_decode_failed",
        "embedding_too_many_pixels",
        "embedding_too_large",
        "embedding_validation",
    }
)
"""Reasons that another fetch of the same URL would meet again; see the module docstring."""
TRANSIENT_CLIENT_STATUSES: Final = frozenset({408, 429})
"""4xx statuses that say "not now" (request timeout, too many requests) rather than "never"."""
SCHEDULE_SLACK: Final = timedelta(hours=1)
"""How early a retry may come: a nightly run starts seconds either side of the same time, and
without slack a run one second early would put a photo off by a whole extra day."""


def is_permanent(reason: str) -> bool:
    """Whether a failure with this reason (a PhotoError's, or `embedding_<reason>`) would meet
    the same failure again at the same URL."""
    if reason in PERMANENT_REASONS:
        return True
    status = reason.removeprefix("http_")
    if status == reason or not status.isdigit():
        return False
    return 400 <= int(status) < 500 and int(status) not in TRANSIENT_CLIENT_STATUSES


@dataclasses.dataclass(frozen=True, slots=True)
class PhotoFailure:
    """A sale's failed photo as its stored row tells it."""

    reason: str
    failures: int
    """Runs in a row that failed it for this reason; 0 when the row predates the count."""
    failed_at: datetime | None
    """The start of the last run that failed it; None when the row predates the column."""


def stored_failure(stored: StoredRows, sale: Sale) -> PhotoFailure | None:
    """The failure the table holds for this sale's photo at its current URL, if any."""
    if sale.key not in stored:
        return None
    row = stored.row(sale.key)
    reason = EmbeddingStatus.failure_reason(row["embedding_status"])
    if reason is None or row["image_url"] != sale.image_url:
        return None
    # .get: a table not yet given the columns (opened without create) reads as one without them.
    return PhotoFailure(reason, row.get("photo_failures") or 0, row.get("photo_failed_at"))


def failed_row(sale: Sale, reason: str, stored: StoredRows, now: datetime) -> SaleRow:
    """The row of a sale whose photo failed for `reason` in the run started at `now`: one
    failure more than the table holds, when it holds the same failure of the same URL."""
    previous = stored_failure(stored, sale)
    failures = previous.failures + 1 if previous and previous.reason == reason else 1
    return SaleRow(sale, EmbeddingStatus.failed(reason), failures=failures, failed_at=now)


def kept_row(sale: Sale, failure: PhotoFailure) -> SaleRow:
    """The row of a sale whose failed photo is not fetched again: as the table holds it."""
    return SaleRow(
        sale,
        EmbeddingStatus.failed(failure.reason),
        failures=failure.failures,
        failed_at=failure.failed_at,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a failed photo is fetched again; see the module docstring."""

    backoff_days: tuple[float, ...] = (1, 2, 4, 8)
    """Days to wait after the 1st, 2nd, ... permanent failure in a row; after the last, never."""
    retry_failed: bool = False
    """Fetch every failed photo again, whatever its schedule says."""

    @classmethod
    def of(cls, photos: PhotoConfig, *, retry_failed: bool = False) -> RetryPolicy:
        return cls(tuple(photos.retry_backoff_days), retry_failed)

    def due(self, failure: PhotoFailure, now: datetime) -> bool:
        """Whether the run started at `now` fetches this failed photo again."""
        if self.retry_failed or not is_permanent(failure.reason):
            return True
        if failure.failures == 0 or failure.failed_at is None:
            return True
        if failure.failures > len(self.backoff_days):
            return False
        wait = timedelta(days=self.backoff_days[failure.failures - 1])
        return now >= failure.failed_at + wait - SCHEDULE_SLACK
