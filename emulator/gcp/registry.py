"""The registry: the emulator's root object holding config, operations, the token signer and
one backend per emulated API (moto's backend registry, keyed by API name).

It knows no API module: the app wires the backend factories in (`app.backend_factories`), and
API code finds a backend by its class (`emulator.get(ServiceUsageBackend)`), so there is no
import loop through here. `reset()` rebuilds every backend; state persists as one JSON file.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar

from emulator.gcp.config import EmulatorConfig
from emulator.gcp.errors import unimplemented
from emulator.gcp.files import write_json_atomic
from emulator.gcp.operations import MetadataSource, Operations, Resolver

if TYPE_CHECKING:
    from emulator.gcp.auth.tokens import TokenSigner


class Backend(Protocol):
    """One emulated API's state. Knows nothing of HTTP."""

    def snapshot(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


BackendFactory: TypeAlias = Callable[["Emulator"], Backend]
B = TypeVar("B")


class Emulator:
    """The root object: config, operations, token signer and one backend per API.

    Backends are built from `factories` (name -> callable(emulator)); `reset()` rebuilds them.
    Handlers run on the event loop while holding `lock`; background threads (builds, service
    backends) take `lock` before touching state.
    """

    STATE_FILE = "state.json"

    def __init__(
        self,
        config: EmulatorConfig,
        signer: TokenSigner,
        factories: dict[str, BackendFactory],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.signer = signer
        self._wall_clock = clock
        self.lock = threading.RLock()
        self._factories = dict(factories)
        self.operations = Operations(self.clock)
        self.backends: dict[str, Backend] = {}
        self._closed = False
        self._build_backends()

    def clock(self) -> float:
        """Seconds since the epoch as the emulated APIs see them: the wall clock plus the
        `clock_offset_seconds` setting (read live, so a test can move time forward)."""
        return self._wall_clock() + self.config.clock_offset_seconds

    def _build_backends(self) -> None:
        for name, factory in self._factories.items():
            self.backends[name] = factory(self)

    def get(self, kind: type[B]) -> B:
        """The backend of one API, typed (`emulator.get(ServiceUsageBackend)`); looked up per
        call because `reset()` rebuilds the backends."""
        for backend in self.backends.values():
            if isinstance(backend, kind):
                return backend
        raise unimplemented(f"the emulator has no {kind.__name__}")

    def backend(self, name: str) -> Any:
        """A backend by its registered name (for tests and tools; API code uses `get`)."""
        try:
            return self.backends[name]
        except KeyError:
            raise unimplemented(f"the emulator has no {name} backend") from None

    # Untyped shortcuts for tests and tools (API code uses `get`, which needs no import here).
    service_usage = property(lambda self: self.backend("service_usage"))
    artifact_registry = property(lambda self: self.backend("artifact_registry"))
    iam = property(lambda self: self.backend("iam"))
    cloud_build = property(lambda self: self.backend("cloud_build"))
    cloud_run = property(lambda self: self.backend("cloud_run"))

    def start_operation(
        self, name: str, metadata: MetadataSource, resolve: Resolver
    ) -> dict[str, Any]:
        """A new long-running operation held for `config.operation_polls` polls; its first JSON."""
        return self.operations.create(
            name, metadata, resolve=resolve, polls_until_done=self.config.operation_polls
        )

    def reset(self) -> None:
        """Back to an empty emulator (config and keys kept)."""
        with self.lock:
            self.close_backends()
            self.operations = Operations(self.clock)
            self._build_backends()
            self.save()

    def close_backends(self) -> None:
        for backend in self.backends.values():
            backend.close()
        self.backends = {}

    def close(self) -> None:
        """Save and stop every backend (idempotent)."""
        with self.lock:
            if self._closed:
                return
            self._closed = True
            self.save()
            self.close_backends()

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state (no keys or tokens) for GET /_emulator/state and persistence."""
        with self.lock:
            return {
                "config": json.loads(self.config.model_dump_json()),
                "backends": {name: b.snapshot() for name, b in self.backends.items()},
                "operations": self.operations.snapshot(),
            }

    def save(self) -> None:
        if self.config.state_dir is None:
            return
        state = self.snapshot()
        del state["config"]
        write_json_atomic(self.config.state_dir / self.STATE_FILE, state)

    def load(self) -> None:
        if self.config.state_dir is None:
            return
        path = self.config.state_dir / self.STATE_FILE
        if not path.exists():
            return
        state = json.loads(path.read_text())
        with self.lock:
            for name, data in state.get("backends", {}).items():
                if name in self.backends:
                    self.backends[name].restore(data)
            self.operations.restore(state.get("operations", []))
