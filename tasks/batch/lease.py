"""One run per output at a time: a lease object, ``<output>/lease.json``.

A run creates the lease with ``if_generation_match=0`` (exclusive create), so of two runs
started at once exactly one gets it; the other refuses with ``LeaseHeldError`` naming the holder
(flow run id, host, since when) before it sends anything. The holder renews the lease every third
of its duration with a generation-matched write, and deletes it (generation-matched) when it
ends. A killed holder stops renewing: once ``expires_at`` is past, the next run takes the lease
over (again generation-matched, so two runs taking over at once cannot both win);
``takeover=True`` takes it at once. Without the lease the output stays correct (create-only
shards and the reconciliation rule in ``tasks.batch.outputs``); the lease saves the GPU time of
sending the same prompts twice.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
from typing import Any

from tasks.batch.params import BatchSettings
from tasks.batch.records import check_schema_version
from tasks.batch.stores import ObjectStore
from tasks.errors import LeaseHeldError, ObjectChangedError, ObjectExistsError

LEASE = "lease.json"
LEASE_SCHEMA_VERSION = 1

logger = logging.getLogger(__name__)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class OutputLease:
    """The lease on one output; ``acquire()``, then ``release()`` when the run ends."""

    def __init__(
        self, store: ObjectStore, *, run: str, flow_run_id: str | None, params: BatchSettings
    ) -> None:
        self.store, self.seconds, self.takeover = store, params.lease_seconds, params.takeover
        self.holder: dict[str, Any] = {
            "schema_version": LEASE_SCHEMA_VERSION,
            "run": run,
            "flow_run_id": flow_run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": _now().isoformat(),
        }
        self.generation = 0
        self.lost: str | None = None  # why the lease was lost while the run lived
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _body(self) -> bytes:
        expires = _now() + dt.timedelta(seconds=self.seconds)
        return json.dumps({**self.holder, "expires_at": expires.isoformat()}).encode()

    def acquire(self) -> None:
        """Take the lease, or raise ``LeaseHeldError`` naming the live holder."""
        try:
            self.generation = self.store.write_if(LEASE, self._body(), 0)
        except ObjectExistsError:
            current = self.store.read_versioned(LEASE)
            if current is None:  # released in between: try once more
                self.generation = self.store.write_if(LEASE, self._body(), 0)
            else:
                held = _parse(current[0])
                # A lease of a newer schema is not taken over: its expiry may mean something else.
                check_schema_version(held, self.store.uri_of(LEASE), frozenset({1}))
                expired = _expires(held) <= _now()
                if not (expired or self.takeover):
                    raise LeaseHeldError(_describe(held, self.store.uri_of(LEASE))) from None
                try:
                    self.generation = self.store.write_if(LEASE, self._body(), current[1])
                except ObjectChangedError:
                    raise LeaseHeldError(
                        "another run took the lease over at the same time: "
                        + self.store.uri_of(LEASE)
                    ) from None
                why = "it expired" if expired else "takeover=True"
                logger.warning("took the output lease over (%s): %s", why, _describe(held, ""))
        self._renewer = threading.Thread(target=self._renew, name="lease-renewer", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.generation = self.store.write_if(LEASE, self._body(), self.generation)
            except ObjectChangedError:
                self.lost = "another run took the output lease over"
                logger.error("%s: %s", self.lost, self.store.uri_of(LEASE))
                return
            except Exception as exc:  # a transient storage error: the next renewal may work
                logger.warning("could not renew the output lease: %s", exc)

    def release(self) -> None:
        """Stop renewing and delete the lease (only if it is still ours)."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if self.lost is None and self.generation:
            try:
                self.store.delete(LEASE, self.generation)
            except Exception as exc:  # changed hands (precondition failed), or storage trouble
                logger.warning("left the output lease alone: %s", exc)


def check_held_by(store: ObjectStore, *, run: str, flow_run_id: str | None) -> None:
    """A child of a run with ``workers`` (``tasks.batch.workers``) runs under its parent's lease:
    it never takes the lease, it checks that the parent still holds it (same run and flow run,
    not expired) before it starts and before each shard it writes; otherwise ``LeaseHeldError``."""
    current = store.read_versioned(LEASE)
    uri = store.uri_of(LEASE)
    if current is None:
        raise LeaseHeldError(f"the output's lease is gone: parent run {run} no longer holds {uri}")
    held = _parse(current[0])
    if held.get("run") != run or held.get("flow_run_id") != flow_run_id:
        raise LeaseHeldError(f"parent run {run} no longer holds the output: {_describe(held, uri)}")
    if _expires(held) <= _now():
        raise LeaseHeldError(f"the lease of parent run {run} expired: {uri}")


def _parse(data: bytes) -> dict[str, Any]:
    try:
        held = json.loads(data)
    except ValueError:
        held = None
    return held if isinstance(held, dict) else {}


def _expires(held: dict[str, Any]) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(str(held["expires_at"]))
    except (KeyError, ValueError):
        return dt.datetime.min.replace(tzinfo=dt.UTC)  # unreadable: treat as expired


def _describe(held: dict[str, Any], uri: str) -> str:
    where = f" ({uri})" if uri else ""
    return (
        f"the output is leased by flow run {held.get('flow_run_id')} (batch {held.get('run')}) "
        f"on host {held.get('host')} pid {held.get('pid')} since {held.get('since')}, until "
        f"{held.get('expires_at')}{where}; wait for it to finish, or pass takeover=True "
        "(--takeover) if that run is gone"
    )
