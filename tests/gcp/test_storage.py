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


def test_the_staging_bucket_is_created_in_the_deploy_region(gcp_env: dict[str, str]) -> None:
    from tasks import clients
    from tasks.storage import ensure_bucket

    cloud = clients.resolve_cloud()
    client = clients.storage_client(cloud)
    name = f"staging-{uuid.uuid4().hex[:12]}"
    created = ensure_bucket(cloud, client, name, {"managed-by": "ollama-cloudrun"}, "europe-west4")
    assert client.get_bucket(name).location == "EUROPE-WEST4"
    # An existing bucket is used where it is, never recreated.
    again = ensure_bucket(cloud, client, name, {}, "us-central1")
    assert (again.name, again.location) == (created.name, "EUROPE-WEST4")


def test_match_glob_is_cloud_storage_s(gcp_env: dict[str, str]) -> None:
    """objects.list's matchGlob as GCS documents it: `*` stays within one directory level."""
    client = storage.Client(project=gcp_env["GOOGLE_CLOUD_PROJECT"])
    bucket = client.create_bucket(f"glob-{uuid.uuid4().hex[:12]}")
    names = ["a.jsonl", "d/b.jsonl", "d/e/c.jsonl", "d/x.txt", "da.jsonl"]
    for name in names:
        bucket.blob(name).upload_from_string(b"{}\n")

    def listed(glob: str, prefix: str | None = None) -> list[str]:
        return sorted(b.name for b in client.list_blobs(bucket, prefix=prefix, match_glob=glob))

    assert listed("*.jsonl") == ["a.jsonl", "da.jsonl"]
    assert listed("**.jsonl") == ["a.jsonl", "d/b.jsonl", "d/e/c.jsonl", "da.jsonl"]
    assert listed("d/*.jsonl") == ["d/b.jsonl"]
    assert listed("d/**/c.jsonl") == ["d/e/c.jsonl"]
    assert listed("d/**/b.jsonl") == ["d/b.jsonl"]  # `/**/` also matches no directory
    assert listed("d/**") == ["d/b.jsonl", "d/e/c.jsonl", "d/x.txt"]
    assert listed("d?.jsonl") == ["da.jsonl"]
    assert listed("d/[bx].*") == ["d/b.jsonl", "d/x.txt"]
    assert listed("d/[!b]*") == ["d/x.txt"]
    assert listed("{a,da}.jsonl") == ["a.jsonl", "da.jsonl"]
    assert listed("d/*", prefix="d/e") == []  # prefix and glob both apply
    assert listed("**") == sorted(names)


def test_bucket_iam_policy_round_trip(gcp_env: dict[str, str]) -> None:
    client = storage.Client(project=gcp_env["GOOGLE_CLOUD_PROJECT"])
    bucket = client.create_bucket(f"iam-{uuid.uuid4().hex[:12]}")
    policy = bucket.get_iam_policy(requested_policy_version=3)
    assert list(policy.bindings) == []
    member = "serviceAccount:b@p.iam.gserviceaccount.com"
    policy.bindings.append({"role": "roles/storage.objectViewer", "members": {member}})
    bucket.set_iam_policy(policy)
    again = bucket.get_iam_policy(requested_policy_version=3)
    assert [(b["role"], set(b["members"])) for b in again.bindings] == [
        ("roles/storage.objectViewer", {member})
    ]
    with pytest.raises(exceptions.NotFound):
        client.bucket(f"missing-{uuid.uuid4().hex[:8]}").get_iam_policy()
