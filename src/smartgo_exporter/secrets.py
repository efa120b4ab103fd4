"""Secret references: a setting may hold `env://VAR` or `file://PATH` instead of the secret itself.

References are resolved once, when the configuration is loaded, so a missing secret stops the run
before any work; the values stay `SecretStr` so they never print in logs, errors or reprs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, SecretStr

from smartgo_exporter.errors import SecretError

SCHEMES = ("env://", "file://")

M = TypeVar("M", bound=BaseModel)


def resolve(reference: str, *, key: str) -> str:
    """The secret a reference points at; a plain value is returned as it is.

    `key` is the setting being resolved, for the error: the message names the reference (a
    variable name or a path), never a secret value.
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
    return reference


def resolve_secrets(model: M, prefix: str = "") -> M:
    """Resolve every SecretStr reference in a settings tree, in place, and return it."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        key = f"{prefix}{name}"
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            if secret.startswith(SCHEMES):
                setattr(model, name, SecretStr(resolve(secret, key=key)))
        elif isinstance(value, BaseModel):
            resolve_secrets(value, prefix=f"{key}.")
    return model
