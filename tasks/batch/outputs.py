"""Output: result shards, error shards and ``manifest.json`` under the output prefix.

Layout::

    <output>/results/<run>-<seq>.jsonl   result records (tasks.batch.records)
    <output>/errors/<run>-<seq>.jsonl    error records
    <output>/manifest.json               counts, model, service, timings, tokens (last run)

``<run>`` is ``<UTC start time>-<random hex>``, so names sort by run and never collide; every
shard is created once (``if_generation_match=0`` / exclusive create) and never rewritten.

Reconciliation — how the output means "every id exactly once" and "every input line once":

1. An id's record is its result record if one exists (a success is final: it is never sent
   again); otherwise its newest error record (greatest shard name). An error record whose id
   was derived from its place (``<file key>:<line>``: the line had no usable id) stands for that
   line only until the line yields something newer: a record from the same file and line in a
   newer shard (a result or an error, under any id, e.g. the line fixed with its own id)
   supersedes it. ``is_superseded`` is this rule, for the reader and for rule 3 alike.
2. A run skips ids that already have a result, and ids that have an error unless
   ``retry_errors`` is set; then it sends them again and writes the new outcome in its own shards.
3. At the end of a run that finished, error shards written before it whose every record is
   superseded (by rule 1, counting what this run wrote as newest) are deleted (with the
   generation read at start as precondition). So after a finished run each id is in exactly one
   shard; after a killed run rule 1 still gives one record per id and line
   (``iter_final_records``), and the next finished run removes the superseded shards.
4. Two runs racing on one output never overwrite each other (distinct names, create-only). If
   both send the same id, rule 1 keeps the result in the earliest shard name.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tasks.batch.inputs import iter_lines
from tasks.batch.ledger import PRIOR_FAILED, PRIOR_OK, RETRIED, SEEN, IdLedger
from tasks.batch.records import (
    KNOWN_RECORD_VERSIONS,
    check_schema_version,
    encode_records,
    tries_of,
)
from tasks.batch.stores import ObjectInfo, ObjectStore

RESULTS = "results/"
ERRORS = "errors/"
MANIFEST = "manifest.json"
MANIFEST_SCHEMA_VERSION = 2  # 1: written before schema versions (no such key)
KNOWN_MANIFEST_VERSIONS = frozenset({1, 2})
_MAX_RECORD_BYTES = 256 * 1024 * 1024

logger = logging.getLogger(__name__)


def iter_shard_records(store: ObjectStore, name: str) -> Iterator[dict[str, Any]]:
    """The records of one shard, streamed."""
    with store.open_read(name) as stream:
        for line_no, raw, _ in iter_lines(stream, _MAX_RECORD_BYTES):
            if not raw or not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                logger.warning("skipping unreadable line %d of %s", line_no, store.uri_of(name))
                continue
            if isinstance(record, dict) and isinstance(record.get("id"), str):
                what = f"line {line_no} of {store.uri_of(name)}"
                check_schema_version(record, what, KNOWN_RECORD_VERSIONS)
                yield record


def list_shards(store: ObjectStore, kind: str) -> list[ObjectInfo]:
    return sorted(
        (
            o
            for o in store.list(kind)
            if o.name.endswith(".jsonl") and "/" not in o.name[len(kind) :]
        ),
        key=lambda o: o.name,
    )


def shard_order(name: str) -> str:
    """``results/<run>-<seq>.jsonl`` → ``<run>-<seq>.jsonl``: shards of both kinds in run order."""
    return name.rpartition("/")[2]


def _place(record: dict[str, Any]) -> tuple[str, int] | None:
    file, line = record.get("file"), record.get("line")
    if isinstance(file, str) and isinstance(line, int) and not isinstance(line, bool):
        return file, line
    return None


def derived_place(record: dict[str, Any]) -> tuple[str, int] | None:
    """(file, line) when the record's id is the one derived from them (``<file key>:<line>``)."""
    place = _place(record)
    key, sep, number = str(record["id"]).rpartition(":")
    if place is None or not sep or not key or number != str(place[1]):
        return None
    return place if place[0] == key or place[0].endswith("/" + key) else None


def is_superseded(record: dict[str, Any], order: str, ledger: IdLedger) -> bool:
    """Rule 1 for an error record in the shard of ``order``, against what ``ledger`` knows: its
    id has a result, or a newer outcome sent by this run, or (derived id) its line has a record
    in a newer shard."""
    state = ledger.state(record["id"])
    if state & PRIOR_OK or (state & RETRIED and state & SEEN):
        return True
    place = derived_place(record)
    newest = ledger.newest_at(*place) if place is not None else None
    return newest is not None and newest > order


@dataclass(frozen=True)
class OutputScan:
    result_shards: list[ObjectInfo]
    error_shards: list[ObjectInfo]
    succeeded: int  # distinct ids with a result
    failed: int  # distinct ids with only error records


def scan_output(store: ObjectStore, ledger: IdLedger) -> OutputScan:
    """Record in ``ledger`` every id the output already holds, and for each line with a
    derived-id error record the newest shard holding a record from that line (rule 1)."""
    results, errors = list_shards(store, RESULTS), list_shards(store, ERRORS)
    # Errors first, oldest shard first: a line is followed from its derived-id error on, and
    # every later record from it (error or result) is noted.
    for shards, bit in ((errors, PRIOR_FAILED), (results, PRIOR_OK)):
        for shard in shards:
            order = shard_order(shard.name)
            for record in iter_shard_records(store, shard.name):
                ledger.add(record["id"], bit)
                if bit == PRIOR_FAILED:
                    ledger.note_tries(record["id"], tries_of(record))
                if bit == PRIOR_FAILED and (place := derived_place(record)) is not None:
                    ledger.note_place(*place, order)
                elif (place := _place(record)) is not None:
                    ledger.touch_place(*place, order)
    return OutputScan(
        results,
        errors,
        succeeded=ledger.count(PRIOR_OK),
        failed=ledger.count(PRIOR_FAILED, without=PRIOR_OK),
    )


class ShardWriter:
    def __init__(self, store: ObjectStore, run_token: str) -> None:
        self.store = store
        self.run_token = run_token

    def write(
        self, seq: int, results: list[dict[str, Any]], errors: list[dict[str, Any]]
    ) -> list[str]:
        """Create this shard's result and error objects (each only if it has records)."""
        written = []
        for kind, records in ((RESULTS, results), (ERRORS, errors)):
            if records:
                name = f"{kind}{self.run_token}-{seq:06d}.jsonl"
                self.store.create(name, encode_records(records))
                written.append(self.store.uri_of(name))
        return written


def retire_superseded_errors(
    store: ObjectStore, prior_error_shards: list[ObjectInfo], ledger: IdLedger
) -> list[str]:
    """Delete earlier error shards whose every record is superseded (rule 3 above).

    Call only after every shard of this run was written.
    """
    deleted = []
    for shard in prior_error_shards:
        order = shard_order(shard.name)
        records = iter_shard_records(store, shard.name)
        if all(is_superseded(record, order, ledger) for record in records):
            store.delete(shard.name, shard.generation)
            deleted.append(store.uri_of(shard.name))
    return deleted


def iter_final_records(store: ObjectStore) -> Iterator[dict[str, Any]]:
    """Every id's one record by rule 1, streamed: results in shard order, then the newest
    unsuperseded error record of each id still without one. Memory stays flat: the ids live in
    the ledger's on-disk table."""
    ledger = IdLedger()
    try:
        scan_output(store, ledger)
        # The reader never plans, so SEEN marks "already yielded" here.
        for shard in list_shards(store, RESULTS):
            for record in iter_shard_records(store, shard.name):
                if not ledger.add(record["id"], SEEN) & SEEN:
                    yield record
        for shard in reversed(list_shards(store, ERRORS)):  # newest first
            order = shard_order(shard.name)
            for record in iter_shard_records(store, shard.name):
                if not is_superseded(record, order, ledger) and not (
                    ledger.add(record["id"], SEEN) & SEEN
                ):
                    yield record
    finally:
        ledger.close()


def write_manifest(store: ObjectStore, manifest: dict[str, Any]) -> str:
    store.put(MANIFEST, (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode())
    return store.uri_of(MANIFEST)
