"""Batch inference over prompts in Cloud Storage or local files (issue 5).

- ``inputs``: find prompt files (object, prefix, glob), stream lines, parse into requests/problems.
- ``records``: request, completion and output record shapes; token redaction.
- ``stores``: one object-store interface for ``gs://`` prefixes and local directories (create-only).
- ``ledger``: the ids already done / seen, disk-backed so memory stays flat.
- ``preflight``: before any prompt, the output must not overlap the input and must be writable.
- ``outputs``: shard layout, the exactly-once reconciliation rule, manifest.
- ``engine``: adaptive in-flight limit, retries, Ollama / OpenAI backends.
- ``target``: Cloud Run service lookup (uri, max instances, concurrency, resources).
- ``progress``: progress artifact and command-line progress bar.
- ``steps``: the Prefect tasks used by ``flows.batch.batch_inference``.
"""
