"""The Iceberg catalog: what a `[table.catalog]` section gives pyiceberg, and opening it.

pyiceberg picks the catalog by `type`: "sql" (the local default), "rest", "glue", or "s3tables",
which is AWS S3 Tables' Iceberg REST endpoint with SigV4 signing:

    [table.catalog]
    type = "s3tables"
    warehouse = "arn:aws:s3tables:eu-west-1:111122223333:bucket/pricing-intelligence"
    region = "eu-west-1"          # optional: the ARN's region is the default

Credentials come from boto3's default chain (the Lambda role, a profile, the environment), for
the catalog and for the Parquet files alike.

Apart from the table (`sinks.iceberg`): the index reaches its own files with these properties
and no table (`index_storage`), and a catalog's errors are told with its secrets blotted out
(`redact`) whatever it was asked to do.
"""

from __future__ import annotations

import re
from pathlib import Path

from pyiceberg.catalog import Catalog, load_catalog

from smartgo_exporter.config import TableConfig
from smartgo_exporter.errors import ConfigError, SinkError

CATALOG_TYPES = ("sql", "rest", "glue", "s3tables")

_TABLE_BUCKET_ARN = re.compile(
    r"arn:aws[a-z-]*:s3tables:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):bucket/(?P<bucket>[a-z0-9-]+)"
)
_SECRET_PROPERTY = re.compile(r"secret|token|credential|password", re.IGNORECASE)


def catalog_properties(config: TableConfig) -> dict[str, str]:
    """The properties `load_catalog` is given: "s3tables" expanded into REST with SigV4.

    An explicit property always wins over the expansion, so a test (or a VPC endpoint) changes
    `uri` and `s3.endpoint` and nothing else. "glue" takes `region` for both Glue and S3;
    "rest" and "sql" pass through as written.
    """
    properties = dict(config.catalog)
    kind = properties.get("type", "")
    if kind not in CATALOG_TYPES:
        raise ConfigError(
            "table.catalog.type",
            f"unknown catalog type {kind!r}; use one of {', '.join(CATALOG_TYPES)}"
            if kind
            else f"missing; use one of {', '.join(CATALOG_TYPES)}",
        )
    if kind == "s3tables":
        return _s3tables_properties(properties)
    if kind == "glue" and (region := properties.pop("region", None)):
        properties.setdefault("glue.region", region)
        properties.setdefault("s3.region", region)
    return properties


def _s3tables_properties(properties: dict[str, str]) -> dict[str, str]:
    arn = _TABLE_BUCKET_ARN.fullmatch(properties.get("warehouse", ""))
    if arn is None:
        raise ConfigError(
            "table.catalog.warehouse",
            "must be the table bucket's ARN, arn:aws:s3tables:REGION:ACCOUNT:bucket/NAME",
        )
    region = properties.pop("region", None) or arn["region"]
    if region != arn["region"]:
        # S3 Tables endpoints are regional: the bucket is only reachable in its own region.
        raise ConfigError(
            "table.catalog.region", f"{region} differs from the warehouse ARN's {arn['region']}"
        )
    expanded = {
        "uri": f"https://s3tables.{region}.amazonaws.com/iceberg",
        "rest.sigv4-enabled": "true",
        "rest.signing-name": "s3tables",
        "rest.signing-region": region,
        "s3.region": region,
    }
    return expanded | properties | {"type": "rest"}


def open_catalog(config: TableConfig) -> Catalog:
    """pyiceberg's `load_catalog` with the configured properties; local folders are created."""
    properties = catalog_properties(config)
    uri = properties.get("uri", "")
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    warehouse = properties.get("warehouse", "")
    if warehouse.startswith("file://"):
        Path(warehouse.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    try:
        return load_catalog(config.catalog_name, **properties)
    except Exception as error:
        raise SinkError(
            f"cannot open catalog {config.catalog_name!r}: {redact(error, properties)}"
        ) from error


def redact(error: Exception, properties: dict[str, str]) -> str:
    """The error's text, with any secret-looking catalog property's value blotted out."""
    text = str(error) or type(error).__name__
    for key, value in properties.items():
        if _SECRET_PROPERTY.search(key) and len(value) >= 4:
            text = text.replace(value, "***")
    return text
