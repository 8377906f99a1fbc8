"""Schema versions: records, manifest, results file and lease say theirs; unknown ones are refused
with a clear message; records from before versions (version 1) still read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.batch.lease import LEASE
from tasks.batch.manifest import BatchManifest
from tasks.batch.outputs import MANIFEST_SCHEMA_VERSION, ShardWriter, iter_final_records
from tasks.batch.records import (
    RECORD_SCHEMA_VERSION,
    Completion,
    PromptRequest,
    error_record,
    result_record,
)
from tasks.batch.results import iter_results, write_results
from tasks.batch.stores import LocalStore
from tasks.errors import SchemaVersionError
from tests.batch.test_lease import _lease


def test_new_records_and_the_manifest_carry_their_version() -> None:
    request = PromptRequest("a", "in.jsonl", 1, 10, prompt="hi")
    ok = result_record(request, Completion("yo", "m"), 0.1, 1)
    assert ok["schema_version"] == RECORD_SCHEMA_VERSION == 2
    assert error_record(request, "HTTP 500")["schema_version"] == 2
    assert BatchManifest.model_fields["schema_version"].default == MANIFEST_SCHEMA_VERSION == 2


def test_version_1_records_read_and_unknown_versions_are_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "out")
    old = {"id": "old", "response": "r", "file": "in", "line": 1}  # as written before versions
    ShardWriter(store, "20260101T000000Z-aaaa").write(1, [old], [])
    assert [r["id"] for r in iter_final_records(store)] == ["old"]
    write_results(str(tmp_path / "out"), str(tmp_path / "final.jsonl"), format="native")
    [line] = (tmp_path / "final.jsonl").read_text().splitlines()
    assert json.loads(line)["schema_version"] == 1  # the results file says each line's version

    future = {"schema_version": 3, "id": "new", "response": "r", "file": "in", "line": 2}
    ShardWriter(store, "20260102T000000Z-bbbb").write(1, [future], [])
    with pytest.raises(
        SchemaVersionError,
        match=r"schema_version 3, which this ollama-cloudrun "
        r"does not know \(it reads 1, 2\).*upgrade",
    ):
        list(iter_final_records(store))


def test_a_manifest_or_lease_of_an_unknown_version_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ShardWriter(LocalStore(out), "run").write(1, [{"id": "a", "file": "in", "line": 1}], [])
    (out / "manifest.json").write_text(json.dumps({"schema_version": 9, "input": "x"}))
    with pytest.raises(SchemaVersionError, match=r"manifest\.json has schema_version 9"):
        list(iter_results(str(out), order="input"))
    (out / LEASE).write_text(
        json.dumps({"schema_version": 5, "expires_at": "2000-01-01T00:00:00+00:00"})
    )
    with pytest.raises(SchemaVersionError, match=r"lease\.json has schema_version 5"):
        _lease(LocalStore(out), "b").acquire()
