"""Planning: the input streamed into shards of prompts still to do (pure; no Prefect, no HTTP).

Every line is counted; an id done by an earlier run is skipped (``retry_errors`` sends failed ids
again); a duplicate id or a line that cannot be parsed becomes an ``InputProblem`` carrying its
line, written as an error record with the shard. What this run admits is noted in the ledger
(``tasks.batch.outputs``, rules 1–3).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from tasks.batch.inputs import InputFile, iter_lines, parse_line
from tasks.batch.ledger import PRIOR_FAILED, PRIOR_OK, RETRIED, SEEN, THIS_RUN, IdLedger
from tasks.batch.records import InputProblem, PromptRequest


@dataclass
class Shard:
    seq: int
    requests: list[PromptRequest] = field(default_factory=list)
    problems: list[InputProblem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.requests) + len(self.problems)


@dataclass
class PlanStats:
    lines: int = 0
    blank: int = 0
    duplicates: int = 0
    skipped_ok: int = 0
    skipped_failed: int = 0
    retried_errors: int = 0
    exhausted: int = 0  # failed ids not sent again: max_attempts_per_id runs sent them already
    skipped_bytes: int = 0  # lines done by earlier runs, or blank


def plan_shards(
    files: list[InputFile],
    ledger: IdLedger,
    stats: PlanStats,
    *,
    shard_size: int,
    retry_errors: bool,
    max_line_bytes: int,
    max_attempts_per_id: int = 3,
) -> Iterator[Shard]:
    """Stream the input into shards of at most ``shard_size`` items still to do."""
    shard = Shard(1)

    def admit(item: PromptRequest | InputProblem) -> PromptRequest | InputProblem | None:
        before = ledger.add(item.id, SEEN)
        tries = ledger.tries(item.id) if before & PRIOR_FAILED and retry_errors else 0
        if before & PRIOR_OK:
            stats.skipped_ok += 1
        elif before & PRIOR_FAILED and (not retry_errors or tries >= max_attempts_per_id):
            stats.skipped_failed += 1
            stats.exhausted += retry_errors
        else:
            if before & PRIOR_FAILED:
                ledger.add(item.id, RETRIED)
                stats.retried_errors += 1
            ledger.touch_place(item.file, item.line, THIS_RUN)  # outputs.py, rule 1
            return replace(item, tries=tries + 1) if isinstance(item, PromptRequest) else item
        stats.skipped_bytes += item.size
        return None

    for file in files:
        with file.store.open_read(file.name) as stream:
            for line, raw, size in iter_lines(stream, max_line_bytes):
                stats.lines += 1
                item = parse_line(file, line, raw, size, max_line_bytes)
                if item is None:
                    stats.blank += 1
                    stats.skipped_bytes += size
                    continue
                if ledger.state(item.id) & SEEN:
                    stats.duplicates += 1
                    item = InputProblem(
                        f"{file.key}:{line}",
                        file.uri,
                        line,
                        size,
                        f"duplicate id {item.id!r}: an earlier line already has it",
                    )
                    if ledger.state(item.id) & SEEN:  # the derived id itself was given earlier
                        item = InputProblem(f"{file.uri}:{line}", file.uri, line, size, item.reason)
                if (admitted := admit(item)) is None:
                    continue
                item = admitted
                if isinstance(item, InputProblem):
                    shard.problems.append(item)
                else:
                    shard.requests.append(item)
                if len(shard) >= shard_size:
                    yield shard
                    shard = Shard(shard.seq + 1)
    if len(shard):
        yield shard
