"""Read PyTorch Lightning `.ckpt` files without executing code from them.

Official M3AE checkpoints are `torch.save` zip archives whose pickle may reference classes we do
not have (Lightning's `ModelCheckpoint` as a dict key, `argparse.Namespace`, numpy scalars...).
`torch.load(weights_only=True)` rejects those, and `weights_only=False` would import and call
whatever the pickle names. This unpickler sits in between:

* tensor/storage rebuild functions, OrderedDict and plain containers are allowed;
* names that could run code (os, subprocess, builtins.eval/exec, ...) are refused with an error;
* any other global becomes an inert `Placeholder` that records its arguments and state.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from m3ae.errors import CheckpointError

_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "Tensor"): torch.Tensor,
    ("torch", "device"): torch.device,
}
_SAFE_BUILTINS = {
    "set",
    "frozenset",
    "list",
    "dict",
    "tuple",
    "int",
    "float",
    "complex",
    "bool",
    "str",
    "bytes",
    "bytearray",
    "slice",
    "range",
}
_DTYPES = {name for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype)}
# modules whose globals can run code, touch the system or load more code: always refused
_REFUSED_MODULES = (
    "os",
    "posix",
    "nt",
    "subprocess",
    "sys",
    "shutil",
    "socket",
    "importlib",
    "runpy",
    "pickle",
    "_pickle",
    "marshal",
    "types",
    "code",
    "codeop",
    "pty",
    "ctypes",
    "webbrowser",
    "multiprocessing",
    "threading",
    "asyncio",
    "signal",
    "io",
    "pathlib",
    "tempfile",
    "torch.hub",
    "torch.jit",
    "torch.serialization",
    "torch.utils.cpp_extension",
    "builtins",
    "__builtin__",
    "operator",
    "functools",
    "inspect",
    "eval",
    "exec",
    "pydoc",
    "timeit",
    "commands",
    "popen2",
    "platform",
    "glob",
    "zipimport",
    "pkgutil",
    "dill",
    "numpy.testing",
)


class Placeholder:
    """Inert stand-in for a class or function named by a pickle that we do not import."""

    qualname = "unknown"

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # NEWOBJ calls __new__ without __init__, so the fields are set here
        self = super().__new__(cls)
        self.args, self.kwargs, self.state = args, kwargs, None
        # dict / list subclasses (e.g. Lightning's AttributeDict) are filled by SETITEM(S) and
        # APPENDS opcodes after construction; keep their content instead of failing
        self.items: dict[Any, Any] = {}
        self.list_items: list[Any] = []
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # everything happens in __new__ (REDUCE calls both, NEWOBJ only __new__)

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        """Filled by the APPEND opcode."""
        self.list_items.append(value)

    def extend(self, values: Any) -> None:
        """Filled by the APPENDS opcode."""
        self.list_items.extend(values)

    def as_dict(self) -> dict[Any, Any]:
        """Best-effort plain-dict view: stored items, else a dict state (`__dict__` of the object)."""
        if self.items:
            return dict(self.items)
        return dict(self.state) if isinstance(self.state, dict) else {}

    def __repr__(self) -> str:
        return f"<placeholder {self.qualname}>"


def _placeholder(module: str, name: str) -> type:
    return type(f"Placeholder[{module}.{name}]", (Placeholder,), {"qualname": f"{module}.{name}"})


def _is_refused(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in _REFUSED_MODULES)


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` whose `find_class` allows tensors and containers only (see module doc)."""

    def find_class(self, module: str, name: str) -> Any:
        """The object a GLOBAL opcode names: allowed, refused (error) or an inert placeholder."""
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return getattr(__import__("builtins"), name)
        if module == "torch" and (name in _DTYPES or name.endswith("Storage")):
            return getattr(torch, name)
        if module == "torch.storage" and name in ("UntypedStorage", "TypedStorage"):
            return getattr(torch.storage, name)
        if _is_refused(module):
            raise CheckpointError(f"refusing to unpickle {module}.{name}: the checkpoint tries to call code")
        return _placeholder(module, name)


class _RestrictedPickleModule:
    """What `torch.load(pickle_module=...)` needs: an Unpickler class and `load`."""

    Unpickler = RestrictedUnpickler
    __name__ = "m3ae_restricted_pickle"

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        """Unpickle one object from a file with the restricted rules."""
        return RestrictedUnpickler(file, **kwargs).load()


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Load a `.ckpt`/`.pt` file as a dict, without executing code from it.

    Raises:
        CheckpointError: file missing, not a torch checkpoint, or a pickle that would run code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", pickle_module=_RestrictedPickleModule, weights_only=False)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    except Exception as err:  # corrupt zip, truncated file, not a pickle...
        raise CheckpointError(
            f"{path}: cannot be read as a torch checkpoint ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict at the top level, found {type(obj).__name__}")
    return obj
