"""Peak memory of the export function on the Titan path, which sizes its MemorySize.

    .venv/bin/python benchmarks/bench_lambda_memory.py                 # 1,500 camera photos
    .venv/bin/python benchmarks/bench_lambda_memory.py --sales 500 --latency 0.3

The handler (`smartgo_exporter.aws_lambda.handler`) exports one day in a fresh process, set up
as deploy/template.yaml sets the function up: its SGX_* variables (SSM source, Titan, S3 Tables,
DynamoDB, the index in S3, BatchSize 500) and every other setting at its default (8 photo
downloads and 4 Titan calls in flight, 64 MB photo parts, 10,000 rows a commit). Only the
endpoints differ: moto (SSM, DynamoDB), SeaweedFS (the S3 Tables Iceberg REST catalog, S3) and
`bedrock_local` (Titan's wire format, holding each call `--latency` seconds) run in a server
process of their own, and the photos in another (`photo_workload.py`), so that none of them,
nor this small process, adds to the peak RSS read when the handler's process ends
(`isolated.py`). Every sale has its own camera-size photo (4032x3024, a JPEG of about 9.5 MB,
as shops upload them unresized), the worst the 10 MB `photos.max_bytes` lets through.

It prints the peak and the MemorySize it suggests: the peak plus half again, for what this
machine does not show (Lambda's own runtime process, a larger heap after a longer day, glibc
arenas on other CPUs), rounded up to a multiple of 256 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from isolated import log_tail, print_report, run_step
from photo_workload import serve_photos, write_camera_photos, write_sales_with_photos
from sales_data import BUSINESS_DAY
from smartgo_exporter.demo.store import SALE_COLUMNS, SALES_TABLE

MIB = 2**20
HEADROOM = 1.5
"""MemorySize is the peak times this, rounded up to a multiple of ROUND_MB."""
ROUND_MB = 256
STAGE = "bench"
PARAMETER = f"/smartgo-exporter/{STAGE}/source-url"
INDEX_BUCKET = "sgx-index"
TEMPLATE_ENVIRONMENT = {
    "SGX_AWS__STAGE": STAGE,
    "SGX_SOURCE__TYPE": "sql",
    "SGX_SOURCE__TABLE": SALES_TABLE,
    "SGX_SOURCE__COLUMNS": json.dumps(SALE_COLUMNS),
    "SGX_SOURCE__TIMEZONE": "UTC",
    "SGX_EXPORT__TIMEZONE": "UTC",
    "SGX_EXPORT__BATCH_SIZE": "500",
    "SGX_EMBEDDER__TYPE": "titan",
    "SGX_EMBEDDER__DIMENSION": "1024",
    "SGX_TABLE__CATALOG__TYPE": "s3tables",
    "SGX_TABLE__NAMESPACE": "pricing_intelligence",
    "SGX_TABLE__NAME": "smartgo_sales",
    "SGX_INDEX__LOCATION": f"s3://{INDEX_BUCKET}/index",
    "SGX_PROGRESS__TYPE": "dynamodb",
    "SGX_AWS_LAMBDA__TIME_MARGIN_SECONDS": "120",
}
"""deploy/template.yaml's variables at its defaults; the source URL stands in SSM, as the
demo's does, instead of a database's JSON config."""


def serve_aws(data: Path, access_key: str, secret_key: str, latency: float) -> None:
    """The server process: moto, SeaweedFS and Bedrock; print their endpoints, then serve until
    stdin closes."""
    import boto3

    from smartgo_exporter.demo.aws_local import aws_environment, run_moto, run_seaweedfs
    from smartgo_exporter.demo.bedrock_local import serve_bedrock

    with contextlib.ExitStack() as servers:
        moto = servers.enter_context(run_moto())
        seaweed = servers.enter_context(
            run_seaweedfs(data, access_key=access_key, secret_key=secret_key)
        )
        servers.enter_context(
            aws_environment(
                access_key=access_key,
                secret_key=secret_key,
                region=seaweed.region,
                unaimed_clients_go_to=moto,
            )
        )
        bedrock = servers.enter_context(serve_bedrock(access_key=access_key, secret_key=secret_key))
        bedrock.delay_seconds = latency
        boto3.client("s3", endpoint_url=seaweed.s3_endpoint).create_bucket(Bucket=INDEX_BUCKET)
        print(
            json.dumps(
                {
                    "region": seaweed.region,
                    "moto": moto,
                    "bedrock": bedrock.endpoint_url,
                    "iceberg": seaweed.iceberg_endpoint,
                    "s3": seaweed.s3_endpoint,
                    "warehouse": seaweed.warehouse,
                }
            ),
            flush=True,
        )
        sys.stdin.read()


def put_source_url(endpoints: dict[str, str], database: Path, environment: dict[str, str]) -> None:
    """The source URL as a SecureString, put with the function's credentials in a process of its
    own: boto3 stays out of this one."""
    script = (
        "import boto3, sys\n"
        "boto3.client('ssm', endpoint_url=sys.argv[1], region_name=sys.argv[2]).put_parameter("
        "Name=sys.argv[3], Value=sys.argv[4], Type='SecureString', Overwrite=True)\n"
    )
    url = f"sqlite:///{database.resolve()}"
    subprocess.run(
        [sys.executable, "-c", script, endpoints["moto"], endpoints["region"], PARAMETER, url],
        check=True,
        env=environment,
    )


def function_environment(
    endpoints: dict[str, str], access_key: str, secret_key: str, config: Path, photos_url: str
) -> dict[str, str]:
    """The function's environment: the template's variables, the role's credentials (here the
    servers' keys) and a config file with what only this machine needs (the endpoints, the
    photo server allowed on loopback)."""
    host = photos_url.split("/")[2]
    config.write_text(
        f"""\
[aws]
endpoint_urls = {{ ssm = "{endpoints["moto"]}" }}

[source]
url = "ssm://{PARAMETER}"

[photos]
allow_hosts = ["{host}"]

[embedder]
endpoint_url = "{endpoints["bedrock"]}"

[table.catalog]
uri = "{endpoints["iceberg"]}"
"s3.endpoint" = "{endpoints["s3"]}"

[progress]
endpoint_url = "{endpoints["moto"]}"
create_table = true
""",
        encoding="utf-8",
    )
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AWS_", "SGX_", "POWERTOOLS_"))
    }
    return environment | {
        **TEMPLATE_ENVIRONMENT,
        "SGX_CONFIG": str(config),
        "SGX_TABLE__CATALOG__WAREHOUSE": endpoints["warehouse"],
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_REGION": endpoints["region"],
        "AWS_DEFAULT_REGION": endpoints["region"],
        "AWS_ENDPOINT_URL": endpoints["moto"],
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "POWERTOOLS_METRICS_NAMESPACE": "SmartgoExporter",
        "POWERTOOLS_SERVICE_NAME": "smartgo-exporter",
    }


@contextlib.contextmanager
def environment_of_the_step(environment: dict[str, str]) -> Iterator[None]:
    """The process environment is `environment` while the block starts the step."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environment)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


class Context:
    """What the handler asks of Lambda's context: a request id, the function's memory (text,
    as Lambda's Python runtime gives it) and the time left of 900 s."""

    aws_request_id = "bench-lambda-memory"
    memory_limit_in_mb = "1792"

    def __init__(self) -> None:
        self._deadline = time.monotonic() + 900

    def get_remaining_time_in_millis(self) -> int:
        return int((self._deadline - time.monotonic()) * 1000)


def invoke() -> dict[str, Any]:
    """The measured process: one invocation for the business day, as `aws lambda invoke`. A
    PARTIAL run (out of its 900 s) still measures the memory; a FAILED one raises."""
    from smartgo_exporter.aws_lambda import handler

    start = time.perf_counter()
    response = handler({"date": BUSINESS_DAY.isoformat()}, Context())
    seconds = time.perf_counter() - start
    [run] = response["runs"]
    return {
        "seconds": seconds,
        "status": run["status"],
        "high_water_bytes": high_water_mark(),
        **run["counts"],
    }


def high_water_mark() -> int:
    """This process's own peak RSS (VmHWM), which, unlike wait4's, starts again at exec: a
    check that the figure is the handler's and not this benchmark's."""
    status = Path("/proc/self/status").read_text(encoding="utf-8")
    [line] = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(line.split()[1]) * 1024


def memory_size(peak_bytes: int) -> int:
    """The MemorySize, in MB as Lambda counts them (MiB), for a measured peak RSS."""
    return math.ceil(peak_bytes * HEADROOM / MIB / ROUND_MB) * ROUND_MB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sales", type=int, default=1500, help="sales, each with its photo")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per Titan call")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds for the export")
    parser.add_argument("--invoke", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.invoke:
        print_report(invoke())
        return
    if args.serve is not None:
        serve_aws(
            args.serve, os.environ["BENCH_ACCESS_KEY"], os.environ["BENCH_SECRET_KEY"], args.latency
        )
        return

    access_key = "AKIA" + secrets.token_hex(8).upper()
    secret_key = secrets.token_urlsafe(30)
    root = Path(tempfile.mkdtemp(prefix="bench-lambda-memory-"))
    keys = {"BENCH_ACCESS_KEY": access_key, "BENCH_SECRET_KEY": secret_key}
    try:
        photos = write_camera_photos(root / "photos")
        size = sum(path.stat().st_size for path in photos) / len(photos) / 1e6
        print(f"{args.sales:,} sales, each with its own 4032x3024 JPEG of {size:.1f} MB")
        servers = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                str(root / "seaweedfs"),
                f"--latency={args.latency}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ | keys,
        )
        assert servers.stdin is not None
        assert servers.stdout is not None
        try:
            endpoints = json.loads(servers.stdout.readline())
            with serve_photos(root / "photos") as photos_url:
                database = root / "sales.db"
                write_sales_with_photos(database, args.sales, photos_url)
                environment = function_environment(
                    endpoints, access_key, secret_key, root / "function.toml", photos_url
                )
                put_source_url(endpoints, database, environment)
                with environment_of_the_step(environment):
                    result = run_step(
                        [__file__, "--invoke"],
                        log=root / "invoke.log",
                        timeout_seconds=args.timeout,
                    )
        finally:
            servers.stdin.close()
            servers.wait(timeout=60)
        if result.report is None:
            print(f"the invocation {result.failure} after {result.elapsed_seconds:.0f} s")
            print(log_tail(root / "invoke.log"))
            raise SystemExit(1)
        report = result.report
        print(
            f"Titan latency {args.latency} s: {report['status']} in {report['seconds']:.0f} s,"
            f" written {report['written']:,}, embedded {report['embedded']:,},"
            f" failed {report['failed']:,}"
        )
        own = report["high_water_bytes"] / MIB
        print(
            f"peak RSS {result.peak_rss} (VmHWM {own:,.0f} MiB): "
            f"MemorySize {memory_size(result.peak_rss_bytes)}"
        )
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
