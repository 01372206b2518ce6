"""A trial's console: bitsandbytes' kernel notice is silenced where it is born, its other warnings are not."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


def _stderr(code: str) -> str:
    # the hub off, as the tests run (conftest): the kernels package's note below only shows then
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stderr


@pytest.fixture(scope="module")
def bare() -> str:
    """What importing bitsandbytes alone prints (each a fresh interpreter importing torch: seconds each, so both
    tests read the same two runs)."""
    return _stderr("import bitsandbytes")


@pytest.fixture(scope="module")
def quieted() -> str:
    """What it prints once the trainables package is imported first (as in a trial), and a real warning after."""
    other = "import logging; logging.getLogger('bitsandbytes.backends.cpu.ops').warning('a real warning')"
    return _stderr(f"import trainables, bitsandbytes; {other}")


def test_the_bitsandbytes_kernel_notice_is_dropped_and_nothing_else(bare: str, quieted: str) -> None:
    if NOTICE not in bare:  # a CPU without AVX512-BF16 never prints it
        pytest.skip("bitsandbytes prints no kernel notice on this CPU: nothing to silence")
    assert NOTICE not in quieted
    assert "a real warning" in quieted  # only that one message is filtered


def test_the_kernels_offline_note_is_dropped_with_the_hub_off(bare: str, quieted: str) -> None:
    note = "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'"
    if note not in bare:
        pytest.skip("bitsandbytes asks the kernels package for no hub kernel on this CPU")
    assert note not in quieted and NOTICE not in quieted
