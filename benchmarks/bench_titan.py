"""Titan throughput against a Bedrock wire-format server with a fixed latency, by concurrency.

    .venv/bin/python benchmarks/bench_titan.py --latency 0.1 --concurrency 1 4 16

Bedrock's latency, not this machine, bounds the Titan path: with C calls in flight and L seconds
per call, the ceiling is C / L images per second. The goal is at least 0.9 of it, so what the
embedder adds per call (resizing, base64, SigV4 signing, botocore) must stay small beside L.

The server is `smartgo_exporter.demo.bedrock_local` (it checks each request's signature and
image as Bedrock does) holding every request `--latency` seconds, in another process so that
its work does not share the client's interpreter lock.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from bench_local_model import synthetic_photos
from smartgo_exporter.config import TitanEmbedderConfig
from smartgo_exporter.demo.bedrock_local import serve_bedrock
from smartgo_exporter.embedders.titan import TitanEmbedder

ACCESS_KEY = "AKIABENCHMARKTITAN01"
SECRET_KEY = "bench-titan-secret-key"
REGION = "us-east-1"


def serve(latency: float) -> None:
    """The server process: print the endpoint, then hold every request `latency` seconds."""
    with serve_bedrock(access_key=ACCESS_KEY, secret_key=SECRET_KEY) as bedrock:
        bedrock.delay_seconds = latency
        print(bedrock.endpoint_url, flush=True)
        sys.stdin.read()  # until the benchmark closes our stdin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per call")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--calls-per-slot", type=int, default=20, help="images per concurrency")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.latency)
        return

    os.environ.update(
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_DEFAULT_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
    )
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--latency", str(args.latency)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        endpoint = server.stdout.readline().strip()
        photos = synthetic_photos(max(args.concurrency) * args.calls_per_slot)
        print(f"latency {args.latency * 1000:.0f} ms per call; photos of 800x800 JPEG")
        print(
            f"{'concurrency':>11}{'images':>8}{'seconds':>9}{'img/s':>8}{'ceiling':>9}{'ratio':>7}"
        )
        for concurrency in args.concurrency:
            config = TitanEmbedderConfig(
                endpoint_url=endpoint, region=REGION, concurrency=concurrency
            )
            embedder = TitanEmbedder(config)
            embedder.embed(photos[:concurrency])  # connections opened, clients warmed
            images = photos[: concurrency * args.calls_per_slot]
            start = time.perf_counter()
            vectors = embedder.embed(images)
            seconds = time.perf_counter() - start
            failed = sum(not hasattr(vector, "shape") for vector in vectors)
            if failed:
                raise RuntimeError(f"{failed} of {len(images)} calls failed")
            rate, ceiling = len(images) / seconds, concurrency / args.latency
            print(
                f"{concurrency:>11}{len(images):>8}{seconds:>9.2f}{rate:>8.1f}"
                f"{ceiling:>9.1f}{rate / ceiling:>7.2f}"
            )
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
