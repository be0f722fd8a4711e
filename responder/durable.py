"""Making a file's name, not only its bytes, survive a power loss."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """fsync the directory: a file created, renamed or removed in it stays so after a
    crash (fsync of the file covers its bytes, not its directory entry)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
