"""Amazon Bedrock's Titan under fault, inside a real export: throttled for half a minute, and
answering vectors of the wrong length.

The export is the demo store's (its SQLite sales, its photo server, a real Iceberg table) with
`[embedder] type = "titan"` aimed at the local Bedrock server (`tests/servers/bedrock.py`): every
photo goes through boto3, SigV4, botocore's retries and the embedder's own backoff exactly as
against AWS, and the server's knobs inject the fault. What each fault must come to is the
embedder's documented contract (`smartgo_exporter.embedders.titan`): a throttle is "not now",
waited out within an image's time budget; a vector of the wrong length is a failure of the run,
since every photo would fail alike.

(The local model's faults, one undecodable image and missing or corrupt weights, are in
test_photo_faults.py, next to the photo faults they share an export with.)
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta

from smartgo_exporter.config import Settings
from smartgo_exporter.demo import DemoPaths
from smartgo_exporter.embedders.titan import ThrottleBackoff
from smartgo_exporter.pipeline import export
from smartgo_exporter.run_records import RunStatus
from tests.faults.conftest import FaultReport, day_of, demo_source_sales, key_counts, read_table
from tests.servers.bedrock import REGION, FakeBedrock
from tests.test_export import FIRST_DAY, days, settings_of

TITAN_MODEL_ID = "amazon.titan-embed-image-v1:1024"
"""The embedder's `model_id` under the default configuration: 1024-long vectors, no titles."""
THROTTLED_SECONDS = 30.0
QUIET_DAY = FIRST_DAY + timedelta(days=1)
"""The demo store's one day without a bad source row: a clean run of it says SUCCEEDED."""


def titan_settings(workspace: DemoPaths, bedrock: FakeBedrock) -> Settings:
    """The demo's configuration with Titan, at its defaults, as the embedder."""
    return settings_of(
        workspace,
        embedder={"type": "titan", "endpoint_url": bedrock.endpoint_url, "region": REGION},
    )


def test_titan_throttling_for_30_seconds_is_waited_out_and_every_photo_is_embedded(
    workspace: DemoPaths, bedrock_server: FakeBedrock, fault_report: FaultReport
) -> None:
    """Bedrock answers every call ThrottlingException for 30 s, as when another job has spent
    the account's quota. By the embedder's contract a throttle is "not now": botocore's retries,
    then its own backoff until an image's budget (45 s by default) is spent, wait it out. So no
    photo is marked failed:embedding_throttled, every one is embedded by Titan once the quota is
    back, and the day says SUCCEEDED as a clean run of it does."""
    assert ThrottleBackoff().budget_seconds > THROTTLED_SECONDS  # the contract this relies on
    settings = titan_settings(workspace, bedrock_server)
    bedrock_server.throttle_seconds = THROTTLED_SECONDS

    records = export(settings, [QUIET_DAY])

    assert bedrock_server.throttled_since is not None
    assert time.monotonic() - bedrock_server.throttled_since >= THROTTLED_SECONDS
    assert bedrock_server.throttled > 0
    assert [e for r in records for e in r.errors if e.stage == "embedding"] == []
    rows = read_table(settings)
    statuses = Counter(rows["embedding_status"].to_pylist())
    assert not [status for status in statuses if status.startswith("failed:embedding")]
    assert statuses["ok"] == sum(r.counts.embedded for r in records) > 0
    embedded_by = {
        model
        for model, status in zip(
            rows["embedding_model"].to_pylist(), rows["embedding_status"].to_pylist(), strict=True
        )
        if status == "ok"
    }
    assert embedded_by == {TITAN_MODEL_ID}
    fault_report.record(
        fault="embedding: Titan throttled for 30 s",
        injected=f"local Bedrock answering every call 429 ThrottlingException for"
        f" {THROTTLED_SECONDS:g} s of wall time ({bedrock_server.throttled} calls throttled)",
        settings=settings,
        source_sales=day_of(demo_source_sales(workspace.sales_db), QUIET_DAY),
        records=records,
        fix=bedrock_server.reset,
        expect_status="SUCCEEDED",
    )


def test_titan_answering_the_wrong_dimension_fails_the_run_naming_both_lengths(
    workspace: DemoPaths, bedrock_server: FakeBedrock, fault_report: FaultReport
) -> None:
    """Vectors of another length than the configured one mean the model id or
    `embedder.dimension` names another deployment: by the embedder's contract a failure of the
    run, not of one photo, since every photo would fail alike and a day of rows marked failed
    would hide the misconfiguration. Day 1 is exported first; then the server answers 256-long
    vectors: day 1 (nothing to embed) still finishes, day 2 fails naming both lengths and leaves
    none of its rows in the table, day 3 waits; with the right length back, a re-run completes
    all three days."""
    settings = titan_settings(workspace, bedrock_server)
    export(settings, [FIRST_DAY])
    before = key_counts(read_table(settings))
    bedrock_server.dimension_override = 256

    records = export(settings, days())

    assert [r.status for r in records] == [RunStatus.PARTIAL, RunStatus.FAILED]
    assert records[0].counts.written == 0
    assert "length 256" in records[1].message
    assert "configured 1024" in records[1].message
    assert [(e.stage, e.reason) for e in records[1].errors if not e.sale_id] == [
        ("run", "ModelUnavailable")
    ]
    assert key_counts(read_table(settings)) == before  # none of day 2 was written
    fault_report.record(
        fault="embedding: Titan answers the wrong dimension",
        injected="local Bedrock answering 256-long vectors to an embedder configured for 1024,"
        " once day 1 was exported",
        settings=settings,
        source_sales=demo_source_sales(workspace.sales_db),
        records=records,
        fix=bedrock_server.reset,
        expect_status="FAILED",
    )
