"""`m3ae embed`: one Parquet row per example with the towers' and the fusion's features, equal to
what the model computes; CSV or prepared input; bad input is a one-line error and leaves no file."""
from __future__ import annotations

import csv

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from m3ae.cli import main
from m3ae.models import M3AE, ModelConfig


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from m3ae.data import load_tokenizer
    from helpers.synthetic import prepare

    tmp = tmp_path_factory.mktemp("embed")
    data = prepare(tmp, "irtr")
    torch.manual_seed(0)
    model = M3AE(ModelConfig.from_name("m3ae-tiny").with_heads(["irtr", "itc"])).eval()
    model.save_pretrained(tmp / "model", tokenizer=load_tokenizer(), extra={"preprocessing": {"max_text_len": 16}})
    return tmp, data, model


def test_embed_prepared_split_matches_the_model(setup):
    from m3ae.data import load_tokenizer
    from m3ae.data.images import center_crop, decode_image, resize_shorter, to_normalized_tensor
    from m3ae.data.storage import ImageStore
    from m3ae.data.text import tokenize

    tmp, data, model = setup
    out = tmp / "test.parquet"
    assert main(["embed", "--model", str(tmp / "model"), "--data", str(data), "--split", "test",
                 "--out", str(out), "--batch-size", "3", "--no-progress"]) == 0
    table = pq.read_table(out)
    assert table.num_rows == 4 and not (tmp / "test.parquet.partial").exists()
    assert table.column_names == ["id", "image", "text", "image_embedding", "text_embedding", "joint_embedding"]
    row = table.slice(1, 1).to_pylist()[0]
    assert len(row["image_embedding"]) == 32 and len(row["joint_embedding"]) == 64
    pix = to_normalized_tensor(center_crop(resize_shorter(decode_image(ImageStore(data).get_bytes(row["image"])), 32), 32))
    text = tokenize(load_tokenizer(), [row["text"]], 16)
    with torch.no_grad():
        image = model.embed_images(pix[None])[0]
        txt = model.embed_texts(text["input_ids"], text["attention_mask"])[0]
        joint = model.encode(pix[None], text["input_ids"], text["attention_mask"]).cls_feats[0]
    np.testing.assert_allclose(row["image_embedding"], image.numpy(), atol=1e-5)
    np.testing.assert_allclose(row["text_embedding"], txt.numpy(), atol=1e-5)
    np.testing.assert_allclose(row["joint_embedding"], joint.numpy(), atol=1e-5)


def test_embed_csv_and_its_errors(setup, tmp_path, capsys):
    tmp, _, _ = setup
    from PIL import Image

    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(tmp_path / "a.png")
    rows = [{"id": "x1", "image": "a.png", "text": "left lung mass"}, {"id": "x2", "image": "a.png", "text": "normal"}]
    path = tmp_path / "in.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "image", "text"])
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "e.parquet"
    assert main(["embed", "--model", str(tmp / "model"), "--input", str(path), "--out", str(out), "--no-progress"]) == 0
    table = pq.read_table(out).to_pylist()
    assert [r["id"] for r in table] == ["x1", "x2"] and table[0]["image_embedding"] == table[1]["image_embedding"]
    assert table[0]["text_embedding"] != table[1]["text_embedding"]
    with open(path, "a") as fh:
        fh.write("x3,missing.png,some text\n")
    out2 = tmp_path / "f.parquet"
    assert main(["embed", "--model", str(tmp / "model"), "--input", str(path), "--out", str(out2),
                 "--batch-size", "2", "--no-progress"]) == 2
    assert "missing.png: image file not found" in capsys.readouterr().err
    assert not out2.exists() and not (tmp_path / "f.parquet.partial").exists()  # nothing half-written
    (tmp_path / "bad.csv").write_text("picture,caption\na.png,x\n")
    assert main(["embed", "--model", str(tmp / "model"), "--input", str(tmp_path / "bad.csv"), "--out", str(out2)]) == 2
    assert "missing column(s) ['image', 'text']" in capsys.readouterr().err
