"""How ``_cgroup`` finds where to make a run's cgroup, on both cgroup versions, from /proc's own words.

The machine the tests run on has one layout (v1 memory, an empty v2 hierarchy beside it); these tests lay out
the other ones as folders, as the kernel shows them, and check which parent is chosen and what is written. The
kernel's side (the bound holding, the OOM kill) is checked for real in test_sandbox_memory_and_locks.py.
"""

from __future__ import annotations

from pathlib import Path

from evaluators.sandbox import _cgroup


def _cgroup_dir(path: Path, controllers: str, enabled: str = "") -> Path:
    path.mkdir(parents=True)
    (path / "cgroup.controllers").write_text(controllers + "\n")
    (path / "cgroup.subtree_control").write_text(enabled + "\n")
    return path


def test_v2_parent_is_this_process_s_cgroup_with_memory_enabled_for_children(tmp_path: Path) -> None:
    own = _cgroup_dir(tmp_path / "unified" / "user.slice" / "me", "cpu memory pids", "memory")
    mounts = [("cgroup2", str(tmp_path / "unified"), "/", {"rw"})]
    assert _cgroup._v2_parent({"": "/user.slice/me"}, mounts) == str(own)
    # pids was available but not enabled: it was asked for (the kernel would then list it)
    assert (own / "cgroup.subtree_control").read_text() == "+pids"


def test_v2_without_the_memory_controller_is_no_parent(tmp_path: Path) -> None:
    _cgroup_dir(tmp_path / "unified", "")  # a hybrid host: memory is bound to v1
    assert _cgroup._v2_parent({"": "/"}, [("cgroup2", str(tmp_path / "unified"), "/", set())]) is None


def test_a_mount_of_a_subtree_is_followed(tmp_path: Path) -> None:
    """A container sees its own cgroup mounted at /sys/fs/cgroup (mountinfo root /docker/abc): /proc/self/cgroup
    paths under that root are found below the mount point."""
    own = _cgroup_dir(tmp_path / "cg" / "inner", "memory", "memory")
    mounts = [("cgroup2", str(tmp_path / "cg"), "/docker/abc", set())]
    assert _cgroup._v2_parent({"": "/docker/abc/inner"}, mounts) == str(own)
    assert _cgroup._v2_parent({"": "/elsewhere"}, mounts) is None


def test_v1_parent_per_controller(tmp_path: Path) -> None:
    memory = tmp_path / "memory" / "job"
    memory.mkdir(parents=True)
    mounts = [
        ("cgroup", str(tmp_path / "cpu"), "/", {"rw", "cpu", "cpuacct"}),
        ("cgroup", str(tmp_path / "memory"), "/", {"rw", "memory"}),
    ]
    own = {"memory": "/job", "cpu": "/", "cpuacct": "/", "pids": "/"}
    assert _cgroup._v1_parent("memory", own, mounts) == str(memory)
    assert _cgroup._v1_parent("pids", own, mounts) is None  # no pids hierarchy mounted


def test_make_writes_the_settings_and_gives_up_when_a_required_one_does_not_take(tmp_path: Path) -> None:
    made = _cgroup._make(str(tmp_path), {"memory.max": 128 << 20, "memory.swap.max": 0}, ("memory.max",))
    assert made is not None and Path(made).parent == tmp_path
    assert (Path(made) / "memory.max").read_text() == str(128 << 20)
    assert (Path(made) / "memory.swap.max").read_text() == "0"
    refused = _cgroup._make(str(tmp_path), {"no/such/file": 1}, ("no/such/file",))
    assert refused is None
    assert [p.name for p in tmp_path.iterdir()] == [Path(made).name]  # the failed one was removed


def test_mountinfo_escapes_are_undone() -> None:
    assert _cgroup._unescape("/sys/fs/cgroup/a\\040b\\134c") == "/sys/fs/cgroup/a b\\c"
