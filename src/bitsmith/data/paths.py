"""Locating the benchmark data folder (``shared/data``) and the decode cache.

The data (CIFAR-10 subsets, MNIST, the pretrained akamaster ResNets) lives
*outside* the repository, in a folder laid out as described in
``shared/data/SOURCES.md``. It is found in this order:

1. ``$BITSMITH_DATA`` if set. When it is set it is authoritative: a missing
   file there is an error, the other locations are not searched.
2. ``<repo root>/../shared/data``, the repo root being found from this file's
   location (``src/bitsmith/data/paths.py`` -> three levels up).
3. ``./shared/data`` and ``../shared/data`` relative to the current directory.

Decoded-image caches go to ``$BITSMITH_CACHE_DIR``, else
``$XDG_CACHE_HOME/bitsmith``, else ``~/.cache/bitsmith``.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "BITSMITH_DATA"
CACHE_ENV = "BITSMITH_CACHE_DIR"

_HINT = (
    "Set the environment variable BITSMITH_DATA to the data folder (the one holding "
    "SOURCES.md, cifar10/, mnist/ and models/), or check out the repository with the "
    "shared data folder at ../shared/data next to it. The data is never downloaded "
    "automatically; with internet access use bitsmith.data.torchvision_dataset instead."
)


def repo_root() -> Path:
    """The repository root inferred from this file (``src/bitsmith/data/`` -> 3 levels up).

    Only meaningful for a source checkout / editable install; for an installed
    wheel it is some directory inside ``site-packages``' parents, which is harmless
    because candidates are checked for existence.
    """
    return Path(__file__).resolve().parents[3]


def candidate_roots() -> list[Path]:
    """Data-folder candidates in search order (see the module docstring)."""
    env = os.environ.get(DATA_ENV)
    if env:
        return [Path(env).expanduser()]
    cwd = Path.cwd()
    cands = [repo_root().parent / "shared" / "data", cwd / "shared" / "data",
             cwd.parent / "shared" / "data"]
    out: list[Path] = []
    for c in cands:
        c = c.resolve()
        if c not in out:
            out.append(c)
    return out


def _tried(roots: list[Path], what: str) -> str:
    src = f"${DATA_ENV}" if os.environ.get(DATA_ENV) else "default locations"
    lines = "\n".join(f"  - {r / what if what else r}" for r in roots)
    return f"Looked in ({src}):\n{lines}\n{_HINT}"


def data_root(require: str | None = None) -> Path:
    """The data folder: the first candidate that exists and, if given, contains ``require``.

    Args:
        require: a path relative to the data folder that must exist there
            (e.g. ``"cifar10/cifar10_test_subset.npz"``); ``None`` only asks for a
            non-empty directory.

    Raises:
        FileNotFoundError: listing every path tried and how to fix it.
    """
    roots = candidate_roots()
    for r in roots:
        if require is not None:
            if (r / require).exists():
                return r
        elif r.is_dir() and any(r.iterdir()):
            return r
    what = require or ""
    raise FileNotFoundError(
        f"bitsmith benchmark data not found{f' (need {require!r})' if require else ''}. "
        + _tried(roots, what)
    )


def data_file(relpath: str) -> Path:
    """Absolute path of ``relpath`` inside the data folder (``FileNotFoundError`` if absent)."""
    return data_root(relpath) / relpath


def find_data_file(directory: str, pattern: str) -> Path:
    """First file matching glob ``pattern`` in ``<data root>/<directory>`` (sorted by name).

    Raises:
        FileNotFoundError: listing the folders searched and how to fix it.
    """
    roots = candidate_roots()
    for r in roots:
        d = r / directory
        if d.is_dir():
            hits = sorted(d.glob(pattern))
            if hits:
                return hits[0]
    raise FileNotFoundError(
        f"no file matching {pattern!r} found. " + _tried(roots, f"{directory}/{pattern}")
    )


def cache_dir() -> Path:
    """Folder for derived caches (not created here)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "bitsmith"
