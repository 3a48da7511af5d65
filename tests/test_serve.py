"""`m3ae serve`: the JSON API through TestClient, concurrency on a real socket, and the page in Chromium.

The browser test starts `m3ae serve` as a subprocess on 127.0.0.1, drives the page with Debian's
headless Chromium through Selenium (pointed at /usr/bin/chromium and /usr/bin/chromedriver, so
nothing is downloaded), and saves a screenshot under the test's temp folder.
"""
from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'm3ae[serve]')")
pytest.importorskip("multipart", reason="python-multipart is not installed (pip install 'm3ae[serve]')")

from fastapi.testclient import TestClient  # noqa: E402

from m3ae.cli import main  # noqa: E402

ANSWERS = ["yes", "no", "ct", "mri", "left", "right", "brain"]
REPO = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A saved m3ae-tiny VQA model with a model card."""
    from m3ae.data import load_tokenizer
    from m3ae.reports.model_card import write_model_card
    from m3ae.models import M3AE, ModelConfig

    torch.manual_seed(0)
    config = ModelConfig.from_name("m3ae-tiny").with_heads(["vqa"], num_answers=len(ANSWERS))
    out = tmp_path_factory.mktemp("serve_model")
    M3AE(config).save_pretrained(out, tokenizer=load_tokenizer(), extra={
        "answers": ANSWERS, "preprocessing": {"image_size": 32, "max_text_len": 16}})
    write_model_card(out, {"name": "tiny test VQA", "task": "vqa", "intended_use": "Testing the server only."})
    return out


@pytest.fixture(scope="module")
def pipe(model_dir):
    from m3ae.inference import VQAPipeline

    return VQAPipeline.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def client(pipe, model_dir):
    from m3ae.inference.server import ServeLimits, create_app

    return TestClient(create_app(pipe, model_dir, ServeLimits(max_upload_bytes=200_000, max_batch=4)))


def png_bytes(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    """A random RGB PNG."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def dicom_bytes() -> bytes:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    if path is None:
        pytest.skip("pydicom's bundled CT_small.dcm is not installed")
    return Path(path).read_bytes()


# ------------------------------------------------------------------------------------ JSON API
def test_health_and_model_card(client):
    assert client.get("/api/health").json() == {"status": "ok"}
    info = client.get("/api/model").json()
    assert info["name"] == "tiny test VQA" and info["answers"] == len(ANSWERS) and info["image_size"] == 32
    assert info["intended_use"] == "Testing the server only."
    assert "closed answer list" in info["limitations"]  # the card's default limitations
    page = client.get("/")
    assert page.status_code == 200 and 'id="drop"' in page.text


def test_predict_matches_the_pipeline_and_explains(client, pipe):
    data = png_bytes(1)
    r = client.post("/api/predict", files={"image": ("x.png", data, "image/png")},
                    data={"question": "Is this a CT?", "top_k": "3", "explain": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = pipe(Image.open(io.BytesIO(data)), "Is this a CT?", top_k=3)
    assert [a["answer"] for a in body["answers"]] == [a["answer"] for a in expected]
    assert body["answers"][0]["probability"] == pytest.approx(expected[0]["probability"], abs=1e-6)
    heat = np.asarray(body["heatmap"])
    assert heat.shape == (4, 4) and heat.sum() == pytest.approx(1.0, abs=1e-3)
    assert body["explained_answer"] == body["answers"][0]["answer"]
    for key in ("model_view_png", "heatmap_png"):
        picture = Image.open(io.BytesIO(base64.b64decode(body[key])))
        assert picture.size == (256, 256)
    plain = client.post("/api/predict", files={"image": ("x.png", data)}, data={"question": "Is this a CT?"})
    assert len(plain.json()["answers"]) == 5 and "heatmap" not in plain.json()


def test_predict_dicom_upload(client):
    r = client.post("/api/predict", files={"image": ("ct.dcm", dicom_bytes(), "application/dicom")},
                    data={"question": "What organ?", "top_k": "2", "explain": "1"})
    assert r.status_code == 200, r.text
    view = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["model_view_png"]))))
    assert view.std() > 10  # a windowed CT slice, not a flat image


def test_predict_batch_matches_single_requests(client, pipe):
    images = [png_bytes(i) for i in range(3)]
    questions = ["Is it normal?", "Which side?", "Is this an MRI?"]
    r = client.post("/api/predict_batch", files=[("images", (f"{i}.png", im)) for i, im in enumerate(images)],
                    data={"questions": questions, "top_k": "2"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["question"] for x in results] == questions
    for im, q, res in zip(images, questions, results):
        single = pipe(Image.open(io.BytesIO(im)), q, top_k=2)
        assert [a["answer"] for a in res["answers"]] == [a["answer"] for a in single]


@pytest.mark.parametrize("files, data, status, message", [
    (None, {"question": "Is it?"}, 400, "no image"),
    ({"image": ("x.png", b"\x89PNG\r\n\x1a\n garbage")}, {"question": "Is it?"}, 400, "x.png"),
    ({"image": ("e.png", b"")}, {"question": "Is it?"}, 400, "empty"),
    ({"image": ("x.png", "PNG")}, {"question": "   "}, 400, "question is empty"),
    ({"image": ("x.png", "PNG")}, {"question": "Is it?", "top_k": "0"}, 400, "top_k"),
    ({"image": ("x.png", "PNG")}, {"question": "Is it?", "top_k": "many"}, 422, "top_k"),
    ({"image": ("big.png", b"\0" * 300_000)}, {"question": "Is it?"}, 413, "over the limit"),
])
def test_bad_requests_get_json_4xx(client, files, data, status, message):
    if files and files["image"][1] == "PNG":
        files = {"image": ("x.png", png_bytes(0))}
    r = client.post("/api/predict", files=files, data=data)
    assert r.status_code == status, r.text
    assert message in r.json()["error"] and "Traceback" not in r.text


def test_bad_batch_requests(client):
    one = [("images", ("a.png", png_bytes(0)))]
    r = client.post("/api/predict_batch", files=one, data={"questions": ["a?", "b?"]})
    assert r.status_code == 400 and "one question per image" in r.json()["error"]
    five = [("images", (f"{i}.png", png_bytes(i))) for i in range(5)]
    r = client.post("/api/predict_batch", files=five, data={"questions": ["q?"] * 5})
    assert r.status_code == 400 and "at most 4" in r.json()["error"]
    r = client.post("/api/predict_batch", data={"questions": ["q?"]})
    assert r.status_code == 400 and "no images" in r.json()["error"]


def test_internal_errors_are_json_without_traceback(pipe, model_dir, monkeypatch):
    from m3ae.inference.server import create_app

    broken = TestClient(create_app(pipe, model_dir), raise_server_exceptions=False)
    monkeypatch.setattr(pipe, "predict_batch", lambda *a, **k: 1 / 0)
    r = broken.post("/api/predict", files={"image": ("x.png", png_bytes(0))}, data={"question": "Is it?"})
    assert r.status_code == 500 and r.json() == {"error": "internal error (see the server log)"}


def test_serve_cli_errors(model_dir, capsys):
    assert main(["serve", "--model", str(model_dir), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    assert main(["serve", "--model", str(model_dir.parent / "missing")]) == 2
    assert "not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------ a real server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(model_dir):
    """`m3ae serve` in a subprocess on 127.0.0.1; yields its base URL."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    # fp32 like the reference pipeline the answers are compared with (auto means bf16 on a CPU with it)
    proc = subprocess.Popen([sys.executable, "-m", "m3ae.cli", "serve", "--model", str(model_dir),
                             "--port", str(port), "--precision", "fp32"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 600  # seconds when idle; minutes at nice 19 on a loaded machine
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"m3ae serve exited: {proc.stdout.read().decode()}")
        try:
            if httpx.get(url + "/api/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("m3ae serve did not start within 600 s")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_concurrent_requests_do_not_mix_results(server, pipe):
    import httpx

    jobs = [(png_bytes(i), q) for i, q in enumerate(["Is it normal?", "Which side?", "Is this a CT?",
                                                       "What organ?", "Is there a mass?", "MRI or CT?"] * 2)]
    expected = [pipe(Image.open(io.BytesIO(im)), q, top_k=3) for im, q in jobs]
    results: list = [None] * len(jobs)

    def ask(i: int) -> None:
        im, q = jobs[i]
        r = httpx.post(server + "/api/predict", files={"image": ("x.png", im)},
                       data={"question": q, "top_k": "3", "explain": str(i % 2 == 0).lower()}, timeout=60)
        results[i] = r.json()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (im, q), got, want in zip(jobs, results, expected):
        assert got["question"] == q
        assert [a["answer"] for a in got["answers"]] == [a["answer"] for a in want]
        assert [a["probability"] for a in got["answers"]] == pytest.approx([a["probability"] for a in want],
                                                                             abs=1e-5)


@pytest.mark.slow
def test_page_in_headless_chromium(server, tmp_path):
    if not (CHROMIUM.is_file() and CHROMEDRIVER.exists()):
        pytest.skip("Debian chromium + chromium-driver not installed (.ci/run installs them with apt)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,820"):
        options.add_argument(flag)
    image = tmp_path / "scan.png"
    Image.open(io.BytesIO(png_bytes(3, size=(120, 96)))).save(image)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        driver.get(server + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "Testing the server only." in d.find_element(By.ID, "intended-use").text)
        driver.find_element(By.ID, "file").send_keys(str(image))
        driver.find_element(By.ID, "question").send_keys("Is there a fracture?")
        driver.find_element(By.ID, "submit").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#answers .answer")))
        wait.until(lambda d: d.execute_script(
            "const i = document.getElementById('heatmap'); return i.complete && i.naturalWidth > 0;"))
        answers = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#answers .answer-text")]
        assert len(answers) == 5 and set(answers) <= set(ANSWERS)
        assert driver.find_element(By.ID, "heat-figure").is_displayed()
        assert driver.find_element(By.ID, "model-view").is_displayed()
        assert driver.find_element(By.ID, "error").text == ""
        shot = tmp_path / "serve_page.png"
        driver.save_screenshot(str(shot))
        assert Image.open(shot).size[0] >= 1000
        if os.environ.get("M3AE_SCREENSHOT_DIR"):  # to refresh docs/images by hand
            shutil.copy(shot, Path(os.environ["M3AE_SCREENSHOT_DIR"]) / "serve_page.png")
    finally:
        driver.quit()
