"""Serve a fine-tuned VQA model on a local web page and a JSON API.

Open http://HOST:PORT/ in a browser: upload a PNG, JPEG or DICOM, ask a question, see the top
answers, the image as the model saw it and the answer heat map. The JSON API is under /api
(POST /api/predict, POST /api/predict_batch, GET /api/health, GET /api/model; schema at
/api/docs). The model is loaded once. Binds to 127.0.0.1 by default: there is no
authentication, so expose it beyond this machine only behind something that adds it.
Research use only: not for clinical decisions. Needs the extra: pip install 'm3ae[serve]'.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from m3ae.errors import M3AEError

SERVE_PACKAGES = ("fastapi", "uvicorn", "multipart")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `m3ae serve`."""
    parser.add_argument("--model", required=True, type=Path, help="a fine-tuned VQA model folder (e.g. .../best)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=7860, help="TCP port")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body in MiB")
    parser.add_argument("--max-batch", type=int, default=32, help="most images per /api/predict_batch request")
    from m3ae.inference_cli import add_precision_argument

    add_precision_argument(parser)


def check_extra() -> None:
    """Fail with the install command when the serve extra is missing."""
    missing = [name for name in SERVE_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise M3AEError(f"m3ae serve needs {', '.join(missing)}: pip install 'm3ae[serve]'")


def run(args: argparse.Namespace) -> int:
    """Entry point of `m3ae serve`."""
    if not 0 <= args.port <= 65535:
        raise M3AEError(f"--port must be between 0 and 65535, got {args.port}")
    if args.max_upload_mb <= 0 or args.max_batch < 1:
        raise M3AEError("--max-upload-mb must be positive and --max-batch at least 1")
    check_extra()
    import uvicorn

    from m3ae.inference import VQAPipeline
    from m3ae.serve.app import ServeLimits, create_app

    pipe = VQAPipeline.from_pretrained(args.model, device=args.device, precision=args.precision)
    limits = ServeLimits(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_batch=args.max_batch)
    app = create_app(pipe, args.model, limits)
    print(f"m3ae serve: http://{args.host}:{args.port}/ (Ctrl+C to stop)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
