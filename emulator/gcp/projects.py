"""Project ids and numbers, as every API names projects."""

from __future__ import annotations

import hashlib


def project_number(project_id: str) -> int:
    """A deterministic 12-digit project number (a numeric id is its own number)."""
    if project_id.isdigit():
        return int(project_id)
    digest = hashlib.sha256(project_id.encode()).hexdigest()
    return 100_000_000_000 + int(digest, 16) % 900_000_000_000
