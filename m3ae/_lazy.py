"""Lazy public names for package ``__init__`` files (PEP 562), so imports stay light, and the aliases
that keep old module paths importable after a move."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import warnings
from collections.abc import Callable
from types import CodeType, ModuleType
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


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Old module paths kept as aliases of the modules' new homes, with a DeprecationWarning.

    Installed first on ``sys.meta_path`` by ``m3ae/__init__.py``; it answers only for the old names of
    its table, which no file has. ``import m3ae.demo`` then gives the very module object of its new
    path (one module, one state, whichever name imported it first), and ``python -m OLD`` runs the
    module of ``run_as[OLD]`` (the command, for the modules that were scripts) or else the new module.
    """

    def __init__(self, moved: dict[str, str], run_as: dict[str, str] | None = None) -> None:
        self.moved, self.run_as = moved, run_as or {}

    def _warn(self, old: str, new: str) -> None:
        warnings.warn(f"{old} moved to {new}; import it from there ({old} will be removed in a later "
                      "release)", DeprecationWarning, stacklevel=3)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.moved:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = self.moved[spec.name]
        self._warn(spec.name, new)
        module = importlib.import_module(new)
        spec.loader_state = module.__spec__  # the import system writes the alias's spec on the module next
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = module.__spec__.loader_state  # ... so put the module's own spec back

    def get_code(self, fullname: str) -> CodeType | None:
        """What ``python -m OLD`` runs (runpy asks the loader for the code)."""
        new = self.run_as.get(fullname, self.moved[fullname])
        self._warn(fullname, new)
        spec = importlib.util.find_spec(new)
        return spec.loader.get_code(new)
