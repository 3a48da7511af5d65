"""The dataset, collators and sampler: the batch contract, per-example determinism, negatives that
are never the positive, distributed splitting and resume."""

from __future__ import annotations


import pytest
import torch

from m3ae.data import DataConfig, load_tokenizer, make_dataset, make_loader, make_retrieval_pool
from m3ae.data.collate import BATCH_KEYS, TEXT_KEYS
from m3ae.data.dataset import draw_other
from m3ae.data import prepare_dataset
from m3ae.data.sampler import DistributedSampler
from m3ae.errors import M3AEError

import functools
import operator

import helpers.raw_builders as rb

CFG = DataConfig(image_size=32, patch_size=8, max_text_len=16, draw_false_text=3)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("loaders")
    roco = rb.build_roco(root / "roco", per_split=5)
    return {
        "pretrain": prepare_dataset("roco", roco, root / "pretrain") and root / "pretrain",
        "irtr": prepare_dataset("roco-retrieval", roco, root / "irtr", eval_size=4) and root / "irtr",
        "cls": prepare_dataset("melinda", rb.build_melinda(root / "mel"), root / "cls") and root / "cls",
        "vqa": prepare_dataset("custom", rb.build_custom_vqa(root / "vqa"), root / "vqa_out")
        and root / "vqa_out",
    }


EXPECTED_SHAPES = {
    "pretrain": {
        "pixel_values": (2, 3, 32, 32),
        "input_ids": (2, 16),
        "attention_mask": (2, 16),
        "mlm_input_ids": (2, 16),
        "mlm_labels": (2, 16),
        "image_noise": (2, 16),
        "itm_labels": (2,),
        "itm_pixel_values": (2, 3, 32, 32),
        "itm_noise": (2, 2),
    },
    "vqa": {
        "pixel_values": (2, 3, 32, 32),
        "input_ids": (2, 16),
        "attention_mask": (2, 16),
        "vqa_targets": (2, 2),
        "vqa_labels": (2,),
        "answer_type": (2,),
        "question_id": (2,),
    },
    "cls": {"pixel_values": (2, 3, 32, 32), "input_ids": (2, 16), "attention_mask": (2, 16), "labels": (2,)},
    "irtr": {"pixel_values": (2, 3, 32, 32), "input_ids": (2, 4, 16), "attention_mask": (2, 4, 16)},
}


@pytest.mark.parametrize("task", list(EXPECTED_SHAPES))
def test_batches_follow_the_contract(folders, tokenizer, task):
    dataset = make_dataset(folders[task], "train", task, CFG, tokenizer, train=True, seed=0)
    batch = next(iter(make_loader(dataset, batch_size=2, shuffle=True, seed=0)))
    assert set(batch) == set(BATCH_KEYS[task])
    # text columns that are padding in every row are trimmed: L_t = the longest text of the batch
    longest = int(batch["attention_mask"].reshape(-1, batch["attention_mask"].shape[-1]).sum(-1).max())
    expected = {k: v[:-1] + (longest,) if k in TEXT_KEYS else v for k, v in EXPECTED_SHAPES[task].items()}
    assert {k: tuple(v.shape) for k, v in batch.items()} == expected
    assert longest <= 16
    assert batch["pixel_values"].dtype == torch.float32
    long_keys = {
        "input_ids",
        "attention_mask",
        "mlm_input_ids",
        "mlm_labels",
        "itm_labels",
        "vqa_labels",
        "answer_type",
        "question_id",
        "labels",
    }
    assert all(v.dtype == torch.long for k, v in batch.items() if k in long_keys)


def test_vqa_targets_are_one_hot_and_zero_outside_the_set(vqa_rad_data, tokenizer, tmp_path):
    out = tmp_path / "clean"
    prepare_dataset("vqa-rad", vqa_rad_data, out, protocol="clean", image_size=32)
    dataset = make_dataset(out, "test", "vqa", CFG, tokenizer)
    batch = dataset.collate_fn([dataset[i] for i in range(len(dataset))])
    outside = batch["vqa_labels"].eq(-1)
    assert outside.any() and batch["vqa_targets"].shape[1] == dataset.num_answers
    assert torch.equal(batch["vqa_targets"].sum(1), (~outside).float())
    inside = (~outside).nonzero().squeeze(1)
    assert torch.equal(batch["vqa_targets"][inside].argmax(1), batch["vqa_labels"][inside])


def test_examples_are_deterministic_across_workers_and_change_with_epoch(folders, tokenizer):
    cfg = DataConfig(**{**CFG.to_dict(), "train_transform": "clip_resizedcrop"})
    dataset = make_dataset(folders["pretrain"], "train", "pretrain", cfg, tokenizer, train=True, seed=3)
    serial = list(make_loader(dataset, 4, shuffle=False, seed=3))
    parallel = list(make_loader(dataset, 4, shuffle=False, seed=3, num_workers=2))
    for a, b in zip(serial, parallel):
        assert all(torch.equal(a[k], b[k]) for k in a)
    again = make_dataset(folders["pretrain"], "train", "pretrain", cfg, tokenizer, train=True, seed=3)[5]
    assert all(torch.equal(torch.as_tensor(v), torch.as_tensor(again[k])) for k, v in dataset[5].items())
    other_seed = make_dataset(folders["pretrain"], "train", "pretrain", cfg, tokenizer, train=True, seed=4)[5]
    assert not torch.equal(other_seed["image_noise"], again["image_noise"])  # the seed decides
    dataset.set_epoch(1)
    assert not torch.equal(dataset[5]["image_noise"], again["image_noise"])


def test_itm_negative_is_another_image(folders, tokenizer):
    dataset = make_dataset(folders["pretrain"], "train", "pretrain", CFG, tokenizer, seed=0)
    labels = []
    for i in range(len(dataset)):
        item = dataset[i]
        labels.append(item["itm_labels"])
        same = torch.equal(item["itm_pixel_values"], item["pixel_values"])
        assert same == bool(item["itm_labels"])  # the fixture's images all differ
    assert 0 < sum(labels) < len(labels)


def test_draw_other_never_returns_a_positive():
    gen = torch.Generator().manual_seed(0)
    picks = draw_other(200, 10, lambda i: i != 7, gen)  # only index 7 is allowed
    assert set(picks) == {7}
    picks = draw_other(500, 10, lambda i: i in (2, 3), gen)
    assert not {2, 3} & set(picks) and len(set(picks)) == 8
    with pytest.raises(M3AEError):
        draw_other(1, 3, lambda i: True, gen)


def test_retrieval_negatives_exclude_the_positive_image(folders, tokenizer):
    dataset = make_dataset(folders["irtr"], "train", "irtr", CFG, tokenizer, train=True)
    texts = dataset.columns["text"]
    for i in range(len(dataset)):
        ids = dataset[i]["input_ids"]
        positive = tokenizer(texts[i], padding="max_length", truncation=True, max_length=16)["input_ids"]
        assert ids[0].tolist() == positive
        assert all(row.tolist() != positive for row in ids[1:])


def test_retrieval_pool_maps_texts_to_images(folders, tokenizer):
    images, texts, text_to_image = make_retrieval_pool(folders["irtr"], "val", CFG, tokenizer)
    assert len(images) == len(texts) == 4 and text_to_image.tolist() == [0, 1, 2, 3]
    batch = images.collate_fn([images[0], images[1]])
    assert batch["pixel_values"].shape == (2, 3, 32, 32) and batch["image_index"].tolist() == [0, 1]
    assert texts.collate_fn([texts[3]])["input_ids"].shape == (1, 16)


class _Sized:
    def __init__(self, n):
        self.n, self.epoch = n, None

    def __len__(self):
        return self.n

    def set_epoch(self, epoch):
        self.epoch = epoch


def test_sampler_training_split_is_equal_and_covers_everything():
    data = _Sized(10)
    shares = [list(DistributedSampler(data, r, 3, shuffle=True, seed=1)) for r in range(3)]
    assert [len(s) for s in shares] == [4, 4, 4]
    assert set(functools.reduce(operator.iadd, shares, [])) == set(range(10))
    sampler = DistributedSampler(data, 0, 3, shuffle=True, seed=1)
    sampler.set_epoch(2)
    assert data.epoch == 2 and list(sampler) != shares[0]


def test_sampler_eval_split_has_no_duplicates():
    shares = [list(DistributedSampler(_Sized(10), r, 3, shuffle=False)) for r in range(3)]
    assert sorted(functools.reduce(operator.iadd, shares, [])) == list(range(10))
    assert [len(DistributedSampler(_Sized(10), r, 3, shuffle=False)) for r in range(3)] == [4, 3, 3]


def test_sampler_resume_continues_where_it_stopped():
    full = list(DistributedSampler(_Sized(20), 1, 2, shuffle=True, seed=5))
    resumed = DistributedSampler(_Sized(20), 1, 2, shuffle=True, seed=5, start_index=4)
    assert list(resumed) == full[4:] and len(resumed) == 6


def test_config_and_task_errors(folders, tokenizer):
    with pytest.raises(M3AEError, match="multiple of patch_size"):
        DataConfig(image_size=30, patch_size=8)
    with pytest.raises(M3AEError, match="mlm_mode"):
        DataConfig(mlm_mode="span")
    with pytest.raises(M3AEError, match="cannot serve task 'vqa'"):
        make_dataset(folders["cls"], "train", "vqa", CFG, tokenizer)
    assert CFG.num_patches == 16
