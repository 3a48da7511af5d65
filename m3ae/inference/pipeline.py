"""`VQAPipeline`: answer a question about an image with a fine-tuned M3AE model.

    from m3ae import VQAPipeline
    pipe = VQAPipeline.from_pretrained("runs/demo/finetune/best")
    pipe("scan.dcm", "Is this a CT scan?")
    # [{"answer": "yes", "probability": 0.93}, {"answer": "no", "probability": 0.05}, ...]

The model folder (written by `M3AE.save_pretrained`) carries everything the pipeline needs: the
weights, the architecture, the answer list, the preprocessing (image size, mean/std, text length)
and the tokenizer files, so no other file or download is involved.

Probabilities: the VQA head was trained with a per-answer sigmoid loss (spec §3.1), so its
logits are not a distribution over answers. We report ``softmax(logits)``: it keeps the ranking
(argmax = the model's answer, as in evaluation) and sums to one over the answer list. It is not
a calibrated probability of being right.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image

from m3ae.errors import CheckpointError, DataError, M3AEError
from m3ae.hardware import Precision
from m3ae.preprocessing import CLIP_MEAN, CLIP_STD, Preprocessing, preprocessing_from_metadata  # noqa: F401

ImageInput = Union[str, Path, Image.Image, np.ndarray]



def read_folder_config(model_dir: str | Path) -> dict[str, Any]:
    """The whole ``config.json`` of a model folder (`m3ae.models.io.read_metadata`; kept by name)."""
    from m3ae.models.io import read_metadata

    return read_metadata(model_dir)


def preprocessing_from_config(config: dict[str, Any], model_image_size: int | None = None) -> Preprocessing:
    """The `Preprocessing` a folder's config.json records (`m3ae.preprocessing`; kept by name)."""
    return preprocessing_from_metadata(config, model_image_size)


def to_rgb_image(image: ImageInput, frame: int | None = None) -> Image.Image:
    """Turn any supported input into an RGB PIL image, via the data pipeline's decoders.

    Args:
        image: a path (PNG 8/16 bit, JPEG, DICOM, ...), a PIL image of any mode, or an array
            [H, W] (grey) or [H, W, 3] (RGB); uint8, uint16 or float.
        frame: the frame of a multi-frame DICOM (None = the middle one).

    Raises:
        DataError: for an unreadable file or an unsupported array.
    """
    from m3ae.data import images

    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise DataError(f"{path}: image file not found")
        return images.read_image_file(path, frame)
    if isinstance(image, np.ndarray):
        image = array_to_pil(image)
    if isinstance(image, Image.Image):
        return images.to_rgb(image)
    raise DataError(f"unsupported image input of type {type(image).__name__}: "
                    "give a path, a PIL image or an array")


def array_to_pil(array: np.ndarray) -> Image.Image:
    """Wrap an array as a PIL image without changing its values (the decoder windows it later).

    Raises:
        DataError: for a shape other than [H, W], [H, W, 1] or [H, W, 3].
    """
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] == 3:
        if array.dtype != np.uint8:  # RGB must be 8-bit in PIL: scale floats in [0, 1], clip the rest
            scale = 255.0 if array.dtype.kind == "f" and array.max() <= 1.0 else 1.0
            array = np.clip(array * scale, 0, 255).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(array))  # uint8 [H, W, 3] -> RGB
    if array.ndim != 2:
        raise DataError(f"image array must be [H, W] or [H, W, 3], got shape {tuple(array.shape)}")
    if array.dtype == np.uint8:
        return Image.fromarray(np.ascontiguousarray(array))  # -> mode L
    if array.dtype.kind in "iu":
        return Image.fromarray(array.astype(np.int32))  # -> mode I, windowed min-max by to_rgb
    if array.dtype.kind == "f":
        return Image.fromarray(array.astype(np.float32))  # -> mode F, windowed min-max by to_rgb
    raise DataError(f"unsupported image array dtype {array.dtype}")


class VQAPipeline:
    """A fine-tuned M3AE VQA model with its tokenizer, answer list and preprocessing.

    Args:
        model: an `M3AE` with a ``vqa`` head.
        tokenizer: the tokenizer the model was trained with.
        answers: the answer list, index = VQA head output.
        preprocessing: image size, mean/std and text length.
        device: torch device to run on.
        image_input: "pixels", or "none" for a question-only model.
        precision: an `m3ae.hardware.INFERENCE_PRECISIONS` choice: fp32 (the default, exact), auto
            (bf16 where the hardware runs it natively), bf16, fp16, or int8 (CPU only: the Linear
            layers of the vision tower and the fusion are quantised in place, see `m3ae.inference.quantize`);
            or a resolved `m3ae.hardware.Precision`. bf16/fp16 hold the weights in that dtype
            (`m3ae.inference.quantize.weight_dtype`): half the memory of fp32, unlike autocast over fp32 weights.
    """

    def __init__(self, model: Any, tokenizer: Any, answers: Sequence[str], preprocessing: Preprocessing,
                 device: str | torch.device = "cpu", image_input: str = "pixels",
                 precision: str | Precision = "fp32") -> None:
        if "vqa" not in model.heads:
            raise M3AEError("this model has no VQA head (it is a pre-trained or non-VQA model): "
                            "fine-tune it on a VQA dataset first (m3ae finetune)")
        num_outputs = model.config.num_answers
        if len(answers) != num_outputs:
            raise CheckpointError(f"the answer list has {len(answers)} entries but the VQA head has "
                                  f"{num_outputs} outputs")
        from m3ae.inference.quantize import autocast_name, prepare_for_inference

        self.device = torch.device(device)
        model, self.precision = prepare_for_inference(model.eval(), precision, self.device)
        self.autocast = autocast_name(self.precision)  # int8 kernels run outside autocast
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        self.answers = list(answers)
        # the training task computes the logits, so a question-only model ignores the image here too
        from m3ae.tasks.vqa import VQATask

        self.task = VQATask(image_input=image_input)
        self.preprocessing = preprocessing

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str | torch.device = "cpu",
                        allow_download: bool = False, precision: str | Precision = "fp32") -> VQAPipeline:
        """Load a model folder written by `M3AE.save_pretrained` (weights, config, answers, tokenizer).

        ``model_dir`` may also be a Hub id ("org/name"), resolved through the local Hugging Face
        cache; it is downloaded only when ``allow_download=True``. ``precision`` as in the
        constructor, except that ``auto`` on a CPU is chosen by measurement (`measured`).

        Raises:
            CheckpointError: a missing folder/file or an inconsistent folder.
            M3AEError: a model without a VQA head.
        """
        from m3ae.data import load_tokenizer
        from m3ae.models import M3AE
        from m3ae.models.io import read_metadata, resolve_model_dir

        from m3ae.hardware import resolve_inference_precision
        from m3ae.inference.quantize import weight_dtype

        model_dir = resolve_model_dir(model_dir, allow_download=allow_download)
        config = read_metadata(model_dir)
        if precision == "auto" and torch.device(device).type == "cpu":
            return cls.measured(model_dir, config)
        resolved = precision if isinstance(precision, Precision) else resolve_inference_precision(precision, device)
        # bf16/fp16: built and read in that dtype, the fp32 weights never in memory
        model = M3AE.from_pretrained(model_dir, dtype=weight_dtype(resolved))
        if "vqa" not in model.heads:
            raise M3AEError(f"{model_dir} has no VQA head (heads: {', '.join(model.heads) or 'none'}): "
                            "predict needs a model fine-tuned for VQA, e.g. runs/demo/finetune/best")
        answers = config.get("answers")
        if not answers:
            raise CheckpointError(
                f"{model_dir / 'config.json'} has no answer list ('answers'), so VQA outputs cannot be named; "
                "add one with `m3ae convert SRC.ckpt OUT_DIR --answers FILE` (the answers.json of the "
                "prepared folder the model was fine-tuned on, or the original's label list)")
        tokenizer = load_tokenizer(model_dir if _has_tokenizer_files(model_dir) else None)
        pre = preprocessing_from_metadata(config, model.config.vision.image_size)
        return cls(model, tokenizer, answers, pre, device=device,
                   image_input=config.get("image_input", "pixels"), precision=resolved)

    @classmethod
    def measured(cls, model_dir: Path, config: dict[str, Any]) -> VQAPipeline:
        """``precision auto`` on a CPU: the fastest of fp32, bf16 (native only) and int8 that gives
        fp32's answers on the bundled probe questions (`m3ae.inference.quantize.measure_precisions`), measured
        once per machine and model and cached (`m3ae.hardware.measured_path("inference_precision")`)."""
        from m3ae.hardware import machine_key
        from m3ae.inference.quantize import cached_precision, measure_precisions, pick_precision, remember_precision

        key = f"{machine_key()}|{config.get('weights_sha256') or Path(model_dir).resolve()}"
        hit = cached_precision(key)
        if hit is not None:
            name, why = hit
            return cls.from_pretrained(model_dir, precision=Precision(name, f"{why} (measured earlier, cached)"))
        print("precision auto: timing fp32, bf16 and int8 on this machine once (cached for later runs)...",
              file=sys.stderr, flush=True)
        pipe = cls.from_pretrained(model_dir, precision="fp32")
        probe, single = pipe.probe_batches()
        results = measure_precisions(pipe.model, pipe.task, probe, single)
        name, why = pick_precision(results)
        remember_precision(key, name, why, results)
        return cls(pipe.model, pipe.tokenizer, pipe.answers, pipe.preprocessing,
                   image_input=config.get("image_input", "pixels"), precision=Precision(name, why))

    def probe_batches(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The bundled probe (m3ae/assets/probe: 9 VQA-RAD train images x 4 questions) as model
        inputs, and its first pair alone (the single-question call that is timed)."""
        import json

        folder = Path(__file__).resolve().parents[1] / "assets" / "probe"
        spec = json.loads((folder / "probe.json").read_text())
        pairs = [(name, q) for name in spec["images"] for q in spec["questions"]]
        pixels = {name: self.preprocess_image(folder / name) for name in spec["images"]}
        text = self.tokenize([q for _, q in pairs])
        probe = {"pixel_values": torch.stack([pixels[name] for name, _ in pairs]), **text}
        return probe, {k: v[:1] for k, v in probe.items()}

    # ----------------------------------------------------------------------------------- inputs
    def model_view(self, image: ImageInput) -> Image.Image:
        """The RGB square the model sees: decode (DICOM windowed), shorter side to the input size,
        centre crop (the original "clip" evaluation transform, as evaluation applies it)."""
        return self.transform.view(to_rgb_image(image))

    def to_pixel_values(self, view: Image.Image) -> torch.Tensor:
        """Normalise a `model_view` square with the folder's mean/std: -> [3, H, W]."""
        return self.transform.normalize(view)

    @property
    def transform(self) -> Any:
        """The data floor's evaluation `ImageTransform` for this model's `Preprocessing`."""
        from m3ae.data.images import ImageTransform

        return ImageTransform.from_preprocessing(self.preprocessing)

    def preprocess_image(self, image: ImageInput) -> torch.Tensor:
        """Decode, resize (shorter side), centre-crop and normalise one image: -> [3, H, W]."""
        return self.to_pixel_values(self.model_view(image))

    def tokenize(self, questions: Sequence[str]) -> dict[str, torch.Tensor]:
        """Pad/truncate questions to the model's text length: -> input_ids, attention_mask [B, L_t]."""
        for question in questions:
            if not isinstance(question, str) or not question.strip():
                raise M3AEError("the question is empty: ask something about the image")
        limit = self.preprocessing.max_text_len
        for question, ids in zip(questions, self.tokenizer(list(questions))["input_ids"]):
            if len(ids) > limit:  # the model never sees the tail: say so instead of answering silently
                print(f"note: the question has {len(ids)} tokens; only the first {limit} are used: "
                      f"{question[:60]!r}...", file=sys.stderr)
        from m3ae.data.text import tokenize

        enc = tokenize(self.tokenizer, list(questions), limit)  # the call training uses
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    # ------------------------------------------------------------------------------- prediction
    @torch.no_grad()
    def logits(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
               attention_mask: torch.Tensor) -> torch.Tensor:
        """VQA logits for a batch: [B, 3, H, W], [B, L_t] -> [B, A]."""
        from m3ae.hardware import autocast_context

        batch = {"pixel_values": pixel_values.to(self.device), "input_ids": input_ids.to(self.device),
                 "attention_mask": attention_mask.to(self.device)}
        with autocast_context(self.autocast, self.device):
            return self.task.logits(self.model, batch).float().cpu()

    def predict_batch(self, images: Sequence[ImageInput], questions: Sequence[str],
                      top_k: int = 1) -> list[list[dict[str, Any]]]:
        """Answer one question per image.

        Returns:
            For each question, its `top_k` answers as ``{"answer", "probability"}``, best first.
        """
        if len(images) != len(questions):
            raise M3AEError(f"{len(images)} images for {len(questions)} questions")
        text = self.tokenize(questions)
        pixel_values = torch.stack([self.preprocess_image(im) for im in images])  # [B, 3, H, W]
        probs = self.logits(pixel_values, **text).softmax(dim=-1)  # [B, A]
        if not torch.isfinite(probs).all():  # never print NaN as if it were an answer
            raise CheckpointError("the model produced non-finite scores (NaN or Inf): its weights are "
                                  "corrupt or diverged; re-export or re-train the model")
        top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        return [[{"answer": self.answers[i], "probability": float(p)}
                 for p, i in zip(ps.tolist(), ids.tolist())]
                for ps, ids in zip(top.values, top.indices)]

    def __call__(self, image: ImageInput, question: str, top_k: int = 5) -> list[dict[str, Any]]:
        """Answer one question about one image; returns the `top_k` answers, best first."""
        if top_k < 1:
            raise M3AEError(f"top_k must be at least 1, got {top_k}")
        return self.predict_batch([image], [question], top_k=top_k)[0]


def _has_tokenizer_files(model_dir: Path) -> bool:
    """Whether save_pretrained stored a tokenizer in the folder."""
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt")
    return any((model_dir / name).is_file() for name in names)
