"""The local Bedrock runtime server (`smartgo_exporter.demo.bedrock_local`) as a test fixture.

`bedrock_server` gives a test the session's server (aiohttp, in a background thread on
127.0.0.1) with its knobs reset, and the process environment pointing boto3 at this server's
test credentials, with no profile, no session token, no bearer token and no instance metadata:
nothing a test does can reach real AWS. Tests pass `endpoint_url` to the embedder.

What the server checks, how it answers and its knobs and records are in the package module's
docstring; `FakeBedrock` is its `LocalBedrock`, signed for with ACCESS_KEY_ID and
SECRET_ACCESS_KEY.

`batch_bedrock` is another such server, for batch inference: it signs for SeaweedFS's own key
(a Bedrock and an S3 of one account) and runs its jobs on the session's SeaweedFS, whose
credentials it puts in the environment; `batch_bucket` is a fresh, empty bucket there.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from smartgo_exporter.demo.bedrock_local import LocalBedrock, S3Access, serve_bedrock

if TYPE_CHECKING:  # imported for real, it would escape pytest's assertion rewriting
    from tests.servers.seaweedfs import Seaweed

ACCESS_KEY_ID = "AKIASGXBEDROCKTEST01"
SECRET_ACCESS_KEY = "sgx-bedrock-test/Secret+Key/0123456789abcdef"
REGION = "us-east-1"

FakeBedrock = LocalBedrock

_ENV_TO_CLEAR = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_BEARER_TOKEN_BEDROCK",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_BEDROCK_RUNTIME",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


@pytest.fixture(scope="session")
def _bedrock_session_server() -> Iterator[FakeBedrock]:
    with serve_bedrock(access_key=ACCESS_KEY_ID, secret_key=SECRET_ACCESS_KEY) as server:
        yield server


@pytest.fixture
def bedrock_server(
    _bedrock_session_server: FakeBedrock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> FakeBedrock:
    """The session's fake Bedrock with fresh knobs, and boto3's environment aimed at it only."""
    _bedrock_session_server.reset()
    for name in _ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # No profile of the machine running the tests may add credentials or endpoints.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return _bedrock_session_server


@pytest.fixture(scope="session")
def _batch_session_server(seaweedfs: Seaweed) -> Iterator[FakeBedrock]:
    with serve_bedrock(access_key=seaweedfs.access_key, secret_key=seaweedfs.secret_key) as server:
        yield server


@pytest.fixture
def batch_bedrock(
    _batch_session_server: FakeBedrock, seaweedfs: Seaweed, monkeypatch: pytest.MonkeyPatch
) -> FakeBedrock:
    """A fake Bedrock in SeaweedFS's account with fresh knobs; boto3 aimed at these two only."""
    _batch_session_server.reset()
    seaweedfs.use_credentials(monkeypatch)
    _batch_session_server.s3 = S3Access(
        seaweedfs.s3_endpoint, seaweedfs.access_key, seaweedfs.secret_key, seaweedfs.region
    )
    return _batch_session_server


@pytest.fixture
def batch_bucket(seaweedfs: Seaweed) -> str:
    """A new, empty bucket on the session's SeaweedFS."""
    name = f"sgx-batch-{secrets.token_hex(4)}"
    seaweedfs.s3_client().create_bucket(Bucket=name)
    return name
