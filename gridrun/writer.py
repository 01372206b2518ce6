"""The driver's one MLflow writer: child-run writes leave Tune's event loop for a bounded, in-order queue that a
thread drains, so a tracking outage costs Tune no time; what an outage leaves at the end is spilled to a file.
What each write does to MLflow, and which failures are worth retrying, is :mod:`gridrun.run_writer`.

Hand-written on purpose: MLflow's own asynchronous logging (``log_batch(..., synchronous=False)``) covers metrics,
params and tags only, not run creation, artifacts or termination, whose order matters here, and it drops a batch
once the HTTP client's retries are spent. This queue keeps every write, in order, until MLflow takes it; MLflow's
own client retries (kept short by :func:`mlflow_client`) smooth over blips, the queue over outages.

Writes are plain data (``{"op": ..., "trial": ...}``), so the pending ones travel in Tune's experiment snapshot
and in the spill file that ``gridrun resume`` and ``gridrun sync`` replay. Each is idempotent against what MLflow
already holds: a trial's run is looked up before it is created again, a metric step MLflow has is not written
twice (identical resends are deduplicated by MLflow itself), tags and status are set again.
"""

from __future__ import annotations

import collections
import logging
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gridrun import storage
from gridrun.run_writer import RunWriter, transient

__all__ = ["SPILL_FILE", "OpQueue", "replay_spill", "write_spill"]

log = logging.getLogger("gridrun")

#: Where an experiment's MLflow writes wait when the server is still away at the end (in the experiment folder).
SPILL_FILE = "mlflow_pending.pkl"


class OpQueue:
    """A bounded, in-order queue of writes and the daemon thread applying them; a write that fails for a
    transient reason stays at the head and is retried with backoff, so nothing is reordered or lost.

    Full (an outage long enough to queue ``maxsize`` writes), ``put`` waits for room: memory stays bounded and
    nothing is dropped, at the price of Tune waiting from then on.
    """

    def __init__(self, apply: Callable[[dict[str, Any]], None], maxsize: int = 10_000) -> None:
        self._apply, self.maxsize = apply, maxsize
        self._ops: collections.deque[dict[str, Any]] = collections.deque()
        self.lock = threading.Condition()  # guards _ops; held only for moments, never across a write
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failing_since: float | None = None  # monotonic time of the first failure of this outage
        self.last_ok = time.monotonic()
        self.written = self.dropped = 0
        self._warned_full = False
        # While the driver waits at the end (``drain``), a failing write is retried at least every ``probe_s``
        # seconds, not after the outage's long backoff: a server back mid-wait is written to at once.
        self.probe_s = 1.0
        self._draining = False
        self._wake = threading.Event()  # cuts a backoff short (drain starts, or the queue closes)

    def __len__(self) -> int:
        return len(self._ops)

    def put(self, op: dict[str, Any]) -> None:
        with self.lock:
            if len(self._ops) >= self.maxsize and not self._warned_full:
                self._warned_full = True
                log.warning("MLflow writes: %d queued, the most kept in memory; Tune waits for MLflow", self.maxsize)
            while len(self._ops) >= self.maxsize and not self._stop.is_set():
                self.lock.wait(1.0)
            self._ops.append(op)
        self._start()

    def restore(self, ops: list[dict[str, Any]]) -> None:
        """Put writes an earlier driver left pending ahead of everything queued since."""
        with self.lock:
            self._ops.extendleft(reversed(ops))
        if ops:
            self._start()

    def pending(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self._ops)

    @contextmanager
    def frozen(self) -> Iterator[list[dict[str, Any]]]:
        """The pending writes, with no write completing meanwhile (a consistent snapshot with other state)."""
        with self.lock:
            yield list(self._ops)

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="gridrun-mlflow-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            with self.lock:
                while not self._ops and not self._stop.is_set():
                    self.lock.wait(1.0)
                if self._stop.is_set():
                    return
                op = self._ops[0]
            try:
                self._apply(op)
            except Exception as e:
                if not transient(e):
                    log.warning("MLflow %s for trial %s dropped: %s", op.get("op"), op.get("trial"), _line(e))
                    self._pop(op, ok=False)
                    continue
                failures += 1
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                    log.warning(
                        "MLflow unreachable (%s); %d writes queued, retried in the background while trials go on",
                        _line(e),
                        len(self._ops),
                    )
                delay = min(10.0, 0.5 * 2 ** (failures - 1))
                self._wake.clear()
                self._wake.wait(min(delay, self.probe_s) if self._draining else delay)
                continue
            failures = 0
            if self.failing_since is not None:
                log.warning(
                    "MLflow reachable again after %.0f s; writing the %d queued writes",
                    time.monotonic() - self.failing_since,
                    len(self._ops),
                )
                self.failing_since = None
            self._pop(op, ok=True)

    def _pop(self, op: dict[str, Any], ok: bool) -> None:
        with self.lock:
            if self._ops and self._ops[0] is op:
                self._ops.popleft()
            if ok:
                self.written += 1
                self.last_ok = time.monotonic()
            else:
                self.dropped += 1
            self.lock.notify_all()

    def drain(self, patience_s: float) -> bool:
        """Wait until every write is made; gives up (False) once MLflow has taken nothing for ``patience_s``
        seconds while failing. A server that is slow but answering is waited for; one that is away is tried at
        least every ``probe_s`` seconds meanwhile, and written to as soon as it answers."""
        start = time.monotonic()
        self._draining = True
        self._wake.set()  # a write waiting out a long backoff is tried now, then every ``probe_s``
        try:
            with self.lock:
                if self._ops:
                    self._start()
                while self._ops:
                    if self.failing_since is not None and time.monotonic() - max(start, self.last_ok) > patience_s:
                        return False
                    self.lock.wait(0.2)
            return True
        finally:
            self._draining = False

    def close(self) -> None:
        """Stop the thread (after the write it is making, if any); what is pending stays in ``pending()``."""
        self._stop.set()
        self._wake.set()
        with self.lock:
            self.lock.notify_all()


def _line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def write_spill(path: str | Path, header: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    """Keep pending writes in ``path``, a local file or a storage URI (whole: a half-written file never
    replaces a whole one)."""
    storage.write_bytes(path, pickle.dumps({"header": header, "ops": ops}))


def replay_spill(path: str | Path) -> int:
    """Write what an earlier driver left in its spill file to MLflow; returns how many writes were made.

    The file goes once everything is written; if MLflow fails again, what is left stays in it and
    :class:`~gridrun.errors.GridrunError` says so in one line.
    """
    from gridrun.errors import GridrunError

    if not storage.is_file(path):
        return 0
    data = pickle.loads(storage.read_bytes(path))
    header, ops = data["header"], data["ops"]
    writer = RunWriter(header["uri"], header["experiment_id"], header["parent_run_id"], header["runs"], resumed=True)
    done = 0
    for i, op in enumerate(ops):
        try:
            writer.apply(op)
            done += 1
        except Exception as e:
            if not transient(e):
                log.warning("MLflow %s for trial %s dropped: %s", op.get("op"), op.get("trial"), _line(e))
                continue
            write_spill(path, {**header, "runs": writer.runs}, ops[i:])
            raise GridrunError(
                f"MLflow at {header['uri']} failed ({_line(e)}); {len(ops) - i} writes are still kept in {path}"
            ) from None
    storage.remove(path)
    return done
