"""A contact sheet: the photo looked up beside its matches and their prices.

People judge look-alikes by looking, so `similar --sheet` writes one: HTML (the photos inlined,
one self-contained file to open or mail) or PNG (one image, for a chat or a ticket). Match
photos are fetched like an export's, through the same address guard; one that cannot be
fetched is drawn as a grey tile that says so, and the sheet is still written.
"""

from __future__ import annotations

import asyncio
import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from smartgo_exporter.config import PhotoConfig
from smartgo_exporter.errors import ConfigError, PhotoError
from smartgo_exporter.lookup import Match
from smartgo_exporter.photo_fetcher import PhotoFetcher

TILE = 220
_CAPTION = 64
_COLUMNS = 4
_GREY = (225, 225, 225)


def write_contact_sheet(
    path: Path, photo: bytes, matches: Sequence[Match], photos: PhotoConfig
) -> Path:
    """Write the sheet to `path`, as HTML or PNG by its suffix; ConfigError for another suffix."""
    suffix = path.suffix.lower()
    if suffix not in (".html", ".htm", ".png"):
        raise ConfigError("--sheet", f"{path.name}: write a .html or a .png contact sheet")
    pictures = asyncio.run(_fetch([m.image_url or "" for m in matches], photos))
    if suffix == ".png":
        _sheet_image(photo, matches, pictures).save(path, "PNG", optimize=True)
    else:
        path.write_text(_sheet_html(photo, matches, pictures), encoding="utf-8")
    return path


def caption(match: Match) -> str:
    """Price, similarity and what the item is, as a tile shows it."""
    shown = f"{match.sale_price} {match.currency} · {match.similarity:.2f}"
    return f"{shown}\n{match.title or match.product_id}\n{match.condition or ''}".rstrip()


async def _fetch(urls: Sequence[str], photos: PhotoConfig) -> list[bytes | None]:
    async with PhotoFetcher(photos) as fetcher:
        outcomes = await fetcher.fetch_all([url for url in urls if url])
    fetched = iter(outcomes)
    return [
        None if not url or isinstance(outcome := next(fetched), PhotoError) else outcome.data
        for url in urls
    ]


def _thumbnail(data: bytes | None) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE), _GREY)
    if data is None:
        ImageDraw.Draw(tile).text((12, TILE // 2 - 6), "photo unavailable", fill=(90, 90, 90))
        return tile
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (TILE, TILE))
            picture = ImageOps.exif_transpose(image).convert("RGB")
    except Exception:  # a photo that will not decode is shown as missing, not a failed sheet
        return _thumbnail(None)
    picture.thumbnail((TILE, TILE))
    tile.paste(picture, ((TILE - picture.width) // 2, (TILE - picture.height) // 2))
    return tile


def _sheet_image(
    photo: bytes, matches: Sequence[Match], pictures: Sequence[bytes | None]
) -> Image.Image:
    columns = min(_COLUMNS, max(1, len(matches)))
    rows = max(1, -(-len(matches) // columns))
    cell = (TILE + 16, TILE + _CAPTION)
    sheet = Image.new("RGB", (cell[0] * (columns + 1) + 16, cell[1] * rows + 16), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    sheet.paste(_thumbnail(photo), (16, 16))
    draw.text((16, TILE + 20), "looked up", fill="black", font=font)
    for number, (match, picture) in enumerate(zip(matches, pictures, strict=True)):
        x = 16 + cell[0] * (1 + number % columns)
        y = 16 + cell[1] * (number // columns)
        sheet.paste(_thumbnail(picture), (x, y))
        draw.multiline_text((x, y + TILE + 4), _fit(caption(match)), fill="black", font=font)
    return sheet


def _fit(text: str, width: int = 36) -> str:
    return "\n".join(
        line if len(line) <= width else line[: width - 1] + "…" for line in text.split("\n")
    )


def _sheet_html(photo: bytes, matches: Sequence[Match], pictures: Sequence[bytes | None]) -> str:
    def img(data: bytes | None) -> str:
        if data is None:
            return '<div class="missing">photo unavailable</div>'
        encoded = base64.b64encode(_png(_thumbnail(data))).decode()
        return f'<img src="data:image/png;base64,{encoded}" alt="">'

    tiles = "\n".join(
        f"<figure>{img(picture)}<figcaption><b>{html.escape(str(m.sale_price))} "
        f"{html.escape(m.currency)}</b> · similarity {m.similarity:.2f}<br>"
        f"{html.escape(m.title or m.product_id)}<br>{html.escape(m.condition or '')} · "
        f"sale {html.escape(m.sale_id)}, {m.sold_at:%Y-%m-%d}</figcaption></figure>"
        for m, picture in zip(matches, pictures, strict=True)
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Similar sales</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; }}
main {{ display: flex; flex-wrap: wrap; gap: 1rem; }}
figure {{ margin: 0; width: {TILE}px; }}
figure.query {{ outline: 3px solid #333; }}
img, .missing {{ width: {TILE}px; height: {TILE}px; object-fit: contain; background: #e1e1e1; }}
.missing {{ display: grid; place-items: center; color: #555; }}
figcaption {{ font-size: 0.85rem; }}
</style></head><body>
<h1>Sold items most like this one</h1>
<main>
<figure class="query">{img(photo)}<figcaption><b>looked up</b></figcaption></figure>
{tiles}
</main></body></html>
"""


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()
