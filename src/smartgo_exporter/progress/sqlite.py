"""The embedded progress store: one SQLite file, no server.

Records are JSON documents beside a few indexed columns (day, start time, status, expiry), so the
three questions the store answers are index lookups and the record can grow fields without a
migration.

Leases are rows of their own table. Taking one is a single INSERT ... ON CONFLICT DO UPDATE ...
WHERE statement. A statement that writes takes the database's write lock before it reads, as
BEGIN IMMEDIATE would for a separate read and write, so between processes sharing the file the
check and the write are one atomic step, and a competing process waits for the lock (the
connection's busy timeout) rather than failing. Whether it won is the statement's row count.
"""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from smartgo_exporter.progress import RunSummary, check_lease_ttl, summarise
from smartgo_exporter.run_records import RunRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    business_date TEXT NOT NULL,
    started_at TEXT NOT NULL,
    status TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_day ON runs (business_date, started_at);
CREATE INDEX IF NOT EXISTS runs_by_start ON runs (started_at);
CREATE INDEX IF NOT EXISTS runs_by_expiry ON runs (expires_at);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""


class SqliteProgressStore:
    """ProgressStore in a local SQLite file; expired records are purged on every save."""

    def __init__(
        self, path: Path, *, retention_days: int = 90, busy_timeout_seconds: float = 5
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=busy_timeout_seconds, check_same_thread=False)
        self._set_up(busy_timeout_seconds)
        self.retention_days = retention_days

    def _set_up(self, busy_timeout_seconds: float) -> None:
        """WAL and the schema, retried while another process sets up the same new file.

        Switching a new file to WAL can fail at once with "database is locked" while another
        connection switches it, without waiting in the busy handler; a run that gave up here
        would work without its store, and so without a lease.
        """
        deadline = time.monotonic() + busy_timeout_seconds
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                # A sync of the disk per write cost a range four syncs a day (its record twice,
                # its lease twice). In WAL mode NORMAL loses no write to a crash of the process,
                # only the last ones to a loss of power, and losing those is what a killed run
                # is already made safe against: a RUNNING record is closed by the next run, a
                # lease lapses, and the table's upserts make a day exported twice land once.
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
                return
            except sqlite3.OperationalError as error:
                if error.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def save(self, record: RunRecord) -> None:
        now = _iso(datetime.now(UTC))
        with self._db:
            self._db.execute("DELETE FROM runs WHERE expires_at <= ?", (now,))
            # A finished record is never replaced by a RUNNING one: a late progress update from
            # a slow or retried writer must not undo a final status.
            self._db.execute(
                """
                INSERT INTO runs (run_id, business_date, started_at, status, expires_at, record)
                VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT (run_id) DO UPDATE SET
                    status = excluded.status, expires_at = excluded.expires_at,
                    record = excluded.record
                WHERE runs.status = 'RUNNING' OR excluded.status != 'RUNNING'
                """,
                (
                    record.run_id,
                    record.business_date.isoformat(),
                    _iso(record.started_at),
                    str(record.status),
                    _iso(record.expires_at),
                    json.dumps(record.to_document()),
                ),
            )

    def runs_on(self, day: date) -> list[RunRecord]:
        return self._select(
            "business_date = ? AND expires_at > ? ORDER BY started_at", day.isoformat()
        )

    def recent(self, limit: int) -> list[RunRecord]:
        return self._select("expires_at > ? ORDER BY started_at DESC LIMIT ?", limit=limit)

    def summary(self) -> RunSummary:
        return summarise(self._select("expires_at > ? ORDER BY started_at"))

    def last_succeeded_day(self) -> date | None:
        row = self._db.execute(
            "SELECT max(business_date) FROM runs WHERE status = 'SUCCEEDED' AND expires_at > ?",
            (_iso(datetime.now(UTC)),),
        ).fetchone()
        return date.fromisoformat(row[0]) if row and row[0] else None

    def acquire_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        check_lease_ttl(ttl_seconds)
        now = time.time()
        with self._db:
            taken = self._db.execute(
                """
                INSERT INTO leases (name, owner, expires_at) VALUES (?, ?, ?)
                ON CONFLICT (name) DO UPDATE SET
                    owner = excluded.owner, expires_at = excluded.expires_at
                WHERE leases.owner = excluded.owner OR leases.expires_at <= ?
                """,
                (name, owner, now + ttl_seconds, now),
            )
        return taken.rowcount == 1

    def renew_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        check_lease_ttl(ttl_seconds)
        with self._db:
            renewed = self._db.execute(
                "UPDATE leases SET expires_at = ? WHERE name = ? AND owner = ?",
                (time.time() + ttl_seconds, name, owner),
            )
        return renewed.rowcount == 1

    def release_lease(self, name: str, owner: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))

    def close(self) -> None:
        self._db.close()

    def _select(self, where: str, *args: Any, limit: int | None = None) -> list[RunRecord]:
        now = _iso(datetime.now(UTC))
        params = (*args, now) if limit is None else (*args, now, limit)
        rows = self._db.execute(f"SELECT record FROM runs WHERE {where}", params).fetchall()  # noqa: S608  (where is one of this module's literals)
        return [RunRecord.from_document(json.loads(row[0])) for row in rows]


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")
