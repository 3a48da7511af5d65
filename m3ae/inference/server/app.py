"""The web page and JSON API around one loaded `VQAPipeline` (FastAPI).

Why FastAPI and not Gradio: the server is a page, four JSON routes and a file upload. FastAPI +
uvicorn + python-multipart are about 2 MB of pure Python next to Gradio's hundreds of MB (a
bundled front end, pandas, httpx, ...); its TestClient exercises every route without a socket, and
the page is one static HTML file that the tests drive in a real browser.

Routes:
    GET  /                  the page (static/index.html)
    GET  /api/health        {"status": "ok"}
    GET  /api/model         model metadata from config.json and the model card
    POST /api/predict       multipart: image (file), question, top_k, explain -> answers (+ pictures)
    POST /api/predict_batch multipart: images (files), questions (one per image), top_k -> results

Every error is JSON ``{"error": message}`` with a 4xx status (a 500 says "internal error" and
logs the traceback on the server, never in the response). Route functions are plain ``def``, so
Starlette runs them in its thread pool: requests are served concurrently against the one model
(inference is read-only, and the heat map writes no parameter gradients).
"""
# no `from __future__ import annotations`: FastAPI reads the route signatures at run time, and
# UploadFile is imported inside create_app (an optional extra), out of reach of string annotations.
import base64
import importlib.util
import io
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m3ae.errors import M3AEError

LOG = logging.getLogger("m3ae.inference.server")
STATIC = Path(__file__).parent / "static"
MAX_TOP_K = 50


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for."""

    max_upload_bytes: int = 20 * 1024 * 1024
    """Largest request body (all images together); larger requests get 413."""
    max_batch: int = 32
    """Most images in one /api/predict_batch request."""
    max_question_chars: int = 500
    """Longest question (the model reads at most max_text_len tokens anyway)."""


@dataclass
class ModelInfo:
    """What /api/model reports: the folder's config and its model card."""

    name: str
    task: str = "vqa"
    image_size: int = 0
    max_text_len: int = 0
    answers: int = 0
    intended_use: str = ""
    limitations: str = ""
    card: dict[str, Any] = field(default_factory=dict)


def card_section(text: str, title: str) -> str:
    """The text of a ``## title`` section of a Markdown model card ("" when absent)."""
    match = re.search(rf"^## {re.escape(title)}\s*\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    return match.group(1).strip() if match else ""


def model_info(pipe: Any, model_dir: Path | None = None) -> ModelInfo:
    """Metadata for /api/model: the card's intended use and limitations (or the library's defaults)."""
    from m3ae.reports.model_card import CARD_NAME, INTENDED_USE, LIMITATIONS

    card_text = ""
    if model_dir is not None and (model_dir / CARD_NAME).is_file():
        card_text = (model_dir / CARD_NAME).read_text(encoding="utf-8")
    title = re.search(r"^# (.+)$", card_text, flags=re.M)
    name = title.group(1).strip() if title else (pipe.model.config.name or "M3AE model")
    metrics = card_section(card_text, "Metrics")
    return ModelInfo(
        name=name, image_size=pipe.preprocessing.image_size, max_text_len=pipe.preprocessing.max_text_len,
        answers=len(pipe.answers), intended_use=card_section(card_text, "Intended use") or INTENDED_USE,
        limitations=card_section(card_text, "Limitations") or LIMITATIONS,
        card={"folder": str(model_dir) if model_dir else None, "metrics": metrics or None},
    )


def png_base64(image: Any) -> str:
    """A PIL image as base64 PNG text (for JSON and ``data:`` URLs)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_upload(data: bytes, name: str) -> Any:
    """Uploaded bytes (PNG, JPEG, DICOM, ...) -> RGB PIL image; DataError when unreadable."""
    from m3ae.data.images import decode_image
    from m3ae.errors import DataError

    if not data:
        raise DataError(f"{name}: the uploaded image is empty")
    return decode_image(data, name)


def check_question(question: str | None, limits: ServeLimits) -> str:
    """A non-empty question of bounded length."""
    question = (question or "").strip()
    if not question:
        raise M3AEError("the question is empty: ask something about the image")
    if len(question) > limits.max_question_chars:
        raise M3AEError(f"the question is {len(question)} characters long; at most {limits.max_question_chars}")
    return question


def check_top_k(top_k: int) -> int:
    """1 <= top_k <= MAX_TOP_K."""
    if not 1 <= top_k <= MAX_TOP_K:
        raise M3AEError(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
    return top_k


def predict_one(pipe: Any, image: Any, question: str, top_k: int, explain: bool) -> dict[str, Any]:
    """Answers for one decoded image; with ``explain``, the model's view and the heat map pictures."""
    answers = pipe(image, question, top_k=top_k)
    result: dict[str, Any] = {"question": question, "answers": answers}
    if explain:
        from m3ae.inference.explain import explain_answer, overlay

        expl = explain_answer(pipe, image, question, answer=answers[0]["answer"])
        display = expl.model_view.resize((max(256, expl.model_view.width),) * 2)  # small inputs upscaled
        result["explained_answer"] = expl.answer
        result["heatmap"] = expl.heatmap.round(5).tolist()  # [grid_h, grid_w], sums to 1
        result["model_view_png"] = png_base64(display)
        result["heatmap_png"] = png_base64(overlay(display, expl.heatmap))
    return result


def create_app(pipe: Any, model_dir: str | Path | None = None, limits: ServeLimits = ServeLimits()) -> Any:
    """The FastAPI application serving `pipe` (one model, loaded once by the caller).

    Args:
        pipe: a `VQAPipeline`.
        model_dir: its folder, to read the model card from (optional).
        limits: request limits.
    """
    from fastapi import FastAPI

    info = model_info(pipe, Path(model_dir) if model_dir else None)
    app = FastAPI(title="m3ae serve", version="1", docs_url="/api/docs", redoc_url=None)
    _add_error_handlers(app, limits)
    _add_routes(app, pipe, info, limits)
    return app


def _add_error_handlers(app: Any, limits: ServeLimits) -> None:
    """The upload-size middleware and the JSON error replies (400 user error, 413, 422, 500)."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):  # refuse oversize uploads before parsing
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limits.max_upload_bytes:
            return error(413, f"upload of {int(length)} bytes is over the limit of {limits.max_upload_bytes}")
        return await call_next(request)

    @app.exception_handler(M3AEError)
    async def user_error(request: Request, err: M3AEError):
        return error(400, str(err))

    @app.exception_handler(RequestValidationError)
    async def bad_fields(request: Request, err: RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'body'}: {e['msg']}" for e in err.errors())
        return error(422, f"invalid request: {problems}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        return error(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception):
        LOG.exception("internal error on %s", request.url.path)  # the traceback stays in the server log
        return error(500, "internal error (see the server log)")


def _add_routes(app: Any, pipe: Any, info: Any, limits: ServeLimits) -> None:
    """The page, /api/health, /api/model, /api/predict and /api/predict_batch."""
    from fastapi import File, Form, UploadFile
    from fastapi.responses import FileResponse

    def read_image(upload: Any) -> Any:
        if upload is None or not hasattr(upload, "read"):
            raise M3AEError("no image: send the image file in the multipart field 'image'")
        data = upload.file.read(limits.max_upload_bytes + 1)
        if len(data) > limits.max_upload_bytes:  # chunked uploads carry no content-length
            raise M3AEError(f"{upload.filename}: image over the limit of {limits.max_upload_bytes} bytes")
        return decode_upload(data, upload.filename or "upload")

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/model")
    def model() -> dict[str, Any]:
        return info.__dict__

    @app.post("/api/predict")
    def predict(image: UploadFile | None = File(None), question: str = Form(""), top_k: int = Form(5),
                explain: bool = Form(False)) -> dict[str, Any]:
        question, top_k = check_question(question, limits), check_top_k(top_k)
        return predict_one(pipe, read_image(image), question, top_k, explain)

    @app.post("/api/predict_batch")
    def predict_batch(images: list[UploadFile] | None = File(None), questions: list[str] | None = Form(None),
                      top_k: int = Form(1)) -> dict[str, Any]:
        images, questions, top_k = images or [], questions or [], check_top_k(top_k)
        if not images:
            raise M3AEError("no images: send image files in the repeated multipart field 'images'")
        if len(images) > limits.max_batch:
            raise M3AEError(f"{len(images)} images in one request; at most {limits.max_batch}")
        if len(questions) != len(images):
            raise M3AEError(f"{len(images)} images but {len(questions)} questions: send one question per image")
        questions = [check_question(q, limits) for q in questions]
        decoded = [read_image(im) for im in images]
        results = pipe.predict_batch(decoded, questions, top_k=top_k)
        return {"results": [{"question": q, "answers": a} for q, a in zip(questions, results)]}


SERVE_PACKAGES = ("fastapi", "uvicorn", "multipart")


def check_extra() -> None:
    """Fail with the install command when the serve extra is missing."""
    missing = [name for name in SERVE_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise M3AEError(f"m3ae serve needs {', '.join(missing)}: pip install 'm3ae[serve]'")


def serve(model: Path, host: str = "127.0.0.1", port: int = 7860, device: str = "cpu", precision: str = "auto",
          max_upload_mb: float = 20.0, max_batch: int = 32) -> int:
    """Load the model once and serve the page and the JSON API until interrupted (`m3ae serve`)."""
    if not 0 <= port <= 65535:
        raise M3AEError(f"--port must be between 0 and 65535, got {port}")
    if max_upload_mb <= 0 or max_batch < 1:
        raise M3AEError("--max-upload-mb must be positive and --max-batch at least 1")
    check_extra()
    import uvicorn

    from m3ae.inference.pipeline import VQAPipeline

    pipe = VQAPipeline.from_pretrained(model, device=device, precision=precision)
    limits = ServeLimits(max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_batch=max_batch)
    app = create_app(pipe, model, limits)
    print(f"m3ae serve: http://{host}:{port}/ (Ctrl+C to stop)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0
