"""The MLflow tracking URI: its scheme, form and local folder checked offline, a server asked for its health, a
local store's path made absolute, and a read-only command's store required to exist (one line each, exit 2)."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from gridrun.errors import GridrunError

__all__ = ["absolute_uri", "check_store_exists", "check_tracking_uri"]


def check_tracking_uri(uri: str, reach: bool = True) -> None:
    """Fail fast (one line) when the tracking store cannot be reached or created.

    Args:
        reach: also ask an HTTP server for its health (offline ``validate`` checks the scheme, form and a local
            store's folder only).
    """
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        if not parsed.hostname:
            raise GridrunError(f"tracking.uri: expected http(s)://host[:port], got {uri!r}")
        if not reach:
            return
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as r:
                if r.status != 200:
                    raise GridrunError(f"tracking.uri: MLflow server at {uri} answered HTTP {r.status}")
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise GridrunError(f"tracking.uri: MLflow server at {uri} is unreachable ({reason})") from None
        return
    if parsed.scheme == "sqlite":
        path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
        if not path:
            raise GridrunError(f"tracking.uri: expected sqlite:///path/to/file.db, got {uri!r}")
        parent = Path(path).expanduser().resolve().parent
    elif parsed.scheme in ("", "file"):
        parent = Path(parsed.path if parsed.scheme else uri).expanduser().resolve()
        parent = parent if parent.exists() else parent.parent
    else:
        _check_tracking_scheme(uri)
        return
    if not parent.is_dir():
        raise GridrunError(f"tracking.uri: folder {parent} does not exist (from {uri})")
    if not os.access(parent, os.W_OK | os.X_OK):  # this user, not "anyone": a root-owned 0755 folder is read-only
        raise GridrunError(f"tracking.uri: folder {parent} is not writable by this user (from {uri})")


def absolute_uri(uri: str) -> str:
    """A local tracking store's URI with an absolute path (``sqlite:///mlruns.db`` is relative to the folder a
    command runs in: shown and recorded absolute, it names one store wherever it is read from); others as given."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite" and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///') :]).expanduser().resolve()}"
    if parsed.scheme == "" and uri:
        return str(Path(uri).expanduser().resolve())
    if parsed.scheme == "file" and not parsed.netloc and not parsed.path.startswith("/"):
        return Path(parsed.path).expanduser().resolve().as_uri()
    return uri


def check_store_exists(uri: str) -> None:
    """For commands that only read (report, ui): a local store must already be there (MLflow would create an
    empty one and the command would then blame the run); a server must answer."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite" and uri.startswith("sqlite:///"):
        where = Path(uri[len("sqlite:///") :]).expanduser()
    elif parsed.scheme in ("", "file"):
        where = Path(parsed.path if parsed.scheme else uri).expanduser()
    else:
        check_tracking_uri(uri)
        return
    if not where.exists():
        raise GridrunError(
            f"tracking.uri: no MLflow store at {where.resolve()} ({uri}); pass --tracking-uri of the store the "
            "experiment was recorded in (the one launch printed)"
        )


def _check_tracking_scheme(uri: str) -> None:
    """A scheme MLflow has no tracking store for (a typo such as ``sqlite//`` or ``htp://``) fails here, in one
    line, instead of in the first trial's callback."""
    # private: MLflow's own scheme table (with plugins' entry points) is the authority on what it can use
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    try:
        _tracking_store_registry.get_store_builder(uri)
    except Exception:
        known = sorted(k for k in _tracking_store_registry._registry if k)
        raise GridrunError(
            f"tracking.uri: MLflow has no tracking store for {uri!r}; schemes it knows: {', '.join(known)}"
        ) from None
