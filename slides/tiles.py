"""Tiles, thumbnails and associated images of registered slides.

- Open tile sources are kept in a per-process LRU keyed by slide id (`source_cache`).
- Encoded tiles are cached in the `tiles` cache alias, keyed by the slide's checksum, so a
  replaced file never serves stale pixels.
- Interior tiles stored as JPEG are passed through as stored bytes (large-image returns them
  undecoded when the request lines up with the stored tile grid); edge tiles are cropped and
  re-encoded.
- The ETag depends only on checksum and tile address, so a conditional request is answered 304
  without touching the file.
- Node images (CT, ultrasound, other plain images; `slides.node_images`) have no large-image
  source: their tiles are cut from `render_node_image` in the same z/x/y scheme, and the display
  window is part of the cache key and the ETag.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.cache import caches
from PIL import Image

from .models import Slide
from .native import NativeJpegTiles
from .node_images import SOURCE as NODE_IMAGE_SOURCE
from .node_images import display_window, node_image_thumbnail, node_image_tile
from .sources import open_source


@dataclass
class OpenSlide:
    """An open slide: its large-image source and, for tiled TIFFs, its stored JPEG tiles."""

    source: object
    native: NativeJpegTiles


class SourceLRU:
    """A small thread-safe LRU of open slides (large-image tile source plus native JPEG reader)."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[tuple[int, str], OpenSlide] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, slide_id: int, checksum: str, path: str, geometry: dict) -> OpenSlide:
        key = (slide_id, checksum)
        with self._lock:
            source = self._items.get(key)
            if source is not None:
                self._items.move_to_end(key)
                return source
        source = OpenSlide(source=open_source(Path(path)), native=NativeJpegTiles(path, **geometry))
        with self._lock:
            self._items[key] = source
            self._items.move_to_end(key)
            while len(self._items) > max(self.size, 1):
                self._items.popitem(last=False)
        return source

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


source_cache = SourceLRU(settings.TILE_SOURCE_LRU_SIZE)


class TileNotFound(Exception):
    """A tile address outside the slide's pyramid."""


class NotAWholeSlide(Exception):
    """A node image (CT, ultrasound, other) asked for as a whole slide (large-image source)."""


def open_slide(slide: Slide) -> OpenSlide:
    if slide.source == NODE_IMAGE_SOURCE:
        raise NotAWholeSlide(
            f"slide {slide.pk} is a {slide.get_modality_display()} image, not a whole slide; "
            "read it with slides.node_images.render_node_image"
        )
    geometry = {
        "width": slide.width,
        "height": slide.height,
        "levels": slide.levels,
        "tile_width": slide.tile_width,
        "tile_height": slide.tile_height,
    }
    return source_cache.get(slide.pk, slide.checksum, slide.file_path, geometry)


def source_for(slide: Slide):
    """The large-image tile source of a slide, from the per-process LRU."""
    return open_slide(slide).source


def tilesource_fields(slide: Slide, tile_url: str) -> dict:
    """What OpenSeadragon needs to open ``slide`` with tiles at ``tile_url`` (``{z}/{x}/{y}``):
    size, tile grid, scale, modality and the node-image window; no name or id (callers that may
    show them add them)."""
    return {
        "modality": slide.modality,
        **display_window(slide),
        "width": slide.width,
        "height": slide.height,
        "tileWidth": slide.tile_width,
        "tileHeight": slide.tile_height,
        "levels": slide.levels,
        "mpp": slide.mpp,
        "magnification": slide.magnification,
        "tileUrl": tile_url,
    }


def tile_etag(checksum: str, z: int, x: int, y: int, *, window_tag: str = "") -> str:
    """The ETag of a tile; a node image's tiles also depend on the display window."""
    suffix = f"-w{window_tag}" if window_tag else ""
    return f'"{checksum[:20]}-{z}-{x}-{y}{suffix}"'


def blind_tile_etag(
    scope: str, checksum: str, z: int, x: int, y: int, *, window_tag: str = ""
) -> str:
    """The ETag of a tile shown blinded (a reader study's image): an HMAC under SECRET_KEY of the
    scope, the checksum and the tile address, so it names neither the file nor the slide."""
    from django.utils.crypto import salted_hmac

    value = f"{scope}:{checksum}:{z}:{x}:{y}:{window_tag}"
    digest = salted_hmac("nodescope.blind-tile-etag", value, algorithm="sha256").hexdigest()
    return f'"b-{digest[:40]}"'


def tile_in_pyramid(
    *,
    width: int,
    height: int,
    levels: int,
    tile_width: int,
    tile_height: int,
    z: int,
    x: int,
    y: int,
) -> bool:
    """True if (z, x, y) addresses a tile of large-image's pyramid for a slide of this geometry."""
    if not 0 <= z < levels or x < 0 or y < 0:
        return False
    scale = 2 ** (levels - 1 - z)
    level_w = -(-width // scale)
    level_h = -(-height // scale)
    return x < -(-level_w // tile_width) and y < -(-level_h // tile_height)


def get_tile(
    slide: Slide,
    z: int,
    x: int,
    y: int,
    *,
    use_cache: bool = True,
    window: tuple[float, float] | None = None,
    window_tag: str = "",
) -> bytes:
    """JPEG bytes of one tile (large-image z/x/y), from the tile cache or the slide file.

    `window` (centre, width) and its `window_tag` apply to node images only."""
    if not tile_in_pyramid(
        width=slide.width,
        height=slide.height,
        levels=slide.levels,
        tile_width=slide.tile_width,
        tile_height=slide.tile_height,
        z=z,
        x=x,
        y=y,
    ):
        raise TileNotFound(f"tile {z}/{x}/{y} is outside the pyramid of slide {slide.pk}")
    cache = caches["tiles"]
    key = f"tile:{slide.checksum[:24]}:{z}:{x}:{y}"
    if slide.source == NODE_IMAGE_SOURCE:
        key += f":{window_tag or 'default'}"
    if use_cache:
        data = cache.get(key)
        if data is not None:
            return data
    if slide.source == NODE_IMAGE_SOURCE:
        data = node_image_tile(slide, z, x, y, window=window)
    else:
        data = read_tile(slide, z, x, y)
    if use_cache:
        cache.set(key, data)
    return data


def read_tile(slide: Slide, z: int, x: int, y: int) -> bytes:
    """Read one tile from the file: stored JPEG bytes where they line up, else via large-image."""
    opened = open_slide(slide)
    data = opened.native.get(z, x, y)
    if data is None:
        data = bytes(opened.source.getTile(x, y, z))
    return data


def get_thumbnail(slide: Slide, *, max_size: int = 256) -> bytes:
    """A JPEG thumbnail of the slide no larger than `max_size` on its longer side."""
    cache = caches["tiles"]
    key = f"thumb:{slide.checksum[:24]}:{max_size}"
    data = cache.get(key)
    if data is None and slide.source == NODE_IMAGE_SOURCE:
        data = node_image_thumbnail(slide, max_size=max_size)
        cache.set(key, data)
    if data is None:
        data, _mime = source_for(slide).getThumbnail(
            width=max_size, height=max_size, encoding="JPEG"
        )
        data = bytes(data)
        cache.set(key, data)
    return data


def get_associated_image(slide: Slide, name: str) -> bytes | None:
    """A label, macro or thumbnail image stored in the slide file, as JPEG; None if absent."""
    if slide.source == NODE_IMAGE_SOURCE or name not in (slide.associated_images or []):
        return None
    image = source_for(slide).getAssociatedImage(name, encoding="JPEG")
    if image is None:
        return None
    data, _mime = image
    return bytes(data)


def jpeg_size(data: bytes) -> tuple[int, int]:
    """Pixel size of encoded image bytes (used by tests and benchmarks)."""
    with Image.open(io.BytesIO(data)) as img:
        return img.size
