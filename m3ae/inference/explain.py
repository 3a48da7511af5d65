"""Answer heat maps: which image patches drive a VQA answer.

Method: **gradient-weighted attention through the co-attention fusion** (the per-layer relevance
term of Chefer, Gur & Wolf, ICCV 2021, "Generic attention-model explainability for bi-modal
transformers"). The VQA head reads `cls_feats` = [text pooler(token 0 of the text stream), image
pooler(token 0 of the image stream)], so the answer sees the image through two sets of attention
rows: the text CLS query attending to image keys (text-stream cross-attention) and the image CLS
query attending to image keys (image-stream self-attention). For the answer's logit y and each
fusion layer l, with A the attention probabilities [heads, queries, keys]:

    Abar_l = mean_heads ReLU(dy/dA * A)          # attention that *raises* y, gradient-weighted
    r_j    = sum_l Abar_l^{text->image}[CLS, j] + Abar_l^{image->image}[CLS, j]

for each image patch j (the image CLS key is left out), normalised to sum to one: a distribution
of "evidence mass" over the grid_h x grid_w patches. The fusion pass is recomputed with explicit
attention probabilities (`fusion_with_attention`, checked against `M3AE.encode` in the tests);
nothing is hooked into the shared model and no parameter gets a ``.grad``, so concurrent
requests on one model are safe.

Why not Grad-CAM on the vision tokens: we tried it first. On a model with random weights it still
put 25-41% of the map on the one odd-coloured patch of a synthetic image (uniform: 6%): such
maps follow the *input*, not the model, and fail the model-randomisation
check of Adebayo et al. (2018). Gradient-weighted attention does better but **not reliably**:
over three training seeds and three random initialisations of m3ae-tiny, the trained maps put
0.06-0.17 of their mass on the shape's patch and the random ones 0.10-0.13 (uniform 0.0625, test
threshold 0.125); see docs/serve.md. Tracing the relevance back through the vision tower's
attention (Chefer's rollout) did not change the trained maps (0.079 -> 0.081). Treat a map as a
hint to look at, not as evidence.

Limits, read before trusting a map:
- The map has the patch grid's resolution (4 x 4 for m3ae-tiny, 24 x 24 for m3ae-base at 384 px);
  it is upsampled for display, so sub-patch detail in the picture is interpolation, not evidence.
- Image tokens entering the fusion are already mixed by the vision tower's self-attention: key j
  is *mostly* patch j, not only patch j. The vision tower's own attention is not traced.
- It is a first-order view (gradient times attention) and ignores evidence that lowers the logit.
  Attention beyond the CLS rows (patch-to-patch, rolled out across layers) is not propagated.
- The map explains the answer's logit, not whether the answer is right; a confident wrong answer
  gets a map too. It is not a segmentation and not a clinical finding.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from m3ae.errors import M3AEError


@dataclass
class Explanation:
    """An answer and the heat map that explains it."""

    answer: str
    """The explained answer."""
    answer_index: int
    """Its index in the answer list (the VQA head output)."""
    probability: float
    """softmax probability of the answer (as `VQAPipeline` reports it)."""
    heatmap: np.ndarray
    """[grid_h, grid_w] float32, non-negative, sums to 1 (uniform when there is no positive evidence)."""
    model_view: Image.Image
    """The RGB square the model saw (after windowing, shorter-side resize and centre crop)."""


def _attend(mha: Any, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None,
            record: list[torch.Tensor]) -> torch.Tensor:
    """`fusion.MultiHeadAttention.forward` (eval mode) with the probabilities kept in `record`."""
    q, k, v = mha._split(mha.query(x)), mha._split(mha.key(context)), mha._split(mha.value(context))
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5  # [B, h, N, M]
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = scores.softmax(-1)  # [B, h, N, M]
    record.append(probs)
    out = (probs @ v).transpose(1, 2).reshape(x.shape)  # [B, h, N, d/h] -> [B, N, D]
    return mha.norm(x + mha.out(out))


def _fusion_layer(layer: Any, x: torch.Tensor, x_mask: torch.Tensor | None, other: torch.Tensor,
                  other_mask: torch.Tensor | None, self_rec: list, cross_rec: list) -> torch.Tensor:
    """`fusion.FusionLayer.forward` (eval mode) through `_attend`."""
    x = _attend(layer.self_attn, x, x, x_mask, self_rec)
    x = _attend(layer.cross_attn, x, other, other_mask, cross_rec)
    return layer.norm(x + layer.fc2(F.gelu(layer.fc1(x))))


def fusion_with_attention(model: Any, image_embeds: torch.Tensor, input_ids: torch.Tensor,
                          attention_mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
    """VQA logits through an explicit-attention copy of the fusion pass (eval: no dropout).

    Args:
        model: an `M3AE` with a ``vqa`` head.
        image_embeds: [B, 1+L_i, D] from `M3AE.embed_image`.
        input_ids: [B, L_t].
        attention_mask: [B, L_t].

    Returns:
        logits [B, A] (equal to ``heads["vqa"](encode(...).cls_feats)``) and the attention
        probabilities per fusion layer: ``text_self`` [B, h, L_t, L_t], ``text_cross``
        [B, h, L_t, 1+L_i], ``image_self`` [B, h, 1+L_i, 1+L_i], ``image_cross`` [B, h, 1+L_i, L_t].
    """
    from m3ae.models.fusion import key_padding_mask

    text = model.embed_text(input_ids, attention_mask)  # [B, L_t, D]
    t_mask = key_padding_mask(attention_mask)
    rec: dict[str, list[torch.Tensor]] = {"text_self": [], "text_cross": [], "image_self": [], "image_cross": []}
    image = image_embeds
    for text_layer, image_layer in zip(model.fusion.text_layers, model.fusion.image_layers, strict=True):
        new_text = _fusion_layer(text_layer, text, t_mask, image, None, rec["text_self"], rec["text_cross"])
        new_image = _fusion_layer(image_layer, image, None, text, t_mask, rec["image_self"], rec["image_cross"])
        text, image = new_text, new_image  # simultaneous update, as CoAttentionFusion
    cls_feats = torch.cat([model.poolers["text"](text), model.poolers["image"](image)], dim=-1)  # [B, 2D]
    return model.heads["vqa"](cls_feats), rec


def _weighted(attn: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Chefer et al.'s Abar = mean over heads of ReLU(grad * attention): [B, h, N, M] -> [B, N, M]."""
    return (grad * attn).clamp_min(0).mean(dim=1).detach().float().cpu()


def attention_patch_map(model: Any, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                        attention_mask: torch.Tensor, answer_index: torch.Tensor) -> torch.Tensor:
    """Gradient-weighted CLS attention of each answer's logit over the image patches.

    Args:
        model: an `M3AE` with a ``vqa`` head (left unchanged; parameters get no ``.grad``).
        pixel_values: [B, 3, H, W] CLIP-normalised.
        input_ids: [B, L_t].
        attention_mask: [B, L_t].
        answer_index: [B] long, the answer to explain for each row.

    Returns:
        [B, L_i] non-negative maps, each summing to 1 (uniform where no attention raises the logit).
    """
    with torch.no_grad():  # the vision tower is not traced
        tokens = model.embed_image(pixel_values).embeds  # [B, 1+L_i, D]
    with torch.enable_grad():
        logits, rec = fusion_with_attention(model, tokens, input_ids, attention_mask)
        picked = logits.gather(1, answer_index.view(-1, 1).to(logits.device)).sum()
        probs = rec["text_cross"] + rec["image_self"]  # 2 x layers x [B, h, N, 1+L_i]
        # autograd.grad w.r.t. the probabilities only: no parameter .grad is written
        grads = torch.autograd.grad(picked, probs)
    relevance = torch.zeros(tokens.shape[0], tokens.shape[1] - 1)  # [B, L_i]
    for a, g in zip(probs, grads):
        relevance += _weighted(a, g)[:, 0, 1:]  # the CLS query row at the patch keys
    total = relevance.sum(-1, keepdim=True)
    uniform = torch.full_like(relevance, 1.0 / relevance.shape[-1])
    return torch.where(total > 0, relevance / total.clamp_min(1e-30), uniform)


def explain_answer(pipe: Any, image: Any, question: str, answer: str | None = None) -> Explanation:
    """Heat map of one answer (the model's top answer by default) for one image and question.

    Args:
        pipe: a `VQAPipeline`.
        image: anything `VQAPipeline` accepts (path, PIL image, array).
        question: the question.
        answer: an answer from the model's list to explain instead of the top one.

    Raises:
        M3AEError: an empty question, a bad image, an answer not in the list, or an int8 pipeline.
    """
    precision = getattr(pipe, "precision", None)
    if getattr(precision, "name", None) == "int8":  # quantised Linear layers have no backward
        raise M3AEError("heat maps need gradients, which int8 (quantised) layers do not have: "
                        "use precision fp32 or auto to explain answers")
    view = pipe.model_view(image)
    pixel_values = pipe.to_pixel_values(view)[None]  # [1, 3, H, W]
    text = pipe.tokenize([question])
    device = pipe.device
    pixel_values = pixel_values.to(device)
    text = {k: v.to(device) for k, v in text.items()}
    probs = pipe.logits(pixel_values, **text).softmax(-1)[0]  # [A]
    if answer is None:
        index = int(probs.argmax())
    elif answer in pipe.answers:
        index = pipe.answers.index(answer)
    else:
        raise M3AEError(f"answer {answer!r} is not in the model's answer list")
    cam = attention_patch_map(pipe.model, pixel_values, text["input_ids"], text["attention_mask"],
                            torch.tensor([index]))[0]  # [L_i]
    vision = pipe.model.config.vision
    grid = vision.image_size // vision.patch_size
    heatmap = cam.reshape(grid, grid).numpy().astype(np.float32)  # [L_i] -> [grid_h, grid_w]
    return Explanation(pipe.answers[index], index, float(probs[index]), heatmap, view)


# ------------------------------------------------------------------------------------ pictures
def colorize(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A heat map scaled to its maximum, bilinearly upsampled to ``size`` (w, h), as RGB uint8.

    Uses matplotlib's 'inferno' colour map (perceptually uniform, readable in greyscale).
    """
    from matplotlib import colormaps

    peak = float(heatmap.max())
    scaled = heatmap / peak if peak > 0 else heatmap
    grey = Image.fromarray(np.uint8(np.clip(scaled, 0, 1) * 255)).resize(size, Image.BILINEAR)
    rgba = colormaps["inferno"](np.asarray(grey, dtype=np.float32) / 255.0)  # [H, W, 4] in [0, 1]
    return np.uint8(rgba[..., :3] * 255)


def overlay(view: Image.Image, heatmap: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The model's view of the image blended with the coloured heat map (alpha = heat map weight)."""
    colour = colorize(heatmap, view.size)
    base = np.asarray(view.convert("RGB"), dtype=np.float32)
    return Image.fromarray(np.uint8(base * (1 - alpha) + colour * alpha))


def save_explanation(expl: Explanation, question: str, path: str | Path, display_size: int = 384) -> Path:
    """Write the model's view, the overlay and a colour bar (share of the map per patch) to a PNG."""
    from m3ae.reports.viz import _pyplot

    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    view = expl.model_view.resize((display_size, display_size), Image.BICUBIC)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6), gridspec_kw={"width_ratios": [1, 1.2]})
    axes[0].imshow(view)
    axes[0].set_title("image as the model saw it")
    axes[1].imshow(overlay(view, expl.heatmap))
    # the colour bar shows the map's real values (share of the total per patch), 0..max
    mappable = plt.cm.ScalarMappable(cmap="inferno", norm=plt.Normalize(0, float(expl.heatmap.max())))
    fig.colorbar(mappable, ax=axes[1], fraction=0.046, pad=0.04, label="share of the heat map per patch")
    axes[1].set_title(f"answer: {expl.answer} (p = {expl.probability:.2f})")
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"Q: {question}\ngradient-weighted attention over image patches; research use only, not for clinical decisions",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def region_mass(heatmap: np.ndarray, region: np.ndarray) -> float:
    """Share of a heat map's mass on the patches where ``region`` ([grid_h, grid_w] bool) is True."""
    total = float(heatmap.sum())
    return float(heatmap[region].sum()) / total if total > 0 else 0.0
