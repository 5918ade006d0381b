"""Atomic file writes: every file stepnet writes into a run directory goes through here."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write`` on a temporary file in ``path``'s folder, flush and fsync it, then rename
    it over ``path``. An interrupted write never leaves a partial file in place of the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        cause = error.__cause__ or error.__context__
        if isinstance(error, RuntimeError) and isinstance(cause, OSError):
            # torch.save reports a full disk as an archive-writer RuntimeError: say what it is
            raise OSError(cause.errno, cause.strerror, str(path)) from None
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of a text (UTF-8)."""
    data = text.encode()
    return atomic_write(path, lambda handle: handle.write(data))
