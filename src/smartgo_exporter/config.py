"""Settings: one TOML file, overridden by SGX_* environment variables, validated once at start.

Backends are chosen by a `type` key in their section, in the spirit of pyiceberg's
`load_catalog(name, **properties)`: `[source] type = "sql"` picks `sources/sql.py`. Environment
variables use `__` between levels: `SGX_SOURCE__URL`, `SGX_EXPORT__TIMEZONE`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic import model_validator as model_check
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from smartgo_exporter.errors import ConfigError
from smartgo_exporter.records import SALE_FIELDS


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None
    return name


def _mapping(columns: dict[str, str]) -> dict[str, str]:
    unknown = sorted(set(columns) - set(SALE_FIELDS))
    if unknown:
        raise ValueError(f"unknown sale fields {unknown}; known: {list(SALE_FIELDS)}")
    return columns


class ExportConfig(_Section):
    source_name: str = "smartgo"
    """Written to the `source` column; part of the upsert key."""
    timezone: str = "UTC"
    """The business time zone: a day's window is midnight to midnight here."""
    tenant_ids: list[str] = Field(default_factory=list)
    """Export only these tenants; empty means every tenant the source has."""
    catch_up_days: int = Field(7, ge=0, le=366)
    batch_size: int = Field(500, ge=1, le=100_000)
    """Sales per committed batch: large enough that a commit writes a few files per partition."""

    _check_zone = field_validator("timezone")(_zone)


class SqlSourceConfig(_Section):
    type: Literal["sql"] = "sql"
    url: SecretStr
    """SQLAlchemy URL, e.g. postgresql+psycopg://exporter@db/smartgo; may be a secret reference."""
    password: SecretStr | None = None
    """Set into the URL when given, so the URL itself can stay free of secrets."""
    table: str | None = None
    db_schema: str | None = Field(None, alias="schema")
    columns: dict[str, str] = Field(default_factory=dict)
    """Sale field -> source column; unmapped fields are looked up under their own name."""
    query: str | None = None
    """A full SELECT with :start and :end bind parameters, instead of table + columns."""
    timezone: str = "UTC"
    """The zone of the database's naive timestamps (also the session zone on PostgreSQL)."""
    fetch_size: int = Field(1000, ge=1)
    connect_timeout_seconds: int = Field(10, ge=1)

    _check_zone = field_validator("timezone")(_zone)
    _check_columns = field_validator("columns")(_mapping)

    @model_check(mode="after")
    def _table_or_query(self) -> SqlSourceConfig:
        if (self.table is None) == (self.query is None):
            raise ValueError("set exactly one of `table` (with `columns`) or `query`")
        if self.query is not None and (":start" not in self.query or ":end" not in self.query):
            raise ValueError("`query` must use the :start and :end bind parameters")
        return self


class RestSourceConfig(_Section):
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
    """Sale field -> JSON key (dotted for nested objects)."""
    timezone: str = "UTC"
    timeout_seconds: float = Field(30, gt=0)
    attempts: int = Field(3, ge=1)

    _check_zone = field_validator("timezone")(_zone)
    _check_columns = field_validator("columns")(_mapping)


SourceConfig = Annotated[SqlSourceConfig | RestSourceConfig, Field(discriminator="type")]


class PhotoConfig(_Section):
    concurrency: int = Field(8, ge=1, le=256)
    attempts: int = Field(3, ge=1, le=10)
    backoff_seconds: float = Field(1.0, ge=0)
    """First retry delay; doubled for each further attempt, plus up to 50% jitter."""
    timeout_seconds: float = Field(30, gt=0)
    """Total time for one photo, all attempts included."""
    max_bytes: int = Field(10_000_000, ge=1)
    max_pixels: int = Field(40_000_000, ge=1)
    """Decompression-bomb limit: a larger image is refused before it is decoded."""
    allow_networks: list[str] = Field(default_factory=list)
    """CIDRs that may be fetched although private, loopback or link-local (e.g. 127.0.0.0/8)."""
    user_agent: str = "smartgo-exporter"


class LocalEmbedderConfig(_Section):
    type: Literal["local"] = "local"
    batch_size: int = Field(32, ge=1, le=1024)
    threads: int = Field(0, ge=0)
    """onnxruntime intra-op threads; 0 means one per core."""
    fit: Literal["pad", "crop"] = "pad"
    """How a photo becomes a square: pad on white keeps the whole item, crop matches ImageNet."""


EmbedderConfig = Annotated[LocalEmbedderConfig, Field(discriminator="type")]


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


class SqliteProgressConfig(_Section):
    type: Literal["sqlite"] = "sqlite"
    path: Path = Path("progress.db")


ProgressConfig = Annotated[SqliteProgressConfig, Field(discriminator="type")]


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
    progress: ProgressConfig = Field(default_factory=SqliteProgressConfig)
    retention_days: int = Field(90, ge=1)
    """How long run records are kept."""

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


def load_config(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Read, merge and validate the configuration; raise ConfigError naming the bad key.

    Relative paths in the file (a SQLite source or progress store, a sqlite:// or file://
    catalog) are taken relative to the file's folder, so a config works from any working
    directory. Secret references (env://, file://) are resolved here, once, before any work.
    """
    from smartgo_exporter.secrets import resolve_secrets

    data: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(str(path), "config file not found") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(str(path), f"not valid TOML: {error}") from None
        base = path.resolve().parent
    _merge(data, overrides)
    try:
        settings = Settings(**data)
    except ValidationError as error:
        first = error.errors()[0]
        more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        raise ConfigError(
            _key(first["loc"]), first["msg"].removeprefix("Value error, ") + more
        ) from None
    _anchor_paths(settings, base)
    return resolve_secrets(settings)


_TAGGED_SECTIONS = {"source", "embedder", "progress"}


def _key(loc: tuple[int | str, ...]) -> str:
    """`source.url`, not pydantic's `source.sql.url`: the user never wrote the union's tag."""
    parts = [str(part) for part in loc]
    if len(parts) >= 2 and parts[0] in _TAGGED_SECTIONS:
        del parts[1]
    return ".".join(parts) or "config"


def _merge(into: dict[str, Any], overrides: dict[str, Any]) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _anchor_sqlite(uri: str, base: Path) -> str:
    """sqlite:///relative.db taken from `base`; absolute (sqlite:////...) and other URIs kept."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{base / uri.removeprefix('sqlite:///')}"
    return uri


def _anchor_paths(settings: Settings, base: Path) -> None:
    progress = settings.progress
    if not progress.path.is_absolute():
        progress.path = base / progress.path
    catalog = settings.table.catalog
    if "uri" in catalog:
        catalog["uri"] = _anchor_sqlite(catalog["uri"], base)
    source = settings.source
    if isinstance(source, SqlSourceConfig):
        url = source.url.get_secret_value()
        if url.startswith("sqlite:///"):
            source.url = SecretStr(_anchor_sqlite(url, base))
    warehouse = catalog.get("warehouse", "")
    if warehouse.startswith("file://") and not warehouse.startswith("file:///"):
        catalog["warehouse"] = f"file://{base / warehouse.removeprefix('file://')}"
