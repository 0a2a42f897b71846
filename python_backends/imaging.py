"""Encoded-image decoding: JPEG, PNG and WebP (by content) to HxWx3 uint8 BGR, safely.

The runtime we replace trusted PIL with anything it could open (GIF, BMP,
TIFF...), set `Image.MAX_IMAGE_PIXELS` globally, ignored EXIF orientation and converted palette, CMYK and
16-bit images wrongly. Here:

* the format is sniffed from magic bytes and PIL is told to try only that plugin;
* the decompression-bomb guard reads the declared dimensions from the header (`Image.open` is lazy) and
  rejects before any pixel is decoded; no global PIL state is touched;
* EXIF orientation is applied, and the size limits are checked on the *displayed* (rotated) dimensions;
* colour modes: grayscale (1, L, I;16, I) → replicated to 3 channels (16-bit scaled by >> 8, not clipped);
  alpha (RGBA, LA, PA, P with transparency) is **composited on black**, i.e. colour × alpha / 255, so a
  transparent pixel is black whatever colour the encoder left under it; P and CMYK go through PIL's
  conversions. Animated images yield their first frame.

The hot path is a plain JPEG without rotation: its pixels are decoded by `cv2.imdecode`, straight into BGR,
after the same header-first guard.
"""

from __future__ import annotations

import io
import struct
from typing import Final

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from python_backends.contract import IMAGE
from python_backends.errors import InvalidInput
from python_backends.validation import Limits, check_frame_size

__all__ = ["SUPPORTED_FORMATS", "decode_image", "sniff_format"]

SUPPORTED_FORMATS: Final = ("JPEG", "PNG", "WEBP")

_HUMAN_NAMES: Final = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP"}

#: magic bytes of formats we refuse, so the error can say what was sent
_KNOWN_UNSUPPORTED: Final = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"%PDF", "PDF"),
)

_EXIF_ORIENTATION: Final = 0x0112
#: orientations 5..8 swap width and height
_TRANSPOSED: Final = frozenset({5, 6, 7, 8})
_JPEG_EOI: Final = b"\xff\xd9"

#: what PIL raises on corrupt or truncated data (its plugins are not consistent about it)
_DECODE_ERRORS: Final = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, struct.error)


def sniff_format(data: bytes) -> str | None:
    """PIL's format name for JPEG, PNG or WebP content, else None. Looks at magic bytes only."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _unsupported(data: bytes) -> InvalidInput:
    named = next((name for magic, name in _KNOWN_UNSUPPORTED if data.startswith(magic)), None)
    what = f"unsupported format ({named})" if named else "unsupported format (unrecognised content)"
    return InvalidInput(IMAGE, f"{what}; expected JPEG, PNG or WebP")


def _corrupt(fmt: str, exc: BaseException) -> InvalidInput:
    if isinstance(exc, UnidentifiedImageError):  # its text carries a BytesIO repr, not a reason
        detail = "the header could not be parsed"
    else:
        detail = str(exc) or type(exc).__name__
    return InvalidInput(IMAGE, f"corrupt or truncated {_HUMAN_NAMES[fmt]}: {detail}")


def _bomb(exc: BaseException, limits: Limits) -> InvalidInput:
    """PIL's own guard fired (its threshold is far above ours, or warnings are errors in this process)."""
    return InvalidInput(
        IMAGE, f"declared size refused as a decompression bomb ({exc}); the limit is {limits.max_pixels} pixels"
    )


def _bomb_guard(width: int, height: int, limits: Limits) -> None:
    """Reject on the declared size alone, before decoding: bounds that hold in either orientation.

    The exact per-axis limits are checked once EXIF orientation is known (it can swap the axes).
    """
    if width * height > limits.max_pixels:
        raise InvalidInput(
            IMAGE,
            f"declared size {width}x{height} is {width * height} pixels; the limit is {limits.max_pixels} pixels",
        )
    longest, shortest = max(width, height), min(width, height)
    if longest > max(limits.max_width, limits.max_height) or shortest < min(limits.min_width, limits.min_height):
        # Fails in both orientations: report it against the axes as stored.
        check_frame_size(width, height, limits, field=IMAGE)


def _orientation(image: Image.Image) -> int:
    """EXIF orientation 1..8 (1 = as stored). Unreadable EXIF is ignored: cameras write odd blocks."""
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except _DECODE_ERRORS:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _displayed_size(image: Image.Image, orientation: int) -> tuple[int, int]:
    width, height = image.size
    return (height, width) if orientation in _TRANSPOSED else (width, height)


def _ends_with_eoi(data: bytes) -> bool:
    """A JPEG that ends with its EOI marker was not cut short. libjpeg (via cv2) silently grey-fills a
    truncated file, so only such files take the cv2 fast path and PIL (which raises on truncation) gets the
    rest. Damage *inside* a file that still ends in EOI is concealed by libjpeg on both paths alike."""
    return data.rstrip(b"\x00\r\n ").endswith(_JPEG_EOI)


#: Start-of-frame markers (baseline, extended, progressive, lossless...); C4/C8/CC are DHT/JPG/DAC, not frames.
_SOF_MARKERS: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_frame_header(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from a JPEG's start-of-frame segment, without decoding anything.

    The fast path's decompression-bomb guard needs the declared size before any pixel is decoded; walking the
    marker segments costs microseconds, where opening the file with PIL costs a tenth of a millisecond per request.
    None for anything unusual: the caller then takes the PIL path, which reports the problem properly.
    """
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # stand-alone markers
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            return None
        if marker in _SOF_MARKERS:
            if pos + 10 > end:
                return None
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            return width, height, data[pos + 9]
        if marker == 0xDA:  # start of scan before any frame header: malformed
            return None
        pos += 2 + length
    return None


def _cv2_decode_jpeg(data: bytes, expected: tuple[int, int]) -> np.ndarray | None:
    buffer = np.frombuffer(data, dtype=np.uint8)
    pixels = cv2.imdecode(buffer, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if pixels is None or (pixels.shape[1], pixels.shape[0]) != expected:
        return None
    return pixels


def _composite_on_black(rgba: np.ndarray) -> np.ndarray:
    """RGB × alpha / 255 (rounded), as BGR."""
    alpha = rgba[..., 3:4].astype(np.uint16)
    rgb = (rgba[..., :3].astype(np.uint16) * alpha + 127) // 255
    return cv2.cvtColor(rgb.astype(np.uint8), cv2.COLOR_RGB2BGR)


def _to_bgr(image: Image.Image) -> np.ndarray:
    """Any PIL mode our three formats produce, as HxWx3 uint8 BGR."""
    mode = image.mode
    if mode == "RGB":
        return cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR)
    if mode == "L":
        return cv2.cvtColor(np.asarray(image), cv2.COLOR_GRAY2BGR)
    if mode == "1":
        return cv2.cvtColor(np.asarray(image.convert("L")), cv2.COLOR_GRAY2BGR)
    if mode.startswith("I;16") or mode == "I":
        # 16-bit grey (PNG) keeps its full range in I;16 or I: scale to 8 bits instead of clipping at 255.
        wide = np.asarray(image).astype(np.int64, copy=False)
        grey = (np.clip(wide, 0, 0xFFFF) >> 8).astype(np.uint8)
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    if mode == "RGBA":
        return _composite_on_black(np.asarray(image))
    if mode in ("LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        return _composite_on_black(np.asarray(image.convert("RGBA")))
    # P without transparency, CMYK (Adobe-inverted CMYK is un-inverted by PIL's JPEG plugin), YCbCr, ...
    return cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)


def _decode_plain_jpeg(data: bytes, limits: Limits) -> np.ndarray | None:
    """The common case, a complete grey or colour JPEG, straight through libjpeg; None sends it the long way.

    The size declared in the frame header passes the bomb guard before decoding. cv2 applies the EXIF orientation
    itself, so the size limits are checked again on the displayed (rotated) frame.
    """
    header = _jpeg_frame_header(data)
    if header is None or header[2] not in (1, 3) or not _ends_with_eoi(data):
        return None
    width, height, _ = header
    _bomb_guard(width, height, limits)
    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if pixels is None or {pixels.shape[1], pixels.shape[0]} != {width, height}:
        return None  # libjpeg disagrees with the header: PIL will say what is wrong
    check_frame_size(pixels.shape[1], pixels.shape[0], limits, field=IMAGE)
    return pixels


def decode_image(data: bytes, limits: Limits) -> np.ndarray:
    """Decode one client-supplied encoded image to C-contiguous HxWx3 uint8 BGR, within `limits`.

    Raises InvalidInput('IMAGE', ...) for anything a client could have done wrong: wrong format, too big
    encoded or decoded, out-of-range dimensions (after EXIF rotation), corrupt or truncated data.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInput(IMAGE, f"expected encoded image bytes, got {type(data).__name__}")
    data = bytes(data) if not isinstance(data, bytes) else data
    if not data:
        raise InvalidInput(IMAGE, "empty (0 bytes); expected an encoded JPEG, PNG or WebP image")
    if len(data) > limits.max_encoded_bytes:
        raise InvalidInput(IMAGE, f"encoded image is {len(data)} bytes; the limit is {limits.max_encoded_bytes} bytes")
    fmt = sniff_format(data)
    if fmt is None:
        raise _unsupported(data)
    if fmt == "JPEG":
        fast = _decode_plain_jpeg(data, limits)
        if fast is not None:
            return fast

    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])  # lazy: header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(exc, limits) from None
    except _DECODE_ERRORS as exc:
        raise _corrupt(fmt, exc) from None

    with image:
        width, height = image.size
        _bomb_guard(width, height, limits)

        if fmt == "JPEG" and image.mode in ("RGB", "L") and _ends_with_eoi(data):
            orientation = _orientation(image)  # JPEG EXIF lives in the header: no pixel decode yet
            if orientation == 1:
                check_frame_size(width, height, limits, field=IMAGE)
                pixels = _cv2_decode_jpeg(data, (width, height))
                if pixels is not None:
                    return pixels
                # cv2 disagreed with the header: let PIL decode it and report what is wrong.

        try:
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb(exc, limits) from None
        except _DECODE_ERRORS as exc:
            raise _corrupt(fmt, exc) from None

        orientation = _orientation(image)
        display_width, display_height = _displayed_size(image, orientation)
        check_frame_size(display_width, display_height, limits, field=IMAGE)
        try:
            oriented = ImageOps.exif_transpose(image) if orientation != 1 else image
            assert oriented is not None  # exif_transpose returns None only with in_place=True
            pixels = _to_bgr(oriented)
        except _DECODE_ERRORS as exc:
            raise _corrupt(fmt, exc) from None
    return np.ascontiguousarray(pixels)
