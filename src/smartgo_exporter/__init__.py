"""smartgo-exporter: a day of store sales, with photo embeddings, into an Apache Iceberg table.

The library is the product; the `smartgo-exporter` command is a thin layer over it:

    from smartgo_exporter import export, load_config

    settings = load_config("smartgo-exporter.toml")
    for record in export(settings):  # yesterday, any missed days, recent days again
        print(record.business_date, record.status, record.counts)
"""

from smartgo_exporter.config import Settings
from smartgo_exporter.config_loader import load_config
from smartgo_exporter.day_plan import plan_days
from smartgo_exporter.errors import ExporterError
from smartgo_exporter.pipeline import export
from smartgo_exporter.run_records import RunRecord, RunStatus

__all__ = [
    "ExporterError",
    "RunRecord",
    "RunStatus",
    "Settings",
    "export",
    "load_config",
    "plan_days",
]
