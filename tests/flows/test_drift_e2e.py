"""The drift check (issue 13, item 5): changes made behind the project's back, with the official
client, make the ``check`` flow fail naming them."""

from __future__ import annotations

import pytest
from google.cloud import run_v2
from google.iam.v1 import iam_policy_pb2, policy_pb2
from prefect.artifacts import Artifact

from flows.check import ARTIFACT_KEY, check
from flows.deploy import deploy
from flows.parameters import DeployParameters
from tasks import clients
from tasks.errors import DriftError
from tests.flows.conftest import EmulatorControl

pytestmark = pytest.mark.slow


def test_check_passes_then_fails_naming_allusers_and_a_changed_field(
    emulator_api: EmulatorControl, service_id: str
) -> None:
    name = deploy(DeployParameters(service=service_id, run_smoke_test=False))["service"]
    assert check() == []

    client = clients.run_services_client(clients.resolve_cloud())
    policy = client.get_iam_policy(request=iam_policy_pb2.GetIamPolicyRequest(resource=name))
    policy.bindings.append(policy_pb2.Binding(role="roles/run.invoker", members=["allUsers"]))
    client.set_iam_policy(request=iam_policy_pb2.SetIamPolicyRequest(resource=name, policy=policy))
    service = client.get_service(name=name)
    changed = run_v2.Service(name=name, template=service.template)
    changed.template.scaling.max_instance_count = 2
    client.update_service(
        request=run_v2.UpdateServiceRequest(service=changed, update_mask={"paths": ["template"]})
    ).result(timeout=120)

    state = check(return_state=True)  # type: ignore[call-overload]
    assert state.is_failed()
    with pytest.raises(DriftError) as raised:
        state.result()
    message = str(raised.value)
    assert "roles/run.invoker" in message and "granted to allUsers" in message
    assert "template.max_instances 7 → 2" in message
    artifact = Artifact.get(ARTIFACT_KEY)
    assert artifact is not None
    table = str(artifact.data)
    assert "allUsers" in table and "the service is public" in table
    assert "template.max_instances" in table
