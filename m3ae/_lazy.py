"""Lazy public names for package ``__init__`` files (PEP 562), so imports stay light."""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, table: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``table[name]`` on first access and caches the value.

    Args:
        package: the package's ``__name__`` (for the error message and submodule names).
        table: public name -> module that defines it; a name that is itself a submodule of the
            package (``"metrics": "m3ae.metrics"``) resolves to that module.
        namespace: the package's ``globals()``, where resolved values are cached.
    """

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(table[name])
        value = module if module.__name__ == f"{package}.{name}" else getattr(module, name)
        namespace[name] = value
        return value

    return __getattr__
