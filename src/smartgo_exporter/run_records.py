"""A run's record: what one export of one window did, as the progress store keeps it."""

from __future__ import annotations

import dataclasses
import enum
from datetime import date, datetime
from typing import Any

from smartgo_exporter.costs import RunCost


class RunStatus(enum.StrEnum):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    PARTIAL = "PARTIAL"
    FAILED = "FAILED"


MAX_RECORDED_ERRORS = 50
LOOKBACK_TRIGGER = "lookback"
"""The trigger of a run that read a day exported already again, for late changes
(`export.lookback_days`); other triggers (schedule, manual, backfill) are first exports."""


@dataclasses.dataclass(frozen=True, slots=True)
class RunError:
    """One thing a run did not land, and why. `sale_id` is empty for run-wide failures.

    `stage` is where it happened (source, photo, embedding, table, run) and `reason` a short
    stable slug (`sale_price`, `http_404`, `decode_failed`) to count by; `detail` is for people.
    A warning is recorded the same way: a sale landed, but otherwise than the source gave it
    (`currency_normalised`).
    """

    sale_id: str
    stage: str
    reason: str
    detail: str = ""


@dataclasses.dataclass(slots=True)
class RunCounts:
    sales: int = 0
    """Rows the source returned for the window, valid, voided or not."""
    rejected: int = 0
    """Rows not written because a required field was missing or malformed."""
    voided: int = 0
    """Rows the source marked voided: not sales, so not written."""
    written: int = 0
    """Rows upserted into the table (new or changed)."""
    unchanged: int = 0
    """Rows already in the table exactly as the source has them: nothing to write."""
    embedded: int = 0
    reused: int = 0
    """Sales whose embedding came from the table instead of the model."""
    no_image: int = 0
    failed: int = 0
    """Sales written without an embedding because the photo or the model failed."""
    normalised: int = 0
    """Rows whose currency code was written upper-cased (`source.currency_case = "normalise"`),
    each with a `source:currency_normalised` warning in `errors`. A warning loses nothing, so
    it leaves the run SUCCEEDED. Absent from records written before it existed: read as 0."""
    deferred: int = 0
    """Sales whose photo failed for good in an earlier run and was not fetched again: its
    retry is not due yet (`photo_retries`). Absent from records of earlier versions: 0."""
    removed: int = 0
    """Rows of the window removed from the table because the source no longer returns them
    (voided or deleted there, or moved to another day); only a complete read removes any."""
    model_inputs: int = 0
    """Photos sent to the model: one a batch's sales share is sent once, so this is what a
    paid model bills (`costs`). Absent from records of earlier versions: 0."""

    def add(self, other: RunCounts) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


@dataclasses.dataclass(slots=True)
class BatchJob:
    """The Bedrock batch inference job a batch backfill waits for (`embedders.titan_batch`)."""

    job_arn: str
    status: str
    """Bedrock's status of the job when last asked: Submitted, InProgress, Completed, ..."""


@dataclasses.dataclass(slots=True)
class RunRecord:
    """One export run of one window, as the progress store keeps it."""

    run_id: str
    business_date: date
    window_start: datetime
    window_end: datetime
    trigger: str
    status: RunStatus
    started_at: datetime
    expires_at: datetime
    finished_at: datetime | None = None
    counts: RunCounts = dataclasses.field(default_factory=RunCounts)
    errors: list[RunError] = dataclasses.field(default_factory=list)
    error_count: int = 0
    """All errors seen, of which at most MAX_RECORDED_ERRORS are kept in `errors`."""
    failures: dict[str, int] = dataclasses.field(default_factory=dict)
    """Count of every error by `stage:reason`, beyond the first MAX_RECORDED_ERRORS too."""
    message: str = ""
    cost: RunCost | None = None
    """What the run cost on AWS, estimated as it finished (`costs`); None on records of
    versions before it, and while the run is RUNNING."""
    batch_job: BatchJob | None = None
    """Set on the record of a batch backfill (its range is the record's window): the job whose
    embeddings the range's days are exported with, so a later invocation finds it again.
    Absent from records of earlier versions: None."""

    def record_error(self, error: RunError) -> None:
        self.error_count += 1
        category = f"{error.stage}:{error.reason}"
        self.failures[category] = self.failures.get(category, 0) + 1
        if len(self.errors) < MAX_RECORDED_ERRORS:
            self.errors.append(error)

    @property
    def finished(self) -> bool:
        return self.status is not RunStatus.RUNNING

    def to_document(self) -> dict[str, Any]:
        """A JSON-ready dict; every progress store keeps this same document."""
        return {
            "run_id": self.run_id,
            "business_date": self.business_date.isoformat(),
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "trigger": self.trigger,
            "status": str(self.status),
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "expires_at": self.expires_at.isoformat(),
            "counts": dataclasses.asdict(self.counts),
            "errors": [dataclasses.asdict(error) for error in self.errors],
            "error_count": self.error_count,
            "failures": self.failures,
            "message": self.message,
            "cost": self.cost.to_document() if self.cost else None,
            "batch_job": dataclasses.asdict(self.batch_job) if self.batch_job else None,
        }

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> RunRecord:
        finished_at = document.get("finished_at")
        cost = document.get("cost")
        return cls(
            run_id=document["run_id"],
            business_date=date.fromisoformat(document["business_date"]),
            window_start=datetime.fromisoformat(document["window_start"]),
            window_end=datetime.fromisoformat(document["window_end"]),
            trigger=document["trigger"],
            status=RunStatus(document["status"]),
            started_at=datetime.fromisoformat(document["started_at"]),
            finished_at=datetime.fromisoformat(finished_at) if finished_at else None,
            expires_at=datetime.fromisoformat(document["expires_at"]),
            counts=RunCounts(**document["counts"]),
            errors=[RunError(**error) for error in document["errors"]],
            error_count=int(document["error_count"]),
            failures={key: int(value) for key, value in document["failures"].items()},
            message=document.get("message", ""),
            cost=RunCost.from_document(cost) if cost else None,
            batch_job=BatchJob(**batch_job) if (batch_job := document.get("batch_job")) else None,
        )
