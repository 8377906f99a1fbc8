"""The Cloud Run request built from the defaults, pinned to the tutorial's gcloud flags."""

from __future__ import annotations

import json

import pytest
from google.cloud import run_v2
from pydantic import ValidationError

from flows.deploy import DeployParameters
from tasks.cloud_run import build_service, service_fingerprint
from tasks.errors import QuotaExceededError, translate_google_error
from tasks.models import ServiceSpec

SA = "ollama@my-proj.iam.gserviceaccount.com"
IMAGE = "us-central1-docker.pkg.dev/my-proj/ollama/ollama-gemma@sha256:" + "a" * 64


def _wire(service: run_v2.Service) -> dict[str, object]:
    """The JSON body the REST transport sends (camelCase, integer enums)."""
    data: dict[str, object] = json.loads(
        run_v2.Service.to_json(
            service, use_integers_for_enums=True, including_default_value_fields=False
        )
    )
    return data


def test_defaults_match_the_tutorial_flags_field_by_field() -> None:
    # gcloud beta run deploy ollama-gemma --image IMAGE --concurrency 4 --cpu 8
    #   --set-env-vars OLLAMA_NUM_PARALLEL=4 --gpu 1 --gpu-type nvidia-l4 --max-instances 7
    #   --memory 32Gi --no-allow-unauthenticated --no-cpu-throttling --service-account SA
    #   --timeout=600   (+ --no-gpu-zonal-redundancy: this project's cost default)
    spec = DeployParameters().spec
    assert spec.service == "ollama-gemma" and spec.region == "us-central1"
    service = build_service(spec, IMAGE, SA, {"managed-by": "ollama-cloudrun"})
    template = service.template
    container = template.containers[0]
    assert container.image == IMAGE  # --image
    assert template.max_instance_request_concurrency == 4  # --concurrency 4
    assert container.resources.limits["cpu"] == "8"  # --cpu 8
    assert [(e.name, e.value) for e in container.env] == [("OLLAMA_NUM_PARALLEL", "4")]
    assert container.resources.limits["nvidia.com/gpu"] == "1"  # --gpu 1
    assert template.node_selector.accelerator == "nvidia-l4"  # --gpu-type nvidia-l4
    assert template.scaling.max_instance_count == 7  # --max-instances 7
    assert container.resources.limits["memory"] == "32Gi"  # --memory 32Gi
    assert container.resources.cpu_idle is False  # --no-cpu-throttling
    assert template.service_account == SA  # --service-account SA
    assert template.timeout.total_seconds() == 600  # --timeout=600
    assert template.gpu_zonal_redundancy_disabled is True  # --no-gpu-zonal-redundancy
    assert service.invoker_iam_disabled is False  # --no-allow-unauthenticated
    assert container.ports[0].container_port == 8080

    wire = _wire(service)
    wire_template = wire["template"]
    assert isinstance(wire_template, dict)
    assert wire_template["maxInstanceRequestConcurrency"] == 4
    assert wire_template["scaling"] == {"maxInstanceCount": 7}
    assert wire_template["timeout"] == "600s"
    assert wire_template["nodeSelector"] == {"accelerator": "nvidia-l4"}
    assert wire_template["gpuZonalRedundancyDisabled"] is True
    assert wire_template["serviceAccount"] == SA
    assert wire_template["containers"][0]["resources"]["limits"] == {
        "cpu": "8",
        "memory": "32Gi",
        "nvidia.com/gpu": "1",
    }
    assert wire["ingress"] == 1  # INGRESS_TRAFFIC_ALL: private through IAM, not through ingress


def test_zonal_redundancy_is_a_parameter() -> None:
    spec = ServiceSpec(gpu_zonal_redundancy=True)
    assert build_service(spec, IMAGE, SA, {}).template.gpu_zonal_redundancy_disabled is False


def test_fingerprint_ignores_the_run_label_but_not_the_spec() -> None:
    spec = ServiceSpec()
    a = build_service(
        spec, IMAGE, SA, {"managed-by": "ollama-cloudrun", "ollama-cloudrun-run": "a"}
    )
    b = build_service(
        spec, IMAGE, SA, {"managed-by": "ollama-cloudrun", "ollama-cloudrun-run": "b"}
    )
    assert service_fingerprint(a) == service_fingerprint(b)
    c = build_service(ServiceSpec(max_instances=6), IMAGE, SA, {"managed-by": "ollama-cloudrun"})
    assert service_fingerprint(a) != service_fingerprint(c)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cpu": 2}, "at least 4 CPU"),
        ({"memory": "8Gi"}, "at least 16Gi"),
        ({"cpu_throttling": True}, "CPU always allocated"),
        ({"concurrency": 9}, "2 × OLLAMA_NUM_PARALLEL"),
        ({"region": "europe-west2"}, "has no Cloud Run L4 GPUs"),
        ({"service": "Ollama_Gemma"}, "String should match pattern"),
        ({"service": "9lives"}, "String should match pattern"),
        ({"gpu_type": "nvidia-h100"}, "nvidia-l4"),
        ({"max_instances": 0}, "greater than or equal to 1"),
    ],
)
def test_invalid_specs_fail_before_any_call(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ServiceSpec.model_validate(change)


def test_invoker_can_never_be_public() -> None:
    with pytest.raises(ValidationError):
        DeployParameters(invoker="allUsers")


def test_gpu_quota_message_names_quota_and_what_fits() -> None:
    from google.api_core import exceptions as gexc

    google = gexc.BadRequest(
        "template.scaling.max_instance_count: Max instances must be set to 3 or fewer in order to "
        "set GPU requirements. To request quota: g.co/cloudrun/gpu-quota Quota violated: "
        "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion requested: 7 allowed: 3"
    )
    error = translate_google_error(google, "deploy")
    assert isinstance(error, QuotaExceededError)
    assert error.quota == "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion"
    assert error.max_fit == 3
    assert "max_instances=3" in str(error)
