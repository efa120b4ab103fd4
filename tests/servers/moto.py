"""A real moto server for the AWS tests: DynamoDB, SSM, and whatever else moto emulates.

`moto_server` (session scope) starts moto's HTTP server on 127.0.0.1 and a free port and gives a
`MotoServer`: its `endpoint_url`, its `region`, and `client(service)` for a boto3 client aimed
at it. While it runs, the environment gives boto3's default chain fake credentials
(`testing`), region eu-west-1, no instance metadata and no profile, and sets AWS_ENDPOINT_URL
to the server: code under test that builds its own client with no `endpoint_url` still talks to
moto, so no test can reach real AWS, and none can pick up a developer's own credentials.

    def test_a_parameter_is_read(moto_server):
        moto_server.client("ssm").put_parameter(Name="/sgx/pw", Value="x", Type="SecureString")
        config = SomeConfig(endpoint_url=moto_server.endpoint_url, ...)

The server's state lasts the whole session and is shared by every test: give each test its
own resource names (a table, a parameter path) rather than resetting the server.

The server is the AWS-local demo's (`smartgo_exporter.demo.aws_local.run_moto`). It answers one
request at a time: moto's backends check a write's condition and then write, without a lock, so
two concurrent conditional writes could both succeed, where AWS lets exactly one through; serial
answers make a race between clients behave as it does on AWS. A request that waits server-side
(an SQS long poll) would hold the others up: use short polls.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from smartgo_exporter.demo.aws_local import run_moto

REGION = "eu-west-1"

_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
}


@dataclasses.dataclass(frozen=True)
class MotoServer:
    """A running moto server; `client(service)` is a boto3 client for it."""

    endpoint_url: str
    region: str = REGION

    def client(self, service: str, **kwargs: Any) -> Any:
        return boto3.client(
            service, endpoint_url=self.endpoint_url, region_name=self.region, **kwargs
        )


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """moto in server mode on 127.0.0.1, for the session; see the module docstring."""
    with run_moto() as endpoint_url, pytest.MonkeyPatch.context() as environment:
        environment.delenv("AWS_PROFILE", raising=False)
        environment.delenv("AWS_DEFAULT_PROFILE", raising=False)
        for name, value in _ENVIRONMENT.items():
            environment.setenv(name, value)
        environment.setenv("AWS_ENDPOINT_URL", endpoint_url)
        yield MotoServer(endpoint_url)
