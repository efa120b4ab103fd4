"""The commits of one export call, shared by its days, so that a range of small days is not
a commit a day.

A commit costs about the same whether it holds ten rows or ten thousand (planning the files it
rewrites, writing manifests, the catalog's round trip), and a day ends with one (it removes
what the source no longer has). So a day that has gathered its last batch does not commit: it
waits, holding its lease, for a commit that carries its end, which is the next one for any
reason (`commit_rows` rows gathered, the first of them gathered `commit_seconds` ago,
`MAX_DAYS_PER_COMMIT` days waiting, the last day of the call, a read that failed or stopped
early). Its run is recorded once that commit has landed,
so a record never claims rows the table does not hold; a crash before then leaves the day's
record RUNNING and none of its rows in the table, and the next run redoes it.

    commits = DayCommits(table, table_thread, commit_rows, commit_seconds)
    await commits.add(finished, record)                       # may commit, at commit_rows
    await commits.end_day(record, tenant_ids, now=is_last)    # returns once the day landed
    await commits.flush()                                     # what still waits, at the end
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from smartgo_exporter.batches import FinishedBatch, Gathering
from smartgo_exporter.run_records import RunCounts, RunRecord
from smartgo_exporter.sinks.iceberg import SalesTable

MAX_DAYS_PER_COMMIT = 31
"""Days that may wait for one commit: each holds its lease until then, and a re-run of a
range that changes nothing gathers no rows, so the rows alone would not bound them."""

CommittedCallback = Callable[[RunRecord, RunCounts], None]
"""Told of each run's counts as a commit holding its batches lands."""


@dataclasses.dataclass
class DayCommits:
    """One Gathering for the days of an export call, and the commits that empty it, one at a
    time and in order on the table's thread (a later commit's row of a key must win)."""

    table: SalesTable
    table_thread: ThreadPoolExecutor
    commit_rows: int
    commit_seconds: float
    on_committed: CommittedCallback | None = None
    gathering: Gathering = dataclasses.field(default_factory=Gathering)
    failure: BaseException | None = None
    """The error a commit failed with: the batches it held are lost, so every day still in
    flight fails with it too (a table that refused one commit refuses the next)."""
    _landed: dict[str, asyncio.Future[None]] = dataclasses.field(default_factory=dict)
    _turn: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    _gathering_since: float | None = None
    """When the first batch the next commit holds was gathered (`time.monotonic`)."""

    async def add(self, finished: FinishedBatch, record: RunRecord) -> None:
        """Gather a finished batch of `record`'s run; commit once `commit_rows` are gathered,
        or the first of them waited `commit_seconds`."""
        self._raise_failure()
        self.gathering.add(finished, record)
        if self._gathering_since is None:
            self._gathering_since = time.monotonic()
        if self._due():
            await self.commit()

    async def end_day(
        self, record: RunRecord, tenant_ids: Sequence[str] | None, *, now: bool
    ) -> None:
        """Say the day has gathered its last batch (`Gathering.end_day`), and return once a
        commit holding its end has landed; with `now`, that is a commit made at once. Raises
        what that commit failed with."""
        self._raise_failure()
        self.gathering.end_day(record, tenant_ids)
        landed = self._landed[record.run_id] = asyncio.get_running_loop().create_future()
        if now or self._due() or self.gathering.days_ended >= MAX_DAYS_PER_COMMIT:
            # Its failure is `landed`'s too, raised below.
            with contextlib.suppress(Exception):
                await self.commit()
        await landed

    async def flush(self) -> None:
        """Commit the days still waiting, if any: no later day will bring a commit."""
        if self.gathering.days_ended and self.failure is None:
            await self.commit()

    async def commit(self) -> None:
        """Commit everything gathered now, after the commit before it."""
        async with self._turn:
            commit = self.gathering.take()
            self._gathering_since = None
            landed = [self._landed.pop(run_id) for run_id in commit.ended]
            try:
                self._raise_failure()
                call = contextvars.copy_context().run
                committed = await asyncio.get_running_loop().run_in_executor(
                    self.table_thread, call, commit.apply, self.table
                )
            except Exception as error:
                self.failure = self.failure or error
                # The days that ended while it was under way wait for a commit too: none will
                # come now.
                landed += self._landed.values()
                self._landed.clear()
                for future in landed:
                    future.set_exception(error)
                raise
            except BaseException:
                for future in landed:
                    future.cancel()
                raise
            for record, counts in committed:
                if self.on_committed is not None:
                    self.on_committed(record, counts)
            for future in landed:
                future.set_result(None)

    def _due(self) -> bool:
        since = self._gathering_since
        return self.gathering.rows >= self.commit_rows or (
            since is not None and time.monotonic() - since >= self.commit_seconds
        )

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure
