"""Where a demo's files live, and the config files that let `smartgo-exporter run` use them."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from smartgo_exporter.demo.server import photo_base_url
from smartgo_exporter.demo.store import SALE_COLUMNS, SALES_TABLE, read_demo_meta


@dataclasses.dataclass(frozen=True, slots=True)
class DemoPaths:
    """Where a demo's files live under one folder; the written config names them relative to it."""

    root: Path

    @property
    def sales_db(self) -> Path:
        return self.root / "sales.db"

    @property
    def photos(self) -> Path:
        return self.root / "photos"

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse"

    @property
    def progress_db(self) -> Path:
        return self.root / "progress.db"

    @property
    def config(self) -> Path:
        return self.root / "smartgo-exporter.toml"

    @property
    def aws_local(self) -> Path:
        """The AWS-local demo's own folder: SeaweedFS's data (its warehouse) and its config."""
        return self.root / "aws-local"

    @property
    def aws_local_config(self) -> Path:
        return self.aws_local / "smartgo-exporter.toml"


@dataclasses.dataclass(frozen=True, slots=True)
class AwsEndpoints:
    """Where the AWS-local demo's servers answer, in place of AWS's own endpoints."""

    region: str
    stage: str
    source_parameter: str
    """The SSM SecureString holding the source URL; `{stage}` stands for `stage`."""
    ssm: str
    dynamodb: str
    bedrock_runtime: str
    iceberg: str
    """The Iceberg REST catalog: S3 Tables' `https://s3tables.REGION.amazonaws.com/iceberg`."""
    s3: str
    table_bucket_arn: str


def _toml(value: str | Sequence[str]) -> str:
    # A JSON string is a valid TOML basic string.
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(json.dumps(item) for item in value) + "]"


def write_demo_config(paths: DemoPaths, *, allow_hosts: Sequence[str] | None = None) -> Path:
    """Write the config a user passes to `smartgo-exporter run --config`; return its path.

    Paths in it are relative, so the demo folder can move; the exporter reads them relative to
    the file's folder. `allow_hosts` defaults to the demo's own photo server: loopback is
    allowed for photos only because the demo serves its own, and only on its port.
    """
    relative = {
        "sales": paths.sales_db.relative_to(paths.root).as_posix(),
        "warehouse": paths.warehouse.relative_to(paths.root).as_posix(),
        "progress": paths.progress_db.relative_to(paths.root).as_posix(),
    }
    columns = _source_columns()
    text = f"""\
# The smartgo-exporter demo: a SmartGo store on this machine. Written by `smartgo-exporter demo`;
# paths are relative to this file's folder.

[export]
timezone = "UTC"

[source]
type = "sql"
url = {_toml("sqlite:///" + relative["sales"])}
table = {_toml(SALES_TABLE)}
timezone = "UTC"

[source.columns]
{columns}

[photos]
# The demo's own photo server runs on loopback, which is refused unless allowed here: this
# scheme, host and port only, so no photo URL can reach another service of this machine.
allow_hosts = {_toml(_photo_hosts(paths, allow_hosts))}

[table.catalog]
type = "sql"
uri = {_toml("sqlite:///" + relative["warehouse"] + "/catalog.db")}
warehouse = {_toml("file://" + relative["warehouse"])}

[progress]
type = "sqlite"
path = {_toml(relative["progress"])}
"""
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(text, encoding="utf-8")
    return paths.config


def write_aws_local_config(
    paths: DemoPaths,
    endpoints: AwsEndpoints,
    *,
    allow_hosts: Sequence[str] | None = None,
) -> Path:
    """Write the config of `smartgo-exporter demo --aws-local`; return its path.

    A deployment's configuration (SSM source URL, Titan, S3 Tables, DynamoDB) with only the
    endpoints changed, to the servers the demo runs while it exports; they hold no secret.
    `allow_hosts` defaults to the demo's own photo server, as in `write_demo_config`.
    """
    columns = _source_columns()
    text = f"""\
# The smartgo-exporter demo against local AWS servers. Written by
# `smartgo-exporter demo --aws-local`; the endpoints below lived only while that demo ran.
# A deployment's config is this one without the endpoint settings.

[export]
timezone = "UTC"

[aws]
region = {_toml(endpoints.region)}
stage = {_toml(endpoints.stage)}
endpoint_urls = {{ ssm = {_toml(endpoints.ssm)} }}

[source]
type = "sql"
# A SecureString in SSM Parameter Store holds the database URL.
url = {_toml("ssm://" + endpoints.source_parameter)}
table = {_toml(SALES_TABLE)}
timezone = "UTC"

[source.columns]
{columns}

[photos]
# The demo's own photo server runs on loopback, which is refused unless allowed here: this
# scheme, host and port only, so no photo URL can reach another service of this machine.
allow_hosts = {_toml(_photo_hosts(paths, allow_hosts))}

[embedder]
type = "titan"
region = {_toml(endpoints.region)}
endpoint_url = {_toml(endpoints.bedrock_runtime)}

[table.catalog]
type = "s3tables"
warehouse = {_toml(endpoints.table_bucket_arn)}
uri = {_toml(endpoints.iceberg)}
"s3.endpoint" = {_toml(endpoints.s3)}

[progress]
type = "dynamodb"
stage = {_toml(endpoints.stage)}
region = {_toml(endpoints.region)}
endpoint_url = {_toml(endpoints.dynamodb)}
# The local server starts empty; a deployment creates the table (deploy/).
create_table = true
"""
    paths.aws_local.mkdir(parents=True, exist_ok=True)
    paths.aws_local_config.write_text(text, encoding="utf-8")
    return paths.aws_local_config


def _photo_hosts(paths: DemoPaths, allow_hosts: Sequence[str] | None) -> list[str]:
    """`allow_hosts`, or else the demo's photo server: the scheme, host and port its database's
    photo URLs name (a base URL is an entry as it is), or the default server's before there is
    a database."""
    if allow_hosts is not None:
        return list(allow_hosts)
    meta = read_demo_meta(paths.sales_db)
    return [meta.photo_base_url if meta is not None else photo_base_url()]


def _source_columns() -> str:
    return "\n".join(f"{field} = {_toml(column)}" for field, column in SALE_COLUMNS.items())
