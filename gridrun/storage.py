"""Experiment storage: a local folder or any URI pyarrow opens (s3://, gs://, abfs://, hdfs://, file://).

Every reader and writer of an experiment folder goes through here, with locations as plain strings: an absolute
local path, or a URI. Files go through ``pyarrow.fs``, the filesystem layer Ray Tune itself writes trials and
checkpoints with (``ray.train._internal.storage.get_fs_and_path`` is ``pyarrow.fs.FileSystem.from_uri``), so
whatever Tune can write, gridrun can read back, with the same credentials: the standard ``AWS_*`` variables,
``AWS_ENDPOINT_URL`` for an S3-compatible server, Google's application default credentials, Azure's.

Local paths behave as plain folders (``Path`` semantics, ``~`` expanded, resolved to absolute); ``file://`` URIs
become the local path they name.
"""

from __future__ import annotations

import contextlib
import functools
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from gridrun.errors import GridrunError

__all__ = [
    "check_reachable",
    "check_storage",
    "checkpoint_location",
    "exists",
    "forget_filesystems",
    "is_dir",
    "is_file",
    "is_uri",
    "join",
    "known_schemes",
    "local_dir",
    "location",
    "makedirs",
    "one_line",
    "read_bytes",
    "read_text",
    "remove",
    "write_bytes",
    "write_text",
]

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

#: pyarrow filesystems by URI scheme, and the pyarrow module each needs (a build may leave some out).
_SCHEMES = {
    "s3": "pyarrow._s3fs",
    "gs": "pyarrow._gcsfs",
    "gcs": "pyarrow._gcsfs",
    "abfs": "pyarrow._azurefs",
    "abfss": "pyarrow._azurefs",
    "hdfs": "pyarrow._hdfs",
    "viewfs": "pyarrow._hdfs",
}


def is_uri(where: str | Path) -> bool:
    """Whether ``where`` is a URI (``scheme://...``) other than ``file://``, i.e. not a local folder."""
    return isinstance(where, str) and bool(_URI.match(where)) and not where.lower().startswith("file://")


@functools.cache
def known_schemes() -> tuple[str, ...]:
    """The URI schemes this machine's pyarrow can open (besides local paths and ``file://``)."""
    import importlib

    known = []
    for scheme, module in _SCHEMES.items():
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
            known.append(scheme)
    return tuple(known)


def check_storage(where: str, field: str = "tracking.storage") -> None:
    """Refuse, in one line, a URI whose scheme nothing here can open (offline: no network)."""
    if not is_uri(where):
        return
    scheme = where.split("://", 1)[0].lower()
    if scheme not in known_schemes():
        raise GridrunError(
            f"{field}: no filesystem for {where!r} (scheme {scheme}://); use a local folder or one of: "
            + ", ".join(f"{s}://" for s in known_schemes())
        )
    if not urlparse(where).netloc:
        raise GridrunError(f"{field}: {where!r} names no bucket or container (expected {scheme}://BUCKET/PATH)")


def check_reachable(where: str, field: str = "tracking.storage") -> None:
    """Refuse, in one line, storage that cannot be listed: a missing bucket, no credentials, no server."""
    check_storage(where, field)
    if not is_uri(where):
        return
    from pyarrow.fs import FileSelector, FileType

    try:
        fs, path = _fs(location(where))
        bucket = path.split("/", 1)[0]
        if fs.get_file_info(bucket).type == FileType.NotFound:  # listing would call a missing bucket empty
            raise GridrunError(f"{field}: cannot list {where} (bucket or container {bucket!r} does not exist)")
        fs.get_file_info(FileSelector(path, allow_not_found=True, recursive=False))  # its experiments, if any
    except GridrunError:
        raise
    except Exception as e:  # pyarrow raises OSError or ArrowInvalid with the server's answer
        raise GridrunError(f"{field}: cannot list {where} ({one_line(e)})") from None


def location(where: str | Path) -> str:
    """``where`` as a location string: a URI unchanged but for a trailing ``/``; a local path absolute."""
    if is_uri(where):
        return str(where).rstrip("/")
    text = str(where)
    if text.lower().startswith("file://"):
        text = urlparse(text).path
    return str(Path(text).expanduser().resolve())


def join(where: str | Path, *parts: str) -> str:
    """A location inside ``where``."""
    return posixpath.join(str(where), *parts) if is_uri(where) else str(Path(where, *parts))


@functools.lru_cache(maxsize=16)
def _uri_fs(base: str) -> Any:
    """One filesystem per bucket (building an S3 one resolves the bucket's region: a request)."""
    from pyarrow.fs import FileSystem

    try:
        return FileSystem.from_uri(base)[0]
    except Exception as e:
        raise GridrunError(f"storage {base}: {one_line(e)}") from None


def forget_filesystems() -> None:
    """Drop the cached filesystems (they keep the endpoint and credentials the environment had)."""
    _uri_fs.cache_clear()


def _fs(where: str | Path) -> tuple[Any, str]:
    """(pyarrow filesystem, path on it) of a location."""
    from pyarrow.fs import LocalFileSystem

    if not is_uri(where):
        return LocalFileSystem(), location(where)
    parsed = urlparse(str(where))
    return _uri_fs(f"{parsed.scheme}://{parsed.netloc}"), (parsed.netloc + parsed.path).rstrip("/")


def one_line(e: BaseException) -> str:
    """An error's first line (pyarrow's carry the server's answer, then a request id)."""
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _type(where: str | Path) -> Any:
    fs, path = _fs(where)
    return fs.get_file_info(path).type


def exists(where: str | Path) -> bool:
    """Whether a file is there (a folder, on object stores, exists once something is in it)."""
    from pyarrow.fs import FileType

    return bool(_type(where) != FileType.NotFound)


def is_file(where: str | Path) -> bool:
    from pyarrow.fs import FileType

    return bool(_type(where) == FileType.File)


def is_dir(where: str | Path) -> bool:
    from pyarrow.fs import FileType

    return bool(_type(where) == FileType.Directory)


def read_bytes(where: str | Path) -> bytes:
    if not is_uri(where):
        return Path(location(where)).read_bytes()
    fs, path = _fs(where)
    with fs.open_input_stream(path) as f:
        return bytes(f.read())


def read_text(where: str | Path) -> str:
    return read_bytes(where).decode()


def write_bytes(where: str | Path, data: bytes) -> None:
    """Write a whole file: atomically on a local disk (a half-written file never replaces a whole one), as one
    object on an object store (an upload is visible only once complete)."""
    if not is_uri(where):
        local = Path(location(where))
        tmp = local.with_name(local.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, local)
        return
    fs, path = _fs(where)
    with fs.open_output_stream(path) as f:
        f.write(data)


def write_text(where: str | Path, text: str) -> None:
    write_bytes(where, text.encode())


def remove(where: str | Path) -> None:
    """Delete a file; a missing one is no error."""
    fs, path = _fs(where)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)


def makedirs(where: str | Path) -> None:
    """Create a local folder (object stores have no folders: nothing to do)."""
    if not is_uri(where):
        Path(location(where)).mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def local_dir(where: str | Path, upload: bool = False) -> Iterator[Path]:
    """A local folder with ``where``'s content: the folder itself when it is local; else a temporary download
    (empty when nothing is there yet), removed afterwards, and with ``upload`` copied back to ``where`` first."""
    if not is_uri(where):
        folder = Path(location(where))
        if upload:
            folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    from pyarrow.fs import LocalFileSystem, copy_files

    fs, path = _fs(where)
    tmp = Path(tempfile.mkdtemp(prefix="gridrun-"))
    try:
        if exists(where):
            copy_files(path, str(tmp), source_filesystem=fs, destination_filesystem=LocalFileSystem())
        yield tmp
        if upload and any(tmp.iterdir()):
            copy_files(str(tmp), path, source_filesystem=LocalFileSystem(), destination_filesystem=fs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def checkpoint_location(experiment: str | Path, checkpoint: Any) -> str:
    """A Tune checkpoint (a path on its storage filesystem, without a scheme) as a location string: its path
    under the experiment's location, so a checkpoint on s3:// reads back as ``s3://...``."""
    if not is_uri(experiment):
        return str(checkpoint.path)
    _, root = _fs(experiment)
    rel = posixpath.relpath(str(checkpoint.path), root)
    if rel.startswith(".."):  # not under this experiment: name it by its filesystem's own scheme
        return f"{checkpoint.filesystem.type_name}://{checkpoint.path}"
    return join(experiment, rel)
