"""Small JSON tables in the user cache folder (base-model scores, model architectures): one file each, read and
written under a file lock, replaced atomically. A damaged table (a crash elsewhere, a hand edit) counts as empty
and is written anew: a cache must never stop a command."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from gridrun.builtin.tiny_model import cache_root

__all__ = ["cache_get", "cache_put"]

log = logging.getLogger("gridrun")


def _path(table: str) -> Path:
    return cache_root() / f"{table}.json"


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        log.warning("cache file %s is unreadable (%s); starting it anew", path, e)
        return {}
    return data if isinstance(data, dict) else {}


def cache_get(table: str, key: str) -> Any | None:
    """The entry ``key`` of ``table``, or None."""
    from filelock import FileLock

    path = _path(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        return _read(path).get(key)


def cache_put(table: str, key: str, entry: Any) -> None:
    """Set ``key`` of ``table`` to ``entry`` (JSON), keeping what other processes wrote meanwhile."""
    from filelock import FileLock

    path = _path(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        data = _read(path)
        data[key] = entry
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)
