"""Run untrusted candidate code against test cases, isolated from the machine (``run_cases``).

The caller side (``_run``) starts the runner (``_runner``) as a fresh interpreter and reads its results; the runner
applies the isolation layers before any candidate code runs.
"""

from evaluators.sandbox._run import Limits, SandboxResult, isolation, run_cases

__all__ = ["Limits", "SandboxResult", "isolation", "run_cases"]
