"""Atomic file writes: a reader sees the old file or the complete new one, never a part.

Every writer goes through a temporary file in the destination's folder (same file
system, so the final ``os.replace`` is atomic), flushed and ``fsync``-ed before the
rename. On any failure (``ENOSPC`` halfway, an exception in the caller's block) the
temporary file is removed and the destination is left as it was. A full disk (or quota) is
reported as :class:`DiskFullError`, a bad-input error naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bitsmith.errors import InputError

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(InputError, OSError):
    """A write failed because the disk (or quota) is full; nothing was left behind.

    Also an ``OSError`` (``errno`` is ``ENOSPC`` or ``EDQUOT``), so ``except OSError`` still
    catches it.
    """

    def __init__(self, path: str | os.PathLike[str], err_no: int = errno.ENOSPC) -> None:
        self.message = (f"cannot write {path}: no space left on device (nothing was written); "
                        "free some space or choose another output folder")
        super().__init__(self.message)
        self.errno = err_no
        self.strerror = os.strerror(err_no)
        self.filename = str(path)

    def __str__(self) -> str:   # OSError would print "[Errno 28] ..." once errno is set
        return self.message


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (an ``OSError``, or a writer's own exception such as safetensors')
    means the disk or the quota is full."""
    if isinstance(err, OSError) and err.errno in _DISK_FULL:
        return True
    text = str(err)
    return "No space left on device" in text or "os error 28" in text \
        or "Disk quota exceeded" in text


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on normal exit it replaces ``path`` atomically.

    For writers that insist on a file name (``onnx.save``, ``safetensors.torch.save_file``)::

        with atomic_path("model.onnx") as tmp:
            onnx.save(graph, tmp)
    """
    dest = Path(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as err:
        if is_disk_full(err):
            raise DiskFullError(dest, err.errno or errno.ENOSPC) from err
        raise
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException as err:
        # some writers (torch.save's C++ zip writer) hide ENOSPC behind their own error:
        # look at the file system too, before the temporary file frees its space again
        full = is_disk_full(err) or (isinstance(err, Exception) and _out_of_space(dest.parent))
        with contextlib.suppress(OSError):
            tmp.unlink()
        if full and not isinstance(err, DiskFullError):
            raise DiskFullError(dest, getattr(err, "errno", None) or errno.ENOSPC) from err
        raise
    _fsync_dir(dest.parent)


def _out_of_space(folder: Path) -> bool:
    """Whether the file system of ``folder`` has no block left for an ordinary user."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return False
    return st.f_bavail == 0


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically, encoded as ``encoding``."""
    atomic_write_bytes(path, text.encode(encoding))


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append one line (``line`` plus ``"\\n"``) to ``path`` as one locked ``write``.

    For append-only logs shared by several processes (JSONL): writers hold an exclusive
    ``flock`` while appending, so lines never interleave; a write that fails halfway
    (``ENOSPC``) is cut back to the file's previous length, so no torn line is left
    (:class:`DiskFullError` is raised). Readers should still ignore a last line without
    its newline (a power loss can leave one).
    """
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    dest = Path(path)
    fd = os.open(dest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _lock(fd)
        start = os.fstat(fd).st_size
        try:
            done = 0
            while done < len(data):
                done += os.write(fd, data[done:])
            os.fsync(fd)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            if is_disk_full(err):
                raise DiskFullError(dest, err.errno or errno.ENOSPC) from err
            raise
    finally:
        os.close(fd)   # closing releases the lock


def _lock(fd: int) -> None:
    """Exclusive advisory lock on ``fd`` (no-op where ``fcntl`` does not exist)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return
    fcntl.flock(fd, fcntl.LOCK_EX)


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (best effort: not every platform can open a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
