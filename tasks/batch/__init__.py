"""Batch inference over prompts in Cloud Storage or local files (issue 5).

``flows.batch.batch_inference`` reads as resolve → plan → run shards → reconcile → report:

- ``params``: the parameter model (``BatchSettings`` + the service; engine and prices sub-models).
- ``preflight``: before any prompt, the output must not overlap the input and must be writable.
- ``target``: Cloud Run service lookup (uri, max instances, concurrency, resources).
- ``inputs``: find prompt files (object, prefix, glob), stream lines, parse into requests/problems.
- ``plan``: the input streamed into shards of prompts still to do.
- ``dispatch``: the shard-level Prefect tasks, a few at once, and the progress they report.
- ``engine``: adaptive in-flight limit and retries; ``backends``: Ollama / OpenAI on the wire.
- ``records``: request, completion and output record shapes; token redaction.
- ``stores``: one object-store interface for ``gs://`` prefixes and local directories (create-only).
- ``ledger``: the ids already done / seen, disk-backed so memory stays flat.
- ``outputs``: shard layout, the exactly-once reconciliation rule, manifest file.
- ``manifest``: the typed ``BatchManifest`` and its summary rows; ``cost``: the cost model.
- ``progress``: progress artifact and command-line progress bar.
- ``steps``: the Prefect tasks of the I/O steps, and the engine they share.
"""
