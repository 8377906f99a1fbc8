"""Cloud Run Admin API v2: services (+ IAM policy), really served when ready.

Files: `spec` (checks and defaults, pure), `backend` (services and policies, no HTTP),
`revisions` (generations and reconciliation threads), `serving` (the revision's Ollama server),
`routes`.

Validation is Google's, as INVALID_ARGUMENT on the call: the service id, GPU services (a known
accelerator, one GPU, >= 4 CPU and >= 16 GiB, CPU always allocated), request concurrency
1..1000, max instances 0..1000, request timeout <= 3600 s, and a GPU quota per project, region
and pool (with / without zonal redundancy) and CPU / memory allocation quotas, with Google's
messages, against the values the emulated Cloud Quotas API serves (default GPU: `config.gpu_quota`).
Regions are independent.

A create or update that changes the template makes a revision `<service>-<00001>-<abc>` and
reconciles it on a thread: the image must be in the emulated Artifact Registry (else the LRO
fails with `Image '...' not found.`), then an `emulator.ollama` server is started for the model
baked into the image (the configured engine; the llama engine serves it with the stand-in model
and must have loaded it). Only then is the service Ready and the LRO done. Every service has an
`Ingress` at its `uri` (ID tokens, `roles/run.invoker`, max instances × concurrency).
Deleting a service stops its backend and ingress; a restored state dir restarts them.
"""

from emulator.gcp.cloud_run.backend import AnsweredRequests, CloudRunBackend
from emulator.gcp.cloud_run.routes import routes
from emulator.gcp.cloud_run.serving import launch_ollama
from emulator.gcp.cloud_run.spec import (
    SERVICE,
    parse_cpu,
    parse_memory,
    quota_message,
    validate_service,
    validate_service_id,
)

__all__ = [
    "SERVICE",
    "AnsweredRequests",
    "CloudRunBackend",
    "launch_ollama",
    "parse_cpu",
    "parse_memory",
    "quota_message",
    "routes",
    "validate_service",
    "validate_service_id",
]
