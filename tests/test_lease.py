"""The one-run lease, on every progress store: one holder at a time, lapsing on its own, and
never standing in an export's way when the store itself is down."""

import multiprocessing
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError
from structlog.testing import capture_logs

from smartgo_exporter.config import DynamoProgressConfig, ProgressConfig, SqliteProgressConfig
from smartgo_exporter.progress import NonFatalProgressStore, ProgressStore, load_progress_store
from smartgo_exporter.progress.dynamodb import DynamoProgressStore
from smartgo_exporter.progress.sqlite import SqliteProgressStore
from tests.servers.moto import MotoServer
from tests.servers.refused import refused_port

LEASE = "window:smartgo:2026-11-26"
RACERS = 4


@pytest.fixture(params=["sqlite", "dynamodb"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> ProgressConfig:
    """A fresh store's configuration, of each kind: processes share a store through it."""
    if request.param == "sqlite":
        return SqliteProgressConfig(path=tmp_path / "progress.db")
    moto: MotoServer = request.getfixturevalue("moto_server")
    return DynamoProgressConfig(
        type="dynamodb",
        table=f"leases-{uuid.uuid4().hex[:12]}",
        region=moto.region,
        endpoint_url=moto.endpoint_url,
        create_table=True,
    )


@pytest.fixture
def store(config: ProgressConfig) -> Iterator[ProgressStore]:
    opened = load_progress_store(config)
    yield opened
    opened.close()


def test_a_held_lease_cannot_be_taken_by_another_owner(store: ProgressStore) -> None:
    assert store.acquire_lease(LEASE, "run-a", ttl_seconds=60)
    assert not store.acquire_lease(LEASE, "run-b", ttl_seconds=60)


def test_the_holder_can_take_its_lease_again(store: ProgressStore) -> None:
    assert store.acquire_lease(LEASE, "run-a", ttl_seconds=60)
    assert store.acquire_lease(LEASE, "run-a", ttl_seconds=60)
    assert not store.acquire_lease(LEASE, "run-b", ttl_seconds=60)


def test_an_expired_lease_can_be_taken_over(store: ProgressStore) -> None:
    assert store.acquire_lease(LEASE, "crashed-run", ttl_seconds=0.2)
    time.sleep(0.3)
    assert store.acquire_lease(LEASE, "run-b", ttl_seconds=60)
    assert not store.renew_lease(LEASE, "crashed-run", ttl_seconds=60)
    assert not store.acquire_lease(LEASE, "crashed-run", ttl_seconds=60)


def test_renewing_keeps_a_lease_past_its_first_time_to_live(store: ProgressStore) -> None:
    assert store.acquire_lease(LEASE, "run-a", ttl_seconds=0.2)
    assert store.renew_lease(LEASE, "run-a", ttl_seconds=60)
    time.sleep(0.3)
    assert not store.acquire_lease(LEASE, "run-b", ttl_seconds=60)


def test_a_released_lease_is_not_renewed(store: ProgressStore) -> None:
    assert store.acquire_lease(LEASE, "run-a", ttl_seconds=60)
    store.release_lease(LEASE, "run-a")
    assert not store.renew_lease(LEASE, "run-a", ttl_seconds=60)
    assert store.acquire_lease(LEASE, "run-b", ttl_seconds=60)


def test_release_by_another_owner_does_nothing(store: ProgressStore) -> None:
    assert store.acquire_lease(LEASE, "run-a", ttl_seconds=60)
    store.release_lease(LEASE, "run-b")
    assert not store.acquire_lease(LEASE, "run-b", ttl_seconds=60)
    store.release_lease(LEASE, "run-a")
    assert store.acquire_lease(LEASE, "run-b", ttl_seconds=60)


def test_leases_of_different_windows_are_independent(store: ProgressStore) -> None:
    assert store.acquire_lease("window:smartgo:2026-11-25", "run-a", ttl_seconds=60)
    assert store.acquire_lease("window:smartgo:2026-11-26", "run-b", ttl_seconds=60)


def test_a_lease_needs_a_positive_time_to_live(store: ProgressStore) -> None:
    with pytest.raises(ValueError, match="positive"):
        store.acquire_lease(LEASE, "run-a", ttl_seconds=0)


def _race(
    config: ProgressConfig, owner: str, start: object, results: object, open_first: bool
) -> None:
    if open_first:
        store = load_progress_store(config)
        start.wait()  # type: ignore[attr-defined]
    else:
        start.wait()  # type: ignore[attr-defined]
        store = load_progress_store(config)
    results.put((owner, store.acquire_lease(LEASE, owner, ttl_seconds=60)))  # type: ignore[attr-defined]
    store.close()


def _race_for_the_lease(config: ProgressConfig, *, open_first: bool) -> list[bool]:
    """Whether each of RACERS processes, released together, took the lease."""
    # fork, not spawn: a spawned child would spend seconds importing the package before racing.
    context = multiprocessing.get_context("fork")
    start, results = context.Barrier(RACERS), context.Queue()
    racers = [
        context.Process(target=_race, args=(config, f"run-{n}", start, results, open_first))
        for n in range(RACERS)
    ]
    for racer in racers:
        racer.start()
    outcomes = dict(results.get(timeout=30) for _ in racers)
    for racer in racers:
        racer.join(timeout=30)
    return sorted(outcomes.values())


def test_processes_racing_for_one_lease_yield_exactly_one_winner(config: ProgressConfig) -> None:
    load_progress_store(config).close()  # the table or file exists before the race starts
    assert _race_for_the_lease(config, open_first=True) == [False] * (RACERS - 1) + [True]


def test_processes_opening_a_new_sqlite_store_together_yield_exactly_one_winner(
    tmp_path: Path,
) -> None:
    # Two scheduled runs started at once on a fresh machine both create the file and switch it
    # to WAL; a racer that could not open it would run without a lease.
    for attempt in range(10):
        config = SqliteProgressConfig(path=tmp_path / f"progress-{attempt}.db")
        assert _race_for_the_lease(config, open_first=False) == [False] * (RACERS - 1) + [True]


def _unreachable(kind: str, tmp_path: Path) -> tuple[ProgressStore, type[Exception]]:
    """A store that cannot be reached, and what it raises when used."""
    if kind == "sqlite":
        broken = SqliteProgressStore(tmp_path / "progress.db")
        broken.close()
        return broken, sqlite3.ProgrammingError
    # Nothing listens on the port: every call fails to connect, after a single attempt.
    client = MotoServer(f"http://127.0.0.1:{refused_port()}").client(
        "dynamodb", config=Config(connect_timeout=1, retries={"total_max_attempts": 1})
    )
    return DynamoProgressStore(client, "nowhere"), EndpointConnectionError


@pytest.mark.parametrize("kind", ["sqlite", "dynamodb"])
@pytest.mark.usefixtures("moto_server")  # its fake credentials, so the client can sign
def test_an_unreachable_store_grants_the_lease_through_the_wrapper(
    kind: str, tmp_path: Path
) -> None:
    unreachable, error = _unreachable(kind, tmp_path)
    with pytest.raises(error):
        unreachable.acquire_lease(LEASE, "run-a", ttl_seconds=60)
    store = NonFatalProgressStore(unreachable)
    with capture_logs() as logs:
        assert store.acquire_lease(LEASE, "run-a", ttl_seconds=60)
        assert store.acquire_lease(LEASE, "run-b", ttl_seconds=60)
        assert store.renew_lease(LEASE, "run-a", ttl_seconds=60)
        store.release_lease(LEASE, "run-a")
    assert [entry["log_level"] for entry in logs] == ["warning"] * 4
    assert all(entry["lease"] == LEASE for entry in logs)
