"""Which trial checkpoints stay on storage: the best by objective, the latest, and every one a snapshot names.

Tune's own retention (``CheckpointConfig(num_to_keep, checkpoint_score_attribute=...)``) deletes a checkpoint as
soon as it drops out of the best ``num_to_keep``, even when it is the one the last saved experiment snapshot
names as the trial's latest. Tune forces a new snapshot only after ``num_to_keep`` checkpoints, which is enough
for keep-the-newest retention but not for keep-the-best: one better checkpoint can push the snapshot's out. A
driver killed before the next snapshot then leaves trials that cannot be restored ("Could not recover from
checkpoint as it does not exist on storage anymore"). So gridrun asks Tune to keep every checkpoint, and this
driver-side callback deletes only what no saved snapshot can refer to.

Tune calls ``get_state`` while it writes each experiment snapshot, so the checkpoints named there (each trial's
latest at that moment) are known exactly. A snapshot reaches storage after it is written, and Tune skips an
upload while the previous one is still running, so storage can hold an older snapshot than the last one written:
the names of the last two snapshots are kept, and those of every snapshot written in the last ``SAFE_S``
seconds. (An upload stalled for longer than that could still name a deleted checkpoint; Tune warns about syncs
slower than 30 s.)
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from ray.tune import Callback

from gridrun.metrics import namespaced_metrics

__all__ = ["CheckpointKeeper", "Saved"]

log = logging.getLogger("gridrun")

#: Checkpoints named by any snapshot written this recently are kept (a slow upload may still deliver it).
SAFE_S = 900.0


@dataclass
class Saved:
    """One persisted checkpoint of a trial and the result it was reported with."""

    objective: float  # -inf when the objective was missing or not finite: never the best
    checkpoint: Any  # ray.tune.Checkpoint: a path on the experiment's storage filesystem
    metrics: dict[str, float]

    @property
    def path(self) -> str:
        return str(self.checkpoint.path)


def _exists(checkpoint: Any) -> bool:
    from pyarrow.fs import FileType

    try:
        return bool(checkpoint.filesystem.get_file_info(checkpoint.path).type != FileType.NotFound)
    except OSError:
        return False


class CheckpointKeeper(Callback):
    """Keep each trial's ``num_to_keep`` best checkpoints by objective, its latest, and any a snapshot names.

    Ties in objective go to the later checkpoint (it has trained longer for the same score).
    """

    def __init__(self, num_to_keep: int) -> None:
        if num_to_keep < 1:
            raise ValueError(f"checkpoint.num_to_keep must be at least 1, got {num_to_keep}")
        self.num_to_keep = num_to_keep
        self.saved: dict[str, list[Saved]] = {}  # trial_id -> checkpoints still on storage, oldest first
        self._named: list[tuple[float, set[str]]] = []  # (wall time, paths named) per recent experiment snapshot

    def on_checkpoint(self, iteration: int, trials: list[Any], trial: Any, checkpoint: Any, **info: Any) -> None:
        result = trial.last_result or {}
        obj = result.get("objective")
        objective = float(obj) if isinstance(obj, int | float) and math.isfinite(obj) else -math.inf
        self.saved.setdefault(trial.trial_id, []).append(Saved(objective, checkpoint, namespaced_metrics(result)))
        self._prune(trial.trial_id)

    def best(self, trial_id: str) -> Saved | None:
        """The trial's checkpoint with the highest finite objective (the adapter worth shipping)."""
        finite = [s for s in self.saved.get(trial_id, []) if math.isfinite(s.objective)]
        return max(reversed(finite), key=lambda s: s.objective) if finite else None

    def latest(self, trial_id: str) -> Saved | None:
        saved = self.saved.get(trial_id)
        return saved[-1] if saved else None

    def _prune(self, trial_id: str) -> None:
        saved = self.saved[trial_id]
        ranked = sorted(range(len(saved)), key=lambda i: (saved[i].objective, i), reverse=True)
        keep = set(ranked[: self.num_to_keep]) | {len(saved) - 1}
        named = set().union(*(paths for _, paths in self._named))
        kept: list[Saved] = []
        for i, s in enumerate(saved):
            if i in keep or s.path in named:
                kept.append(s)
                continue
            try:
                s.checkpoint.filesystem.delete_dir(s.checkpoint.path)
            except FileNotFoundError:
                pass
            except OSError as e:  # a checkpoint left behind costs disk, never the experiment
                log.warning("could not delete checkpoint %s: %s", s.path, e)
                kept.append(s)
        self.saved[trial_id] = kept

    # Tune saves callback state inside every experiment snapshot and hands it back on restore.
    def get_state(self) -> dict[str, Any] | None:
        now = time.time()
        latest = {saved[-1].path for saved in self.saved.values() if saved}
        recent = [(t, p) for t, p in self._named if now - t < SAFE_S]
        previous = recent or self._named[-1:]  # the one before this snapshot is kept however old
        self._named = [*previous, (now, latest)]
        return {
            "saved": {tid: [(s.objective, s.checkpoint, s.metrics) for s in v] for tid, v in self.saved.items()},
            "named": [(t, sorted(p)) for t, p in self._named],
        }

    def set_state(self, state: dict[str, Any]) -> None:
        # Checkpoints pruned after the snapshot was written are gone from storage: forget them too.
        self.saved = {
            tid: [Saved(float(o), c, dict(m)) for o, c, m in v if _exists(c)]
            for tid, v in state.get("saved", {}).items()
        }
        self._named = [(float(t), set(p)) for t, p in state.get("named", [])]
