"""Run untrusted candidate code against test cases, isolated from the machine (``run_cases``).

The caller side (``_run``) builds a bubblewrap sandbox (user, PID, network and mount namespaces, an unprivileged
user, a size-limited working tmpfs, the seccomp filter of ``_seccomp``) and has it exec a fresh interpreter
running the runner (``_runner``), which sets the resource limits and an audit hook before any candidate code runs.
"""

from evaluators.sandbox._run import MAX_SOURCE_CHARS, Limits, SandboxResult, isolation, isolation_problem, run_cases

__all__ = ["MAX_SOURCE_CHARS", "Limits", "SandboxResult", "isolation", "isolation_problem", "run_cases"]
