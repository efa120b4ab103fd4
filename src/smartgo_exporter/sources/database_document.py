"""The SQL source's `config_parameter`: a database config document turned into its URL.

The earlier exporter kept its database settings as one JSON document in SSM, a SecureString:

    {"engine": "postgres", "host": "db.internal", "port": 5432, "database": "smartgo",
     "username": "exporter", "password": "..."}

`database_url` turns it into the SQLAlchemy URL and password the SQL source connects with. It
takes the document's text, not the settings, so loading the configuration can call it without
the source module (and its database drivers) being imported.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from sqlalchemy.engine import URL

from smartgo_exporter.errors import ConfigError

DATABASE_DRIVERS = {
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mysql+pymysql",
}
"""The config parameter's `engine` -> the SQLAlchemy driver the SQL source connects with."""


def database_url(document: str, *, parameter: str) -> tuple[str, str]:
    """(SQLAlchemy URL without the password, password) from a database config JSON document.

    The password is kept out of the URL so that the source sets it on its own and it never has
    to be escaped into, or redacted out of, a URL string. Errors name the JSON field at fault as
    `source.config_parameter.FIELD` and never repeat a value, since the document is a secret.
    """
    where = f"in SSM parameter {parameter}"
    try:
        config = json.loads(document)
    except json.JSONDecodeError as error:
        raise ConfigError(
            "source.config_parameter",
            f"not valid JSON {where} (line {error.lineno}, column {error.colno})",
        ) from None
    if not isinstance(config, dict):
        raise ConfigError("source.config_parameter", f"not a JSON object {where}")
    engine = _field(config, "engine", where)
    if not isinstance(engine, str) or engine.lower() not in DATABASE_DRIVERS:
        _wrong("engine", f"must be one of {', '.join(DATABASE_DRIVERS)}", where)
    texts: dict[str, str] = {}
    for name in ("host", "database", "username"):
        value = _field(config, name, where)
        if not isinstance(value, str) or not value.strip():
            _wrong(name, "must be a non-empty string", where)
        texts[name] = value.strip()
    password = _field(config, "password", where)
    if not isinstance(password, str):
        _wrong("password", "must be a string", where)
    port = _port(_field(config, "port", where), where)
    url = URL.create(
        DATABASE_DRIVERS[engine.lower()],
        username=texts["username"],
        host=texts["host"],
        port=port,
        database=texts["database"],
    )
    return url.render_as_string(hide_password=False), password


def _field(config: dict[str, Any], name: str, where: str) -> Any:
    if name not in config or config[name] is None:
        _wrong(name, "missing", where)
    return config[name]


def _port(value: Any, where: str) -> int:
    """A port from a JSON number or a numeric string (both appear in hand-written parameters)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        _wrong("port", "must be a whole number from 1 to 65535", where)
    return int(value)


def _wrong(name: str, reason: str, where: str) -> NoReturn:
    raise ConfigError(f"source.config_parameter.{name}", f"{reason} {where}")
