"""decode_rgb: every odd image kind becomes RGB uint8 (H, W, 3) by the documented rules; bad bytes raise
ImageDecodeError with the right reason."""

from __future__ import annotations

import io
import pickle
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from dpal_cache.config import ConfigError
from dpal_cache.data.decode import DECODE_REASONS, DecodeConfig, ImageDecodeError, decode_image, decode_rgb

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _check_rgb(arr: np.ndarray, height: int, width: int) -> None:
    assert arr.dtype == np.uint8
    assert arr.shape == (height, width, 3)
    assert arr.flags.c_contiguous and arr.flags.writeable  # torch.from_numpy warns on read-only arrays


def _reason(data: bytes, cfg: DecodeConfig = DecodeConfig()) -> str:
    with pytest.raises(ImageDecodeError) as info:
        decode_rgb(data, cfg)
    assert info.value.reason in DECODE_REASONS
    return info.value.reason


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height RGB pixels, with no pixel data at all."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _palette_image() -> Image.Image:
    img = Image.new("P", (2, 2))
    img.putpalette([*RED, *GREEN, *BLUE] + [0] * (256 - 3) * 3)
    img.putdata([0, 1, 2, 1])  # [[red, green], [blue, green]]
    return img


def _composite(value: np.ndarray, alpha: np.ndarray, background: int) -> np.ndarray:
    a = alpha / 255.0
    return value * a + background * (1.0 - a)


# ---------------------------------------------------------------------------------------------- odd kinds


def test_rgb_png_webp_bmp_keep_exact_pixels(encode):
    rgb = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for data in (encode(rgb, "PNG"), encode(rgb, "WEBP", lossless=True), encode(rgb, "BMP")):
        arr = decode_rgb(data)
        _check_rgb(arr, 5, 7)
        np.testing.assert_array_equal(arr, rgb)


def test_one_by_one_image(encode):
    arr = decode_rgb(encode(Image.new("RGB", (1, 1), (10, 200, 30))))
    _check_rgb(arr, 1, 1)
    assert arr[0, 0].tolist() == [10, 200, 30]


def test_grayscale_and_one_bit_are_repeated_to_three_channels(encode):
    grey = np.array([[0, 17, 128], [200, 254, 255]], dtype=np.uint8)
    arr = decode_rgb(encode(grey))
    _check_rgb(arr, 2, 3)
    np.testing.assert_array_equal(arr, np.repeat(grey[:, :, None], 3, axis=2))

    bits = Image.fromarray(np.array([[True, False, False], [False, True, True]]))
    assert bits.mode == "1"
    for fmt in ("PNG", "BMP"):
        arr = decode_rgb(encode(bits, fmt))
        _check_rgb(arr, 2, 3)
        assert arr[..., 0].tolist() == [[255, 0, 0], [0, 255, 255]]
        assert (arr == arr[..., :1]).all()


def test_palette_png_without_and_with_transparency(encode):
    arr = decode_rgb(encode(_palette_image()))
    _check_rgb(arr, 2, 2)
    assert arr.tolist() == [[list(RED), list(GREEN)], [list(BLUE), list(GREEN)]]

    # palette entry 1 (green) fully transparent: those pixels become the background grey
    data = encode(_palette_image(), transparency=1)
    assert Image.open(io.BytesIO(data)).info.get("transparency") == 1
    for bg in (0, 77):
        arr = decode_rgb(data, DecodeConfig(alpha_background=bg))
        assert arr.tolist() == [[list(RED), [bg] * 3], [list(BLUE), [bg] * 3]]


def test_palette_with_partial_alpha_is_composited(encode):
    img = _palette_image()
    img.putpalette([*RED, 128, *GREEN, 255, *BLUE, 0], "RGBA")  # red half transparent, blue fully
    arr = decode_rgb(encode(img), DecodeConfig(alpha_background=40))
    assert np.abs(arr[0, 0].astype(int) - _composite(np.array(RED), 128, 40)).max() <= 1
    assert arr[0, 1].tolist() == list(GREEN)
    assert arr[1, 0].tolist() == [40, 40, 40]


def test_la_is_composited_over_the_background(encode):
    la = np.array([[[200, 255], [200, 0]], [[100, 128], [50, 64]]], dtype=np.uint8)
    data = encode(Image.fromarray(la, mode="LA"))
    for bg in (0, 100, 255):
        arr = decode_rgb(data, DecodeConfig(alpha_background=bg))
        _check_rgb(arr, 2, 2)
        expected = _composite(la[..., 0].astype(float), la[..., 1].astype(float), bg)
        assert np.abs(arr[..., 0] - expected).max() <= 1, (bg, arr[..., 0], expected)
        assert (arr == arr[..., :1]).all()
    # the numbers themselves, not only the formula: opaque kept, transparent = background
    arr = decode_rgb(data)
    assert arr[0, 0, 0] == 200 and arr[0, 1, 0] == 0 and abs(int(arr[1, 0, 0]) - 50) <= 1


def test_rgba_is_composited_not_dropped(encode):
    rgba = np.array([[[200, 100, 50, 128], [10, 20, 30, 255], [90, 90, 90, 0]]], dtype=np.uint8)
    data = encode(Image.fromarray(rgba, mode="RGBA"))
    black = decode_rgb(data)
    _check_rgb(black, 1, 3)
    assert np.abs(black[0, 0].astype(int) - [100, 50, 25]).max() <= 1  # 128/255 of the colour over black
    assert black[0, 1].tolist() == [10, 20, 30]
    assert black[0, 2].tolist() == [0, 0, 0]  # its RGB (90) is not leaked through
    white = decode_rgb(data, DecodeConfig(alpha_background=255))
    assert np.abs(white[0, 0].astype(int) - [227, 177, 152]).max() <= 1
    assert white[0, 2].tolist() == [255, 255, 255]


def test_cmyk_jpeg_becomes_rgb(encode):
    data = encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=100)  # no cyan, full magenta+yellow
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    arr = decode_rgb(data)
    _check_rgb(arr, 8, 8)
    assert np.abs(arr.reshape(-1, 3).astype(int) - RED).max() <= 8


def test_16_bit_greyscale_png_keeps_the_top_8_bits(encode):
    values = np.array([[0, 255, 256, 4660], [32768, 40000, 65280, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(values))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    arr = decode_rgb(data)
    _check_rgb(arr, 2, 4)
    assert arr[..., 0].tolist() == [[0, 0, 1, 18], [128, 156, 255, 255]]
    np.testing.assert_array_equal(arr[..., 0], values >> 8)
    assert (arr == arr[..., :1]).all()


def test_32_bit_integer_image_is_shifted_and_clipped(encode):
    values = np.array([[0, 256, 70_000], [-5, 30_000, 512]], dtype=np.int32)
    img = Image.fromarray(values)
    assert img.mode == "I"
    arr = decode_rgb(encode(img, "TIFF"))
    _check_rgb(arr, 2, 3)
    assert arr[..., 0].tolist() == [[0, 1, 255], [0, 117, 2]]  # >> 8, then clipped to 0..255


def test_float_tiff_unit_range_is_scaled_else_clipped(encode):
    unit = Image.fromarray(np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32))
    assert unit.mode == "F"
    try:
        data = encode(unit, "TIFF")
    except OSError:
        pytest.skip("this Pillow cannot write float TIFF")
    arr = decode_rgb(data)
    _check_rgb(arr, 1, 4)
    assert arr[..., 0].tolist() == [[0, 63, 127, 255]]

    wide = Image.fromarray(np.array([[0.0, 100.0, 300.0, -4.0]], dtype=np.float32))
    assert decode_rgb(encode(wide, "TIFF"))[..., 0].tolist() == [[0, 100, 255, 0]]


def _quadrants(height: int = 16, width: int = 32) -> np.ndarray:
    """Stored pixels: top-left red, top-right green, bottom-left blue, bottom-right white."""
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    h, w = height // 2, width // 2
    arr[:h, :w], arr[:h, w:], arr[h:, :w], arr[h:, w:] = RED, GREEN, BLUE, WHITE
    return arr


def _quadrant_colours(arr: np.ndarray) -> list[tuple[int, int, int]]:
    """Colours at the centres of the TL, TR, BL, BR quadrants, snapped to 0/255 (JPEG is lossy)."""
    h, w = arr.shape[0] // 4, arr.shape[1] // 4
    centres = [arr[h, w], arr[h, 3 * w], arr[3 * h, w], arr[3 * h, 3 * w]]
    return [tuple(int(v > 127) * 255 for v in c) for c in centres]


@pytest.mark.parametrize(
    ("orientation", "shape", "quadrants", "k"),
    [
        (1, (16, 32), [RED, GREEN, BLUE, WHITE], 0),
        (6, (32, 16), [BLUE, RED, WHITE, GREEN], -1),  # stored image must turn 90 degrees clockwise
        (3, (16, 32), [WHITE, BLUE, GREEN, RED], 2),  # 180 degrees
    ],
)
def test_exif_orientation_is_applied(encode, orientation, shape, quadrants, k):
    img = Image.fromarray(_quadrants())
    exif = img.getexif()
    exif[0x0112] = orientation
    data = encode(img, "JPEG", quality=95, exif=exif)
    arr = decode_rgb(data)
    _check_rgb(arr, *shape)
    assert _quadrant_colours(arr) == quadrants
    # exactly the stored pixels, rotated: no resampling on the way
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(arr, np.rot90(stored, k=k))


def test_decode_image_is_the_same_pixels_as_a_tensor(encode):
    rgba = np.random.default_rng(2).integers(0, 256, (6, 4, 4), dtype=np.uint8)
    data = encode(Image.fromarray(rgba, mode="RGBA"))
    cfg = DecodeConfig(alpha_background=30)
    tensor = decode_image(data, cfg)
    assert isinstance(tensor, torch.Tensor)
    assert tensor.dtype == torch.uint8 and tuple(tensor.shape) == (6, 4, 3)
    assert torch.equal(tensor, torch.from_numpy(decode_rgb(data, cfg)))
    with pytest.raises(ImageDecodeError):
        decode_image(b"")


# ---------------------------------------------------------------------------------------------- bad bytes


def test_zero_bytes_are_empty():
    assert _reason(b"") == "empty"


def test_text_is_not_an_image():
    assert _reason(b"this file is named photo.jpg but holds text\n") == "not_an_image"


def test_jpeg_cut_in_half_is_truncated(noise_jpeg):
    data = noise_jpeg(64, 64)
    decode_rgb(data)  # the whole file is fine
    assert _reason(data[: len(data) // 2]) == "truncated"


def test_png_cut_in_half_is_truncated(encode):
    data = encode(np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    assert _reason(data[: len(data) // 2]) == "truncated"


def test_huge_dimensions_in_a_header_are_refused_before_decoding():
    # over Pillow's own hard limit: refused while opening
    assert _reason(_png_header_only(100_000, 100_000)) == "too_many_pixels"
    # over our default (Pillow's warning threshold) but under Pillow's hard limit: our check
    with pytest.raises(ImageDecodeError) as info:
        decode_rgb(_png_header_only(10_000, 10_000))
    assert info.value.reason == "too_many_pixels" and "10000x10000" in info.value.detail


def test_max_pixels_applies_to_small_real_images(encode):
    data = encode(Image.new("RGB", (10, 10), (1, 2, 3)))
    assert _reason(data, DecodeConfig(max_pixels=99)) == "too_many_pixels"
    _check_rgb(decode_rgb(data, DecodeConfig(max_pixels=100)), 10, 10)  # the limit itself is allowed


def test_min_side(encode):
    data = encode(Image.new("RGB", (10, 3)))
    assert _reason(data, DecodeConfig(min_side=4)) == "too_small"
    _check_rgb(decode_rgb(data, DecodeConfig(min_side=3)), 3, 10)


def test_min_side_is_checked_after_exif_rotation(encode):
    img = Image.new("RGB", (12, 4))
    exif = img.getexif()
    exif[0x0112] = 6
    arr = decode_rgb(encode(img, "JPEG", exif=exif), DecodeConfig(min_side=4))
    _check_rgb(arr, 12, 4)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_every_prefix_fails_cleanly_or_decodes(encode, fmt):
    """Whatever a cut file looks like, the decoder raises only ImageDecodeError (the manifest records it)."""
    data = encode(np.random.default_rng(4).integers(0, 256, (12, 10, 3), dtype=np.uint8), fmt)
    reasons = set()
    for n in range(0, len(data), 5):
        try:
            decode_rgb(data[:n])
        except ImageDecodeError as exc:
            reasons.add(exc.reason)
    assert reasons <= {"empty", "not_an_image", "truncated"} and "truncated" in reasons


def test_decode_errors_survive_pickling():
    """Errors raised in pool workers are pickled back to the parent."""
    err = pickle.loads(pickle.dumps(ImageDecodeError("truncated", "image file is truncated")))
    assert isinstance(err, ImageDecodeError)
    assert (err.reason, err.detail) == ("truncated", "image file is truncated")
    assert str(err) == "truncated: image file is truncated"


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"max_pixels": 0}, "max_pixels"),
        ({"max_pixels": 2 * 89_478_485 + 1}, "max_pixels"),
        ({"alpha_background": -1}, "alpha_background"),
        ({"alpha_background": 256}, "alpha_background"),
        ({"min_side": 0}, "min_side"),
    ],
)
def test_decode_config_validation(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        DecodeConfig(**kwargs)


def test_decode_config_accepts_its_limits():
    cfg = DecodeConfig(max_pixels=2 * 89_478_485, alpha_background=255, min_side=1)
    assert cfg.max_pixels == 178_956_970
    assert DecodeConfig(max_pixels=1, alpha_background=0).alpha_background == 0
