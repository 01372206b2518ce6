"""An S3-compatible server on 127.0.0.1 for tests (moto's server mode, a test dependency only), and the
environment that points every AWS client at it: pyarrow's S3 (gridrun and Ray Tune), boto3 (the tests' own
look at the bucket), Ray's workers (they inherit the environment of the process that starts them)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

BUCKET = "gridrun"


@contextlib.contextmanager
def s3_server(bucket: str = BUCKET) -> Iterator[dict[str, str]]:
    """Serve S3 on a free port of 127.0.0.1 with ``bucket`` created; yields the ``AWS_*`` variables to set."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        client(env).create_bucket(Bucket=bucket)
        yield env
    finally:
        server.stop()


def client(env: dict[str, str]):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )


def keys(env: dict[str, str], bucket: str = BUCKET, prefix: str = "") -> list[str]:
    """Every file's key in ``bucket`` under ``prefix`` (not the empty ``folder/`` markers pyarrow leaves where it
    deleted a folder's last file, so that the folder still lists)."""
    pages = client(env).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/"))


@contextlib.contextmanager
def pointed_at(env: dict[str, str]) -> Iterator[None]:
    """This process's AWS clients (pyarrow included) use ``env`` while inside; gridrun's cached filesystems are
    dropped on the way in and out (each test's server has a port of its own)."""
    from gridrun import storage

    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    storage.forget_filesystems()
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        storage.forget_filesystems()
