"""Decoding of client images: formats by content, every colour mode, EXIF orientation, limits, bombs, corruption."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from python_backends.errors import InvalidInput
from python_backends.imaging import decode_image, sniff_format
from python_backends.validation import Limits

LIMITS = Limits()
# BGR pixel of the colour (R=200, G=100, B=50)
BGR = (50, 100, 200)


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _assert_bgr_image(pixels: np.ndarray, width: int, height: int) -> None:
    assert pixels.shape == (height, width, 3)
    assert pixels.dtype == np.uint8
    assert pixels.flags.c_contiguous


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _forged_png(width: int, height: int, idat: bytes = b"not zlib at all") -> bytes:
    """A tiny PNG whose header declares `width`x`height`; its pixel data is garbage, so decoding would fail."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("fmt", "options", "tolerance"), [("JPEG", {"quality": 95}, 4), ("PNG", {}, 0), ("WEBP", {"lossless": True}, 0)]
)
def test_supported_formats_decode_to_bgr(fmt: str, options: dict[str, object], tolerance: int) -> None:
    data = _encode(Image.new("RGB", (120, 80), (200, 100, 50)), fmt, **options)
    pixels = decode_image(data, LIMITS)
    _assert_bgr_image(pixels, 120, 80)
    assert np.abs(pixels[40, 60].astype(int) - BGR).max() <= tolerance


def test_lossy_webp_decodes() -> None:
    pixels = decode_image(_encode(Image.new("RGB", (64, 64), (200, 100, 50)), "WEBP", quality=90), LIMITS)
    assert np.abs(pixels[32, 32].astype(int) - BGR).max() <= 6


def test_format_is_taken_from_content_not_from_any_name() -> None:
    assert sniff_format(_encode(Image.new("RGB", (8, 8)), "PNG")) == "PNG"
    assert sniff_format(_encode(Image.new("RGB", (8, 8)), "JPEG")) == "JPEG"
    assert sniff_format(_encode(Image.new("RGB", (8, 8)), "WEBP")) == "WEBP"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WAVE") is None


@pytest.mark.parametrize(("fmt", "name"), [("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF")])
def test_other_formats_pil_could_open_are_rejected(fmt: str, name: str) -> None:
    data = _encode(Image.new("RGB", (100, 100), (1, 2, 3)), fmt)
    with pytest.raises(InvalidInput) as excinfo:
        decode_image(data, LIMITS)
    assert str(excinfo.value) == f"IMAGE: unsupported format ({name}); expected JPEG, PNG or WebP"


def test_unrecognised_content_is_rejected() -> None:
    with pytest.raises(InvalidInput, match=r"^IMAGE: unsupported format \(unrecognised content\); expected JPEG"):
        decode_image(b"hello world" * 10, LIMITS)


@pytest.mark.parametrize("data", [b"", bytearray()])
def test_empty_image_is_rejected(data: bytes) -> None:
    with pytest.raises(InvalidInput, match=r"^IMAGE: empty"):
        decode_image(data, LIMITS)


def test_non_bytes_is_rejected() -> None:
    with pytest.raises(InvalidInput, match=r"^IMAGE: expected encoded image bytes, got str"):
        decode_image("not bytes", LIMITS)  # type: ignore[arg-type]


def test_bytes_like_input_is_accepted() -> None:
    data = _encode(Image.new("RGB", (64, 64), (200, 100, 50)), "PNG")
    assert decode_image(memoryview(data), LIMITS).shape == (64, 64, 3)  # type: ignore[arg-type]


def test_encoded_size_limit_is_inclusive() -> None:
    data = _encode(Image.new("RGB", (64, 64), (200, 100, 50)), "PNG")
    assert decode_image(data, Limits(max_encoded_bytes=len(data))).shape == (64, 64, 3)
    with pytest.raises(InvalidInput) as excinfo:
        decode_image(data, Limits(max_encoded_bytes=len(data) - 1))
    assert str(excinfo.value) == f"IMAGE: encoded image is {len(data)} bytes; the limit is {len(data) - 1} bytes"


def test_default_encoded_size_limit_is_fifty_mebibytes() -> None:
    oversized = b"\xff\xd8\xff" + bytes(50 * 1024 * 1024 - 2)
    with pytest.raises(InvalidInput, match=r"the limit is 52428800 bytes"):
        decode_image(oversized, LIMITS)


# ---------------------------------------------------------------------------------------------- colour modes


def test_grayscale_l_is_replicated_to_three_channels() -> None:
    pixels = decode_image(_encode(Image.new("L", (64, 64), 77), "PNG"), LIMITS)
    _assert_bgr_image(pixels, 64, 64)
    assert tuple(pixels[0, 0]) == (77, 77, 77)


def test_grayscale_jpeg_is_replicated_to_three_channels() -> None:
    pixels = decode_image(_encode(Image.new("L", (64, 64), 77), "JPEG", quality=100), LIMITS)
    _assert_bgr_image(pixels, 64, 64)
    assert abs(int(pixels[10, 10, 0]) - 77) <= 1
    assert pixels[10, 10, 0] == pixels[10, 10, 1] == pixels[10, 10, 2]


def test_bilevel_1_maps_to_black_and_white() -> None:
    image = Image.new("1", (64, 64), 0)
    image.paste(1, (0, 0, 32, 64))
    pixels = decode_image(_encode(image, "PNG"), LIMITS)
    assert tuple(pixels[0, 0]) == (255, 255, 255)
    assert tuple(pixels[0, 63]) == (0, 0, 0)


def test_sixteen_bit_grayscale_is_scaled_not_clipped() -> None:
    values = np.zeros((64, 64), np.uint16)
    values[:, :16] = 0x8000
    values[:, 16:32] = 0xFFFF
    values[:, 32:48] = 300  # clipping would give 255; scaling gives 1
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    pixels = decode_image(_encode(image, "PNG"), LIMITS)
    _assert_bgr_image(pixels, 64, 64)
    assert tuple(pixels[0, 0]) == (128, 128, 128)
    assert tuple(pixels[0, 16]) == (255, 255, 255)
    assert tuple(pixels[0, 32]) == (1, 1, 1)
    assert tuple(pixels[0, 63]) == (0, 0, 0)


def test_rgba_is_composited_on_black() -> None:
    image = Image.new("RGBA", (64, 64), (200, 100, 50, 255))
    image.paste((200, 100, 50, 0), (0, 0, 32, 64))  # transparent, colour left underneath
    image.paste((200, 100, 50, 128), (32, 0, 48, 64))  # half transparent
    pixels = decode_image(_encode(image, "PNG"), LIMITS)
    _assert_bgr_image(pixels, 64, 64)
    assert tuple(pixels[0, 0]) == (0, 0, 0)
    assert tuple(pixels[0, 40]) == (25, 50, 100)  # round(c * 128 / 255)
    assert tuple(pixels[0, 63]) == BGR


def test_rgba_webp_is_composited_on_black() -> None:
    image = Image.new("RGBA", (64, 64), (200, 100, 50, 255))
    image.paste((200, 100, 50, 0), (0, 0, 32, 64))
    pixels = decode_image(_encode(image, "WEBP", lossless=True), LIMITS)
    assert tuple(pixels[0, 0]) == (0, 0, 0)
    assert tuple(pixels[0, 63]) == BGR


def test_grey_with_alpha_la_is_composited_on_black() -> None:
    image = Image.new("LA", (64, 64), (200, 255))
    image.paste((200, 0), (0, 0, 32, 64))
    pixels = decode_image(_encode(image, "PNG"), LIMITS)
    assert tuple(pixels[0, 0]) == (0, 0, 0)
    assert tuple(pixels[0, 63]) == (200, 200, 200)


def test_palette_is_converted_through_its_colours_not_its_indices() -> None:
    image = Image.new("RGB", (64, 64), (200, 100, 50)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    assert image.mode == "P"
    pixels = decode_image(_encode(image, "PNG"), LIMITS)
    assert tuple(pixels[0, 0]) == BGR


def test_palette_with_a_transparent_index_is_composited_on_black() -> None:
    image = Image.new("P", (64, 64), 1)
    image.putpalette([0, 0, 0, 200, 100, 50, 10, 20, 30] + [0] * (256 * 3 - 9))
    image.paste(2, (0, 0, 32, 64))
    image.info["transparency"] = 2
    data = _encode(image, "PNG", transparency=2)
    pixels = decode_image(data, LIMITS)
    assert tuple(pixels[0, 0]) == (0, 0, 0)  # index 2 (10, 20, 30) is transparent
    assert tuple(pixels[0, 63]) == BGR


def test_cmyk_jpeg_is_converted_to_bgr() -> None:
    image = Image.new("CMYK", (64, 64), (0, 255, 255, 0))  # pure red
    pixels = decode_image(_encode(image, "JPEG", quality=100), LIMITS)
    _assert_bgr_image(pixels, 64, 64)
    blue, green, red = (int(v) for v in pixels[32, 32])
    assert red > 240 and green < 15 and blue < 15


def test_jpeg_fast_path_matches_the_pil_decode() -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    data = _encode(image, "JPEG", quality=90)
    fast = decode_image(data, LIMITS)
    via_pil = decode_image(data + b"trailing bytes after EOI", LIMITS)  # not ending in EOI: PIL path
    _assert_bgr_image(fast, 128, 96)
    assert np.abs(fast.astype(int) - via_pil.astype(int)).max() <= 2


# ---------------------------------------------------------------------------------------------- EXIF orientation


def _oriented(fmt: str, orientation: int) -> bytes:
    """Stored 120 wide x 80 high: left half red, right half blue, with an EXIF orientation tag."""
    image = Image.new("RGB", (120, 80), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 60, 80))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(image, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_6_is_applied(fmt: str) -> None:
    pixels = decode_image(_oriented(fmt, 6), LIMITS)
    # Orientation 6 is displayed rotated 90° clockwise: the stored left (red) half becomes the top half.
    _assert_bgr_image(pixels, 80, 120)
    assert pixels[10, 40, 2] > 200 and pixels[10, 40, 0] < 50  # red on top
    assert pixels[110, 40, 0] > 200 and pixels[110, 40, 2] < 50  # blue at the bottom


def test_exif_orientation_1_keeps_the_stored_layout() -> None:
    pixels = decode_image(_oriented("JPEG", 1), LIMITS)
    _assert_bgr_image(pixels, 120, 80)
    assert pixels[40, 10, 2] > 200


def test_exif_orientation_3_rotates_180() -> None:
    pixels = decode_image(_oriented("JPEG", 3), LIMITS)
    _assert_bgr_image(pixels, 120, 80)
    assert pixels[40, 10, 0] > 200  # blue now on the left


def test_dimension_limits_apply_after_exif_rotation() -> None:
    data = _oriented("JPEG", 6)  # stored 120x80, displayed 80x120
    portrait_only = Limits(max_width=100, min_height=100)
    assert decode_image(data, portrait_only).shape == (120, 80, 3)  # stored size would fail both limits
    landscape_only = Limits(max_height=100)
    with pytest.raises(InvalidInput, match=r"^IMAGE: height 120 px is outside the allowed 64..100 px"):
        decode_image(data, landscape_only)  # stored size would pass


# ---------------------------------------------------------------------------------------------- size limits


@pytest.mark.parametrize(("width", "height", "message"), [(63, 64, "width 63 px"), (64, 40, "height 40 px")])
def test_too_small_images_are_rejected(width: int, height: int, message: str) -> None:
    with pytest.raises(InvalidInput, match=rf"^IMAGE: {message} is outside the allowed 64.."):
        decode_image(_encode(Image.new("RGB", (width, height)), "PNG"), LIMITS)


def test_model_limits_narrow_the_accepted_sizes() -> None:
    data = _encode(Image.new("RGB", (300, 240)), "JPEG")
    assert decode_image(data, LIMITS).shape == (240, 300, 3)
    with pytest.raises(InvalidInput, match=r"width 300 px is outside the allowed 320..7680 px"):
        decode_image(data, Limits().for_model(min_width=320, min_height=240))


def test_forged_png_header_declaring_huge_dimensions_is_refused_before_decoding() -> None:
    data = _forged_png(7000, 7000)  # 49 Mpx declared, ~60 bytes; its pixel data would not even decode
    assert len(data) < 100
    with pytest.raises(InvalidInput) as excinfo:
        decode_image(data, LIMITS)
    assert str(excinfo.value) == "IMAGE: declared size 7000x7000 is 49000000 pixels; the limit is 33177600 pixels"


def test_forged_png_beyond_pils_own_bomb_threshold_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"^IMAGE: declared size .*the limit is 33177600 pixels$"):
        decode_image(_forged_png(100_000, 100_000), LIMITS)


def test_forged_png_with_too_wide_a_side_is_refused_before_decoding() -> None:
    with pytest.raises(InvalidInput, match=r"^IMAGE: width 20000 px is outside the allowed 64..7680 px"):
        decode_image(_forged_png(20_000, 100), LIMITS)


def test_real_single_colour_png_compressed_small_is_refused_by_its_pixel_count() -> None:
    data = _encode(Image.new("1", (3000, 3000), 1), "PNG")  # 9 Mpx in a few kilobytes
    assert len(data) < 20_000
    with pytest.raises(InvalidInput, match=r"9000000 pixels; the limit is 4000000 pixels"):
        decode_image(data, Limits(max_pixels=4_000_000))


def test_the_bomb_guard_leaves_pils_global_limit_alone() -> None:
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(InvalidInput):
        decode_image(_forged_png(7000, 7000), LIMITS)
    decode_image(_encode(Image.new("RGB", (64, 64)), "PNG"), Limits(max_pixels=64 * 64))
    assert before == Image.MAX_IMAGE_PIXELS


# ---------------------------------------------------------------------------------------------- corruption


def test_truncated_jpeg_is_rejected() -> None:
    rng = np.random.default_rng(1)
    data = _encode(Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(InvalidInput, match=r"^IMAGE: corrupt or truncated JPEG: "):
        decode_image(data[: len(data) // 2], LIMITS)


def test_jpeg_with_only_a_magic_number_is_rejected() -> None:
    with pytest.raises(InvalidInput) as excinfo:
        decode_image(b"\xff\xd8\xff" + b"\x00garbage" * 20, LIMITS)
    assert str(excinfo.value) == "IMAGE: corrupt or truncated JPEG: the header could not be parsed"


def test_truncated_png_is_rejected() -> None:
    rng = np.random.default_rng(2)
    data = _encode(Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)), "PNG")
    with pytest.raises(InvalidInput, match=r"^IMAGE: corrupt or truncated PNG: "):
        decode_image(data[: len(data) // 2], LIMITS)


def test_png_with_garbage_pixel_data_is_rejected() -> None:
    with pytest.raises(InvalidInput, match=r"^IMAGE: corrupt or truncated PNG: "):
        decode_image(_forged_png(100, 100), LIMITS)


def test_corrupt_webp_is_rejected() -> None:
    data = _encode(Image.new("RGB", (100, 100), (1, 2, 3)), "WEBP")
    with pytest.raises(InvalidInput, match=r"^IMAGE: corrupt or truncated WebP: "):
        decode_image(data[:12] + b"\x00" * (len(data) - 12), LIMITS)


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_pils_bomb_warning_raised_as_an_error_is_still_a_client_error() -> None:
    with pytest.raises(InvalidInput, match=r"^IMAGE: declared size .*decompression bomb"):
        decode_image(_forged_png(10_000, 10_000), LIMITS)  # 100 Mpx: above PIL's warning threshold
