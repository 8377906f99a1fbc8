"""gs:// input and output through the emulator's fake-gcs-server and the official storage client."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Callable

import pytest

from emulator.ollama.launcher import OllamaServer
from flows.batch import BatchParams, batch_inference
from tasks.batch.inputs import resolve_inputs
from tasks.batch.preflight import PROBE_PREFIX
from tasks.batch.stores import GcsStore
from tasks.clients import resolve_cloud, storage_client
from tasks.errors import OutputLocationError
from tests.batch.conftest import read_output


@pytest.mark.slow
def test_gs_input_and_output(
    prefect_api: str, gcp_env: dict[str, str], sim_server: Callable[..., OllamaServer]
) -> None:
    client = storage_client(resolve_cloud())
    bucket = client.create_bucket(f"batch-{uuid.uuid4().hex[:8]}")
    ids = [f"g{i}" for i in range(120)]
    lines = "".join(json.dumps({"id": i, "prompt": f"q {i}"}) + "\n" for i in ids[:100])
    bucket.blob("prompts/a.jsonl").upload_from_string(lines)
    bucket.blob("prompts/b.txt").upload_from_string("".join(f"t {i}\n" for i in range(20)))
    bucket.blob("prompts/readme.md").upload_from_string("not a prompt file")
    params = BatchParams(
        input=f"gs://{bucket.name}/prompts/",
        output=f"gs://{bucket.name}/out",
        target=sim_server().base_url,
        in_flight=4,
        shard_size=30,
    )
    manifest = asyncio.run(batch_inference(params))
    store = GcsStore(client, bucket.name, "out/")
    results, errors = read_output(store)
    expected = ids[:100] + [f"b.txt:{n}" for n in range(1, 21)]
    assert errors == [] and Counter(r["id"] for r in results) == Counter(expected)
    assert manifest["counts"]["succeeded"] == 120
    saved = json.loads(bucket.blob("out/manifest.json").download_as_bytes())
    assert saved["counts"] == manifest["counts"]
    shards = [b for b in client.list_blobs(bucket.name, prefix="out/results/")]
    assert len(shards) == 4  # flushed per shard of 30, each its own object
    again = asyncio.run(batch_inference(params))
    assert again["counts"]["skipped"] == 120 and again["this_run"]["sent"] == 0


def test_gs_globs_are_listed_by_cloud_storage_match_glob(gcp_env: dict[str, str]) -> None:
    """The lister sends the glob as matchGlob (the emulator's front filters as GCS does):
    `*` does not cross `/`, `**` does."""
    client = storage_client(resolve_cloud())
    bucket = client.create_bucket(f"batch-{uuid.uuid4().hex[:8]}")
    for name in ("p/a.jsonl", "p/sub/c.jsonl", "p/b.txt", "q/x.jsonl"):
        bucket.blob(name).upload_from_string('{"prompt": "q"}\n')

    def keys(glob: str) -> list[str]:
        return sorted(f.key for f in resolve_inputs(f"gs://{bucket.name}/{glob}", client))

    assert keys("p/*.jsonl") == ["a.jsonl"]
    assert keys("p/**.jsonl") == ["a.jsonl", "sub/c.jsonl"]
    assert keys("**/c.jsonl") == ["p/sub/c.jsonl"]
    assert keys("{p,q}/*.jsonl") == ["p/a.jsonl", "q/x.jsonl"]


@pytest.mark.slow
def test_gs_output_that_cannot_be_written_fails_before_reading_any_prompt(
    prefect_api: str, gcp_env: dict[str, str]
) -> None:
    client = storage_client(resolve_cloud())
    bucket = client.create_bucket(f"batch-{uuid.uuid4().hex[:8]}")
    bucket.blob("prompts/a.jsonl").upload_from_string('{"prompt": "q"}\n')
    missing = f"gs://no-such-bucket-{uuid.uuid4().hex[:8]}/out/"
    params = BatchParams(
        input=f"gs://{bucket.name}/prompts/", output=missing, target="http://127.0.0.1:9"
    )
    with pytest.raises(OutputLocationError, match="cannot create objects under the output"):
        asyncio.run(batch_inference(params))
    probe_left = [b.name for b in client.list_blobs(bucket.name) if PROBE_PREFIX in b.name]
    assert probe_left == []
    with pytest.raises(OutputLocationError, match="overlaps input"):
        asyncio.run(
            batch_inference(params.model_copy(update={"output": f"gs://{bucket.name}/prompts"}))
        )
