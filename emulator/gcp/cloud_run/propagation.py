"""Google's eventual consistency as Cloud Run shows it, by the emulator's clock (so that
`clock_offset_seconds` moves it as it moves every other emulator time).

- A runtime service account younger than `service_account_propagation_seconds` (or absent): Cloud
  Run's 403 actAs on a create or update (`check_act_as`).
- A new run.invoker member: every ingress of the service (its URL and each tag's) honours it only
  `iam_propagation_seconds` after the binding (`note_invokers`, read by `IngressRules`).
"""

from __future__ import annotations

from collections.abc import MutableMapping, Set
from typing import TYPE_CHECKING

from emulator.gcp.auth.tokens import admin_email
from emulator.gcp.errors import permission_denied
from emulator.gcp.iam import IamBackend

if TYPE_CHECKING:
    from emulator.gcp.registry import Emulator

# Cloud Run's 403 for a runtime service account the caller may not act as, or that does not exist
# (yet): verbatim from the JSON error of a Cloud Run deploy quoted in google/keyword_factory#22
# ({"code": 403, "message": ..., "status": "PERMISSION_DENIED"}); the same text in
# GoogleCloudPlatform/cloud-run-release-manager#81 and gcloud's "PERMISSION_DENIED: Permission
# 'iam.serviceaccounts.actAs' denied on service account X (or it may not exist)."
ACT_AS_DENIED = (
    "Permission 'iam.serviceaccounts.actAs' denied on service account {account} "
    "(or it may not exist)."
)


def check_act_as(emulator: Emulator, project: str, account: str) -> None:
    """403 actAs for a runtime account of this project that IAM does not have, or created less
    than `service_account_propagation_seconds` ago (IAM is eventually consistent). Other
    projects' accounts, the default compute account and the emulator's own are taken as is."""
    if not account.endswith(f"@{project}.iam.gserviceaccount.com"):
        return
    created = emulator.get(IamBackend).created_at(account)
    if created is None and account == admin_email(project):
        return
    delay = emulator.config.service_account_propagation_seconds
    if created is None or emulator.clock() < created + delay:
        raise permission_denied(ACT_AS_DENIED.format(account=account))


def note_invokers(
    emulator: Emulator,
    honoured_from: MutableMapping[str, float],
    before: Set[str],
    after: Set[str],
) -> None:
    """A new invoker is honoured by the ingress only `iam_propagation_seconds` later (Google:
    typically 2, up to 7 minutes; tasks/propagation.py). A removed one loses access at once
    (Google may honour it a while longer; nothing relies on either)."""
    honoured_at = emulator.clock() + emulator.config.iam_propagation_seconds
    for member in after - before:
        honoured_from[member] = honoured_at
    for member in before - after:
        honoured_from.pop(member, None)
