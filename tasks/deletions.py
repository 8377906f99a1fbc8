"""What a delete did, as the typed record every ``delete_*`` and ``sweep_*`` task returns.

One rule, written once: a delete succeeds when the resource is gone afterwards — NotFound means it
was already gone, and an API that is not enabled cannot hold anything. Teardown can therefore
always run again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TypeVar

from google.api_core import exceptions as gexc

from tasks.errors import AccessDeniedError, google_errors

T = TypeVar("T")


class Outcome(StrEnum):
    DELETED = "deleted"
    ABSENT = "already gone"
    API_DISABLED = "already gone (API not enabled)"
    KEPT = "kept"  # a sweep looked at it and left it (``why`` says why)


@dataclass(frozen=True)
class Deletion:
    """One resource teardown looked at: its kind, its full name and what became of it."""

    kind: str  # "service", "repository (with its images)", "staging object", "service account"
    name: str
    outcome: Outcome
    why: str = ""  # sweeps: why it was deleted or kept

    @property
    def deleted(self) -> bool:
        return self.outcome is Outcome.DELETED

    def row(self) -> dict[str, str]:
        """The teardown table's row: kind, name, result (and why, for a sweep)."""
        row = {"kind": self.kind, "name": self.name, "result": self.outcome.value}
        if self.why:
            row["why"] = self.why
        return row

    def because(self, why: str) -> Deletion:
        return replace(self, why=why)


def delete_resource(kind: str, name: str, delete: Callable[[], object]) -> Deletion:
    """Run ``delete`` (one Google call, waited) and record what became of ``name``."""
    try:
        with google_errors(f"delete {kind} {name}"):
            delete()
    except gexc.NotFound:
        return Deletion(kind, name, Outcome.ABSENT)
    except AccessDeniedError as exc:
        if exc.api is None:
            raise
        return Deletion(kind, name, Outcome.API_DISABLED)
    return Deletion(kind, name, Outcome.DELETED)


def list_or_empty(list_resources: Callable[[], list[T]]) -> list[T]:
    """A listing for a sweep; a missing parent or an API not enabled holds nothing."""
    try:
        return list_resources()
    except gexc.NotFound:
        return []
    except AccessDeniedError as exc:
        if exc.api is None:
            raise
        return []
