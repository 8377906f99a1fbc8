"""Long-running operations: explicit state machines that advance on poll and with time.

Backends create them (never routes): a backend knows when its work is done and hands `Operations`
a `resolve()` that says so. Every API polls the one shared store by the operation's full name.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from emulator.gcp.errors import GoogleApiError, not_found
from emulator.gcp.protojson import JsonMessage, any_json

Outcome: TypeAlias = tuple[JsonMessage | None, GoogleApiError | None]
Resolver: TypeAlias = Callable[[], Outcome | None]
MetadataSource: TypeAlias = JsonMessage | Callable[[], JsonMessage] | None


@dataclass
class _Operation:
    name: str
    metadata: MetadataSource
    resolve: Resolver | None
    polls_left: int
    done_at: float
    done: bool = False
    response: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class Operations:
    """Every API's long-running operations, by full name.

    An operation is done once it has been polled `polls_until_done` times AND `done_at` has
    passed AND `resolve()` returns an outcome (`None` keeps it pending, e.g. a build still running).
    `resolve` returns exactly one of (response, error).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._ops: dict[str, _Operation] = {}
        self._clock = clock

    def create(
        self,
        name: str,
        metadata: MetadataSource,
        *,
        resolve: Resolver,
        polls_until_done: int = 0,
        done_at: float | None = None,
    ) -> dict[str, Any]:
        """Register an operation and return its first JSON (already done when nothing holds it)."""
        if name in self._ops:
            raise ValueError(f"operation {name} already exists")
        op = _Operation(
            name=name,
            metadata=metadata,
            resolve=resolve,
            polls_left=max(0, polls_until_done),
            done_at=done_at if done_at is not None else 0.0,
        )
        self._ops[name] = op
        self._advance(op)
        return self._json(op)

    def create_done(
        self, name: str, metadata: MetadataSource, response: JsonMessage
    ) -> dict[str, Any]:
        """An operation that is finished from the start (e.g. `operations/noop.DONE_OPERATION`)."""
        op = _Operation(name=name, metadata=metadata, resolve=None, polls_left=0, done_at=0.0)
        op.done, op.response = True, any_json(response)
        self._ops[name] = op
        return self._json(op)

    def get_json(self, name: str) -> dict[str, Any]:
        """One poll: advances the state machine and returns the operation's JSON."""
        op = self._ops.get(name)
        if op is None:
            raise not_found(f"Operation {name} not found.")
        if op.polls_left > 0:
            op.polls_left -= 1
        else:
            self._advance(op)
        return self._json(op)

    def is_done(self, name: str) -> bool:
        return name in self._ops and self._ops[name].done

    def names(self) -> list[str]:
        return sorted(self._ops)

    def _advance(self, op: _Operation) -> None:
        if op.done or op.polls_left > 0 or self._clock() < op.done_at or op.resolve is None:
            return
        outcome = op.resolve()
        if outcome is None:
            return
        response, error = outcome
        if (response is None) == (error is None):
            raise ValueError(f"operation {op.name}: resolve must give a response or an error")
        op.done = True
        op.response = any_json(response) if response is not None else None
        op.error = error.to_status_json() if error is not None else None

    def _json(self, op: _Operation) -> dict[str, Any]:
        out: dict[str, Any] = {"name": op.name}
        metadata = op.metadata() if callable(op.metadata) else op.metadata
        if metadata is not None:
            out["metadata"] = any_json(metadata)
        if op.done:
            out["done"] = True
            if op.error is not None:
                out["error"] = op.error
            else:
                out["response"] = op.response
        return out

    def snapshot(self) -> list[dict[str, Any]]:
        """Finished operations (pending ones cannot outlive the process that runs them)."""
        return [self._json(op) for op in self._ops.values() if op.done]

    def restore(self, ops: list[dict[str, Any]]) -> None:
        for data in ops:
            op = _Operation(
                name=data["name"],
                metadata=data.get("metadata"),
                resolve=None,
                polls_left=0,
                done_at=0.0,
                done=True,
                response=data.get("response"),
                error=data.get("error"),
            )
            self._ops[op.name] = op


def located_operation_name(project: str, location: str) -> str:
    """`projects/P/locations/L/operations/<uuid>`, as Cloud Run and Artifact Registry name them."""
    return f"projects/{project}/locations/{location}/operations/{uuid.uuid4()}"
