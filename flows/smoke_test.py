"""Flow ``smoke_test``: prove a private Ollama service on Cloud Run answers, and time it.

An ID token with the service's uri as audience (refreshed when it expires) → the service stops
answering 403 to it (a new invoker binding propagates: minutes on Google) → ``/api/tags`` lists
the model → a short ``/api/generate`` returns text → a request without a token is refused (403
or 401). ``url`` tests another URL of the service instead: a revision tag's (the canary).
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.parameters import SmokeTestParameters
from tasks import cloud_run, ollama
from tasks.clients import caller_identity, resolve_cloud
from tasks.errors import ConfigurationError, SmokeTestError
from tasks.id_tokens import GoogleIdTokenAuth
from tasks.models import MODEL_ANNOTATION

# In the summary only when the service refused the caller's ID token at first (a new binding).
INVOKER_WAIT_KEY = "invoker propagation (s)"


def _markdown(summary: dict[str, object]) -> str:
    rows = "\n".join(f"| {k} | {str(v).replace('|', '/')} |" for k, v in summary.items())
    return f"## Smoke test\n\n| | |\n|---|---|\n{rows}\n"


@flow(name="smoke_test", log_prints=False)
def smoke_test(params: SmokeTestParameters | None = None) -> dict[str, object]:
    """Test the service; the summary (also the ``smoke-test-<service>`` artifact) is returned."""
    params = params or SmokeTestParameters()
    logger = get_run_logger()
    cloud = resolve_cloud(params.project, params.credentials_block)
    name = cloud_run.service_name(cloud.project, params.region, params.service)
    service = cloud_run.get_service(cloud, name)
    if service is None or not service.uri:
        raise ConfigurationError(f"Service {name} does not exist or has no uri; deploy it first")
    uri = params.url or service.uri
    model = params.model or service.annotations.get(MODEL_ANNOTATION) or "gemma2:9b"
    caller = caller_identity(cloud)
    # The service URL is an audience every URL of the service accepts, its tag URLs too.
    auth = GoogleIdTokenAuth(service.uri, caller.id_tokens)
    # The first request waits out a new invoker binding (403) before it times the cold start.
    tags = ollama.list_models(
        uri,
        auth,
        params.start_timeout_seconds,
        member=caller.member,
        service=name,
        invoker_timeout_seconds=params.invoker_propagation_timeout_seconds,
    )
    if not any(m == model or m == f"{model}:latest" for m in tags.models):
        raise SmokeTestError(f"{uri}/api/tags does not list {model}: {tags.models}")
    sample = ollama.generate_sample(uri, auth, model, params.prompt, params.num_predict)
    status = ollama.check_private(uri)

    waited = (
        {INVOKER_WAIT_KEY: round(tags.invoker_wait_seconds, 1)} if tags.invoker_wait_seconds else {}
    )
    summary: dict[str, object] = {
        "service": name,
        "uri": uri,
        "model": model,
        "models listed": ", ".join(tags.models),
        **waited,
        "cold start (s)": round(tags.seconds, 3),
        "first token (s)": round(sample.first_token_seconds, 3),
        "generation (s)": round(sample.total_seconds, 3),
        "tokens": sample.eval_count,
        "done reason": sample.done_reason,
        "without token": status,
        "sample answer": sample.text.strip().replace("\n", " ")[:300],
    }
    cloud_run.record_service_use(cloud, name)
    create_markdown_artifact(
        markdown=_markdown(summary),
        key=f"smoke-test-{params.service}",
        description=f"Smoke test of {name}",
    )
    logger.info(
        "Smoke test passed: cold start %.2f s, first token %.2f s",
        tags.seconds,
        sample.first_token_seconds,
    )
    return summary
