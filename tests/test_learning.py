"""Learning tests: the model must learn, on synthetic data made here with Pillow (one thread, seconds each).

A silent bug in the training path (loss scale, learning-rate groups, pooling, the answer mapping,
masking) shows up as a model that does not beat chance; these tests make such a regression fail.

- overfit: 32 fixed VQA examples reach 100% train accuracy within a fixed step budget;
- the image path carries information: answers that only the image decides (colour of a shape, is
  it on the left) are learned, and the same model fed blank images stays near chance;
- the text path carries information: answers that only the question decides are learned;
- pre-training is not a no-op: MIM beats the per-patch-mean predictor, MLM beats the unigram guess
  and ITM beats chance on held-out pairs.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from m3ae.data import load_tokenizer
from m3ae.data.images import to_normalized_tensor
from m3ae.data.text import mask_text_tokens, tokenize, tokenizer_info
from m3ae.models import M3AE, ModelConfig
from m3ae.models.losses import mim_target
from m3ae.train.config import OptimArgs
from m3ae.train.optim import build_optimizer, lr_factor, set_lr
from m3ae.train.tasks import PretrainTask, VQATask

COLOURS = {"red": (230, 40, 40), "green": (40, 210, 40), "blue": (50, 60, 235)}
SHAPES = ("circle", "square")
ANSWERS = ["red", "green", "blue", "yes", "no", "head", "chest", "abdomen"]
SIZE, TEXT_LEN = 32, 12


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def shape_image(colour: str, shape: str, rng: np.random.Generator, left: bool | None = None) -> Image.Image:
    """One filled shape of 10-14 px on a black 32 x 32 image, in the left or right half when asked."""
    image = Image.new("RGB", (SIZE, SIZE))
    side = int(rng.integers(10, 15))
    if left is None:
        x = int(rng.integers(0, SIZE - side))
    else:
        x = int(rng.integers(0, SIZE // 2 - side + 1)) + (0 if left else SIZE // 2)
    y = int(rng.integers(0, SIZE - side))
    box = (x, y, x + side, y + side)
    draw = ImageDraw.Draw(image)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
    return image


def pixels(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([to_normalized_tensor(im) for im in images])  # [N, 3, 32, 32]


def text_batch(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    return tokenize(tokenizer, texts, TEXT_LEN)


def image_questions(tokenizer, n: int, seed: int, kind: str = "both") -> dict[str, torch.Tensor]:
    """Questions that only the image answers: the shape's colour, or whether it is on the left.

    ``kind``: "colour", "side" or "both" (alternating). (Circle versus square was tried first: at 32 px
    with 8 px patches the tiny ViT stayed at chance on it.)
    """
    rng = np.random.default_rng(seed)
    images, questions, answers = [], [], []
    for i in range(n):
        colour, shape, left = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES)), bool(rng.integers(2))
        images.append(shape_image(colour, shape, rng, left))
        if kind == "colour" or (kind == "both" and i % 2):
            questions.append("what colour is the shape?")
            answers.append(colour)
        else:
            questions.append("is the shape on the left?")
            answers.append("yes" if left else "no")
    text = text_batch(tokenizer, questions)
    return {"pixel_values": pixels(images), "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "vqa_labels": torch.tensor([ANSWERS.index(a) for a in answers])}


ORGANS = {"brain": "head", "skull": "head", "lung": "chest", "heart": "chest", "liver": "abdomen",
          "bowel": "abdomen"}
FILLERS = ["is there", "do you see", "can you find", "look for", "please check", "any sign of"]


def text_questions(tokenizer, n: int, seed: int) -> dict[str, torch.Tensor]:
    """Questions whose answer only the question decides (the organ named -> its body region)."""
    rng = np.random.default_rng(seed)
    images, questions, answers = [], [], []
    for _ in range(n):
        organ = str(rng.choice(list(ORGANS)))
        questions.append(f"{rng.choice(FILLERS)} the {organ} in this {rng.choice(['scan', 'image', 'film'])}?")
        answers.append(ORGANS[organ])
        images.append(shape_image(str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES)), rng))
    text = text_batch(tokenizer, questions)
    return {"pixel_values": pixels(images), "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "vqa_labels": torch.tensor([ANSWERS.index(a) for a in answers])}


def tiny(heads=("vqa",), pooling: str = "cls", pos_init: str = "random") -> M3AE:
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("m3ae-tiny").with_heads(list(heads), num_answers=len(ANSWERS))
    return M3AE(dataclasses.replace(cfg, pooling=pooling, vision=dataclasses.replace(cfg.vision, pos_init=pos_init)))


def fit_steps(model: M3AE, task, data: dict[str, torch.Tensor], steps: int, lr: float = 2e-3,
              batch: int = 32, seed: int = 0) -> None:
    """AdamW with the library's parameter groups and warm-up + linear decay, on random batches."""
    optimizer = build_optimizer(model, OptimArgs(lr=lr, lr_multipliers={}, weight_decay=0.0))
    n = len(data["input_ids"])
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        set_lr(optimizer, lr_factor(step, steps // 10, steps))
        idx = torch.randint(n, (min(batch, n),), generator=g)
        mini = {k: v[idx] for k, v in data.items()}
        optimizer.zero_grad(set_to_none=True)
        task.forward_backward(model, mini, lambda loss: loss)
        optimizer.step()


@torch.no_grad()
def vqa_accuracy(model: M3AE, task: VQATask, data: dict[str, torch.Tensor]) -> float:
    model.eval()
    pred = task.logits(model, data).argmax(-1)
    return float((pred == data["vqa_labels"]).float().mean())


def with_targets(data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    targets = torch.nn.functional.one_hot(data["vqa_labels"], len(ANSWERS)).float()
    return {**data, "vqa_targets": targets}


def test_overfits_32_examples(tokenizer):
    """32 fixed examples (half image, half text questions) reach 100% train accuracy in 300 steps."""
    data = with_targets({k: torch.cat([a[k][:16], b[k][:16]]) for (a, b) in
                         [(image_questions(tokenizer, 16, 1), text_questions(tokenizer, 16, 2))] for k in a})
    model, task = tiny(), VQATask(loss="ce")
    fit_steps(model, task, data, steps=300, lr=2e-3)
    assert vqa_accuracy(model, task, data) == 1.0


@pytest.mark.parametrize("kind", ["colour", "side"])
def test_image_path_carries_information(tokenizer, kind):
    """Answers decided by the image alone (its colour; which half it is in): >= 90% on new images, while
    the same model trained and tested on blank images stays near chance (1/3 and 1/2). "side" needs the
    sine-cosine start of the position table (``vision.pos_init``): from CLIP's random start the model
    stayed at 50% for 300 steps with shapes of random colours (it got there after 1,000)."""
    train = with_targets(image_questions(tokenizer, 512, 3, kind))
    test = with_targets(image_questions(tokenizer, 200, 4, kind))
    model, task = tiny(pos_init="sincos"), VQATask(loss="ce")
    fit_steps(model, task, train, steps=300, lr=1e-3)
    accuracy = vqa_accuracy(model, task, test)
    blank = {k: torch.zeros_like(v) if k == "pixel_values" else v for k, v in train.items()}
    blind = tiny()
    fit_steps(blind, task, blank, steps=150, lr=1e-3)
    blind_accuracy = vqa_accuracy(blind, task, {**test, "pixel_values": torch.zeros_like(test["pixel_values"])})
    assert accuracy >= 0.9, accuracy
    assert blind_accuracy <= 0.6, blind_accuracy


def test_text_path_carries_information(tokenizer):
    """Answers decided by the question alone (the organ it names): >= 90% on new phrasings."""
    train, test = with_targets(text_questions(tokenizer, 384, 5)), with_targets(text_questions(tokenizer, 200, 6))
    model, task = tiny(), VQATask(loss="ce", image_input="none")
    fit_steps(model, task, train, steps=150, lr=2e-3)
    assert vqa_accuracy(model, task, test) >= 0.9


def pretrain_data(tokenizer, n: int, seed: int) -> dict[str, torch.Tensor]:
    """Captions "a <colour> <shape> on the <side>" of shape images, with MLM masks, MIM noise and ITM pairs.

    Half of the ITM pairs get another image whose caption differs (the held-out test must not count a
    true pair as a mismatch); ``itm_noise`` drives the in-batch negatives of training.
    """
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    kinds = [(str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES)), bool(rng.integers(2))) for _ in range(n)]
    images = pixels([shape_image(c, s, rng, left) for c, s, left in kinds])
    captions = [f"a {c} {s} on the {'left' if left else 'right'}" for c, s, left in kinds]
    enc = text_batch(tokenizer, captions)
    mlm_ids, mlm_labels = mask_text_tokens(enc["input_ids"], enc["special_tokens_mask"], tokenizer_info(tokenizer),
                                           0.3, "word", g)
    itm = (torch.rand(n, generator=g) < 0.5).long()
    other = torch.tensor([int(rng.choice([j for j in range(n) if captions[j] != captions[i]])) for i in range(n)])
    return {"pixel_values": images, "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "mlm_input_ids": mlm_ids, "mlm_labels": mlm_labels, "image_noise": torch.rand(n, 16, generator=g),
            "itm_labels": itm, "itm_pixel_values": torch.where(itm.bool()[:, None, None, None], images,
                                                               images[other]),
            "itm_noise": torch.rand(n, 2, generator=g)}


@torch.no_grad()
def pretrain_metrics(model: M3AE, task: PretrainTask, data: dict[str, torch.Tensor]) -> dict[str, float]:
    """Held-out MIM loss, MLM accuracy and ITM accuracy, each next to its trivial baseline."""
    model.eval()
    ids, mask = data["input_ids"], data["attention_mask"]
    out = model.encode(data["pixel_values"], ids, mask, image_noise=data["image_noise"], mask_ratio=task.mask_ratio)
    pred = model.heads["mim"](model.mim_features(out), out.ids_restore)
    target = mim_target(data["pixel_values"], model.config.vision.patch_size, True)
    removed = out.image_mask.bool()
    mim = float(((pred - target) ** 2).mean(-1)[removed].mean())
    mean_predictor = float((target ** 2).mean(-1)[removed].mean())  # normalised patches: their mean is 0
    out = model.encode(data["pixel_values"], data["mlm_input_ids"], mask)
    chosen = data["mlm_labels"] != -100
    mlm_pred = model.heads["mlm"](out.text_feats).argmax(-1)[chosen]
    labels = data["mlm_labels"][chosen]
    unigram = float((labels == labels.mode().values).float().mean())
    out = model.encode(data["itm_pixel_values"], ids, mask)
    itm = float((model.heads["itm"](out.cls_feats).argmax(-1) == data["itm_labels"]).float().mean())
    return {"mim": mim, "mim_mean_predictor": mean_predictor, "mlm_acc": float((mlm_pred == labels).float().mean()),
            "mlm_unigram": unigram, "itm_acc": itm}


@pytest.fixture(scope="module")
def pretrained_metrics(tokenizer) -> dict[str, float]:
    """Held-out metrics after 350 pre-training steps; one run shared by the two tests below.

    The recipe adds ITC and in-batch negatives to the paper's three objectives (``itc_weight``,
    ``itm_negatives="batch"``) and pools by the mean: without ITC, ITM stayed at chance (0.47-0.51
    held out, with the paper's random or with in-batch negatives), since nothing aligned the towers
    for the fusion to compare; with ITC on first-token summaries, ITC itself sat at log(batch) for
    ~75 steps before it moved. ITC-weighted ("hard") negatives stayed at chance too: here they differ
    from the anchor in shape alone, which the tiny ViT hardly sees at 32 px.
    """
    model = tiny(heads=("mlm", "mim", "itm", "itc"), pooling="mean", pos_init="sincos")
    task = PretrainTask(mask_ratio=0.75, norm_pix_loss=True, itc_weight=1.0, itm_negatives="batch")
    fit_steps(model, task, pretrain_data(tokenizer, 512, 7), steps=350, lr=2e-3)
    return pretrain_metrics(model, task, pretrain_data(tokenizer, 256, 8))


def test_pretraining_is_not_a_no_op(pretrained_metrics):
    """After 350 steps: held-out MIM below the per-patch-mean predictor, MLM above the unigram guess."""
    m = pretrained_metrics
    assert m["mim"] < 0.9 * m["mim_mean_predictor"], m
    assert m["mlm_acc"] > m["mlm_unigram"] + 0.1, m


def test_pretraining_learns_matching(pretrained_metrics):
    """ITM on held-out pairs (half true, half with an image whose caption differs) >= 90% after 350 steps
    (0.922 when written; 0.898 after 250 steps)."""
    assert pretrained_metrics["itm_acc"] >= 0.9, pretrained_metrics


def test_answer_mapping_end_to_end(tmp_path, tokenizer):
    """Raw answer -> prepared label -> one-hot target -> argmax -> answer string, on the bundled VQA-RAD."""
    import json
    from pathlib import Path

    from m3ae.data import DataConfig, make_dataset, read_answers
    from m3ae.data.answers import normalize_answer
    from m3ae.data import prepare_dataset
    from m3ae.data.storage import read_table
    from m3ae.inference import VQAPipeline

    bundled = Path(__file__).resolve().parents[1] / "data" / "vqa_rad"
    out = tmp_path / "vqa"
    prepare_dataset("vqa-rad", bundled, out, protocol="clean", image_size=32, seed=0)
    answers = read_answers(out)
    raw = {int(r["qid"]): normalize_answer(r["answer"]) for r in json.loads((bundled / "trainset.json").read_text())}
    rows = read_table(out / "train.arrow").to_pylist()
    assert rows and all(answers[r["label"]] == raw[r["question_id"]] for r in rows)
    dataset = make_dataset(out, "train", "vqa", DataConfig(image_size=32, patch_size=8, max_text_len=16),
                           tokenizer, train=False)
    batch = dataset.collate_fn([dataset[i] for i in range(8)])
    assert torch.equal(batch["vqa_targets"].argmax(-1), batch["vqa_labels"])
    assert batch["vqa_targets"].sum(-1).eq(1).all()
    # a model whose head always prefers answer k must say answers[k]
    model = M3AE(ModelConfig.from_name("m3ae-tiny").with_heads(["vqa"], num_answers=len(answers)))
    k = rows[0]["label"]
    with torch.no_grad():
        model.heads["vqa"].fc2.weight.zero_()
        model.heads["vqa"].fc2.bias.zero_()
        model.heads["vqa"].fc2.bias[k] = 10.0
    model.save_pretrained(tmp_path / "model", tokenizer=tokenizer, extra={"answers": answers})
    pipe = VQAPipeline.from_pretrained(tmp_path / "model")
    image = next((bundled / "images").glob("*.jpg"))
    assert pipe(str(image), "is this a ct?", top_k=1)[0]["answer"] == answers[k]


def test_pipeline_of_a_question_only_model_ignores_the_image(tmp_path, tokenizer):
    """A model saved with image_input none answers from the question alone in VQAPipeline too."""
    from m3ae.inference import VQAPipeline

    model = tiny()
    model.save_pretrained(tmp_path / "qo", tokenizer=tokenizer, extra={"answers": ANSWERS, "image_input": "none"})
    pipe = VQAPipeline.from_pretrained(tmp_path / "qo")
    rng = np.random.default_rng(0)
    a, b = shape_image("red", "circle", rng, True), shape_image("blue", "square", rng, False)
    question = pipe.tokenize(["what colour is the shape?"])
    logits = [pipe.logits(pixels([im]), **question) for im in (a, b)]
    torch.testing.assert_close(logits[0], logits[1])
