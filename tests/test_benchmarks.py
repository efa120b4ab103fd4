"""Each benchmark script, run at a small N so that none of them rots between measurements.

They run as a user runs them, `python benchmarks/<script>.py`, in a subprocess; the tests check
that each finishes and prints every figure it promises, never the figures' values: timings on a
shared machine prove nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def run_benchmark(script: str, *arguments: str, timeout: float = 600) -> str:
    finished = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    return finished.stdout


def test_the_local_model_benchmark_prints_decode_model_and_both() -> None:
    output = run_benchmark("bench_local_model.py", "--images", "16", "--repeat", "1")

    for figure in ("decode + preprocess alone", "model alone", "decode + model (embed, "):
        assert figure in output


def test_the_export_benchmark_compares_the_limit_cold_warm_sequential_and_daft(
    tmp_path: Path,
) -> None:
    output = run_benchmark("bench_export.py", "--sales", "40", "--json", str(tmp_path / "f.json"))

    for figure in (
        "photos/s delivered",
        "limit (decode overlapped with model)",
        "limit (one worker, decode then model)",
        "draft-mode decoding: max cosine distance",
        "exporter, cold",
        "exporter, warm re-run",
        "backfill, 31 days, cold",
        "backfill, warm re-run",
        "sequential script",
    ):
        assert figure in output
    [daft] = [line.split() for line in output.splitlines() if line.startswith("daft ")]
    assert float(daft[1]) > 0  # its seconds: Daft ran, the row is not a "not run" note
    assert (tmp_path / "f.json").stat().st_size > 0


def test_the_titan_benchmark_prints_a_row_per_concurrency() -> None:
    output = run_benchmark(
        "bench_titan.py", "--latency", "0.05", "--concurrency", "1", "4", "--calls-per-slot", "2"
    )

    rows = [line.split() for line in output.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "4"]


def test_the_sql_to_iceberg_benchmark_loads_twice_with_each_system_and_counts_rows() -> None:
    output = run_benchmark("bench_sql_to_iceberg.py", "--sales", "500")

    rows = [line.split()[:2] for line in output.splitlines()]
    for system in ("exporter", "dlt"):
        assert [system, "first"] in rows
        assert [system, "re-run"] in rows
        assert f"{system} table: 500 rows, 500 distinct keys: ok" in output
    assert "exporter / dlt, first:" in output
    assert "exporter / dlt, re-run:" in output


def test_the_memory_benchmark_prints_a_row_per_window() -> None:
    output = run_benchmark("bench_memory.py", "--sales", "300", "1000")

    assert "peak RSS" in output
    rows = [line.split() for line in output.splitlines() if line.strip()[:1].isdigit()]
    assert [row[:2] for row in rows] == [["300", "sales"], ["1,000", "sales"]]
    assert all(row[3] != "-" and row[5] == "MiB" for row in rows)  # sales/s, then peak RSS


def test_the_memory_benchmark_prints_a_row_per_part_size_with_camera_photos() -> None:
    output = run_benchmark(
        "bench_memory.py", "--camera-photos", "6", "--part-bytes", "20000000", str(sys.maxsize)
    )

    assert "each with its own 4032x3024 JPEG" in output
    rows = [line.split() for line in output.splitlines() if line.strip().startswith("6 camera")]
    assert len(rows) == 2
    assert all(row[4] != "-" and row[6] == "MiB" for row in rows)
    assert "part_bytes 20,000,000; embedded 6, failed 0" in " ".join(rows[0])
    assert "whole batches; embedded 6, failed 0" in " ".join(rows[1])


def test_the_table_growth_benchmark_prints_a_first_run_and_a_rerun_per_table_size() -> None:
    output = run_benchmark(
        "bench_table_growth.py",
        "--rows",
        "0",
        "3000",
        "--day-sales",
        "200",
        "--commit-rows",
        "1000",
        "--window-sales",
        "0",
    )

    rows = [line.split() for line in output.splitlines() if line.strip()[:1].isdigit()]
    assert [(row[0], row[2]) for row in rows] == [
        ("0", "first"),
        ("0", "re-run"),
        ("3,000", "first"),
        ("3,000", "re-run"),
    ]
    assert all(row[-1] == "MiB" for row in rows)


def test_the_table_growth_benchmark_compares_a_window_s_rerun_with_its_first_load() -> None:
    output = run_benchmark(
        "bench_table_growth.py", "--rows", "--window-sales", "300", "--window-days", "3"
    )

    lines = [line.split() for line in output.splitlines() if line.strip()]
    runs = {line[0]: line for line in lines if line[0] in ("first", "re-run")}
    assert runs["first"][3:5] == ["300", "0"]  # written, unchanged
    assert runs["re-run"][3:5] == ["0", "300"]
    assert "window of 300 sales over 3 days" in output
    assert "x faster than the first load" in output


def test_the_stored_compare_benchmark_prints_planning_and_comparing_times() -> None:
    output = run_benchmark("bench_stored_compare.py", "--sales", "50", "--repeat", "1")

    [row] = [line.split() for line in output.splitlines() if line.strip().startswith("50 ")]
    assert len(row) == 4


def test_the_fit_benchmark_prints_retrieval_and_classification_for_pad_and_crop() -> None:
    output = run_benchmark("bench_fit.py", "--products", "16")

    rows = {
        " ".join(line.split("|")[0].split()): line.split("|")[1:] for line in output.splitlines()
    }
    queries_per_canvas = {
        "all": 16,
        "non-square": 12,
        "square 1:1": 4,
        "wide 4:3": 4,
        "wide 16:9": 4,
        "tall 3:4": 4,
    }
    for canvas, count in queries_per_canvas.items():
        recall, alike = rows[f"{canvas} {count}"]
        assert [value[-1] for value in recall.split()] == ["%", "%"]  # pad, crop
        assert len(alike.split()) == 3  # pad, crop, the best possible
    for version in ("original", "wide 2:1", "tall 1:2"):
        top1, top5 = rows[version]
        assert all(value.endswith("/5") for value in (*top1.split(), *top5.split()))


def test_the_pricing_benchmark_prints_recall_price_errors_and_index_figures() -> None:
    output = run_benchmark(
        "bench_pricing.py", "--products", "40", "--shots", "2", "--sizes", "2000", "--queries", "20"
    )

    for figure in ("recall@1", "recall@5", "recall@10", "category median", "global median"):
        assert figure in output
    assert "as shipped" in output
    assert "coverage" in output
    assert "index update after a day's export" in output
    assert "index of 2,000 vectors" in output
    assert "p95" in output


def test_the_pricing_benchmark_on_the_demo_store_prints_recall_and_price_errors() -> None:
    output = run_benchmark("bench_pricing.py", "--demo", "--demo-sales", "120")

    assert "recall@10" in output
    assert "category median of its store" in output
    assert "as shipped" in output


def test_the_embedding_benchmark_prints_recall_for_each_candidate() -> None:
    output = run_benchmark("bench_embedding.py", "--products", "12", "--shots", "2")

    rows = [line for line in output.splitlines() if line.rstrip().endswith(tuple("0123456789"))]
    names = [line.split("  ")[0] for line in rows if "%" in line]
    assert "LocalEmbedder (shipped, v2)" in names
    assert "crop (today)" in names
    assert all(line.count("%") == 3 for line in rows if "%" in line)  # recall @1, @5, @10


def test_the_lambda_memory_benchmark_invokes_the_handler_and_prints_its_memory_size() -> None:
    output = run_benchmark("bench_lambda_memory.py", "--sales", "4", "--latency", "0")

    assert "4 sales, each with its own 4032x3024 JPEG" in output
    assert "SUCCEEDED in" in output
    assert "written 4, embedded 4, failed 0" in output
    [line] = [line for line in output.splitlines() if line.startswith("peak RSS")]
    assert line.split()[3] == "MiB"
    assert line.split("MemorySize ")[1].isdigit()


def test_the_ray_bytes_benchmark_prints_bytes_per_sale_for_each_stage_and_model() -> None:
    output = run_benchmark("bench_ray_bytes.py", "--sales", "20", "--batch-size", "10")

    assert "20 sales, one photo each" in output
    for stage in ("read task -> model actor", "model actor -> driver", "unpickle + gather"):
        assert stage in output
    assert output.count("titan-shaped (1024 floats)") == 2


def test_the_commit_rate_benchmark_prints_commits_a_minute_for_each_catalog() -> None:
    output = run_benchmark("bench_commit_rate.py", "--commits", "2", "--rows", "50")

    rows = [
        line.split() for line in output.splitlines() if line.rstrip().endswith(tuple("0123456789"))
    ]
    assert [row[0] for row in rows] == ["sql", "seaweedfs"]
    assert all(float(row[-2]) > 0 for row in rows)  # commits a minute
