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
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `m3ae serve`."""
    parser.add_argument("--model", required=True, type=Path, help="a fine-tuned VQA model folder (e.g. .../best)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=7860, help="TCP port")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body in MiB")
    parser.add_argument("--max-batch", type=int, default=32, help="most images per /api/predict_batch request")
    from m3ae.cli.predict import add_precision_argument

    add_precision_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Entry point of `m3ae serve`."""
    from m3ae.inference.server.app import serve

    return serve(args.model, host=args.host, port=args.port, device=args.device, precision=args.precision,
                 max_upload_mb=args.max_upload_mb, max_batch=args.max_batch)
