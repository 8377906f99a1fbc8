"""The run's memory of ids: what earlier runs wrote and what this run has seen — and, for the
input lines that have an error record under a derived id, the newest shard holding a record from
that line (``tasks.batch.outputs`` rule 1). Such lines are rare (lines that could not be parsed),
so without them the ledger does no per-line work at all.

A private temporary SQLite database (stdlib; SQLite deletes it when closed, and the OS when the
process dies) holding a 16-byte digest per id, so the heap stays flat however many ids a batch
has — a Python set of a million ids would cost ~70 MB.
"""

from __future__ import annotations

import hashlib
import sqlite3

PRIOR_OK = 1  # a result record exists in the output
PRIOR_FAILED = 2  # an error record exists in the output
SEEN = 4  # this run met the id in the input
RETRIED = 8  # this run sends the id again although an earlier run wrote an error record for it
THIS_RUN = "\uffff"  # the shard order of this run's records: newer than every written shard


def _key(id_: str) -> bytes:
    return hashlib.blake2b(id_.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _place(file: str, line: int) -> bytes:
    return _key(f"{line}\0{file}")


class IdLedger:
    def __init__(self) -> None:
        # "" = a private temporary on-disk database; a 2 MiB page cache (the OS caches the rest).
        self._db = sqlite3.connect("", check_same_thread=False)
        self._db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-2048;"
            "CREATE TABLE ids (key BLOB PRIMARY KEY, state INTEGER NOT NULL,"
            " tries INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;"
            "CREATE TABLE places (key BLOB PRIMARY KEY, newest TEXT NOT NULL) WITHOUT ROWID;"
        )
        self.places = False  # some line is followed (note_place)

    def close(self) -> None:
        self._db.close()

    def state(self, id_: str) -> int:
        row = self._db.execute("SELECT state FROM ids WHERE key = ?", (_key(id_),)).fetchone()
        return int(row[0]) if row else 0

    def add(self, id_: str, bits: int) -> int:
        """OR ``bits`` into the id's state; returns the state from before."""
        key = _key(id_)
        row = self._db.execute("SELECT state FROM ids WHERE key = ?", (key,)).fetchone()
        if row is None:
            self._db.execute("INSERT INTO ids (key, state) VALUES (?, ?)", (key, bits))
            return 0
        before = int(row[0])
        if before | bits != before:
            self._db.execute("UPDATE ids SET state = ? WHERE key = ?", (before | bits, key))
        return before

    def note_tries(self, id_: str, tries: int) -> None:
        """The id was sent in ``tries`` runs (per its newest error record); keeps the maximum."""
        self._db.execute("UPDATE ids SET tries = max(tries, ?) WHERE key = ?", (tries, _key(id_)))

    def tries(self, id_: str) -> int:
        row = self._db.execute("SELECT tries FROM ids WHERE key = ?", (_key(id_),)).fetchone()
        return int(row[0]) if row else 0

    def count(self, bits: int, without: int = 0) -> int:
        """How many ids have all of ``bits`` and none of ``without``."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM ids WHERE state & ? = ? AND state & ? = 0", (bits, bits, without)
        ).fetchone()
        return int(row[0])

    def note_place(self, file: str, line: int, order: str) -> None:
        """Follow ``file``:``line`` (it has a derived-id error record in the shard of ``order``)."""
        self.places = True
        self._db.execute(
            "INSERT INTO places VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET newest = max(newest, excluded.newest)",
            (_place(file, line), order),
        )

    def touch_place(self, file: str, line: int, order: str) -> None:
        """A record from ``file``:``line`` is in the shard of ``order`` (``THIS_RUN``: this run's);
        noted only for a followed line."""
        if self.places:
            self._db.execute(
                "UPDATE places SET newest = max(newest, ?) WHERE key = ?",
                (order, _place(file, line)),
            )

    def newest_at(self, file: str, line: int) -> str | None:
        """The order of the newest shard holding a record from ``file``:``line``."""
        row = self._db.execute(
            "SELECT newest FROM places WHERE key = ?", (_place(file, line),)
        ).fetchone()
        return str(row[0]) if row else None
