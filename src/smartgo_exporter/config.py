"""Settings: one TOML file, overridden by SGX_* environment variables, validated once at start.

Backends are chosen by a `type` key in their section, in the spirit of pyiceberg's
`load_catalog(name, **properties)`: `[source] type = "sql"` picks `sources/sql.py`. Environment
variables use `__` between levels: `SGX_SOURCE__URL`, `SGX_EXPORT__TIMEZONE`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic import model_validator as model_check
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from smartgo_exporter.address_guard import AllowedHost
from smartgo_exporter.sales import SOURCE_FIELDS, CurrencyCase


def _aws_region() -> str | None:
    """AWS_REGION, which Lambda, containers and the other AWS SDKs set but botocore does not
    read (it reads AWS_DEFAULT_REGION); None leaves the region to boto3's chain."""
    return os.environ.get("AWS_REGION") or None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _zone(name: str) -> str:
    try:
        ZoneInfo(name)
    # A name like "America" is a folder of the tz database, and opening it is an OSError.
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r}") from None
    return name


def _mapping(columns: dict[str, str]) -> dict[str, str]:
    unknown = sorted(set(columns) - set(SOURCE_FIELDS))
    if unknown:
        raise ValueError(f"unknown sale fields {unknown}; known: {list(SOURCE_FIELDS)}")
    return columns


class ExportConfig(_Section):
    source_name: str = "smartgo"
    """Written to the `source` column; part of the upsert key."""
    timezone: str = "UTC"
    """The business time zone: a day's window is midnight to midnight here."""
    tenant_ids: list[str] = Field(default_factory=list)
    """Export only these tenants; empty means every tenant the source has."""
    catch_up_days: int = Field(7, ge=0, le=366)
    lookback_days: int = Field(3, ge=0, le=366)
    """Days before yesterday that a scheduled run (or `run` without a date) reads again,
    after its first exports, for refunds, corrections and edits made since: each is a run of
    its own with the trigger "lookback". An unchanged day costs a read of the source and a
    table lookup (no photo, no model, no commit); 0 turns it off."""
    batch_size: int = Field(500, ge=1, le=100_000)
    """Sales read, looked up in the table and fetched together; two batches' photos are in
    memory at once, so this bounds the memory a run takes."""
    commit_rows: int = Field(10_000, ge=1, le=1_000_000)
    """Rows gathered from batches before they are committed as one snapshot: a commit's cost
    is mostly fixed, so few large commits are cheaper, but the rows gathered are redone when a
    run dies before its commit."""
    commit_seconds: float = Field(120, gt=0)
    """The longest rows wait for a commit, however few: with a slow model (Titan from a
    Lambda embeds some tens of photos a second) `commit_rows` alone would leave many minutes
    of work uncommitted, all of it redone when an invocation is killed (out of memory, its
    time limit)."""
    lease_seconds: float = Field(60, gt=0)
    """How long a run's hold on its day outlives the run: it is renewed every third of this
    while the run is alive, so the day of a run that crashed is free again after this long."""
    lock_wait_seconds: float = Field(0, ge=0)
    """How long a run waits for another run of the same day to finish; 0 gives up at once."""

    _check_zone = field_validator("timezone")(_zone)


class _SourceSection(_Section):
    """What every source's section says of how its rows are read."""

    currency_case: CurrencyCase = "normalise"
    """A valid currency code the source writes in lower or mixed case ("eur"): "normalise"
    writes the sale with "EUR" and records a `source:currency_normalised` warning in the run
    (counted as `normalised`; the run still SUCCEEDS, nothing being lost); "reject" rejects the
    row as an invalid currency (counted as `rejected`; the run is PARTIAL)."""


class SqlSourceConfig(_SourceSection):
    type: Literal["sql"] = "sql"
    url: SecretStr = SecretStr("")
    """SQLAlchemy URL, e.g. postgresql+psycopg://exporter@db/smartgo; may be a secret reference.

    Left empty with `config_parameter`: loading the configuration fills it in from there.
    """
    password: SecretStr | None = None
    """Set into the URL when given, so the URL itself can stay free of secrets."""
    config_parameter: str | None = None
    """Instead of `url`: an SSM SecureString holding the database's JSON config, e.g.
    /tf/{stage}/smartgo/database/config ({stage} is `aws.stage`). The JSON has host, port,
    database, username, password and engine (postgres, postgresql, mysql or mariadb)."""
    table: str | None = None
    db_schema: str | None = Field(None, alias="schema")
    columns: dict[str, str] = Field(default_factory=dict)
    """Sale field -> source column; unmapped fields are looked up under their own name. Besides
    the table's fields, `voided` may name a column saying the sale was voided or refunded (a
    boolean, 0/1, yes/no, or a timestamp; NULL is not voided): such a sale is not exported,
    and removed from the table if it was."""
    query: str | None = None
    """A full SELECT with :start and :end bind parameters, instead of table + columns."""
    timezone: str = "UTC"
    """The zone of the database's naive timestamps (also the session zone on PostgreSQL)."""
    fetch_size: int = Field(1000, ge=1)
    connect_timeout_seconds: int = Field(10, ge=1)

    _check_zone = field_validator("timezone")(_zone)
    _check_columns = field_validator("columns")(_mapping)

    @model_check(mode="after")
    def _url_or_parameter(self) -> SqlSourceConfig:
        if bool(self.url.get_secret_value()) == (self.config_parameter is not None):
            raise ValueError("set exactly one of `url` or `config_parameter`")
        if self.config_parameter is not None and self.password is not None:
            raise ValueError("`password` goes with `url`; `config_parameter` carries its own")
        return self

    @model_check(mode="after")
    def _table_or_query(self) -> SqlSourceConfig:
        if (self.table is None) == (self.query is None):
            raise ValueError("set exactly one of `table` (with `columns`) or `query`")
        if self.query is not None and (":start" not in self.query or ":end" not in self.query):
            raise ValueError("`query` must use the :start and :end bind parameters")
        return self


class RestSourceConfig(_SourceSection):
    type: Literal["rest"] = "rest"
    url: str
    """The sales endpoint; the window goes in the `start_param`/`end_param` query parameters."""
    token: SecretStr | None = None
    """Bearer token; may be a secret reference."""
    pagination: Literal["page", "cursor"] = "page"
    start_param: str = "start"
    end_param: str = "end"
    page_param: str = "page"
    page_size_param: str = "page_size"
    page_size: int = Field(500, ge=1)
    cursor_param: str = "cursor"
    items_field: str = "items"
    next_cursor_field: str = "next_cursor"
    columns: dict[str, str] = Field(default_factory=dict)
    """Sale field -> JSON key (dotted for nested objects); `voided` as for the SQL source."""
    timezone: str = "UTC"
    timeout_seconds: float = Field(30, gt=0)
    attempts: int = Field(3, ge=1)

    _check_zone = field_validator("timezone")(_zone)
    _check_columns = field_validator("columns")(_mapping)


SourceConfig = Annotated[SqlSourceConfig | RestSourceConfig, Field(discriminator="type")]


class PhotoConfig(_Section):
    """How photos are fetched, and when a failed one is fetched again (`photo_retries`)."""

    concurrency: int = Field(8, ge=1, le=256)
    attempts: int = Field(3, ge=1, le=10)
    backoff_seconds: float = Field(1.0, ge=0)
    """First retry delay; doubled for each further attempt, plus up to 50% jitter."""
    timeout_seconds: float = Field(30, gt=0)
    """Total time for one photo, all attempts included."""
    max_bytes: int = Field(10_000_000, ge=1)
    max_pixels: int = Field(40_000_000, ge=1)
    """Decompression-bomb limit: a larger image is refused before it is decoded."""
    part_bytes: int = Field(64_000_000, ge=1)
    """A batch's photos reach the model in parts of about this many bytes, and downloads pause
    while a part's worth waits, so that camera-size photos cost memory by the part, not by the
    batch: an export holds at most four parts (one being embedded, one queued, one handed
    over, one downloading) and a photo per download in flight. Smaller is not better: the
    local model embeds a part in batches of 4, a worker per core, so a part of fewer photos
    than 4 per core leaves cores idle; on 2 cores, 300 camera photos (9 MB each) took 30 s at
    16 MB and 19 s at 64 MB (benchmarks/bench_memory.py)."""
    allow_hosts: list[str] = Field(default_factory=list)
    """Photo hosts that may be fetched although private, loopback or link-local, each on one
    port: `10.0.0.5:8080` (http or https), `https://photos.internal:8443` (https only), or
    `https://photos.internal` (port 443; 80 for http). Without a scheme the port is required.
    A URL must name the host as written here; another name for the same address, or another
    port of it, is still refused. Checked on every redirect and on the address connected to."""
    allow_networks: list[str] = Field(default_factory=list)
    """CIDRs that may be fetched although private, loopback or link-local (e.g. 127.0.0.0/8),
    on every port: prefer `allow_hosts`, unless a whole range of photo hosts is meant."""
    user_agent: str = "smartgo-exporter"
    retry_backoff_days: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: [1.0, 2.0, 4.0, 8.0], max_length=64
    )
    """Days a photo that failed for good (404, 410, not an image, too large, a refused address)
    waits before it is fetched again, after its 1st, 2nd, ... failure in a row; after the last,
    it is fetched again only at a new URL or with `retry_failed`. Empty: never again. A failure
    that may pass (a timeout, a 5xx, a reset) is fetched again on the next run whatever this
    says."""

    @field_validator("allow_hosts")
    @classmethod
    def _parse_hosts(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            AllowedHost.parse(entry)
        return entries

    @field_validator("allow_networks")
    @classmethod
    def _parse_networks(cls, networks: list[str]) -> list[str]:
        for network in networks:
            ipaddress.ip_network(network, strict=False)  # a ValueError names the bad range
        return networks


class LocalEmbedderConfig(_Section):
    type: Literal["local"] = "local"
    batch_size: int = Field(4, ge=1, le=1024)
    """Photos per model call. onnxruntime keeps its largest activations for the process's life,
    one set per worker: with 2 workers, batches of 4 made 154 images/s at a peak of 454 MB,
    8 made 148 at 539 MB, 1 made 144 at 406 MB (benchmarks/bench_local_model.py)."""
    threads: int = Field(0, ge=0)
    """Batches embedded side by side, each decoded and run on one core; 0: one per core."""
    fit: Literal["pad", "crop"] = "crop"
    """How a photo becomes a square: crop (the centre, as ImageNet) or pad (on white); crop
    found the same product twice as often (benchmarks/bench_fit.py)."""


class TitanEmbedderConfig(_Section):
    type: Literal["titan"] = "titan"
    model_id: str = "amazon.titan-embed-image-v1"
    """A Bedrock model id, inference profile or provisioned-throughput ARN."""
    dimension: Literal[256, 384, 1024] = 1024
    region: str | None = Field(default_factory=_aws_region)
    """Default: AWS_REGION, else boto3's own chain (AWS_DEFAULT_REGION, the profile)."""
    endpoint_url: str | None = None
    """A VPC interface endpoint, or a local server in tests; None means the public endpoint."""
    concurrency: int = Field(4, ge=1, le=64)
    """InvokeModel calls in flight at once; mind the account's requests-per-minute quota."""
    max_attempts: int = Field(8, ge=1, le=20)
    """botocore's standard-mode attempts per call, the first included (as AWS_MAX_ATTEMPTS)."""
    include_title: bool = False
    """Send the product title as `inputText`: Titan then averages text and image vectors."""
    timeout_seconds: float = Field(60, gt=0)
    """Connect and read timeout of one call."""
    batch: bool = False
    """`backfill` embeds through one Bedrock batch inference job (about half the on-demand
    price; the job takes hours, and each `backfill` call until it is done answers "waiting"):
    see `embedders.titan_batch`. Too few photos for a job are embedded on demand instead. The
    nightly runs always embed on demand."""
    batch_location: str = ""
    """With `batch`: the S3 prefix (s3://bucket/prefix) the job's records are written under and
    Bedrock writes its output to."""
    batch_role_arn: str = ""
    """With `batch`: the service role Bedrock assumes to read and write `batch_location`
    (trusting bedrock.amazonaws.com); the exporter needs iam:PassRole on it."""
    batch_endpoint_url: str | None = None
    """Bedrock's control plane (CreateModelInvocationJob), as `endpoint_url` is its runtime's."""
    s3_endpoint_url: str | None = None
    """The S3 endpoint for `batch_location`; None means AWS's."""

    @model_check(mode="after")
    def _batch_needs_its_location_and_role(self) -> TitanEmbedderConfig:
        if not self.batch:
            return self
        if not self.batch_location.startswith("s3://") or len(self.batch_location) <= 5:
            raise ValueError("`batch` needs `batch_location`, an S3 prefix (s3://bucket/prefix)")
        if not re.fullmatch(r"arn:aws(-[^:]+)?:iam::\d{12}:role/.+", self.batch_role_arn):
            raise ValueError(
                "`batch` needs `batch_role_arn`, the ARN of the role Bedrock assumes "
                "(arn:aws:iam::<account>:role/<name>)"
            )
        return self

    @field_validator("dimension", mode="before")
    @classmethod
    def _dimension_from_text(cls, value: object) -> object:
        # An integer Literal refuses "384", which is how SGX_EMBEDDER__DIMENSION arrives.
        return int(value) if isinstance(value, str) and value.strip().isdigit() else value


EmbedderConfig = Annotated[LocalEmbedderConfig | TitanEmbedderConfig, Field(discriminator="type")]


class TableConfig(_Section):
    catalog_name: str = "smartgo"
    catalog: dict[str, str] = Field(
        default_factory=lambda: {
            "type": "sql",
            "uri": "sqlite:///warehouse/catalog.db",
            "warehouse": "file://warehouse",
        }
    )
    """pyiceberg catalog properties, as `load_catalog(catalog_name, **catalog)` takes them."""
    namespace: str = "pricing_intelligence"
    name: str = "smartgo_sales"
    commit_attempts: int = Field(4, ge=1, le=20)


class IndexConfig(_Section):
    """The similar-sales index (`smartgo_exporter.index`): where it lives and when it updates."""

    location: str = ""
    """A folder (file://...) or S3 prefix (s3://bucket/prefix); empty: `index` beside a file://
    warehouse. Read and written with the table's catalog properties (S3 endpoint, region)."""
    update_after_run: bool = True
    """Bring every tenant's index up to date at the end of `run` and `backfill`."""
    dtype: Literal["f32", "f16", "i8"] = "f16"
    """How vectors are held in the index; cosine similarities are computed in that precision."""
    connectivity: int = Field(16, ge=4, le=128)
    """HNSW graph degree: higher finds more true neighbours at more memory and build time."""
    expansion_search: int = Field(128, ge=8, le=4096)
    """Candidates an HNSW search visits: higher finds more true neighbours, more slowly."""


class SqliteProgressConfig(_Section):
    type: Literal["sqlite"] = "sqlite"
    path: Path = Path("progress.db")
    busy_timeout_seconds: float = Field(5, gt=0)
    """How long a write waits while another process holds the file's lock, then fails (and the
    export goes on without it): ample for other runs' writes, which take milliseconds."""


class DynamoProgressConfig(_Section):
    type: Literal["dynamodb"]
    stage: str = "dev"
    table: str = "smartgo-exporter-{stage}-progress"
    """The table name; `{stage}` is replaced by `stage`, so one config serves dev and prod."""
    region: str | None = Field(default_factory=_aws_region)
    """Default: AWS_REGION, else boto3's own chain (AWS_DEFAULT_REGION, the profile)."""
    endpoint_url: str | None = None
    """A local DynamoDB or moto server, for tests and local use; None means the AWS endpoint."""
    create_table: bool = False
    """Create the table (on demand, with TTL) if missing: for local use; deploy/ creates it."""

    @property
    def table_name(self) -> str:
        return self.table.replace("{stage}", self.stage)


ProgressConfig = Annotated[SqliteProgressConfig | DynamoProgressConfig, Field(discriminator="type")]


class AwsConfig(_Section):
    """Where AWS calls go. Credentials always come from boto3's default chain, never from here."""

    region: str | None = Field(default_factory=_aws_region)
    """Default: AWS_REGION, else boto3's own chain (AWS_DEFAULT_REGION, the profile)."""
    endpoint_urls: dict[str, str] = Field(default_factory=dict)
    """Service -> endpoint URL, e.g. {ssm = "https://vpce-..."}: VPC endpoints, or tests."""
    stage: str = "dev"
    """The deployment stage, put in place of `{stage}` in SSM parameter names."""


class ScheduleConfig(_Section):
    """When `smartgo-exporter schedule` exports, for a machine that runs the exporter itself."""

    cron: str = "0 3 * * *"
    """Five-field cron (minute hour day-of-month month day-of-week), in UTC like EventBridge's."""

    @field_validator("cron")
    @classmethod
    def _five_field_cron(cls, value: str) -> str:
        value = " ".join(value.split())
        if value.startswith(("cron(", "rate(")):
            raise ValueError(
                f"{value!r} is an EventBridge expression; write the five cron fields, "
                "e.g. '0 3 * * *'"
            )
        # croniter also takes a sixth field (seconds), which would silently shift the meaning.
        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError(
                f"{value!r} is not a five-field cron expression (minute hour day month weekday)"
            )
        return value


class AwsLambdaConfig(_Section):
    """The Lambda handler's own settings (`aws_lambda.py`); the export is configured above."""

    time_margin_seconds: float = Field(60, ge=0)
    """Take no new batch once less time than this is left of the invocation: enough to embed and
    commit the batches already in flight, so the run ends PARTIAL instead of being killed."""
    metrics_namespace: str = Field("SmartGoExporter", min_length=1, max_length=255)
    """CloudWatch namespace of the run metrics; `aws.stage` is their `stage` dimension."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class RayConfig(_Section):
    """How the Ray backfill runner splits its work across a cluster."""

    tenant_shards: int = Field(1, ge=1, le=1024)
    """Read tasks each day of a Ray backfill is split into, by tenant, for days too large for
    one task to keep the model's actors busy: the tenants of `export.tenant_ids` are dealt
    among them, so it takes effect only when at least two are named (a REST source cannot
    list its tenants, and a list queried before the read would miss a tenant's first sale).
    Each day stays one run, with one lease and one record, committed by the driver alone."""


class Settings(BaseSettings):
    """Everything a run needs. Build it with `load_config`, which resolves paths and secrets."""

    model_config = SettingsConfigDict(
        env_prefix="SGX_", env_nested_delimiter="__", extra="forbid", populate_by_name=True
    )

    export: ExportConfig = Field(default_factory=ExportConfig)
    source: SourceConfig
    photos: PhotoConfig = Field(default_factory=PhotoConfig)
    embedder: EmbedderConfig = Field(default_factory=LocalEmbedderConfig)
    table: TableConfig = Field(default_factory=TableConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    progress: ProgressConfig = Field(default_factory=SqliteProgressConfig)
    aws: AwsConfig = Field(default_factory=AwsConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    aws_lambda: AwsLambdaConfig = Field(default_factory=AwsLambdaConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    retention_days: int = Field(90, ge=1)
    """How long run records are kept."""

    @property
    def embeds_in_batch(self) -> bool:
        """Whether backfills embed through a Bedrock batch job (Titan with `batch`)."""
        return isinstance(self.embedder, TitanEmbedderConfig) and self.embedder.batch

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file arrives as init arguments; the environment must win over it.
        return (env_settings, init_settings)
