"""`m3ae serve`: a local web page and JSON API around one VQA model (optional extra `m3ae[serve]`).

`create_app(pipeline)` builds the FastAPI application (tests drive it with TestClient, no socket);
`serve(model_dir, ...)` loads a model and runs it under uvicorn (what `m3ae serve` calls). FastAPI is
imported only inside these functions, so the core library never needs it.
"""
from __future__ import annotations

from m3ae._lazy import lazy_getattr

_LAZY = {"create_app": "m3ae.inference.server.app", "ServeLimits": "m3ae.inference.server.app",
         "serve": "m3ae.inference.server.app"}
__all__ = list(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY, globals())
