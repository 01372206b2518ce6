"""Reachability checks that start nothing (no Ray, no MLflow run): one line and exit code 2 on failure."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from gridrun.errors import GridrunError

__all__ = ["check_address", "check_tracking_uri"]


def check_tracking_uri(uri: str) -> None:
    """Fail fast (one line) when the tracking store cannot be reached or created."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
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
        return  # databricks, etc.: left to MLflow
    if not parent.is_dir():
        raise GridrunError(f"tracking.uri: folder {parent} does not exist (from {uri})")
    if not (parent.stat().st_mode & 0o222):
        raise GridrunError(f"tracking.uri: folder {parent} is not writable (from {uri})")


def check_address(address: str) -> None:
    if address == "auto":
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    host, port = parsed.hostname, parsed.port
    if not host or not port:
        raise GridrunError(f"resources.address: expected host:port or ray://host:port, got {address!r}")
    try:
        with socket.create_connection((host, port), timeout=3):
            pass
    except OSError as e:
        raise GridrunError(f"resources.address: Ray cluster at {address} is unreachable ({e.strerror or e})") from None
