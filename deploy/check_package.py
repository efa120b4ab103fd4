"""Import the function's code root as Lambda will, and resolve every time zone from it alone.

    python3.12 -I -S deploy/check_package.py build/lambda/package     # build_package.py
    python -I -S /var/task/check_package.py /var/task                 # deploy/Dockerfile

Run with no site-packages (`-S`) and no PYTHON* variables (`-I`), by the runtime's Python, so
that only what the package holds can be imported: a module the package lacks fails here, not at
03:00. The time zones are read with zoneinfo's search path emptied, as on the Lambda base image,
which has no /usr/share/zoneinfo: they must come from the packaged `tzdata`, through the same
validator the settings use, or every invocation fails with "unknown time zone 'UTC'".

With `--zones-only`, only the time zones are checked: that needs no compiled module, so any
Python 3.11+ on any machine can run it against a package built for another.

Prints one line and exits 0, or exits 1 naming what failed.
"""

from __future__ import annotations

import sys
import zoneinfo

HANDLER_PATH = (
    "smartgo_exporter.aws_lambda",
    "smartgo_exporter.embedders.titan",
    "smartgo_exporter.progress.dynamodb",
    "smartgo_exporter.sinks.iceberg",
    "smartgo_exporter.sources.sql",
    "smartgo_exporter.sources.rest",
    "smartgo_exporter.photo_fetcher",
    "psycopg",
    "pymysql",
    "pyiceberg.catalog.rest",
    "pyarrow.parquet",
)
"""What an export imports on Lambda, the database drivers included: the engine comes from the
SSM parameter at run time, so neither is imported until then."""


class PackageCheckFailed(Exception):
    """The package would not run on Lambda; the message says which module or zone."""


def check_zones() -> int:
    """Every IANA zone opens from the packaged tzdata alone; how many there are."""
    zoneinfo.reset_tzpath(to=[])
    zones = zoneinfo.available_timezones()
    if "UTC" not in zones:
        raise PackageCheckFailed(
            "no time zone data: the package lacks tzdata (a dependency in pyproject.toml), "
            "and the Lambda base image has no /usr/share/zoneinfo"
        )
    for zone in sorted(zones):
        try:
            zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as error:
            raise PackageCheckFailed(f"time zone {zone!r} does not open: {error}") from error
    return len(zones)


def check_imports() -> None:
    """The handler's path imports, and the settings accept a zone through their validator."""
    import importlib

    for module in HANDLER_PATH:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise PackageCheckFailed(f"{module} does not import: {error}") from error
    from smartgo_exporter.aws_lambda import parse_event
    from smartgo_exporter.config import ExportConfig

    for zone in ("UTC", "Europe/Paris", "America/New_York"):
        try:
            ExportConfig(timezone=zone)
        except ValueError as error:
            raise PackageCheckFailed(f"the settings refuse time zone {zone!r}: {error}") from error
    parse_event({"date": "2026-11-26"})


def main(argv: list[str]) -> int:
    zones_only = "--zones-only" in argv
    roots = [argument for argument in argv if argument != "--zones-only"]
    if len(roots) != 1:
        print(f"usage: {sys.argv[0]} [--zones-only] PACKAGE_ROOT", file=sys.stderr)
        return 2
    sys.path.insert(0, roots[0])
    try:
        zones = check_zones()
        if not zones_only:
            check_imports()
    except PackageCheckFailed as error:
        print(f"{roots[0]}: {error}", file=sys.stderr)
        return 1
    opened = f"{zones} time zones opened from the packaged tzdata alone"
    if zones_only:
        print(f"passed: {opened}")
    else:
        python = ".".join(map(str, sys.version_info[:3]))
        print(f"passed: the handler's path imported by Python {python}; {opened}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
