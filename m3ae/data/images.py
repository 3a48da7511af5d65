"""Image decoding (PIL and DICOM, every mode to RGB) and the original CLIP transforms, without torchvision.

Order of operations differs from upstream in one place, on purpose: upstream opens every image as
RGBA and drops alpha after resizing (spec §9.15). We convert to RGB first (alpha dropped, not
composited). For RGB/greyscale JPEGs, i.e. all the benchmark images, the two are identical; for
images with partial transparency upstream's premultiplied-alpha resize darkens edges, ours does not.
"""

from __future__ import annotations

import io
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from m3ae.errors import DataError

from m3ae.preprocessing import CLIP_MEAN, CLIP_STD, Preprocessing  # noqa: F401 (re-exported)
MAX_PIXELS = 89_478_485
"""Decompression-bomb guard: the PIL default limit (about 89 M pixels); larger images are refused."""
MAX_ASPECT_RATIO = 20.0
"""Longest side / shortest side. Resizing the shorter side of a 1 x 2,000,000 image (4 KB as a
PNG, well under MAX_PIXELS) to 384 px would allocate 768 G pixels; no medical image is that thin
(panoramic dental X-rays are about 2.5:1)."""
RRC_SCALE = (0.9, 1.0)
"""RandomResizedCrop area range used by the original `clip_resizedcrop` transform."""
RRC_RATIO = (3 / 4, 4 / 3)
RRC_ATTEMPTS = 10  # torchvision's number of tries before falling back to a centre crop
DICOM_PERCENTILES = (0.5, 99.5)
"""Window for DICOMs without window tags: robust to a few extreme pixels (metal, padding)."""
DICOM_MAGIC_OFFSET = 128  # a DICOM Part-10 file has "DICM" after a 128-byte preamble
DIRECT_MODES = {"RGB"}
CONVERTIBLE_MODES = {"L", "1", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBA", "LA", "La", "RGBa", "P", "PA"}
HIGH_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


def is_dicom(data: bytes, name: str = "") -> bool:
    """True for DICOM Part-10 bytes (the "DICM" magic after the preamble), whatever the file is
    called: a JPEG named ``.dcm`` is a JPEG. ``name`` is accepted for callers that pass it."""
    return data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM"


def check_size(width: int, height: int, source: str) -> None:
    """The decode budget: at most ``MAX_PIXELS`` pixels and ``MAX_ASPECT_RATIO``, checked from the
    header before any pixel is decoded or resized, so no input can make the pipeline allocate more."""
    if width < 1 or height < 1:
        raise DataError(f"{source}: {width}x{height} pixels: the image is empty")
    if width * height > MAX_PIXELS:
        raise DataError(f"{source}: {width}x{height} pixels exceeds the {MAX_PIXELS} limit "
                        "(decompression-bomb guard)")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise DataError(f"{source}: {width}x{height} pixels: aspect ratio above the {MAX_ASPECT_RATIO:g}:1 "
                        "limit (resizing it would exhaust memory)")


_frame_note_shown = False  # the middle-frame default is said once per process, not per image


def pick_frame(frames: int, frame: int | None, source: str) -> int:
    """The frame of a multi-frame DICOM: ``frame`` when given, else the middle one (said once)."""
    global _frame_note_shown
    if frame is None:
        frame = frames // 2
        if not _frame_note_shown:
            _frame_note_shown = True
            print(f"note: {source} has {frames} frames; using the middle frame {frame} "
                  "(choose another with --frame N)", file=sys.stderr)
    if not 0 <= frame < frames:
        raise DataError(f"{source}: frame {frame} requested but the DICOM has {frames} frames (0-{frames - 1})")
    return frame


def _window_to_uint8(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linearly map [low, high] to [0, 255] (clipped); a flat image maps to 0."""
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        array = np.nan_to_num(array, nan=low, posinf=high, neginf=low)
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    scaled = (array - low) / (high - low) * 255.0
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer / float greyscale: min-max window to 8 bits."""
    array = np.asarray(image)
    finite = array[np.isfinite(array)] if array.dtype.kind == "f" else array
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    return Image.fromarray(_window_to_uint8(array, low, high)).convert("RGB")


def to_rgb(image: Image.Image, source: str = "<image>") -> Image.Image:
    """Convert any supported PIL mode to RGB (alpha dropped); unknown modes are an error."""
    if image.mode in DIRECT_MODES:
        return image
    if image.mode in HIGH_DEPTH_MODES:
        return _high_depth_to_rgb(image)
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")  # through RGBA so palette transparency is resolved, then dropped
    if image.mode in CONVERTIBLE_MODES or image.mode == "RGBA":
        return image.convert("RGB")
    raise DataError(f"{source}: unsupported image mode {image.mode!r}")


def _first_value(value) -> float:
    """A DICOM tag that may be multi-valued (several windows): its first value."""
    if hasattr(value, "__len__") and not isinstance(value, str):
        return float(value[0])
    return float(value)


def _dicom_window(ds, array: np.ndarray) -> tuple[float, float]:
    """Window (low, high) from WindowCenter/Width tags (applied to rescaled values), else a percentile window."""
    center, width = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    if center is not None and width is not None:
        c, w = _first_value(center), _first_value(width)
        if w > 0:
            return c - w / 2.0, c + w / 2.0
    low, high = np.percentile(array, DICOM_PERCENTILES)
    return float(low), float(high)


def decode_dicom(data: bytes, source: str = "<dicom>", frame: int | None = None) -> Image.Image:
    """Decode a DICOM to an RGB PIL image.

    Applies RescaleSlope/Intercept, the window from the tags (or a 0.5-99.5 percentile window),
    inverts MONOCHROME1 and picks ``frame`` of a multi-frame file (None = the middle frame).
    """
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        array = ds.pixel_array
    except Exception as err:  # pydicom raises many types for broken or compressed-without-codec files
        raise DataError(f"{source}: cannot decode DICOM pixel data ({type(err).__name__}: {err})") from err
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        array = array[pick_frame(frames, frame, source)]
    check_size(int(array.shape[1]), int(array.shape[0]), source)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if samples == 3:  # colour DICOM (ultrasound, photos): pydicom already returns RGB
        return Image.fromarray(np.asarray(array, dtype=np.uint8))
    values = array.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1) or 1)
    values += float(getattr(ds, "RescaleIntercept", 0) or 0)
    low, high = _dicom_window(ds, values)
    grey = _window_to_uint8(values, low, high)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        grey = 255 - grey  # MONOCHROME1: high values are dark
    return Image.fromarray(grey).convert("RGB")


def decode_image(data: bytes, source: str = "<image>", frame: int | None = None) -> Image.Image:
    """Decode image bytes (PNG, JPEG, ..., or DICOM, told apart by content) to a loaded RGB PIL image.

    Raises:
        DataError: empty, truncated or undecodable bytes, an unsupported mode, more than
            ``MAX_PIXELS`` pixels or a side ratio above ``MAX_ASPECT_RATIO``. The message names ``source``.
    """
    if not data:
        raise DataError(f"{source}: empty image file (0 bytes)")
    if is_dicom(data):
        return decode_dicom(data, source, frame)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            check_size(image.width, image.height, source)
            image.load()  # force the full decode now: truncated files fail here, not later
    except DataError:
        raise
    except UnidentifiedImageError as err:
        if source.lower().endswith(".dcm"):  # a DICOM without the Part-10 preamble: try pydicom
            return decode_dicom(data, source, frame)
        raise DataError(f"{source}: cannot decode image ({type(err).__name__}: {err})") from err
    except (
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as err:
        raise DataError(f"{source}: cannot decode image ({type(err).__name__}: {err})") from err
    return to_rgb(image, source)


def read_image_file(path: str | Path, frame: int | None = None) -> Image.Image:
    """Read and decode an image file; a missing file is a DataError naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise DataError(f"{path}: image file not found") from err
    except OSError as err:
        raise DataError(f"{path}: cannot read image file ({err})") from err
    return decode_image(data, str(path), frame)


def resize_shorter(image: Image.Image, size: int) -> Image.Image:
    """Bicubic resize so that the shorter side is ``size`` (torchvision Resize(int) semantics).

    The longer side becomes ``int(size * long / short)`` (truncated, as torchvision does).
    """
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    check_size(new_w, new_h, f"{w}x{h} image resized to shorter side {size}")  # PIL images given directly
    if (new_w, new_h) == (w, h):
        return image
    return image.resize((new_w, new_h), Image.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Centre crop to ``size`` x ``size``; offsets round((side - size) / 2) as torchvision."""
    w, h = image.size
    if w < size or h < size:
        raise ValueError(f"centre crop {size} larger than the image {w}x{h}; resize first")
    top, left = round((h - size) / 2.0), round((w - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


def random_resized_crop_box(
    width: int, height: int, generator: torch.Generator, scale=RRC_SCALE, ratio=RRC_RATIO
) -> tuple[int, int, int, int]:
    """Crop box (left, top, w, h) drawn as torchvision's RandomResizedCrop.get_params, from ``generator``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(RRC_ATTEMPTS):
        target_area = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=generator))
        aspect = math.exp(float(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return left, top, w, h
    # fallback: the largest centre crop whose aspect ratio is inside the range
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def to_normalized_tensor(image: Image.Image, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """ToTensor + Normalize: uint8 RGB [H, W, C] -> float32 [C, H, W] in CLIP units.

    Computed in NumPy float32, which gives the same values as torch's ``div(255)``, ``sub``, ``div``
    but stays single-threaded: torch's intra-op threads made this step 30x slower on a busy CPU.
    """
    mean_a = np.asarray(mean, dtype=np.float32).reshape(1, 1, -1)
    std_a = np.asarray(std, dtype=np.float32).reshape(1, 1, -1)
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)  # [H, W, C] in [0, 1]
    normalized = (pixels - mean_a) / std_a
    return torch.from_numpy(np.ascontiguousarray(normalized.transpose(2, 0, 1)))  # [H, W, C] -> [C, H, W]


class ImageTransform:
    """The original CLIP transforms as one callable: RGB PIL image (+ generator) -> [3, N, N] tensor.

    ``clip``: resize the shorter side to N (bicubic), centre crop N. ``clip_resizedcrop`` (training
    only): random resized crop, scale 0.9-1.0, ratio 3/4-4/3, bicubic to N x N.
    """

    def __init__(self, size: int, mode: str = "clip", mean: tuple[float, ...] = CLIP_MEAN,
                 std: tuple[float, ...] = CLIP_STD) -> None:
        if mode not in ("clip", "clip_resizedcrop"):
            raise ValueError(f"unknown transform {mode!r}")
        self.size, self.mode, self.mean, self.std = size, mode, tuple(mean), tuple(std)

    @classmethod
    def from_preprocessing(cls, pre: Preprocessing, mode: str = "clip") -> ImageTransform:
        """The transform a model folder's (or a training run's) `Preprocessing` describes."""
        return cls(pre.image_size, mode, pre.mean, pre.std)

    def view(self, image: Image.Image) -> Image.Image:
        """The evaluation square the model sees: shorter side to N (bicubic), centre crop N."""
        return center_crop(resize_shorter(image, self.size), self.size)

    def normalize(self, square: Image.Image) -> torch.Tensor:
        """A model-sized RGB square -> [3, N, N] in the model's units (its mean/std)."""
        return to_normalized_tensor(square, self.mean, self.std)

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.mode == "clip_resizedcrop":
            if generator is None:
                raise ValueError("clip_resizedcrop needs a generator (determinism)")
            left, top, w, h = random_resized_crop_box(image.width, image.height, generator)
            # crop then resize (torchvision resized_crop), not resize(box=): the box form reads pixels
            # outside the crop for the filter support
            image = image.crop((left, top, left + w, top + h)).resize((self.size, self.size), Image.BICUBIC)
        else:
            image = self.view(image)
        return self.normalize(image)

    def __repr__(self) -> str:
        return f"ImageTransform(size={self.size}, mode={self.mode!r}, mean={self.mean}, std={self.std})"


def preresize_bytes(image: Image.Image, size: int, fmt: str) -> tuple[bytes, int, int]:
    """Resize the shorter side to ``size`` (never upscaling) and encode as PNG or JPEG (quality 95).

    Used by ``m3ae prepare --image-size`` so that training decodes small files.
    """
    if min(image.size) > size:
        image = resize_shorter(image, size)
    buffer = io.BytesIO()
    if fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=95)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue(), image.width, image.height
