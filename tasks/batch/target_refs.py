"""What a batch's ``target`` names, parsed (stdlib only: the CLI's help imports it).

One target is ``[REGION/]SERVICE`` (a Cloud Run service; without a region, the batch's ``region``)
or a base URL ``http[s]://host[:port]``; either may end in ``#slots=N``: at most N requests in
flight to it (a URL's fragment is never sent, so it can carry what only the client needs). A
service's slots default to what Cloud Run says (max instances × concurrency); a URL's to
``URL_DEFAULT_SLOTS`` (one target alone: the batch's ``in_flight``, as before several targets).

Several targets: a list, or one string with commas (``svc-a,europe-west4/svc-b``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Cloud Run service ids (lowercase letters, digits and '-', starting with a letter).
SERVICE_ID_RE = re.compile(r"^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$")
REGION_RE = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
SLOTS_RE = re.compile(r"#slots=([0-9]+)$")
URL_DEFAULT_SLOTS = 4  # a plain URL's slots when neither it nor in_flight says otherwise
MAX_SLOTS = 100_000


def is_url(target: str) -> bool:
    return target.startswith(("http://", "https://"))


@dataclass(frozen=True)
class TargetRef:
    """One target as given: a URL, or a Cloud Run service (its region None: the batch's)."""

    text: str  # as written, ``#slots=N`` included
    url: str | None = None
    service: str | None = None
    region: str | None = None
    slots: int | None = None  # explicit, else from Cloud Run or the URL default

    @property
    def label(self) -> str:
        """A short name for logs, summaries and the manifest."""
        if self.url is not None:
            return self.url
        return f"{self.region}/{self.service}" if self.region else str(self.service)

    @property
    def on_run_app(self) -> bool:
        """A ``*.run.app`` URL: a Cloud Run service reached by its URL (ID tokens by default)."""
        if self.url is None:
            return False
        host = self.url.split("://", 1)[1].split("/", 1)[0].split(":", 1)[0]
        return host.endswith(".run.app")


def parse_target(text: str) -> TargetRef:
    """One target string → ``TargetRef``; ``ValueError`` naming what is wrong."""
    spec = text.strip()
    slots = None
    if match := SLOTS_RE.search(spec):
        slots = int(match.group(1))
        if not 1 <= slots <= MAX_SLOTS:
            raise ValueError(f"{text!r}: slots must be between 1 and {MAX_SLOTS}")
        spec = spec[: match.start()]
    if "#" in spec:
        raise ValueError(f"{text!r}: the only suffix a target takes is #slots=N")
    if is_url(spec):
        if len(spec.split("://", 1)[1].strip("/")) == 0:
            raise ValueError(f"{text!r}: the URL has no host")
        return TargetRef(text.strip(), url=spec.rstrip("/"), slots=slots)
    region, _, service = spec.rpartition("/")
    if region and not REGION_RE.match(region):
        raise ValueError(f"{text!r}: {region!r} is not a region (like us-central1)")
    if not SERVICE_ID_RE.match(service):
        raise ValueError(
            f"{text!r}: must be an http(s):// URL or a Cloud Run service name "
            "([REGION/]NAME: lowercase letters, digits and '-', starting with a letter)"
        )
    return TargetRef(text.strip(), service=service, region=region or None, slots=slots)


def split_targets(value: str | list[str]) -> list[str]:
    """A string or a list of strings, each possibly a comma list → the target strings."""
    items = [value] if isinstance(value, str) else list(value)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def parse_targets(value: str | list[str], default_region: str) -> list[TargetRef]:
    """Every target, regions filled in; refuses none at all and the same target twice."""
    refs = [parse_target(text) for text in split_targets(value)]
    if not refs:
        raise ValueError("name at least one target (a Cloud Run service or a URL)")
    filled = [r if r.url or r.region else _with_region(r, default_region) for r in refs]
    seen: set[str] = set()
    for ref in filled:
        if ref.label in seen:
            raise ValueError(f"target {ref.label} is named twice")
        seen.add(ref.label)
    return filled


def _with_region(ref: TargetRef, region: str) -> TargetRef:
    return TargetRef(ref.text, service=ref.service, region=region, slots=ref.slots)
