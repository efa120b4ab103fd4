"""The exceptions smartgo-exporter raises.

Each carries the thing at fault (a config key, a source row and field, a URL) as an attribute, so
the pipeline can record it and the CLI can show it, without parsing a message.
"""

from __future__ import annotations

from datetime import date, datetime


class ExporterError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(ExporterError):
    """The configuration is invalid; `key` names the setting at fault, dotted: `source.url`."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class SecretError(ConfigError):
    """A secret reference could not be resolved. The message names the reference, never a value."""


class DayNotOver(ExporterError):
    """A day asked for has not ended yet in the business time zone, so its sales are not all in.

    Exported, it would be recorded SUCCEEDED with part of its sales, and catch-up, which starts
    after the last successful day, would then skip every day missed before it.
    """

    def __init__(self, day: date, ends_at: datetime, timezone: str) -> None:
        super().__init__(
            f"{day} is not over yet: it ends at {ends_at.isoformat()} ({timezone}); "
            "export days that have ended"
        )
        self.day = day
        self.ends_at = ends_at


class SourceError(ExporterError):
    """The source could not be read at all (unreachable, bad credentials, bad query)."""


class InvalidSale(ExporterError):
    """One source row cannot become a sale; the rest of the run goes on without it.

    `row` is the sale id when the row has one, otherwise its position in the window's stream.
    """

    def __init__(self, row: str, field: str, reason: str) -> None:
        super().__init__(f"row {row}: {field}: {reason}")
        self.row = row
        self.field = field
        self.reason = reason


class PhotoError(ExporterError):
    """A photo could not be fetched or is not a usable image.

    `reason` is a short slug stored in the table as `failed:<reason>` (e.g. `http_404`, `timeout`,
    `too_large`, `not_an_image`, `refused_address`), so it must stay stable and contain no secrets.
    """

    def __init__(self, url: str, reason: str, detail: str = "") -> None:
        super().__init__(f"{url}: {reason}" + (f" ({detail})" if detail else ""))
        self.url = url
        self.reason = reason
        self.detail = detail


class EmbeddingError(ExporterError):
    """An image could not be embedded; `reason` is a slug like PhotoError's."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason + (f" ({detail})" if detail else ""))
        self.reason = reason
        self.detail = detail


class ModelUnavailable(ExporterError):
    """The embedding model cannot be used at all, so no later image could fare better.

    The local model raises it at start, before any sale is read (weights missing or corrupt),
    and at its first photo for weights of another network; Titan also mid-run (credentials
    refused, an unknown model, vectors of the wrong length).
    """


class BatchJobError(ExporterError):
    """A Bedrock batch inference job could not be submitted, failed, or left output that cannot
    be read; `job` names it (its ARN, or its name before it has one)."""

    def __init__(self, job: str, reason: str) -> None:
        super().__init__(f"batch job {job}: {reason}")
        self.job = job
        self.reason = reason


class SinkError(ExporterError):
    """The table could not be created, read or committed to."""


class ProgressStoreUnavailable(ExporterError):
    """The progress store could not be opened or read by someone asking it what ran (`history`,
    `stats`); `store` names it (its SQLite file or DynamoDB table). The export never raises it:
    it goes on without its store."""

    def __init__(self, store: str, reason: str) -> None:
        super().__init__(f"the progress store ({store}) {reason}")
        self.store = store
        self.reason = reason


class RunnerUnavailable(ExporterError):
    """The runner asked for cannot be used here: its optional extra is not installed (the
    message says what to pip install) or its cluster cannot be reached."""


class LookupFailed(ExporterError):
    """A similar-sales or price lookup cannot be answered as asked (bad photo, unknown tenant,
    an index of another model); the message says which input is at fault and why."""


class PhotoUnreadable(LookupFailed):
    """The photo to look up cannot be read or decoded; `location` is its path or URL."""

    def __init__(self, location: str, reason: str) -> None:
        super().__init__(f"photo {location}: {reason}")
        self.location = location
        self.reason = reason


class UnknownTenant(LookupFailed):
    """The tenant asked for has no embedded sales of the model in use in the table."""

    def __init__(self, tenant: str, known: list[str]) -> None:
        shown = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
        super().__init__(
            f"tenant {tenant!r} has no embedded sales in the table"
            + (f"; tenants with sales: {shown}" if known else "")
        )
        self.tenant = tenant


class NoSalesInCurrency(LookupFailed):
    """No sale of the tenant (or of any tenant) was made in the currency asked for."""

    def __init__(self, currency: str, tenant: str | None) -> None:
        where = f"tenant {tenant!r}" if tenant is not None else "any tenant"
        super().__init__(f"currency {currency!r}: no sales of {where} were made in it")
        self.currency = currency


class IndexMismatch(LookupFailed):
    """A stored index cannot serve this lookup: built with another model, or unreadable.

    Vectors of two models are not comparable, so a search never mixes them: `index` rebuilds
    the index for the model configured, after the days are exported again with it (`backfill`).
    """

    def __init__(self, location: str, reason: str) -> None:
        super().__init__(f"index {location}: {reason}")
        self.location = location
        self.reason = reason
