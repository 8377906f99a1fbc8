"""Fixtures for the batch tests: prompt files and a sim Ollama server started per test."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from emulator.ollama.launcher import OllamaServer, running_ollama_server
from tasks.batch.outputs import ERRORS, RESULTS, iter_shard_records, list_shards
from tasks.batch.stores import LocalStore, ObjectStore

# emulator.gcp settings for tests whose subject is not the deploy: builds and IAM propagation
# take no time (tests/batch/test_invoker_e2e.py and tests/gcp cover them; gcp_env restores them).
INSTANT_SETUP = {
    "build_seconds": 0,
    "service_account_propagation_seconds": 0,
    "iam_propagation_seconds": 0,
}


@pytest.fixture
def sim_server() -> Iterator[Callable[..., OllamaServer]]:
    """``sim_server(parallel=4, **OLLAMA_SIM_* env)``: a sim server, stopped after the test."""
    with ExitStack() as stack:

        def start(parallel: int = 4, **env: str) -> OllamaServer:
            full = {"OLLAMA_NUM_PARALLEL": str(parallel), **env}
            return stack.enter_context(
                running_ollama_server(engine="sim", models=["gemma2:9b"], env=full)
            )

        yield start


def write_prompts(path: Path, n: int, start: int = 0) -> list[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = [f"p{i:06d}" for i in range(start, start + n)]
    with path.open("w") as handle:
        for id_ in ids:
            handle.write(json.dumps({"id": id_, "prompt": f"Why is the sky blue, {id_}?"}) + "\n")
    return ids


def read_output(store: ObjectStore) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """All result records and all error records, as stored (no reconciliation)."""
    results = [r for s in list_shards(store, RESULTS) for r in iter_shard_records(store, s.name)]
    errors = [r for s in list_shards(store, ERRORS) for r in iter_shard_records(store, s.name)]
    return results, errors


def local(path: Path) -> LocalStore:
    return LocalStore(path)
