"""Stored JPEG tiles served without decoding, where the file's tile grid lines up with ours.

Tiled TIFF containers (Aperio SVS, generic pyramidal TIFF) store each tile as a JPEG stream,
often abbreviated (the Huffman and quantisation tables sit once in the JPEGTables tag). When a
stored level has exactly the size of a large-image level and the same tile size, an interior tile
of that level *is* the tile we serve: we read its bytes with one `pread`, splice in the tables, and
send them. Edge tiles are skipped (the stored tile is padded; ours is cropped), and so is anything
that is not 8-bit, 3-sample, chunky JPEG in YCbCr or RGB.

Aperio writes RGB JPEG streams without a colour-transform marker; a browser would decode them as
YCbCr, so we insert an Adobe APP14 marker with transform 0 ("RGB, no transform"), which
libjpeg-based decoders honour. Pixels then decode identically to what OpenSlide returns.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import tifffile

JPEG = 7
PHOTOMETRIC_RGB = 2
PHOTOMETRIC_YCBCR = 6
ADOBE_APP14_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"


@dataclass(frozen=True)
class _StoredLevel:
    offsets: np.ndarray
    bytecounts: np.ndarray
    tiles_across: int
    full_across: int  # tiles that are whole (not edge) along x
    full_down: int
    prefix: bytes  # SOI + tables (+ APP14), without the tables' EOI
    abbreviated: bool


class NativeJpegTiles:
    """Map large-image z levels to stored JPEG levels of a tiled TIFF, and read their tiles raw."""

    def __init__(
        self, path: str, *, width: int, height: int, levels: int, tile_width: int, tile_height: int
    ):
        self._levels: dict[int, _StoredLevel] = {}
        self._fd: int | None = None
        try:
            tf = tifffile.TiffFile(path)
        except Exception:  # noqa: BLE001 - not a TIFF container (e.g. DICOM): nothing to pass through
            return
        with tf:
            for page in tf.pages:
                level = self._match(page, width, height, levels, tile_width, tile_height)
                if level is not None:
                    z, stored = level
                    self._levels.setdefault(z, stored)
        if self._levels:
            self._fd = os.open(path, os.O_RDONLY)

    @staticmethod
    def _match(page, width, height, levels, tw, th) -> tuple[int, _StoredLevel] | None:
        if not (page.is_tiled and page.tilewidth == tw and page.tilelength == th):
            return None
        if page.compression != JPEG or page.samplesperpixel != 3 or page.bitspersample != 8:
            return None
        if page.photometric not in (PHOTOMETRIC_RGB, PHOTOMETRIC_YCBCR) or page.planarconfig != 1:
            return None
        for z in range(levels):
            scale = 2 ** (levels - 1 - z)
            # Scanners round reduced levels down or up; either way interior tiles line up.
            if page.imagewidth not in (width // scale, -(-width // scale)):
                continue
            if page.imagelength not in (height // scale, -(-height // scale)):
                continue
            lw, lh = page.imagewidth, page.imagelength
            tables = page.jpegtables
            prefix = b"\xff\xd8"
            if tables:
                prefix = bytes(tables)[:-2]  # SOI + tables, drop EOI
            if page.photometric == PHOTOMETRIC_RGB:
                prefix = prefix[:2] + ADOBE_APP14_RGB + prefix[2:]
            return z, _StoredLevel(
                offsets=np.asarray(page.dataoffsets, dtype=np.int64),
                bytecounts=np.asarray(page.databytecounts, dtype=np.int64),
                tiles_across=-(-lw // tw),
                full_across=lw // tw,
                full_down=lh // th,
                prefix=prefix,
                abbreviated=bool(tables) or page.photometric == PHOTOMETRIC_RGB,
            )
        return None

    @property
    def levels(self) -> list[int]:
        return sorted(self._levels)

    def get(self, z: int, x: int, y: int) -> bytes | None:
        """The stored JPEG of tile (z, x, y) ready to serve, or None if it cannot pass through."""
        stored = self._levels.get(z)
        if stored is None or self._fd is None or x >= stored.full_across or y >= stored.full_down:
            return None
        index = y * stored.tiles_across + x
        count = int(stored.bytecounts[index])
        if count == 0:
            return None
        data = os.pread(self._fd, count, int(stored.offsets[index]))
        if len(data) != count or data[:2] != b"\xff\xd8":
            return None
        if stored.abbreviated:
            return stored.prefix + data[2:]
        return data

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:  # the LRU drops entries; release their file descriptors
        self.close()
