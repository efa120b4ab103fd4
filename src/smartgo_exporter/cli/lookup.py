"""The commands that answer the table's question: `index`, `similar` and `price`.

Each is one call into `smartgo_exporter.lookup`; this module only formats what comes back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Column, Table

from smartgo_exporter.cli.edge import (
    DEFAULT_CONFIG,
    ConfigOption,
    LogLevel,
    console,
    guarded,
    load_settings,
)
from smartgo_exporter.logs import configure_logging
from smartgo_exporter.lookup import Lookup, read_photo, update_indexes

PhotoArgument = Annotated[str, typer.Argument(help="A photo file, or an http(s) URL of one.")]
TitleOption = Annotated[
    str | None, typer.Option(help="The item's title: a multimodal embedder uses it too.")
]
TenantOption = Annotated[
    str | None, typer.Option(help="Compare with this store's sales only (default: every store).")
]


def index(
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: Annotated[
        list[str] | None, typer.Option(help="Only this tenant's index; repeat for more.")
    ] = None,
    rebuild: Annotated[
        bool, typer.Option(help="Start from empty instead of from the stored index.")
    ] = False,
    log_level: LogLevel = "WARNING",
) -> None:
    """Bring each tenant's similar-sales index up to date with the table.

    Reads only the data files written since the index was last brought up to date; sales no
    longer in the table leave it. `run` does this at its end unless `[index] update_after_run`
    is false.

    Example: `smartgo-exporter index --tenant ams-jordaan`
    """
    configure_logging(log_level)
    settings = load_settings(config)
    reports = guarded(lambda: update_indexes(settings, tenants=tenant or None, rebuild=rebuild))
    table = Table("tenant", "sales", "added", "removed", "files read", "seconds", title="Indexes")
    for report in reports:
        table.add_row(
            report.tenant,
            str(report.sales),
            str(report.added),
            str(report.removed),
            str(report.files_read),
            f"{report.seconds:.2f}",
        )
    console.print(table if reports else "The table has no sales to index yet.")


def similar(
    photo: PhotoArgument,
    config: ConfigOption = DEFAULT_CONFIG,
    title: TitleOption = None,
    tenant: TenantOption = None,
    k: Annotated[int, typer.Option("-k", min=1, max=1000, help="How many matches.")] = 10,
    sheet: Annotated[
        Path | None, typer.Option(help="Also write a contact sheet, .html or .png.")
    ] = None,
    log_level: LogLevel = "WARNING",
) -> None:
    """The sold items most like the photo: sale, title, brand, condition, price, similarity.

    Example: `smartgo-exporter similar new-boots.jpg --tenant ams-jordaan -k 5 --sheet boots.html`
    """
    configure_logging(log_level)
    settings = load_settings(config)
    data = guarded(lambda: read_photo(photo, settings.photos))
    matches = guarded(
        lambda: Lookup(settings).similar(data, title=title, tenant=tenant, k=k, location=photo)
    )
    # The title wraps; the sale id and the figures a person compares never do.
    table = Table(*([] if tenant else ["tenant"]), "title", "brand", "condition")
    table.columns.insert(0, Column("sale", no_wrap=True))
    for name in ("price", "sold", "similarity"):
        table.add_column(name, no_wrap=True, justify="right")
    for match in matches:
        table.add_row(
            match.sale_id,
            *([] if tenant else [match.tenant_id]),
            match.title or "",
            match.brand or "",
            match.condition or "",
            f"{match.sale_price} {match.currency}",
            f"{match.sold_at:%Y-%m-%d}",
            f"{match.similarity:.3f}",
        )
    console.print(table if matches else "No embedded sales to compare with.")
    if sheet is not None:
        from smartgo_exporter.contact_sheet import write_contact_sheet

        written = guarded(lambda: write_contact_sheet(sheet, data, matches, settings.photos))
        console.print(f"Contact sheet: {written}")


def price(
    photo: PhotoArgument,
    config: ConfigOption = DEFAULT_CONFIG,
    title: TitleOption = None,
    brand: Annotated[
        str | None, typer.Option(help="The item's brand (else read from --title).")
    ] = None,
    condition: Annotated[
        str | None, typer.Option(help="The item's condition, as the table writes it.")
    ] = None,
    currency: Annotated[
        str | None, typer.Option(help="Price in this currency (default: the matches' own).")
    ] = None,
    tenant: TenantOption = None,
    log_level: LogLevel = "WARNING",
) -> None:
    """Suggest a price for the item in the photo from the sales most like it.

    Prints the price, its interval (the weighted 25th-75th percentile of the comparable
    sales, each moved to the item's brand and condition), how many sales it rests on and how
    alike they are; or says why there is none, and exits 1.

    Example: `smartgo-exporter price new-boots.jpg --brand "Dr. Martens" --condition good`
    """
    configure_logging(log_level)
    settings = load_settings(config)
    data = guarded(lambda: read_photo(photo, settings.photos))
    suggestion = guarded(
        lambda: Lookup(settings).suggest_price(
            data,
            title=title,
            brand=brand,
            condition=condition,
            currency=currency,
            tenant=tenant,
            location=photo,
        )
    )
    if suggestion.price is None:
        console.print(f"No suggestion: {suggestion.reason}.")
        raise typer.Exit(1)
    console.print(
        f"[bold]{suggestion.price} {suggestion.currency}[/] "
        f"(interval {suggestion.low}-{suggestion.high}), from {len(suggestion.comparables)} "
        f"comparable sales of mean similarity {suggestion.similarity:.2f}"
        + (f"; brand {suggestion.brand}" if suggestion.brand else "")
        + (f", condition {suggestion.condition}" if suggestion.condition else "")
    )
    table = Table("sale", "title", "condition", "sold for", "adjusted", "similarity", "weight")
    total = sum(c.weight for c in suggestion.comparables)
    for comparable in suggestion.comparables[:10]:
        sale = comparable.sale
        table.add_row(
            sale["sale_id"],
            sale["title"] or "",
            sale["condition"] or "",
            f"{sale['sale_price']} {sale['currency']}",
            f"{comparable.adjusted_price:.2f}",
            f"{comparable.similarity:.3f}",
            f"{comparable.weight / total:.0%}",
        )
    console.print(table)
