"""A trial's console: bitsandbytes' kernel notice is silenced where it is born, its other warnings are not."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


def _stderr(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stderr


def test_the_bitsandbytes_kernel_notice_is_dropped_and_nothing_else() -> None:
    if NOTICE not in _stderr("import bitsandbytes"):  # a CPU without AVX512-BF16 never prints it
        pytest.skip("bitsandbytes prints no kernel notice on this CPU: nothing to silence")
    other = "import logging; logging.getLogger('bitsandbytes.backends.cpu.ops').warning('a real warning')"
    err = _stderr(f"import trainables, bitsandbytes; {other}")
    assert NOTICE not in err
    assert "a real warning" in err  # only that one message is filtered


def test_the_kernels_offline_note_is_dropped_with_the_hub_off(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    note = "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'"
    if note not in _stderr("import bitsandbytes"):
        pytest.skip("bitsandbytes asks the kernels package for no hub kernel on this CPU")
    err = _stderr("import trainables, bitsandbytes")
    assert note not in err and NOTICE not in err
