"""Secret references: a setting may hold `env://VAR`, `file://PATH` or `ssm://NAME` instead of the
secret itself.

References are resolved once, when the configuration is loaded, so a missing secret stops the run
before any work; the values stay `SecretStr` so they never print in logs, errors or reprs.

`ssm://NAME` reads an SSM parameter with decryption (a SecureString, typically), through boto3's
default credential chain; `ssm:///tf/{stage}/smartgo/db-password` names `/tf/dev/...` when
`aws.stage` is "dev". The SQL source's `config_parameter` is read the same way: it names a JSON
document, the earlier exporter's format, that becomes the source's URL and password:

    {"engine": "postgres", "host": "db.internal", "port": 5432, "database": "smartgo",
     "username": "exporter", "password": "..."}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError
from pydantic import BaseModel, SecretStr
from sqlalchemy.engine import URL

from smartgo_exporter.config import AwsConfig, Settings, SqlSourceConfig
from smartgo_exporter.errors import ConfigError, SecretError

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient

SCHEMES = ("env://", "file://", "ssm://")

DATABASE_DRIVERS = {
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mysql+pymysql",
}
"""The config parameter's `engine` -> the SQLAlchemy driver the SQL source connects with."""

_SSM_ERRORS = {
    "ParameterNotFound": "not found",
    "ParameterVersionNotFound": "not found",
    "AccessDeniedException": "access denied (the role needs ssm:GetParameter, and kms:Decrypt "
    "on its key)",
    "UnrecognizedClientException": "refused: the AWS credentials are not valid",
    "InvalidSignatureException": "refused: the AWS credentials are not valid",
    "InvalidKeyId": "cannot be decrypted: its KMS key is disabled or not usable",
}

M = TypeVar("M", bound=BaseModel)


class ParameterStore:
    """SSM Parameter Store as the configuration reads it: each parameter once, decrypted.

    The client is made on first use, so a configuration without `ssm://` references never
    needs AWS credentials or a region. Errors name the parameter and the setting that asked
    for it, never a value.
    """

    def __init__(self, aws: AwsConfig) -> None:
        self._aws = aws
        self._client: SSMClient | None = None
        self._values: dict[str, str] = {}

    def name(self, reference: str) -> str:
        """The parameter name a reference or `config_parameter` means, with the stage put in."""
        return reference.removeprefix("ssm://").replace("{stage}", self._aws.stage)

    def get(self, name: str, *, key: str) -> str:
        """The decrypted value of parameter `name`; `key` is the setting, for errors."""
        if name not in self._values:
            self._values[name] = self._fetch(name, key)
        return self._values[name]

    def _fetch(self, name: str, key: str) -> str:
        try:
            response = self._ssm().get_parameter(Name=name, WithDecryption=True)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            reason = _SSM_ERRORS.get(code, f"cannot be read ({code or 'unknown error'})")
            raise SecretError(key, f"SSM parameter {name} {reason}") from None
        except NoCredentialsError:
            raise SecretError(
                key, f"SSM parameter {name}: no AWS credentials in boto3's default chain"
            ) from None
        except NoRegionError:
            raise SecretError(
                key, f"SSM parameter {name}: no AWS region; set aws.region or AWS_REGION"
            ) from None
        except BotoCoreError as error:
            # botocore's own errors carry endpoints and causes, never a parameter's value.
            raise SecretError(key, f"SSM parameter {name}: {error}") from None
        return response["Parameter"].get("Value", "")

    def _ssm(self) -> SSMClient:
        if self._client is None:
            self._client = boto3.client(
                "ssm",
                region_name=self._aws.region,
                endpoint_url=self._aws.endpoint_urls.get("ssm"),
                config=Config(connect_timeout=5, read_timeout=15, retries={"mode": "standard"}),
            )
        return self._client


def resolve(reference: str, *, key: str, parameters: ParameterStore | None = None) -> str:
    """The secret a reference points at; a plain value is returned as it is.

    `key` is the setting being resolved, for the error: the message names the reference (a
    variable name, a path or a parameter name), never a secret value.
    """
    if reference.startswith("env://"):
        name = reference.removeprefix("env://")
        if name not in os.environ:
            raise SecretError(key, f"environment variable {name} is not set")
        return os.environ[name]
    if reference.startswith("file://"):
        path = Path(reference.removeprefix("file://")).expanduser()
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise SecretError(key, f"cannot read secret file {path}: {error.strerror}") from None
    if reference.startswith("ssm://"):
        parameters = parameters or ParameterStore(AwsConfig())
        return parameters.get(parameters.name(reference), key=key)
    return reference


def resolve_secrets(model: M, prefix: str = "", *, parameters: ParameterStore | None = None) -> M:
    """Resolve every SecretStr reference in a settings tree, in place, and return it.

    Given the whole `Settings`, SSM is reached as its `aws` section says, and the SQL source's
    `config_parameter` becomes its `url` and `password`.
    """
    if parameters is None:
        parameters = ParameterStore(model.aws if isinstance(model, Settings) else AwsConfig())
    for name in type(model).model_fields:
        value = getattr(model, name)
        key = f"{prefix}{name}"
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            if secret.startswith(SCHEMES):
                setattr(model, name, SecretStr(resolve(secret, key=key, parameters=parameters)))
        elif isinstance(value, BaseModel):
            resolve_secrets(value, prefix=f"{key}.", parameters=parameters)
    if isinstance(model, Settings) and isinstance(model.source, SqlSourceConfig):
        source = model.source
        if source.config_parameter is not None:
            name = parameters.name(source.config_parameter)
            document = parameters.get(name, key="source.config_parameter")
            url, password = database_url(document, parameter=name)
            source.url, source.password = SecretStr(url), SecretStr(password)
    return model


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
