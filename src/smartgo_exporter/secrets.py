"""Secret references: a setting may hold `env://VAR`, `file://PATH` or `ssm://NAME` instead of the
secret itself.

References are resolved once, when the configuration is loaded, so a missing secret stops the run
before any work; the values stay `SecretStr` so they never print in logs, errors or reprs.

`ssm://NAME` reads an SSM parameter with decryption (a SecureString, typically), through boto3's
default credential chain; `ssm:///tf/{stage}/smartgo/db-password` names `/tf/dev/...` when
`aws.stage` is "dev". The SQL source's `config_parameter` is read the same way, and then turned
into its URL by `sources.database_document`. This module takes plain values, not the settings,
so that `config_loader` can use it and nothing here depends on the configuration's shape.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, SecretStr

from smartgo_exporter.errors import SecretError

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient

SCHEMES = ("env://", "file://", "ssm://")
INSTALL_HINT = "pip install 'smartgo-exporter[aws]'"

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

    def __init__(
        self, *, stage: str = "dev", region: str | None = None, endpoint_url: str | None = None
    ) -> None:
        self._stage = stage
        self._region = region
        self._endpoint_url = endpoint_url
        self._client: SSMClient | None = None
        self._values: dict[str, str] = {}

    def name(self, reference: str) -> str:
        """The parameter name a reference or `config_parameter` means, with the stage put in."""
        return reference.removeprefix("ssm://").replace("{stage}", self._stage)

    def get(self, name: str, *, key: str) -> str:
        """The decrypted value of parameter `name`; `key` is the setting, for errors."""
        if name not in self._values:
            self._values[name] = self._fetch(name, key)
        return self._values[name]

    def _fetch(self, name: str, key: str) -> str:
        ssm = self._ssm(key)
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            NoCredentialsError,
            NoRegionError,
        )

        try:
            response = ssm.get_parameter(Name=name, WithDecryption=True)
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

    def _ssm(self, key: str) -> SSMClient:
        if self._client is None:
            # Imported here: only ssm:// references need boto3, which the demo's install lacks.
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise SecretError(
                    key, f"ssm:// references need boto3; install it with: {INSTALL_HINT}"
                ) from None
            self._client = boto3.client(
                "ssm",
                region_name=self._region,
                endpoint_url=self._endpoint_url,
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
        parameters = parameters or ParameterStore()
        return parameters.get(parameters.name(reference), key=key)
    return reference


def resolve_secrets(model: M, prefix: str = "", *, parameters: ParameterStore | None = None) -> M:
    """Resolve every SecretStr reference in a settings tree, in place, and return it.

    `prefix` names the tree's place in the configuration, for errors (`source.`); `ssm://`
    references are read through `parameters` (by default the region and endpoint boto3 picks).
    """
    parameters = parameters or ParameterStore()
    for name in type(model).model_fields:
        value = getattr(model, name)
        key = f"{prefix}{name}"
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            if secret.startswith(SCHEMES):
                setattr(model, name, SecretStr(resolve(secret, key=key, parameters=parameters)))
        elif isinstance(value, BaseModel):
            resolve_secrets(value, prefix=f"{key}.", parameters=parameters)
    return model
