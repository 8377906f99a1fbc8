"""IAM policies on projects and Artifact Registry repositories: read, set, and asked who holds what.

Routes (discovery documents cloudresourcemanager.v1/v3 and artifactregistry.v1):
  POST /v1/projects/{project}:getIamPolicy, POST /v3/projects/{project}:getIamPolicy
       {"options"?: {"requestedPolicyVersion"}} -> Policy
  POST /v1/projects/{project}:setIamPolicy, POST /v3/projects/{project}:setIamPolicy
       {"policy", "updateMask"?} -> Policy (409 ABORTED on a stale etag)
  GET  /v1/projects/{p}/locations/{l}/repositories/{r}:getIamPolicy?options.requestedPolicyVersion
  POST /v1/projects/{p}/locations/{l}/repositories/{r}:setIamPolicy {"policy", "updateMask"?}

The identities the emulator authenticates stay owners of the project whatever its policy says
(emulator.gcp.resource_manager); the policies matter for the identities that act on their own,
such as a build's service account (emulator.gcp.cloud_build.identity). A project's policy starts
as Google's automatic grant leaves it: `roles/editor` for the Compute Engine default service
account — the grant organisations created since 3 May 2024 no longer make (org policy
iam.automaticIamGrantsForDefaultServiceAccounts, https://cloud.google.com/resource-manager/docs/
organization-policy/restricting-service-accounts#disable_service_account_default_grants); a test
removes it with setIamPolicy, as such a project looks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.protobuf import json_format

from emulator.gcp.artifact_registry import ArtifactRegistryBackend
from emulator.gcp.artifact_registry.spec import SERVICE as ARTIFACT_REGISTRY
from emulator.gcp.errors import invalid_argument
from emulator.gcp.iam.policy import empty_policy, identity_members, members_with, replace_policy
from emulator.gcp.projects import project_number
from emulator.gcp.resource_manager import SERVICE as RESOURCE_MANAGER
from emulator.gcp.routing import Call, Route
from emulator.gcp.service_usage import ServiceUsageBackend

if TYPE_CHECKING:
    from emulator.gcp.registry import Emulator


def compute_default_account(project: str) -> str:
    return f"{project_number(project)}-compute@developer.gserviceaccount.com"


class ResourcePolicies:
    """IAM policies by resource name (`projects/ID`, `projects/P/locations/L/repositories/R`)."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self._policies: dict[str, policy_pb2.Policy] = {}

    def project_resource(self, project: str) -> str:
        return f"projects/{self.emulator.get(ServiceUsageBackend).resolve_project(project)}"

    def repository_resource(self, project: str, location: str, repository: str) -> str:
        """A repository's policy key: its name and creation time, so a deleted repository's
        policy goes with it (a recreated one starts empty, as on Google). 404 when absent."""
        repo = self.emulator.get(ArtifactRegistryBackend).get_repository(
            project, location, repository
        )
        created = repo.create_time.isoformat() if repo.create_time else ""
        name = f"{self.project_resource(project)}/locations/{location}/repositories/{repository}"
        return f"{name}@{created}"

    def get(self, resource: str) -> policy_pb2.Policy:
        policy = self._policies.get(resource)
        if policy is not None:
            return policy
        policy = empty_policy()
        project = resource.split("/")[1]
        if resource == f"projects/{project}":
            policy.bindings.add(
                role="roles/editor", members=[f"serviceAccount:{compute_default_account(project)}"]
            )
        return policy

    def set(self, resource: str, policy: policy_pb2.Policy) -> policy_pb2.Policy:
        self._policies[resource] = replace_policy(self.get(resource), policy)
        return self._policies[resource]

    def holds(self, resource: str, email: str, permission: str) -> bool:
        return bool(identity_members(email) & members_with(self.get(resource), permission))

    def snapshot(self) -> dict[str, Any]:
        return {r: json_format.MessageToDict(p) for r, p in self._policies.items()}

    def restore(self, state: dict[str, Any]) -> None:
        self._policies = {
            r: json_format.ParseDict(p, policy_pb2.Policy()) for r, p in state.items()
        }

    def close(self) -> None:
        pass


def _set_request(call: Call) -> iam_policy_pb2.SetIamPolicyRequest:
    request = iam_policy_pb2.SetIamPolicyRequest()
    try:
        json_format.ParseDict(call.body, request)
    except json_format.ParseError as exc:
        raise invalid_argument(f"Invalid JSON payload received. {exc}") from exc
    return request


def routes(emulator: Emulator) -> list[Route]:
    def policies() -> ResourcePolicies:
        return emulator.get(ResourcePolicies)  # per call: reset() rebuilds backends

    def project(call: Call) -> str:
        return policies().project_resource(call.param("project"))

    def repository(call: Call) -> str:
        p, loc, repo = call.param("project"), call.param("location"), call.param("repository")
        return policies().repository_resource(p, loc, repo)

    def get_project_policy(call: Call) -> policy_pb2.Policy:
        return policies().get(project(call))

    def set_project_policy(call: Call) -> policy_pb2.Policy:
        return policies().set(project(call), _set_request(call).policy)

    def get_repository_policy(call: Call) -> policy_pb2.Policy:
        return policies().get(repository(call))

    def set_repository_policy(call: Call) -> policy_pb2.Policy:
        return policies().set(repository(call), _set_request(call).policy)

    repo = "/v1/projects/{project}/locations/{location}/repositories/{repository}"
    return [
        *(
            Route("POST", f"/{v}/projects/{{project}}:{verb}", handler, RESOURCE_MANAGER)
            for v in ("v1", "v3")
            for verb, handler in (
                ("getIamPolicy", get_project_policy),
                ("setIamPolicy", set_project_policy),
            )
        ),
        Route("GET", repo + ":getIamPolicy", get_repository_policy, ARTIFACT_REGISTRY),
        Route("POST", repo + ":setIamPolicy", set_repository_policy, ARTIFACT_REGISTRY),
    ]
