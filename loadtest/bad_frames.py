"""Frames a careless client or a broken camera sends: generated in memory, for the robustness
bench and the tests. Nothing here is served; it is what the server must refuse cheaply."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header claims width x height (its one IDAT holds one row)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 9)) + chunk(b"IEND", b"")


def decompression_bomb(width: int = 8000, height: int = 6000) -> bytes:
    """A real PNG that decodes to width x height (48 MP by default) from a few tens of kB."""
    return cv2.imencode(".png", np.zeros((height, width), dtype=np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()


def thin_png(width: int, height: int) -> bytes:
    """A valid PNG of width x height, e.g. 1x600: nothing to letterbox along one axis."""
    return cv2.imencode(".png", np.full((height, width, 3), 90, dtype=np.uint8))[1].tobytes()
