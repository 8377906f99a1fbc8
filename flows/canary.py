"""The canary step of ``deploy``: a changed service's new revision is smoke-tested on its tag URL
while the revisions serving keep all traffic; only then does the traffic move to it, in
``traffic_steps`` (a smoke test of the service URL at each step below 100 %).

Any failure raises: ``deploy``'s transaction rollback (tasks/cloud_run.py ``revert_service``)
then puts the traffic back where it was and removes the tag, making no revision.
"""

from __future__ import annotations

from flows.parameters import DeployParameters, SmokeTestParameters
from flows.smoke_test import smoke_test
from tasks import cloud_run, rollout
from tasks.clients import GoogleCloud
from tasks.errors import ConfigurationError


def smoke_parameters(
    cloud: GoogleCloud, params: DeployParameters, url: str | None = None
) -> SmokeTestParameters:
    return SmokeTestParameters(
        project=cloud.project,
        credentials_block=params.credentials_block,
        service=params.service,
        region=params.region,
        model=params.model,
        url=url,
        invoker_propagation_timeout_seconds=params.invoker_propagation_timeout_seconds,
    )


def roll_out(
    cloud: GoogleCloud, params: DeployParameters, outcome: cloud_run.DeployOutcome
) -> tuple[dict[str, object], dict[str, str]]:
    """Test the candidate on its tag URL, then move the traffic to it step by step.

    Returns the candidate's smoke test summary and the rollout's record for the artifact.
    """
    live = cloud_run.get_service(cloud, outcome.name)
    if live is None:
        raise ConfigurationError(f"{outcome.name} disappeared during its rollout")
    url = rollout.tag_url(live)
    smoke: dict[str, object] = {}
    if params.run_smoke_test:
        smoke = smoke_test(smoke_parameters(cloud, params, url))
    for percent in params.traffic_steps:
        targets = rollout.step_traffic(outcome.serving, outcome.candidate, percent)
        rollout.move_traffic(cloud, outcome.name, targets)
        if params.run_smoke_test and percent < 100:
            smoke_test(smoke_parameters(cloud, params))
    tested = "passed its smoke test on the tag URL" if params.run_smoke_test else "(no smoke test)"
    steps = " → ".join(f"{p} %" for p in params.traffic_steps)
    return smoke, {
        "serving": f"{outcome.candidate} (100 %)",
        "why": f"the candidate {tested}; traffic moved {steps}",
        "before": ", ".join(map(str, outcome.serving)),
        "candidate tag URL": url,
    }


def failed_rollout(
    cloud: GoogleCloud, name: str, outcome: cloud_run.DeployOutcome | None, error: BaseException
) -> dict[str, str] | None:
    """What serves after a failed deploy was rolled back, and why; None when there is no
    service."""
    if outcome is not None and outcome.action == "created":
        return {"serving": "nothing (the new service was deleted)", "why": str(error)}
    live = cloud_run.get_service(cloud, name)
    if live is None:
        return None
    record = {
        "serving": ", ".join(map(str, rollout.serving(live))) or "nothing",
        "why": f"the deploy failed, the traffic stayed: {error}",
    }
    if outcome is not None and outcome.candidate:
        record["why"] = f"the candidate {outcome.candidate} failed: {error}"
        record["candidate"] = f"{outcome.candidate} (no traffic, untagged)"
    return record
