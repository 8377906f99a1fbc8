"""Several regions in the parameters: ``regions`` with ``region`` as the one-region shorthand."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from flows.parameters import DeployParameters, PipelineParameters, TeardownParameters
from tasks.models import resolve_regions


def test_region_alone_is_one_region() -> None:
    assert DeployParameters().regions == ["us-central1"]
    params = DeployParameters(region="europe-west4")
    assert (params.region, params.regions) == ("europe-west4", ["europe-west4"])
    assert TeardownParameters(region="europe-west4").regions == ["europe-west4"]


def test_regions_set_region_to_the_first() -> None:
    params = DeployParameters(regions=["europe-west4", "us-central1"])
    assert params.region == "europe-west4"
    assert params.spec.region == "europe-west4"
    assert params.spec_for("us-central1").region == "us-central1"
    alone = params.for_region("us-central1")
    assert (alone.region, alone.regions, alone.service) == (
        "us-central1",
        ["us-central1"],
        params.service,
    )
    # Round trip (as the pipeline hands its parameters on): both given and consistent.
    again = DeployParameters.model_validate(params.model_dump())
    assert again.regions == params.regions and again.region == "europe-west4"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            {"region": "us-central1", "regions": ["europe-west4"]},
            "region is the one-region shorthand",
        ),
        ({"regions": ["us-central1", "us-central1"]}, "named more than once"),
        ({"regions": ["us-central1", "Europe/4"]}, "do not look like regions"),
        ({"regions": ["us-central1", "us-west2"]}, "region us-west2 has no Cloud Run L4 GPUs"),
    ],
)
def test_bad_regions_are_named(given: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DeployParameters.model_validate(given)


def test_region_equal_to_the_first_is_consistent() -> None:
    params = DeployParameters(region="europe-west4", regions=["europe-west4", "us-central1"])
    assert params.regions == ["europe-west4", "us-central1"]
    assert resolve_regions("us-central1", [], region_given=True) == ["us-central1"]


def test_teardown_regions_check_the_same_rule() -> None:
    with pytest.raises(ValidationError, match="disagree"):
        TeardownParameters(region="us-central1", regions=["europe-west4"])
    sweep = TeardownParameters(sweep=True, regions=["us-central1", "europe-west4"])
    assert sweep.region == "us-central1"


def test_pipeline_hands_its_regions_on(tmp_path: object) -> None:
    params = PipelineParameters.model_validate(
        {
            "input": "gs://b/in.jsonl",
            "output": "gs://b/out/",
            "regions": ["europe-west4", "us-central1"],
        }
    )
    assert params.deploy_parameters().regions == ["europe-west4", "us-central1"]
    assert params.teardown_parameters().regions == ["europe-west4", "us-central1"]
    both = params.batch_parameters()
    assert both.target == [f"europe-west4/{params.service}", f"us-central1/{params.service}"]
    assert [t.label for t in both.targets] == both.target
    one = params.batch_parameters(["us-central1"])  # the regions deployed: one left
    assert (one.target, one.region) == (params.service, "us-central1")
