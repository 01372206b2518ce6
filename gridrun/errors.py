"""User-facing errors: one line, exit code 2, nothing started."""

from __future__ import annotations


class GridrunError(Exception):
    """A problem with the user's input or environment, reported as one line (exit code 2).

    Raised before anything is started (no Ray, no MLflow run) whenever possible, so a bad spec or an
    unreachable service never leaves half-recorded state behind.
    """

    exit_code = 2

    def __str__(self) -> str:
        # Keep it on one line whatever the cause carried.
        return " ".join(super().__str__().split())


class SpecError(GridrunError):
    """The experiment spec (YAML + overrides) is invalid."""
