"""Image decoding and transforms: parity with the original torchvision pipeline, every mode to RGB,
DICOM handling, and clear errors on bad bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from m3ae.data import images as im
from m3ae.errors import DataError

from helpers.raw_builders import dicom_bytes

MEAN = np.array((0.48145466, 0.4578275, 0.40821073), dtype=np.float32)
STD = np.array((0.26862954, 0.26130258, 0.27577711), dtype=np.float32)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def reference_clip_eval(path, size: int) -> np.ndarray:
    """The original eval transform written out: Resize(size, bicubic) + CenterCrop + ToTensor + Normalize.

    torchvision on a PIL image: shorter side -> size, longer -> int(size * long / short), PIL bicubic;
    crop offsets round((side - size) / 2); RGBA opened, RGB after the crop (alpha dropped).
    """
    image = Image.open(path).convert("RGBA")
    w, h = image.size
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    image = image.resize(new, Image.BICUBIC)
    top, left = round((new[1] - size) / 2.0), round((new[0] - size) / 2.0)
    image = image.crop((left, top, left + size, top + size)).convert("RGB")
    array = np.asarray(image, dtype=np.float32) / 255.0
    return ((array - MEAN) / STD).transpose(2, 0, 1)


@pytest.mark.parametrize("size", [288, 384])
def test_eval_transform_matches_original_on_real_vqa_rad(vqa_rad_data, size):
    path = min((vqa_rad_data / "images").glob("*.jpg"))
    ours = im.ImageTransform(size, "clip")(im.read_image_file(path))
    assert ours.shape == (3, size, size) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), reference_clip_eval(path, size), atol=1e-5)


def test_resize_shorter_truncates_long_side_like_torchvision():
    image = Image.new("RGB", (300, 451))
    assert im.resize_shorter(image, 288).size == (288, int(288 * 451 / 300))
    assert im.resize_shorter(Image.new("RGB", (451, 300)), 288).size == (int(288 * 451 / 300), 288)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1", "I;16", "I", "F", "YCbCr"])
def test_every_mode_decodes_to_rgb(mode):
    base = Image.fromarray(np.arange(64 * 48, dtype=np.uint8).reshape(48, 64) % 251)
    if mode in ("I;16", "I", "F"):
        array = (np.arange(64 * 48).reshape(48, 64) * 13).astype(
            {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        )
        image = Image.fromarray(array)
    else:
        image = base.convert(mode)
    if mode in ("CMYK", "YCbCr", "F", "I"):  # not PNG-encodable: convert the PIL object directly
        rgb = im.to_rgb(image)
    else:
        rgb = im.decode_image(_png(image), f"test.{mode}")
    assert rgb.mode == "RGB" and rgb.size == (64, 48)
    if mode in ("I;16", "I", "F"):  # min-max window uses the full 8-bit range
        values = np.asarray(rgb)
        assert values.min() == 0 and values.max() == 255


def test_unsupported_mode_is_an_error():
    class Fake:
        mode = "XYZ"

    with pytest.raises(DataError, match="unsupported image mode"):
        im.to_rgb(Fake(), "weird.img")


def test_bad_bytes_raise_data_errors_naming_the_source(monkeypatch):
    good = _png(Image.new("RGB", (32, 32), (10, 20, 30)))
    with pytest.raises(DataError, match="empty.png: empty image file"):
        im.decode_image(b"", "empty.png")
    with pytest.raises(DataError, match="trunc.png: cannot decode"):
        im.decode_image(good[: len(good) // 2], "trunc.png")
    with pytest.raises(DataError, match="junk.jpg: cannot decode"):
        im.decode_image(b"not an image at all" * 10, "junk.jpg")
    monkeypatch.setattr(im, "MAX_PIXELS", 1000)
    with pytest.raises(DataError, match="huge.png: 32x32 pixels exceeds"):
        im.decode_image(good, "huge.png")


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match="nope.jpg: image file not found"):
        im.read_image_file(tmp_path / "nope.jpg")


def test_dicom_window_from_tags_and_monochrome1_inversion():
    ramp = np.tile(np.arange(0, 1000, 10, dtype=np.uint16), (8, 1))  # [8, 100], values 0..990
    rgb = np.asarray(im.decode_image(dicom_bytes(ramp, window=(500, 200)), "ct.dcm"))
    assert rgb.shape == (8, 100, 3)
    assert rgb[0, 39, 0] == 0 and rgb[0, 61, 0] == 255  # 390 below, 610 above the 400..600 window
    inverted = np.asarray(im.decode_image(dicom_bytes(ramp, "MONOCHROME1", window=(500, 200)), "cr.dcm"))
    np.testing.assert_array_equal(inverted, 255 - rgb)


def test_dicom_rescale_percentile_window_and_frame_choice():
    frames = np.stack([np.full((4, 4), 100), np.tile(np.arange(4) * 100, (4, 1))]).astype(np.uint16)
    data = dicom_bytes(frames, slope=2.0, intercept=-100.0)
    second = np.asarray(im.decode_dicom(data, "mf.dcm", frame=1))[..., 0]
    assert second[0, 0] < second[0, 3]  # percentile window over the rescaled ramp keeps the order
    assert np.asarray(im.decode_dicom(data, "mf.dcm", frame=0)).max() == 0  # a flat frame maps to 0
    with pytest.raises(DataError, match="frame 5 requested"):
        im.decode_dicom(data, "mf.dcm", frame=5)


def test_random_resized_crop_is_seeded_and_within_scale():
    boxes = [im.random_resized_crop_box(400, 300, torch.Generator().manual_seed(s)) for s in range(50)]
    assert boxes[0] == im.random_resized_crop_box(400, 300, torch.Generator().manual_seed(0))
    assert len(set(boxes)) > 10  # other seeds give other boxes (some fall back to the whole image)
    for left, top, w, h in boxes:
        assert 0.9 * 400 * 300 * 0.97 <= w * h <= 400 * 300  # area in [0.9, 1] of the image (rounding)
        assert 0 <= left <= 400 - w and 0 <= top <= 300 - h
    out = im.ImageTransform(64, "clip_resizedcrop")(
        Image.new("RGB", (90, 70)), torch.Generator().manual_seed(1)
    )
    assert out.shape == (3, 64, 64)


def test_preresize_never_upscales():
    data, w, h = im.preresize_bytes(Image.new("RGB", (100, 50)), 40, "jpeg")
    assert (w, h) == (80, 40) and Image.open(io.BytesIO(data)).format == "JPEG"
    assert im.preresize_bytes(Image.new("RGB", (30, 20)), 40, "png")[1:] == (30, 20)
