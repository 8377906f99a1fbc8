"""Cloud Storage (fake-gcs-server) through google-cloud-storage with STORAGE_EMULATOR_HOST."""

from __future__ import annotations

import uuid

import pytest
from google.api_core import exceptions
from google.cloud import storage


def test_generation_precondition_and_compose(gcp_env: dict[str, str]) -> None:
    client = storage.Client(project=gcp_env["GOOGLE_CLOUD_PROJECT"])
    bucket = client.create_bucket(f"test-{uuid.uuid4().hex[:12]}")
    blob = bucket.blob("results/shard-0.jsonl")
    blob.upload_from_string(b'{"id": 1}\n', if_generation_match=0)
    with pytest.raises(exceptions.PreconditionFailed):
        bucket.blob("results/shard-0.jsonl").upload_from_string(b"overwrite", if_generation_match=0)
    assert bucket.blob("results/shard-0.jsonl").download_as_bytes() == b'{"id": 1}\n'
    bucket.blob("results/shard-1.jsonl").upload_from_string(b'{"id": 2}\n')
    merged = bucket.blob("merged.jsonl")
    merged.compose([bucket.blob("results/shard-0.jsonl"), bucket.blob("results/shard-1.jsonl")])
    assert merged.download_as_bytes() == b'{"id": 1}\n{"id": 2}\n'
    assert sorted(b.name for b in client.list_blobs(bucket, prefix="results/")) == [
        "results/shard-0.jsonl",
        "results/shard-1.jsonl",
    ]
