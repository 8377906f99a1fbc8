"""Checks made before any prompt is sent, so a bad output costs no inference.

- The output must not overlap the input: equal to, inside or containing the input's location
  (the prefix, directory, file, or a glob's fixed part) would make the batch read its own output
  or write among its prompts.
- Objects must be creatable (and deletable: the batch deletes superseded error shards) under the
  output: a probe object is created the way shards are (``if_generation_match=0`` / exclusive
  create) and deleted at once.
"""

from __future__ import annotations

import os
from pathlib import Path

from google.api_core import exceptions as gexc

from tasks.batch.inputs import split_glob
from tasks.batch.stores import ObjectStore, split_gs_uri
from tasks.errors import OllamaCloudRunError, OutputLocationError
from tasks.retries import is_transient

PROBE_PREFIX = ".write-probe-"
# Local file errors, Google's 4xx, and ours (AccessDeniedError from the boundary, ObjectExists).
_CANNOT = (OSError, gexc.ClientError, OllamaCloudRunError)


def _location(uri: str) -> tuple[str, ...]:
    """A location as path segments under its root (``gs://bucket`` or ``/``), globs cut off."""
    if uri.startswith("gs://"):
        bucket, path = split_gs_uri(uri)
        fixed, _ = split_glob(path)
        return ("gs://" + bucket, *(part for part in fixed.split("/") if part))
    fixed, _ = split_glob(str(Path(uri).expanduser().absolute()))
    return ("/", *Path(os.path.realpath(fixed)).parts[1:])


def check_no_overlap(input_spec: str, output: str) -> None:
    """Raise ``OutputLocationError`` naming both when the output overlaps the input."""
    source, target = _location(input_spec), _location(output)
    if source == target:
        relation = "they are the same location"
    elif target[: len(source)] == source:
        relation = "the output is inside the input"
    elif source[: len(target)] == target:
        relation = "the output contains the input"
    else:
        return
    raise OutputLocationError(
        f"output {output!r} overlaps input {input_spec!r}: {relation}; choose an output "
        "location outside the input (for example a sibling prefix or directory)"
    )


def probe_output(store: ObjectStore, token: str) -> None:
    """Create and delete one probe object under the output; ``OutputLocationError`` if either
    fails for a reason retrying cannot fix (transient errors pass through to the task's retries).
    """
    name = PROBE_PREFIX + token
    try:
        store.create(name, b"")
    except _CANNOT as exc:
        if is_transient(exc):
            raise
        raise OutputLocationError(
            f"cannot create objects under the output {store.base_uri}: {exc}"
        ) from exc
    try:
        store.delete(name)
    except _CANNOT as exc:
        if is_transient(exc):
            raise
        raise OutputLocationError(
            f"can create but not delete objects under the output {store.base_uri} (the batch "
            f"deletes superseded error shards; remove {store.uri_of(name)} by hand): {exc}"
        ) from exc
