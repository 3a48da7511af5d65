"""Answer heat maps (`m3ae.inference.explain`): shape contract, no side effects, and the sanity checks.

The sanity test follows Adebayo et al. (2018): a tiny model trained to name the colour of one small
shape on a dark background must put at least twice the uniform share of its heat map on the
shape's patch; the same architecture with random weights must not (a map that passes both ways
would only be an edge detector, not an explanation of the model).

Honest scope: the seeds are fixed (training seed 0, random seed 7). Over other seeds the check is
not reliable (trained 0.06-0.17, random 0.10-0.13 against the 0.125 threshold; docs/serve.md), so
this test guards the method and this configuration against regressions; it does not show that
the maps can be trusted in general.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from m3ae.cli import main
from m3ae.errors import M3AEError

COLOURS = {"red": (230, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 235), "yellow": (235, 220, 30)}
QUESTION = "what colour is the shape?"
IMAGE_SIZE, PATCH = 32, 8  # m3ae-tiny: a 4 x 4 patch grid
GRID = IMAGE_SIZE // PATCH
SHAPE = 6  # a 6 x 6 px square inside one 8 x 8 patch


def shape_image(rng: np.random.Generator) -> tuple[Image.Image, str, np.ndarray]:
    """A dark noisy 32 x 32 image with one coloured square in a random patch.

    Returns:
        (image, colour name, [GRID, GRID] bool mask of the shape's patch).
    """
    pixels = rng.integers(10, 40, size=(IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.uint8)  # [H, W, 3]
    name = list(COLOURS)[rng.integers(len(COLOURS))]
    row, col = rng.integers(GRID, size=2)
    top, left = row * PATCH + 1, col * PATCH + 1
    pixels[top:top + SHAPE, left:left + SHAPE] = COLOURS[name]
    region = np.zeros((GRID, GRID), bool)
    region[row, col] = True
    return Image.fromarray(pixels), name, region


def tiny_pipeline(seed: int):
    """A VQAPipeline around a freshly initialised m3ae-tiny with the colour answers."""
    from m3ae.data import load_tokenizer
    from m3ae.inference import Preprocessing, VQAPipeline
    from m3ae.models import M3AE, ModelConfig

    torch.manual_seed(seed)
    config = ModelConfig.from_name("m3ae-tiny").with_heads(["vqa"], num_answers=len(COLOURS))
    return VQAPipeline(M3AE(config), load_tokenizer(), list(COLOURS), Preprocessing(IMAGE_SIZE, max_text_len=8))


def train_on_shapes(pipe, steps: int = 50, batch: int = 32, seed: int = 0) -> float:
    """Fit the pipeline's model to name the shape's colour; returns accuracy on fresh images."""
    rng = np.random.default_rng(seed)
    text = pipe.tokenize([QUESTION] * batch)
    model = pipe.model.train()
    # the whole model trains (text tower included): with a frozen text tower the answer was still
    # right, but the text CLS query learnt less to look at the shape (map mass 0.11-0.19, not 0.4-0.5)
    optim = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    # linear decay to zero: without it the map's mass on the shape swung between 0.14 and 0.5
    # from one step to the next while the accuracy stayed at 1.0
    schedule = torch.optim.lr_scheduler.LambdaLR(optim, lambda step: 1.0 - step / steps)
    for _ in range(steps):
        samples = [shape_image(rng) for _ in range(batch)]
        pixels = torch.stack([pipe.preprocess_image(im) for im, _, _ in samples])  # [B, 3, H, W]
        labels = torch.tensor([list(COLOURS).index(name) for _, name, _ in samples])
        logits = model.heads["vqa"](model.encode(pixels, **text).cls_feats)  # [B, A]
        loss = torch.nn.functional.cross_entropy(logits, labels)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        schedule.step()
    model.eval()
    test = [shape_image(rng) for _ in range(64)]
    answers = pipe.predict_batch([im for im, _, _ in test], [QUESTION] * len(test))
    return float(np.mean([a[0]["answer"] == name for a, (_, name, _) in zip(answers, test)]))


def mean_shape_mass(pipe, count: int = 24, seed: int = 123) -> float:
    """Average share of the top answer's heat map on the shape's patch, over fresh images."""
    from m3ae.inference.explain import explain_answer, region_mass

    rng = np.random.default_rng(seed)
    masses = []
    for _ in range(count):
        image, _, region = shape_image(rng)
        masses.append(region_mass(explain_answer(pipe, image, QUESTION).heatmap, region))
    return float(np.mean(masses))


@pytest.fixture(scope="module")
def trained():
    """(pipeline, held-out accuracy) of a tiny model trained on the shapes (a few seconds)."""
    pipe = tiny_pipeline(seed=0)
    return pipe, train_on_shapes(pipe)


# ------------------------------------------------------------------------------------- tests
def test_explicit_attention_pass_matches_the_model():
    from m3ae.inference.explain import fusion_with_attention

    pipe = tiny_pipeline(seed=2)
    images = [shape_image(np.random.default_rng(i))[0] for i in range(3)]
    pixels = torch.stack([pipe.preprocess_image(im) for im in images])  # [3, 3, 32, 32]
    text = pipe.tokenize([QUESTION, "is it red?", "where is the square in this picture?"])
    with torch.no_grad():
        expected = pipe.model.heads["vqa"](pipe.model.encode(pixels, **text).cls_feats)
        logits, rec = fusion_with_attention(pipe.model, pipe.model.embed_image(pixels).embeds, **text)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    layers, heads, n_img = 2, 2, 1 + GRID * GRID
    assert len(rec["text_cross"]) == layers and rec["text_cross"][0].shape == (3, heads, 8, n_img)
    assert rec["image_self"][0].shape == (3, heads, n_img, n_img)
    torch.testing.assert_close(rec["image_self"][1].sum(-1), torch.ones(3, heads, n_img))
    # padded question tokens get no attention from the image stream
    padded = text["attention_mask"] == 0  # [3, 8]
    cross = rec["image_cross"][0]  # [3, h, 1+L_i, L_t]
    assert padded.any() and cross[padded[:, None, None, :].expand_as(cross)].abs().max() == 0


def test_heatmap_is_a_distribution_on_the_patch_grid_and_leaves_no_gradients():
    from m3ae.inference.explain import explain_answer

    pipe = tiny_pipeline(seed=1)
    image, _, _ = shape_image(np.random.default_rng(0))
    expl = explain_answer(pipe, image, QUESTION)
    assert expl.heatmap.shape == (GRID, GRID) and expl.heatmap.dtype == np.float32
    assert (expl.heatmap >= 0).all() and expl.heatmap.sum() == pytest.approx(1.0, abs=1e-5)
    assert expl.answer == pipe(image, QUESTION, top_k=1)[0]["answer"]
    assert expl.model_view.size == (IMAGE_SIZE, IMAGE_SIZE)
    assert all(p.grad is None for p in pipe.model.parameters())  # shared model left untouched
    other = explain_answer(pipe, image, QUESTION, answer="blue")
    assert other.answer == "blue" and other.answer_index == 2
    with pytest.raises(M3AEError, match="not in the model's answer list"):
        explain_answer(pipe, image, QUESTION, answer="purple")


def test_sanity_trained_model_looks_at_the_shape_random_model_does_not(trained):
    pipe, accuracy = trained
    uniform = 1.0 / (GRID * GRID)
    trained_mass = mean_shape_mass(pipe)
    random_mass = mean_shape_mass(tiny_pipeline(seed=7))
    print(f"accuracy {accuracy:.3f}; mass on the shape: trained {trained_mass:.3f}, "
          f"random {random_mass:.3f}, uniform {uniform:.3f}")
    assert accuracy >= 0.75  # chance is 0.25: the model learnt the task, so its map has something to show
    assert trained_mass >= 2 * uniform
    assert random_mass < 2 * uniform


def test_predict_cli_explain_writes_overlay_with_colour_bar(trained, tmp_path, capsys):
    from m3ae.data import load_tokenizer

    pipe, _ = trained
    model_dir = tmp_path / "model"
    pipe.model.save_pretrained(model_dir, tokenizer=load_tokenizer(), extra={
        "answers": pipe.answers, "preprocessing": {"image_size": IMAGE_SIZE, "max_text_len": 8}})
    image, name, _ = shape_image(np.random.default_rng(5))
    image.save(tmp_path / "shape.png")
    out = tmp_path / "explain" / "heat.png"
    assert main(["predict", "--model", str(model_dir), "--image", str(tmp_path / "shape.png"),
                 "--question", QUESTION, "--explain", str(out)]) == 0
    assert f"heat map written to {out}" in capsys.readouterr().err
    picture = Image.open(out)
    assert picture.size[0] > 600  # two panels and a colour bar
    assert np.asarray(picture.convert("RGB")).std() > 20
    assert main(["predict", "--model", str(model_dir), "--input", "q.csv", "--output", "a.csv",
                 "--explain", str(out)]) == 2
    assert "--explain" in capsys.readouterr().err
