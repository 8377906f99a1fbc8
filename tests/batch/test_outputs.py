"""Stores, the id ledger, shard writing, scanning and the reconciliation rule — no server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tasks.batch.ledger import PRIOR_FAILED, PRIOR_OK, RETRIED, SEEN, IdLedger
from tasks.batch.outputs import (
    ERRORS,
    RESULTS,
    ShardWriter,
    iter_final_records,
    list_shards,
    retire_superseded_errors,
    scan_output,
)
from tasks.batch.stores import LocalStore
from tasks.errors import ObjectExistsError


def test_local_create_never_overwrites_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "out")
    store.create("results/a.jsonl", b"first\n")
    with pytest.raises(ObjectExistsError):
        store.create("results/a.jsonl", b"second\n")
    assert store.read_bytes("results/a.jsonl") == b"first\n"
    assert os.listdir(tmp_path / "out" / "results") == ["a.jsonl"]
    store.put("manifest.json", b"1")
    store.put("manifest.json", b"2")
    assert store.read_bytes("manifest.json") == b"2"


def test_ledger_states_and_counts() -> None:
    ledger = IdLedger()
    assert ledger.add("a", PRIOR_OK) == 0
    assert ledger.add("b", PRIOR_FAILED) == 0
    assert ledger.add("b", PRIOR_OK) == PRIOR_FAILED
    assert ledger.add("c", PRIOR_FAILED) == 0
    assert ledger.add("c", SEEN) == PRIOR_FAILED
    assert ledger.state("c") == PRIOR_FAILED | SEEN
    assert ledger.count(PRIOR_OK) == 2
    assert ledger.count(PRIOR_FAILED, without=PRIOR_OK) == 1
    assert ledger.state("never") == 0
    ledger.close()


def _rec(id_: str, **extra: object) -> dict[str, object]:
    return {"id": id_, "file": "f", "line": 1, **extra}


def test_shards_scan_retire_and_final_view(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    first = ShardWriter(store, "20260101T000000Z-aaaa")
    written = first.write(
        1, [_rec("a", response="A")], [_rec("b", error="boom"), _rec("c", error="x")]
    )
    assert [Path(w).parent.name for w in written] == ["results", "errors"]
    assert first.write(2, [], []) == []  # nothing to write, no empty objects

    ledger = IdLedger()
    scan = scan_output(store, ledger)
    assert (scan.succeeded, scan.failed) == (1, 2)
    assert len(scan.result_shards) == 1 and len(scan.error_shards) == 1

    # A later run retries b (succeeds) but not c: the old error shard must stay (c lives there).
    second = ShardWriter(store, "20260102T000000Z-bbbb")
    second.write(1, [_rec("b", response="B")], [])
    ledger.add("b", SEEN | RETRIED)
    ledger.add("c", SEEN)
    assert retire_superseded_errors(store, scan.error_shards, ledger) == []
    final = {r["id"]: r for r in iter_final_records(store)}
    assert set(final) == {"a", "b", "c"}
    assert final["b"]["response"] == "B" and final["c"]["error"] == "x"

    # Now c is retried too (fails again, newer error): the old error shard is superseded.
    second.write(2, [], [_rec("c", error="y")])
    ledger.add("c", RETRIED)
    retired = retire_superseded_errors(store, scan.error_shards, ledger)
    assert len(retired) == 1
    ids = [
        json.loads(line)["id"]
        for kind in (RESULTS, ERRORS)
        for shard in list_shards(store, kind)
        for line in store.read_bytes(shard.name).splitlines()
    ]
    assert sorted(ids) == ["a", "b", "c"]  # every id exactly once on disk
    assert {r["id"]: r.get("error") for r in iter_final_records(store)}["c"] == "y"


def test_racing_writers_never_overwrite(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    ShardWriter(store, "run-1").write(1, [_rec("a", response="one")], [])
    with pytest.raises(ObjectExistsError):
        ShardWriter(store, "run-1").write(1, [_rec("a", response="two")], [])
    ShardWriter(store, "run-2").write(1, [_rec("a", response="two")], [])
    final = list(iter_final_records(store))
    assert [(r["id"], r["response"]) for r in final] == [("a", "one")]  # the earliest shard wins


def test_a_derived_id_error_gives_way_only_to_a_newer_record_from_its_line(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path)
    line = {"file": "/in/p.jsonl", "line": 2}
    # Run 1: line 2 had its own id and succeeded; run 2: it was broken (derived id); run 3: fixed
    # with a new id, but the run was killed before retiring anything.
    ShardWriter(store, "20260101T000000Z-aaaa").write(1, [{"id": "old", **line}], [])
    ShardWriter(store, "20260102T000000Z-bbbb").write(1, [], [{"id": "p.jsonl:2", **line}])
    final = {r["id"] for r in iter_final_records(store)}
    assert final == {"old", "p.jsonl:2"}  # an older result does not hide a newer error
    ShardWriter(store, "20260103T000000Z-cccc").write(1, [{"id": "new", **line}], [])
    assert {r["id"] for r in iter_final_records(store)} == {"old", "new"}

    ledger = IdLedger()
    scan = scan_output(store, ledger)
    assert len(retire_superseded_errors(store, scan.error_shards, ledger)) == 1
    assert list_shards(store, ERRORS) == []
