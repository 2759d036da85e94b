"""Writing files so that a crash or a failed run never leaves a half-written file behind."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path


#: The service's files hold the user's photos and name their jobs: readable by the user alone.
FILE_MODE, FOLDER_MODE = 0o600, 0o700


def check_writable(folder: str | os.PathLike) -> None:
    """Raise OSError unless a file can be made and written in `folder` (permissions, a read-only file
    system, a full disk: a block is written through to the disk): asked before long work, so that it
    fails before the work rather than after it."""
    with tempfile.TemporaryFile(dir=folder) as probe:
        probe.write(bytes(4096))
        probe.flush()
        os.fsync(probe.fileno())


def write_atomic(path: str | os.PathLike, data: str | bytes, mode: int | None = None) -> None:
    """Write a file so that readers see either the old file or the whole new one, never a part.

    The new file gets `mode`, else the old one's read and write permissions (never its setuid, setgid or
    sticky bits), else those of a plain open(); the umask applies to all three. A symbolic link is written
    through: the file it points to is replaced, and the link stays.
    """
    path = Path(os.path.realpath(path))
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if mode is None:
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o666
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.part"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise

