"""Dotted spec paths (``train.lr``, ``data.options.prompt_format``): the one implementation of substitution."""

from __future__ import annotations

from typing import Any

__all__ = ["set_path"]


def set_path(node: dict[str, Any], path: str | list[str], value: Any) -> None:
    """Set ``node[a][b]...[leaf] = value`` for ``path`` ``"a.b.leaf"`` (or its parts), creating or replacing
    non-mapping intermediate nodes; sibling keys stay (a deep merge of one leaf)."""
    parts = path.split(".") if isinstance(path, str) else path
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = node[part] = {}
        node = nxt
    node[parts[-1]] = value
