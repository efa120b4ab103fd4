"""Bytes per sale through Ray's object store, and what the one committer does with them.

Run with the dev environment: `.venv/bin/python benchmarks/bench_ray_bytes.py`. A Ray
backfill moves each batch twice through the object store: a reading task sends it, with its
photos, to a model actor; the actor sends the rows that changed, with their vectors, to the
driver. This runs those two stages of `ray_runner` in this process, without Ray, on `--sales`
sales of one day each with its own 800x800 JPEG (`photo_workload`), and measures the items
they hand on (the pickled dataclass in the dataset's one binary column, which is what the
object store holds): per sale, read side and model side, once with the local model's vectors
and once with 1024-float vectors made as Titan's are (a stub, no Bedrock). It also times the
driver's share of a sale (unpickling its item and gathering it for a commit), the work no
added node takes off the one committer.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from photo_workload import serve_photos, write_photos, write_sales_with_photos
from sales_data import BUSINESS_DAY, exporter_settings
from smartgo_exporter.batches import BatchSteps, Gathering
from smartgo_exporter.config import Settings
from smartgo_exporter.embedders import load_embedder
from smartgo_exporter.logs import configure_logging
from smartgo_exporter.ray_runner import (
    ITEM,
    _DayRead,
    _DayToRead,
    _Embedded,
    _Fetched,
    _ModelActor,
    _pack,
    _pack_item,
    _read_day,
    _unpack_item,
)
from smartgo_exporter.run_records import RunRecord
from smartgo_exporter.runs import new_run_record
from smartgo_exporter.sinks.iceberg import SalesTable
from smartgo_exporter.windows import business_day

TITAN_DIM = 1024


class TitanShapedEmbedder:
    """Unit vectors of Titan's size for every photo: the bytes of Titan's rows, without AWS."""

    model_id = "amazon.titan-embed-image-v1"
    dim = TITAN_DIM
    include_title = False

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def embed(self, images: list[bytes], captions: list[str | None]) -> list[Any]:
        vectors = self.rng.standard_normal((len(images), self.dim), dtype=np.float32)
        return list(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))


def read_side(settings: Settings, model_id: str, include_title: bool) -> list[bytes]:
    """The items one reading task of the day sends to the model actors, its _DayRead last."""
    order = _pack(_DayToRead(BUSINESS_DAY, "bench-run", datetime.now(UTC), 0, ()))
    items = _read_day(
        order,
        settings=settings,
        model_id=model_id,
        include_title=include_title,
        retry_failed=False,
        log_level=logging.WARNING,
    )
    return [item[ITEM] for item in items]


def driver_seconds(payloads: list[bytes], record: RunRecord) -> float:
    """The driver's time for the actors' items: unpickle each and gather it for a commit."""
    gathering = Gathering()
    start = time.perf_counter()
    for payload in payloads:
        item = _unpack_item(payload)
        if isinstance(item, _Embedded) and item.finished is not None:
            gathering.add(item.finished, record)
    return time.perf_counter() - start


def measure(sales: int, batch_size: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-ray-bytes-") as folder:
        root = Path(folder)
        write_photos(root / "photos", sales)
        with serve_photos(root / "photos") as base_url:
            write_sales_with_photos(root / "sales.db", sales, base_url)
            (root / "work").mkdir()
            settings = exporter_settings(root / "sales.db", root / "work", batch_size=batch_size)
            settings.photos.allow_networks = ["127.0.0.0/8"]  # the photo server, on loopback
            SalesTable.open(settings.table, source="smartgo")  # the tasks open it, not create it
            local = load_embedder(settings.embedder)
            sent = read_side(settings, local.model_id, local.include_title)
        fetched: list[_Fetched] = [_unpack_item(p) for p in sent]
        assert isinstance(fetched.pop(), _DayRead)
        photos = sum(len(f.prepared.fetched) for f in fetched)
        if photos != sales:
            raise RuntimeError(f"the reading task fetched {photos} photos for {sales} sales")
        photo_bytes = sum(len(photo.data) for f in fetched for _, photo in f.prepared.fetched)
        print(f"{sales:,} sales, one photo each ({photo_bytes / sales / 1024:,.1f} KiB a photo)")
        print(f"{'model':<34} {'stage':<26} {'bytes/sale':>11}")
        read_bytes = sum(len(p) for p in sent)
        print(f"{'(either)':<34} {'read task -> model actor':<26} {read_bytes / sales:11,.0f}")
        record = new_run_record(
            settings, business_day(BUSINESS_DAY, settings.export.timezone), "bench"
        )
        actor = _ModelActor(settings.embedder, settings.export, logging.WARNING)
        titan = TitanShapedEmbedder()
        titan_steps = BatchSteps(settings.export, titan.model_id, titan.include_title)
        outputs = {
            f"local ({local.model_id[:20]}, {local.dim})": [
                actor({ITEM: np.array([p], dtype=object)})[ITEM][0] for p in sent[:-1]
            ],
            f"titan-shaped ({TITAN_DIM} floats)": [
                _pack_item(
                    _Embedded(
                        f.day,
                        f.shard,
                        f.sequence,
                        titan_steps.finish(f.prepared, titan, "bench-run"),  # type: ignore[arg-type]
                    )
                )
                for f in fetched
            ],
        }
        for name, payloads in outputs.items():
            sent_bytes = sum(len(p) for p in payloads)
            seconds = driver_seconds(payloads, record)
            print(f"{name:<34} {'model actor -> driver':<26} {sent_bytes / sales:11,.0f}")
            print(f"{name:<34} {'driver: unpickle + gather':<26} {sales / seconds:8,.0f} sales/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sales", type=int, default=1_000)
    parser.add_argument("--batch-size", type=int, default=500)
    options = parser.parse_args()
    configure_logging("WARNING")
    measure(options.sales, options.batch_size)


if __name__ == "__main__":
    main()
