"""One way to write files: atomically, honouring the umask, never leaving a temporary file behind.

Every file the package writes (weights, checkpoints, configs, metrics, PNGs, features, exports) goes through
:func:`atomic_write` or :func:`atomic_path`: the data goes to a hidden temporary file in the destination folder,
which is fsynced and renamed over the destination, so a reader (or a resumed run after a kill) sees either the old
file or the new one, never half of one. On any error the temporary file is removed and the old file is kept.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write", "remove_stale_temporaries", "TMP_SUFFIX"]

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    # os.umask can only be read by setting it; restore at once (no file is created in between in this thread).
    mask = os.umask(0)
    os.umask(mask)
    return mask


class WriteError(OSError):
    """An :class:`OSError` whose text is its message alone (no ``[Errno N]`` prefix); ``errno`` is kept."""

    def __str__(self) -> str:
        return str(self.strerror)


class DirectoryInTheWay(WriteError, IsADirectoryError):
    """The destination of a file write is an existing folder."""


def _file_in_the_way(path: Path) -> Path | None:
    """The first ancestor of ``path`` that exists but is not a folder (so the folder cannot be created)."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def _describe(err: OSError, path: Path) -> OSError:
    """The same error with a message that names the destination (and says "no space left" for ENOSPC)."""
    if err.errno == errno.ENOSPC:
        return WriteError(err.errno, f"no space left on device while writing {path}")
    if err.errno in (errno.EEXIST, errno.ENOTDIR):
        blocker = _file_in_the_way(path)
        if blocker is not None:
            return WriteError(err.errno, f"cannot write {path}: {blocker} is a file, not a folder")
    return WriteError(err.errno, f"cannot write {path}: {err.strerror or err}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed.

    For writers that want a file name (``safetensors.torch.save_file``, ``numpy.save``, ``torch.onnx.export``).

    Args:
        path: Destination file.
        suffix: Extension the temporary file should carry (some writers append one if it is missing).

    Raises:
        OSError: The folder cannot be created or written; the message names ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise DirectoryInTheWay(errno.EISDIR, f"cannot write {path}: it is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + TMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise _describe(err, path) from err
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600; a written file gets the permissions any other new file would get.
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _describe(err, path) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike[str], data: bytes | str | Callable[[Path], None]) -> Path:
    """Write ``data`` to ``path`` atomically.

    Args:
        path: Destination file (its folder is created).
        data: Bytes, text (written as UTF-8), or a callable that writes the file at the path it is given.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        if callable(data):
            data(tmp)
        else:
            tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files that a killed writer left in ``folder`` (hidden ``.<name>.*.tmp``); return them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.glob(f".*{TMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
