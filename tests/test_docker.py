"""The container: its install lines resolve for the image's platform, its pins agree with pyproject.toml, it runs
as a non-root user with the sandbox's packages, and the manifests' storage and tracking URIs pass validate.

No image can be built here (no container engine or base-image registry); resolving the exact install lines with
``pip install --dry-run`` for the image's Python and platform is the closest check that the build would succeed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
PYPI = "https://pypi.org/simple"
# python:3.11-slim-bookworm has glibc 2.36: it takes every manylinux wheel up to that (pip's --platform takes
# each tag literally, so all of them are listed, with the legacy aliases of 2.17, 2.12 and 2.5)
IMAGE_GLIBC = 36
IMAGE_PLATFORMS = [f"manylinux_2_{m}_x86_64" for m in range(IMAGE_GLIBC, 4, -1)] + [
    f"manylinux{alias}_x86_64" for alias in ("2014", "2010", "1")
]


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(ln for ln in DOCKERFILE.read_text().splitlines() if not ln.startswith("#")))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in text.splitlines() if ln.strip()]


def _base_python() -> str:
    base = next(args for kw, args in _instructions() if kw == "FROM")
    m = re.fullmatch(r"python:(\d+\.\d+)[\w.-]*", base.strip())
    assert m, f"base image {base} is not an official python:<version> image (its Python must be known)"
    return m.group(1)


def _pip_installs() -> list[list[str]]:
    """The arguments of every `pip install` in a RUN line (a RUN may chain several with &&)."""
    out = []
    for kw, args in _instructions():
        if kw != "RUN":
            continue
        for cmd in re.split(r"&&|\|\||;", args):
            words = shlex.split(cmd)
            if words[:2] == ["pip", "install"]:
                out.append(words[2:])
    return out


def _copied(dest: str) -> Path:
    """The repository file a COPY puts at ``dest`` in the image."""
    for kw, args in _instructions():
        if kw == "COPY":
            src, to = args.split()
            if to == dest:
                return ROOT / src
    raise AssertionError(f"no COPY in the Dockerfile puts a file at {dest}")


def _requirements() -> list[tuple[list[str], Path]]:
    """(options, repository requirements file) for each `pip install -r` line."""
    out = []
    for words in _pip_installs():
        if "-r" in words:
            i = words.index("-r")
            out.append((words[:i] + words[i + 2 :], _copied(words[i + 1])))
    return out


def _pins() -> dict[str, Requirement]:
    [(_, req_file)] = _requirements()
    reqs = [Requirement(ln) for ln in req_file.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return {canonicalize_name(r.name): r for r in reqs}


def test_dependencies_come_from_one_pinned_file_that_satisfies_pyproject() -> None:
    installs = _pip_installs()
    assert len(_requirements()) == 1, "one requirements file holds every dependency the image installs"
    others = [w for w in installs if "-r" not in w]
    assert others == [["--no-deps", "."]], f"gridrun itself must add no dependency of its own: {others}"
    pins = _pins()
    for r in pins.values():
        assert len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==", f"{r} is not pinned"
    assert "index-url" not in DOCKERFILE.read_text(), "torch comes from the package index's default wheels"
    assert pins["torch"].specifier == Requirement("torch==2.13.0").specifier
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for line in project:
        want = Requirement(line)
        name = canonicalize_name(want.name)
        assert name in pins, f"pyproject.toml needs {want.name}; docker/requirements.txt does not install it"
        version = next(iter(pins[name].specifier)).version
        assert want.specifier.contains(version), f"docker/requirements.txt pins {name} {version}, outside {want}"
        assert want.extras <= pins[name].extras, f"{name}: pyproject asks for extras {want.extras}"


def test_image_runs_as_non_root_with_the_sandbox_and_a_loopback_dashboard() -> None:
    instructions = _instructions()
    users = [args.strip() for kw, args in instructions if kw == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run gridrun as a non-root user"
    apt = " ".join(args for kw, args in instructions if kw == "RUN" and "apt-get install" in args)
    assert {"bubblewrap", "libseccomp2"} <= set(apt.split()), "code_exec's sandbox needs bubblewrap + libseccomp2"
    cmd = json.loads(next(args for kw, args in instructions if kw == "CMD"))
    assert "--dashboard-host=127.0.0.1" in cmd
    assert _base_python() == f"{sys.version_info.major}.{sys.version_info.minor}", (
        "the image's Python must be the one the tests run on (the pins are tested there)"
    )
    head = next(d for d in _manifests() if d["kind"] == "RayCluster")["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1"


def _index_url() -> str:
    """The index pip is configured with here (the image's pip uses PyPI, or the same mirror)."""
    got = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.index-url"], capture_output=True, text=True
    )
    return got.stdout.strip() if got.returncode == 0 and got.stdout.strip() else PYPI


def _reachable(url: str) -> bool:
    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname or "", u.port or (443 if u.scheme == "https" else 80)), timeout=5):
            return True
    except OSError:
        return False


@pytest.mark.slow  # a minute or two: pip fetches the metadata of ~150 packages from the index
def test_image_install_lines_resolve_for_the_image_platform(tmp_path: Path) -> None:
    index = _index_url()
    if not _reachable(index):
        pytest.skip(f"package index {index} unreachable")
    [(options, req_file)] = _requirements()
    # Only what the image sees: this machine's pip config (local wheel folders, constraints) is left out.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in ("PIP_CERT", "PIP_DEFAULT_TIMEOUT")}
    env["PIP_CONFIG_FILE"] = os.devnull
    cmd = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", "-",
        "--index-url", index, "--python-version", _base_python(),
        *(a for p in IMAGE_PLATFORMS for a in ("--platform", p)),
        "--implementation", "cp", "--only-binary=:all:", *options, "-r", str(req_file),
    ]  # fmt: skip
    got = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert got.returncode == 0, f"the image's `pip install -r` does not resolve:\n{got.stderr[-3000:]}"
    report = json.loads(got.stdout)
    installed = {canonicalize_name(i["metadata"]["name"]): i for i in report["install"]}
    for name, pin in _pins().items():
        assert name in installed, f"{name} missing from the resolution"
        assert installed[name]["metadata"]["version"] == next(iter(pin.specifier)).version, name
    torch = installed["torch"]
    assert "+" not in torch["metadata"]["version"], "a local torch build (+cpu/+cuXXX), not the index's default"
    assert urlparse(torch["download_info"]["url"]).path.endswith(".whl")
    cuda = sorted(n for n in installed if n.startswith("nvidia-"))
    assert any("cudnn" in n for n in cuda) and any("cublas" in n for n in cuda), f"torch without CUDA: {cuda}"
    assert report["environment"]["python_version"].startswith(_base_python())


def _manifests() -> list[dict]:
    return [d for f in sorted((ROOT / "docker").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())]


def _launch_example() -> list[str]:
    """The `gridrun launch` command raycluster.yaml's header gives, as argv."""
    head = [ln.lstrip("# ").rstrip() for ln in (ROOT / "docker" / "raycluster.yaml").read_text().splitlines()]
    start = next(i for i, ln in enumerate(head) if ln.startswith("gridrun launch "))
    joined = ""
    for ln in head[start:]:
        joined += ln.rstrip("\\") + " "
        if not ln.endswith("\\"):
            break
    return shlex.split(joined)[2:]


def test_manifests_storage_and_tracking_uris_pass_validate() -> None:
    from gridrun.spec import load_spec
    from gridrun.tracking_uri import _check_tracking_scheme

    argv = _launch_example()
    spec_path = ROOT / argv[0]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    tracking = argv[argv.index("--tracking-uri") + 1]
    spec = load_spec(spec_path, [*sets, f"tracking.uri={tracking}"])
    _check_tracking_scheme(spec.tracking.uri)
    # the storage every pod shares: a PVC mounted at that path in the head and in every worker group
    docs = _manifests()
    cluster = next(d for d in docs if d["kind"] == "RayCluster")["spec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        pod = group["template"]["spec"]
        mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c["volumeMounts"]}
        assert spec.tracking.storage in mounts, f"{spec.tracking.storage} is not mounted in {group}"
        volume = next(v for v in pod["volumes"] if v["name"] == mounts[spec.tracking.storage])
        claim = volume["persistentVolumeClaim"]["claimName"]
        pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == claim)
        assert "ReadWriteMany" in pvc["spec"]["accessModes"], "trials on several nodes write one storage"
    # the tracking URI names the MLflow Service, which answers to that Host name
    host, port = urlparse(tracking).hostname, urlparse(tracking).port
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == host)
    assert port in {p["port"] for p in service["spec"]["ports"]}
    server = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")
    command = server["spec"]["template"]["spec"]["containers"][0]["command"]
    assert host in command[command.index("--allowed-hosts") + 1].split(",")
