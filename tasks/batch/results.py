"""The final answer set: one record per input id, in one JSONL file.

``iter_results(output)`` yields every id's one record by the reconciliation rule
(``tasks.batch.outputs.iter_final_records``), optionally in input order; ``write_results`` writes
them to one file (local or ``gs://``) and counts them. Memory stays flat however large the
output: records stream from the shards, and input order goes through an on-disk SQLite table.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from tasks.batch.inputs import iter_lines, parse_line, resolve_inputs
from tasks.batch.openai_format import to_openai_line
from tasks.batch.outputs import KNOWN_MANIFEST_VERSIONS, MANIFEST, iter_final_records
from tasks.batch.records import check_schema_version
from tasks.batch.stores import ObjectStore, open_store, split_gs_uri
from tasks.errors import ConfigurationError, google_errors

Order = Literal["output", "input"]
Format = Literal["native", "openai"]
FormatOption = Literal["auto", "native", "openai"]
DEFAULT_NAME = "final/results.jsonl"
OPENAI_OUTPUT = "final/batch_output.jsonl"  # OpenAI calls them the output and the error file
OPENAI_ERRORS = "final/batch_errors.jsonl"
_MAX_LINE_BYTES = 64 * 1024 * 1024


def iter_results(
    output: str | ObjectStore,
    *,
    format: Format = "native",
    order: Order = "output",
    storage_client: Any = None,
) -> Iterator[dict[str, Any]]:
    """Every input id's one record, streamed (for notebooks: ``for r in iter_results(path)``).

    ``format="openai"`` yields OpenAI batch output lines instead (results and errors alike; an
    error line has ``error`` set). ``order="input"`` follows the input of the last run
    (``manifest.json``'s ``input``); records of ids no longer in that input come last.
    """
    store = open_store(output, storage_client) if isinstance(output, str) else output
    records = (
        iter_final_records(store) if order == "output" else _in_input_order(store, storage_client)
    )
    for record in records:
        yield to_openai_line(record) if format == "openai" else record


def _digest(id_: str) -> bytes:
    return hashlib.blake2b(id_.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _in_input_order(store: ObjectStore, storage_client: Any) -> Iterator[dict[str, Any]]:
    if store.stat(MANIFEST) is None:
        raise ConfigurationError(
            f"no {store.uri_of(MANIFEST)}: input order needs the manifest of a finished run"
        )
    manifest = json.loads(store.read_bytes(MANIFEST))
    check_schema_version(manifest, store.uri_of(MANIFEST), KNOWN_MANIFEST_VERSIONS)
    spec = manifest["input"]
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
    errors_to: str | None = None  # OpenAI format: the error file
    format: str = "native"
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


def destinations(output: str, to: str | None, fmt: Format) -> tuple[str, str | None]:
    """Where the results (and, in OpenAI's format, the errors) go."""
    base = output.rstrip("/") + "/"
    if fmt == "native":
        return to or base + DEFAULT_NAME, None
    if to is None:
        return base + OPENAI_OUTPUT, base + OPENAI_ERRORS
    stem = to.removesuffix(".jsonl")
    return to, stem + "-errors.jsonl"


def write_results(
    output: str,
    to: str | None = None,
    *,
    format: FormatOption = "auto",
    order: Order = "output",
    storage_client: Any = None,
) -> ResultCounts:
    """Write the final answer set of ``output`` (one record per input id) and count it.

    ``format="native"``: the records as stored, in one file (default
    ``<output>/final/results.jsonl``); ``"openai"``: OpenAI's batch output and error files
    (``tasks.batch.openai_format``); ``"auto"``: OpenAI's when the input was OpenAI batch lines.
    """
    records = iter_results(output, order=order, storage_client=storage_client)  # native
    first = next(records, None)
    fmt: Format = format if format != "auto" else _detect(first)
    to, errors_to = destinations(output, to, fmt)
    counts = ResultCounts(format=fmt, order=order)
    sinks = [_Sink(to, storage_client)] + ([_Sink(errors_to, storage_client)] if errors_to else [])
    try:
        for record in itertools.chain([first] if first is not None else [], records):
            failed = "error" in record
            if fmt == "native":  # every line says its version (1: written before versions)
                sinks[0].write({"schema_version": 1, **record})
            else:
                sinks[1 if failed else 0].write(to_openai_line(record))
            counts.records += 1
            if not failed:
                counts.succeeded += 1
            elif record.get("kind") == "input":
                counts.input_errors += 1
            else:
                counts.failed += 1
    except BaseException:
        for sink in sinks:
            sink.abort()
        raise
    counts.to = sinks[0].commit()
    counts.errors_to = sinks[1].commit() if errors_to else None
    return counts


def _detect(first: dict[str, Any] | None) -> Format:
    return "openai" if first is not None and first.get("openai") else "native"


def counts_dict(counts: ResultCounts) -> dict[str, Any]:
    return asdict(counts)
