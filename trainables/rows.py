"""Row hygiene: one source row → a prompt/answer record, or a reason it is malformed; and the rule for how many
malformed rows a training split may hold (``data.max_bad_fraction``) before the trial stops."""

from __future__ import annotations

import json
import logging
from typing import Any

from gridrun.builtin import builtin_name
from gridrun.errors import GridrunError
from gridrun.spec import DataSpec

__all__ = ["BadRow", "check_bad_rows", "clean_rows", "parse_record"]

log = logging.getLogger("gridrun")


class BadRow(ValueError):
    """A row that cannot become an example; the message says why (it follows 'row <i> ')."""


def _squad(data: DataSpec) -> bool:
    return data.adapter == "squad" and builtin_name(data.task) is None


def parse_record(row: Any, data: DataSpec) -> dict[str, Any]:
    """One source row → a record with ``prompt`` (text, or the chat turns before the answer) and ``answer``.

    Raises:
        BadRow: the row is not JSON, not an object, or lacks the fields ``data`` names.
    """
    if isinstance(row, dict) and set(row) == {"_json"}:  # rows kept as JSON text (JSONL lines, generators)
        try:
            row = json.loads(row["_json"])
        except json.JSONDecodeError as e:
            raise BadRow(f"is not valid JSON ({e.msg})") from None
    if not isinstance(row, dict):
        raise BadRow(f"is a {type(row).__name__}, not an object")
    mf = data.messages_field
    if mf:
        msgs = row.get(mf)
        if not isinstance(msgs, list) or not msgs:
            raise BadRow(f"has no '{mf}' list of messages")
        for m in msgs:
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise BadRow("has a message without role and content text")
        if msgs[-1]["role"] != "assistant" or len(msgs) < 2:
            raise BadRow("does not end with an assistant message after a prompt")
        return {**row, "prompt": msgs[:-1], "answer": msgs[-1]["content"]}
    pf, af = ("prompt", "answer") if _squad(data) else (data.prompt_field, data.answer_field)
    for f in (pf, af):
        if f not in row:
            raise BadRow(f"has no field '{f}' (fields: {', '.join(row)})")
        if not isinstance(row[f], str):
            raise BadRow(f"field '{f}' must be text, got {type(row[f]).__name__}")
    return {**row, "prompt": row[pf], "answer": row[af]}


def check_bad_rows(data: DataSpec, rows: int, bad: int, first: dict[str, Any] | None) -> None:
    """Warn about skipped malformed rows (naming the first); fail in one line past ``data.max_bad_fraction``."""
    if not bad or first is None:
        return
    where = f"first: row {first['row']} {first['reason']}"
    if bad / rows > data.max_bad_fraction:
        raise GridrunError(
            f"data.task: {bad} of {rows} rows of {data.task} are malformed ({bad / rows:.1%}, above "
            f"data.max_bad_fraction {data.max_bad_fraction}); {where}"
        )
    log.warning("data.task: skipped %d malformed rows of %s (%s)", bad, data.task, where)


def clean_rows(rows: list[Any], data: DataSpec) -> list[dict[str, Any]]:
    """The records of ``rows`` that parse, under the same rule as a trial's training split."""
    out, bad, first = [], 0, None
    for i, row in enumerate(rows):
        try:
            out.append(parse_record(row, data))
        except BadRow as e:
            bad += 1
            first = first or {"row": i, "reason": " ".join(str(e).split())}
    check_bad_rows(data, len(rows), bad, first)
    return out
