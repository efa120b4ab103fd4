"""Loading the configuration: the file, the environment, paths and secrets, checked once.

`config.py` says what a configuration is; this module reads one. It is the one place that
needs the secret stores and the SQL source's URL helper, so that the settings themselves
depend on nothing.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from smartgo_exporter.config import Settings, SqliteProgressConfig, SqlSourceConfig
from smartgo_exporter.errors import ConfigError
from smartgo_exporter.secrets import ParameterStore, resolve_secrets
from smartgo_exporter.sources.database_document import database_url


def load_config(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Read, merge and validate the configuration; raise ConfigError naming the bad key.

    Relative paths in the file (a SQLite source or progress store, a sqlite:// or file://
    catalog) are taken relative to the file's folder, so a config works from any working
    directory. Secret references (env://, file://, ssm://) and the source's `config_parameter`
    are resolved here, once, before any work.
    """
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
    aws = settings.aws
    parameters = ParameterStore(
        stage=aws.stage, region=aws.region, endpoint_url=aws.endpoint_urls.get("ssm")
    )
    resolve_secrets(settings, parameters=parameters)
    source = settings.source
    if isinstance(source, SqlSourceConfig) and source.config_parameter is not None:
        name = parameters.name(source.config_parameter)
        document = parameters.get(name, key="source.config_parameter")
        url, password = database_url(document, parameter=name)
        source.url, source.password = SecretStr(url), SecretStr(password)
    return settings


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
    if isinstance(progress, SqliteProgressConfig) and not progress.path.is_absolute():
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
    location = settings.index.location
    if location.startswith("file://") and not location.startswith("file:///"):
        settings.index.location = f"file://{base / location.removeprefix('file://')}"
