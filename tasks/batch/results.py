"""The final answer set: one record per input id, in one JSONL file.

``iter_results(output)`` yields every id's one record by the reconciliation rule
(``tasks.batch.outputs.iter_final_records``), optionally in input order; ``write_results`` writes
them to one file (local or ``gs://``) and counts them. Memory stays flat however large the
output: records stream from the shards, and input order goes through an on-disk SQLite table.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from tasks.batch.inputs import iter_lines, parse_line, resolve_inputs
from tasks.batch.outputs import MANIFEST, iter_final_records
from tasks.batch.stores import ObjectStore, open_store, split_gs_uri
from tasks.errors import ConfigurationError, google_errors

Order = Literal["output", "input"]
DEFAULT_NAME = "final/results.jsonl"
_MAX_LINE_BYTES = 64 * 1024 * 1024


def iter_results(
    output: str | ObjectStore, *, order: Order = "output", storage_client: Any = None
) -> Iterator[dict[str, Any]]:
    """Every input id's one record, streamed (for notebooks: ``for r in iter_results(path)``).

    ``order="input"`` follows the input of the last run (``manifest.json``'s ``input``); records
    of ids no longer in that input come last.
    """
    store = open_store(output, storage_client) if isinstance(output, str) else output
    if order == "output":
        yield from iter_final_records(store)
        return
    yield from _in_input_order(store, storage_client)


def _digest(id_: str) -> bytes:
    return hashlib.blake2b(id_.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _in_input_order(store: ObjectStore, storage_client: Any) -> Iterator[dict[str, Any]]:
    if store.stat(MANIFEST) is None:
        raise ConfigurationError(
            f"no {store.uri_of(MANIFEST)}: input order needs the manifest of a finished run"
        )
    spec = json.loads(store.read_bytes(MANIFEST))["input"]
    with contextlib.closing(sqlite3.connect("")) as db:  # "": a private on-disk temporary
        db.execute("CREATE TABLE r (key BLOB PRIMARY KEY, record TEXT NOT NULL)")
        db.executemany(
            "INSERT OR IGNORE INTO r VALUES (?, ?)",
            ((_digest(r["id"]), json.dumps(r)) for r in iter_final_records(store)),
        )
        for file in resolve_inputs(spec, storage_client, exclude=store.base_uri):
            with file.store.open_read(file.name) as stream:
                for line, raw, size in iter_lines(stream, _MAX_LINE_BYTES):
                    item = parse_line(file, line, raw, size, _MAX_LINE_BYTES)
                    if item is None:
                        continue
                    key = _digest(item.id)
                    row = db.execute("SELECT record FROM r WHERE key = ?", (key,)).fetchone()
                    if row is not None:
                        db.execute("DELETE FROM r WHERE key = ?", (key,))
                        yield json.loads(row[0])
        for (text,) in db.execute("SELECT record FROM r ORDER BY rowid"):
            yield json.loads(text)


@dataclass
class ResultCounts:
    records: int = 0
    succeeded: int = 0
    failed: int = 0
    input_errors: int = 0
    to: str = ""
    order: str = "output"


class _Sink:
    """One JSONL file written whole: a temporary file, then moved (or uploaded) into place."""

    def __init__(self, to: str, storage_client: Any) -> None:
        self.to, self.client = to, storage_client
        target_dir = None if to.startswith("gs://") else Path(to).expanduser().absolute().parent
        if target_dir is not None:
            target_dir.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".results-", suffix=".tmp", dir=target_dir)
        self.temp = Path(temp)
        self.handle = os.fdopen(fd, "w", encoding="ascii")

    def write(self, record: dict[str, Any]) -> None:
        self.handle.write(json.dumps(record, separators=(",", ":")) + "\n")

    def commit(self) -> str:
        self.handle.close()
        if not self.to.startswith("gs://"):
            final = Path(self.to).expanduser().absolute()
            os.replace(self.temp, final)
            return str(final)
        bucket, name = split_gs_uri(self.to)
        if self.client is None:
            raise ConfigurationError("a gs:// destination needs a storage client")
        with google_errors(f"upload {self.to}"):
            self.client.bucket(bucket).blob(name).upload_from_filename(
                str(self.temp), content_type="application/x-ndjson"
            )
        self.temp.unlink()
        return self.to

    def abort(self) -> None:
        self.handle.close()
        self.temp.unlink(missing_ok=True)


def default_destination(output: str) -> str:
    return output.rstrip("/") + "/" + DEFAULT_NAME


def write_results(
    output: str,
    to: str | None = None,
    *,
    order: Order = "output",
    storage_client: Any = None,
) -> ResultCounts:
    """Write the final answer set of ``output`` to ``to`` (default ``<output>/final/results.jsonl``)
    and count it."""
    counts = ResultCounts(order=order)
    sink = _Sink(to or default_destination(output), storage_client)
    try:
        for record in iter_results(output, order=order, storage_client=storage_client):
            sink.write(record)
            counts.records += 1
            if "error" not in record:
                counts.succeeded += 1
            elif record.get("kind") == "input":
                counts.input_errors += 1
            else:
                counts.failed += 1
    except BaseException:
        sink.abort()
        raise
    counts.to = sink.commit()
    return counts


def counts_dict(counts: ResultCounts) -> dict[str, Any]:
    return asdict(counts)
