"""Encoded images of every awkward kind a camera fleet or a careless client sends, made from a
real photo in memory. Shared by the unit tests (decode + letterbox in-process) and the
malformed-input suite against the live server. Nothing is downloaded.

Each case says what must happen: "served" (decoded and detected like in-process) or
"refused" (a 4xx-class error whose message matches `reason`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
from PIL import Image

from loadtest.bad_frames import decompression_bomb, png_claiming, thin_png


@dataclass(frozen=True)
class ImageCase:
    name: str
    make: Callable[[np.ndarray], bytes]  # from a BGR photo to the payload
    outcome: str  # "served" | "refused"
    reason: str = ""  # regex the refusal message must match
    # served: the BGR image a correct decoder shows for the payload (upright, in its colours)
    shows: Callable[[np.ndarray], np.ndarray] = lambda photo: photo
    colour: bool = True  # False: a grey image, whose channel order cannot be wrong


def grey(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)


def encode(image: np.ndarray, ext: str = ".jpg", params: list[int] | None = None) -> bytes:
    ok, data = cv2.imencode(ext, image, params or [])
    assert ok, ext
    return data.tobytes()


def pil_bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def to_pil(bgr: np.ndarray) -> Image.Image:
    return Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def exif_rotated(bgr: np.ndarray) -> bytes:
    """A JPEG stored sideways with EXIF orientation 6 (rotate 90 CW to display), as phones write them."""
    image = to_pil(cv2.rotate(bgr, cv2.ROTATE_90_COUNTERCLOCKWISE))
    exif = Image.Exif()
    exif[0x0112] = 6
    return pil_bytes(image, "JPEG", exif=exif.tobytes(), quality=90)


def corrupt_png_data(bgr: np.ndarray) -> bytes:
    data = bytearray(encode(bgr, ".png"))
    start = data.index(b"IDAT") + 8
    data[start:start + 64] = bytes(64)  # zeroed compressed stream: zlib and CRC both fail
    return bytes(data)


def small(bgr: np.ndarray, width: int = 320) -> np.ndarray:
    height = max(1, round(bgr.shape[0] * width / bgr.shape[1]))
    return cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)


SERVED = [
    ImageCase("jpeg_grayscale", lambda p: encode(cv2.cvtColor(p, cv2.COLOR_BGR2GRAY)), "served", shows=grey,
              colour=False),
    ImageCase("png_16bit", lambda p: encode(p.astype(np.uint16) * 257, ".png"), "served"),
    ImageCase("png_rgba", lambda p: encode(cv2.cvtColor(p, cv2.COLOR_BGR2BGRA), ".png"), "served"),
    ImageCase("jpeg_cmyk", lambda p: pil_bytes(to_pil(p).convert("CMYK"), "JPEG"), "served"),
    ImageCase("png_palette", lambda p: pil_bytes(to_pil(p).convert("P"), "PNG"), "served"),
    ImageCase("jpeg_exif_rotated", exif_rotated, "served"),
    ImageCase("bmp", lambda p: encode(small(p), ".bmp"), "served", shows=small),
    ImageCase("webp", lambda p: encode(p, ".webp"), "served"),
    ImageCase("tiff", lambda p: encode(small(p), ".tiff"), "served", shows=small),
    ImageCase("jpeg_trailing_garbage", lambda p: encode(p) + b"\x00garbage" * 100, "served"),
    ImageCase("jpeg_4k", lambda p: encode(cv2.resize(p, (3840, 2160))), "served",
              shows=lambda p: cv2.resize(p, (3840, 2160))),
    ImageCase("thin_16x600", lambda p: encode(cv2.resize(p, (16, 600))), "served",
              shows=lambda p: cv2.resize(p, (16, 600)), colour=False),  # 16 px wide: too little colour to judge
]

REFUSED = [
    ImageCase("empty", lambda p: b"", "refused", "0 bytes"),
    ImageCase("text", lambda p: b"hello, this is not an image", "refused", "not a decodable image"),
    ImageCase("html", lambda p: b"<!doctype html><html><body>404</body></html>", "refused", "not a decodable image"),
    ImageCase("random_bytes", lambda p: np.random.default_rng(0).bytes(4096), "refused", "not a decodable image"),
    ImageCase("jpeg_header_only", lambda p: b"\xff\xd8\xff\xe0" + b"\x00" * 64, "refused", "not a decodable"),
    ImageCase("jpeg_truncated_in_header", lambda p: encode(p)[:120], "refused", "not a decodable"),
    ImageCase("png_corrupt_data", corrupt_png_data, "refused", "not a decodable"),
    ImageCase("png_header_lies_40000x40000", lambda p: png_claiming(40000, 40000), "refused", "max_image_pixels"),
    ImageCase("png_decompression_bomb_48mp", lambda p: decompression_bomb(), "refused", "max_image_pixels"),
    ImageCase("png_1x600", lambda p: thin_png(1, 600), "refused", "min_image_side"),
    ImageCase("png_600x1", lambda p: thin_png(600, 1), "refused", "min_image_side"),
    ImageCase("png_1x1", lambda p: encode(p[:1, :1], ".png"), "refused", "min_image_side"),
    ImageCase("gif_unsupported", lambda p: pil_bytes(to_pil(small(p)), "GIF"), "refused", "not a decodable GIF"),
    ImageCase("pdf", lambda p: b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "refused", "not a decodable"),
    ImageCase("oversize_33mib", lambda p: encode(p)[:4] + bytes(33 * 1024 * 1024), "refused", "max_image_bytes"),
]

ALL_CASES = SERVED + REFUSED
