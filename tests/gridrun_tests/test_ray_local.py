"""A local Ray (every test, the demo, CI, a laptop run) lives on 127.0.0.1 only: the addresses it reports and the
sockets it listens on, so a laptop run is not reachable from its network and tests never send traffic to the
machine's interface address."""

from __future__ import annotations

import ipaddress

import pytest

from tests.conftest import FORGETTING


def _listening(pids: set[int]) -> list[tuple[str, int, str]]:
    import psutil

    out = []
    for c in psutil.net_connections(kind="inet"):
        if c.pid in pids and c.status == psutil.CONN_LISTEN:
            out.append((c.laddr.ip, c.laddr.port, psutil.Process(c.pid).name()))
    return out


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return (mapped or addr).is_loopback


@pytest.mark.slow
def test_local_ray_reports_and_listens_on_loopback_only() -> None:
    import psutil
    import ray

    from gridrun.launch import start_ray
    from gridrun.spec import load_spec

    spec = load_spec(FORGETTING)
    assert spec.resources.address is None
    start_ray(spec)
    try:
        nodes = ray.nodes()
        addresses = [n["NodeManagerAddress"] for n in nodes]
        gcs_host = ray.get_runtime_context().gcs_address.rsplit(":", 1)[0]
        ray.get(ray.remote(lambda: 1).remote())  # a worker process is up too
        children = {p.pid for p in psutil.Process().children(recursive=True)}
        sockets = _listening(children)
    finally:
        ray.shutdown()
    assert addresses and all(a == "127.0.0.1" for a in addresses), addresses
    assert gcs_host == "127.0.0.1"
    names = {name for _, _, name in sockets}
    assert {"gcs_server", "raylet"} <= names, sockets  # the check saw Ray's own servers
    exposed = [s for s in sockets if not _loopback(s[0])]
    assert not exposed, f"Ray listens beyond loopback: {exposed}"
    # the switch is put back: a later ray.init(address=...) in this process joins clusters as usual
    from ray._private import ray_constants

    assert ray_constants.ENABLE_RAY_CLUSTER
