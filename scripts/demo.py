"""The main job on the local stand-ins: the whole pipeline, with a real model on the CPU.

Starts the Google Cloud emulator (its Cloud Run services served by the llama.cpp engine, with
SmolLM2-135M standing in for the baked-in model), uploads sample prompts to an emulated bucket, runs
the ``pipeline`` flow (deploy → smoke test → batch → teardown), reads the results back and prints a
short summary. Exit status 0 only when every prompt succeeded and everything was torn down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_PROMPTS = ROOT / "scripts" / "sample_prompts.jsonl"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["llama", "sim"], default="llama")
    parser.add_argument("--stand-in-model", default="smollm2:135m")
    parser.add_argument("--model", default="gemma2:9b", help="the model baked into the image")
    parser.add_argument("--prompts", type=Path, default=SAMPLE_PROMPTS)
    parser.add_argument("--keep-state", action="store_true", help="keep the emulator's state")
    return parser.parse_args(argv)


def use_local_prefect() -> None:
    """Without a Prefect server, Prefect starts a temporary one; keep its database in .local/."""
    if not os.environ.get("PREFECT_API_URL"):
        home = Path(os.environ.setdefault("PREFECT_HOME", str(ROOT / ".local" / "prefect")))
        home.mkdir(parents=True, exist_ok=True)
    # A fresh database takes 15 s of migrations on two busy cores; the default allows 20.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("OLLAMA_CLOUDRUN_PROGRESS", "1")


def upload_prompts(project: str, prompts: Path) -> tuple[str, str]:
    from google.cloud import storage

    client = storage.Client(project=project)
    bucket = client.bucket(f"{project}-batch")
    if not bucket.exists():
        client.create_bucket(bucket, location="us-central1")
    blob = bucket.blob(f"prompts/{prompts.name}")
    blob.upload_from_filename(str(prompts), if_generation_match=0)
    return f"gs://{bucket.name}/{blob.name}", f"gs://{bucket.name}/results/"


def read_results(output: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from google.cloud import storage

    bucket_name, _, prefix = output.removeprefix("gs://").partition("/")
    bucket = storage.Client().bucket(bucket_name)
    manifest = json.loads(bucket.blob(f"{prefix}manifest.json").download_as_bytes())
    records: list[dict[str, Any]] = []
    for blob in bucket.list_blobs(prefix=f"{prefix}results/"):
        if blob.name.endswith(".jsonl"):
            records += [json.loads(line) for line in blob.download_as_text().splitlines() if line]
    return manifest, records


def services_left(project: str) -> list[str]:
    from tasks.clients import resolve_cloud, run_services_client

    client = run_services_client(resolve_cloud(project))
    parent = f"projects/{project}/locations/-"
    return [service.name for service in client.list_services(parent=parent)]


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    use_local_prefect()
    started = time.monotonic()
    state_dir = Path(tempfile.mkdtemp(prefix="ollama-cloudrun-demo-"))

    from emulator.gcp import running_gcp_emulator

    print(f"==> starting the Google Cloud emulator ({args.engine} engine) in {state_dir}")
    with running_gcp_emulator(
        state_dir,
        ollama_engine=args.engine,
        stand_in_model=args.stand_in_model,
        build_seconds=1.0,
    ) as gcp:
        # Before anything imports google-auth: it reads GCE_METADATA_HOST at import.
        os.environ.update(gcp.env)
        project = gcp.env["GOOGLE_CLOUD_PROJECT"]
        prompts_uri, output_uri = upload_prompts(project, args.prompts)
        print(f"==> uploaded {args.prompts.name} to {prompts_uri}")

        from flows.pipeline import PipelineParameters, pipeline

        params = PipelineParameters(
            project=project, model=args.model, input=prompts_uri, output=output_uri, teardown=True
        )
        print("==> running the pipeline: deploy → smoke test → batch → teardown")
        result = asyncio.run(pipeline(params))  # type: ignore[arg-type]
        manifest, records = read_results(output_uri)
        leftover = services_left(project)

    if not args.keep_state:
        shutil.rmtree(state_dir, ignore_errors=True)
    return report(args, result, manifest, records, leftover, time.monotonic() - started)


def report(
    args: argparse.Namespace,
    result: dict[str, Any],
    manifest: dict[str, Any],
    records: list[dict[str, Any]],
    leftover: list[str],
    seconds: float,
) -> int:
    counts = manifest.get("counts", {})
    tokens = manifest.get("tokens", {})
    engine = (
        f"{args.stand_in_model} via llama.cpp on the CPU, standing in for {args.model}"
        if args.engine == "llama"
        else f"the sim engine, standing in for {args.model}"
    )
    print()
    print("==> summary")
    print(
        f"service    {result.get('service')} at {result.get('uri')} (revision "
        f"{result.get('revision')})"
    )
    print(f"model      {args.model} — served by {engine}")
    print(f"results    {manifest.get('output')} ({len(records)} result records)")
    print(
        "prompts    "
        + ", ".join(f"{k} {counts.get(k, 0)}" for k in ("total", "succeeded", "failed", "skipped"))
    )
    print(
        f"tokens     {tokens.get('prompt', 0)} in, {tokens.get('eval', 0)} out, "
        f"{tokens.get('eval_per_s', 0)} tokens/s"
    )
    for record in records[:2]:
        answer = " ".join(str(record.get("response", "")).split())
        print(f"answer     [{record.get('id')}] {answer[:110]}")
    print(f"teardown   {result.get('teardown')}; Cloud Run services left: {len(leftover)}")
    print(f"took       {seconds:.0f} s")
    ok = (
        counts.get("failed", 1) == 0
        and counts.get("succeeded") == counts.get("total") == len(records)
        and result.get("teardown") == "done"
        and not leftover
    )
    print("==> demo " + ("succeeded" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
