"""Reading runs back for a person: the store's answer, or an error that names the store, never
a "no runs" that only means the store could not be read; and the store is closed either way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from smartgo_exporter import run_history
from smartgo_exporter.config import Settings
from smartgo_exporter.errors import ProgressStoreUnavailable
from smartgo_exporter.run_records import RunRecord


class Store:
    """Answers `recent` with nothing, or fails; remembers being closed."""

    def __init__(self, failure: Exception | None = None) -> None:
        self.failure = failure
        self.closed = False

    def recent(self, limit: int) -> list[RunRecord]:
        if self.failure is not None:
            raise self.failure
        return []

    def close(self) -> None:
        self.closed = True


SOURCE = {"type": "sql", "url": "sqlite:///sales.db", "table": "sales"}


def opening(monkeypatch: pytest.MonkeyPatch, store: Store) -> None:
    def load(*_: Any, **__: Any) -> Store:
        return store

    monkeypatch.setattr(run_history, "load_progress_store", load)


def test_the_store_is_closed_after_it_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store()
    opening(monkeypatch, store)
    assert run_history.recent_runs(Settings(source=SOURCE), limit=5) == []
    assert store.closed


def test_a_store_that_cannot_answer_is_closed_and_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    store = Store(OSError("disk I/O error"))
    opening(monkeypatch, store)
    settings = Settings(
        source=SOURCE, progress={"type": "sqlite", "path": tmp_path / "progress.db"}
    )
    with pytest.raises(ProgressStoreUnavailable) as raised:
        run_history.recent_runs(settings, limit=5)
    assert str(raised.value) == (
        f"the progress store (SQLite file {tmp_path / 'progress.db'}) cannot be read:"
        " disk I/O error"
    )
    assert store.closed


def test_a_dynamodb_store_is_named_by_its_table(monkeypatch: pytest.MonkeyPatch) -> None:
    opening(monkeypatch, Store(RuntimeError("ResourceNotFoundException")))
    settings = Settings(
        source=SOURCE, progress={"type": "dynamodb", "stage": "prod", "region": "eu-west-1"}
    )
    with pytest.raises(ProgressStoreUnavailable, match=r"\(DynamoDB table smartgo-exporter-prod-"):
        run_history.recent_runs(settings, limit=5)
