"""Output paths, checked before any work starts.

A command that runs for minutes and then finds it cannot write its result has wasted those minutes
and ends in a traceback. Commands call these checks on every output path they were given first; a
path that cannot be written is a :class:`SpecMDError` naming the option. The check is the real thing
(the folder is made, and a file is created and removed again), not a permission guess.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from specmd_env.errors import SpecMDError


def _refuse(option: str, path: Path, why: str) -> SpecMDError:
    return SpecMDError(f"{option} {str(path)!r}: {why}")


def _make_folder(path: Path, option: str, shown: Path) -> None:
    """``mkdir -p path``; an ancestor that is a file is named in the error."""
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise _refuse(option, shown, "is a file, not a folder" if ancestor == shown else
                      f"{str(ancestor)!r} is a file, not a folder")
    path.mkdir(parents=True, exist_ok=True)


def writable_dir(path: str | os.PathLike, option: str) -> Path:
    """Make folder ``path`` (and its parents) if needed and check that files can be created in it."""
    path = Path(path)
    try:
        _make_folder(path, option, path)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise _refuse(option, path, f"cannot write there ({exc.strerror or exc})") from None
    return path


def writable_file(path: str | os.PathLike, option: str) -> Path:
    """Check that file ``path`` can be written (its folder is made if needed); an existing file is kept."""
    path = Path(path)
    if path.is_dir():
        raise _refuse(option, path, "is a folder, expected a file name")
    existed = path.exists()
    try:
        _make_folder(path.parent, option, path)
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise _refuse(option, path, f"cannot write it ({exc.strerror or exc})") from None
    if not existed:
        path.unlink()
    return path
