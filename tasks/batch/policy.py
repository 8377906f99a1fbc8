"""The failure policy: when a batch run that wrote everything still ends Failed.

A run fails when more than ``max_failed_fraction`` of the prompts it sent failed, when more than
``max_failed`` failed, or when more than ``max_input_errors`` input lines could not be read. The
check runs after the shards and the manifest are written, so a failed run loses nothing; the
message names the commonest error kinds (``tasks.batch.records.error_kind``) and their counts.
"""

from __future__ import annotations

from collections import Counter

from tasks.batch.params import BatchSettings

INPUT_PREFIX = "input: "


def commonest(kinds: Counter[str], n: int = 3) -> str:
    """``HTTP 500 ×12, HTTP 503 ×3`` (the ``n`` commonest, most first)."""
    return ", ".join(f"{kind} ×{count}" for kind, count in kinds.most_common(n)) or "none"


def policy_violation(
    settings: BatchSettings, sent: int, failed: int, input_errors: int, kinds: Counter[str]
) -> str | None:
    """Why the run must end Failed, or None when it stays within the policy."""
    request_kinds = Counter({k: n for k, n in kinds.items() if not k.startswith(INPUT_PREFIX)})
    input_kinds = Counter(
        {k.removeprefix(INPUT_PREFIX): n for k, n in kinds.items() if k.startswith(INPUT_PREFIX)}
    )
    reasons = []
    if sent and failed / sent > settings.max_failed_fraction:
        reasons.append(
            f"{failed} of {sent} prompts sent failed ({failed / sent:.1%} > max_failed_fraction "
            f"{settings.max_failed_fraction:.1%})"
        )
    elif settings.max_failed is not None and failed > settings.max_failed:
        reasons.append(f"{failed} prompts failed (> max_failed {settings.max_failed})")
    if reasons:
        reasons[-1] += f"; commonest errors: {commonest(request_kinds)}"
    if settings.max_input_errors is not None and input_errors > settings.max_input_errors:
        reasons.append(
            f"{input_errors} input lines could not be read (> max_input_errors "
            f"{settings.max_input_errors}); commonest: {commonest(input_kinds)}"
        )
    return "; ".join(reasons) or None
