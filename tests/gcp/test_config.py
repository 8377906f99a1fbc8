"""The emulator's settings come from one model: flags, start_gcp_emulator options and the
run-time config endpoint are generated from `EmulatorConfig`."""

from __future__ import annotations

import argparse

import pytest

from emulator.gcp.__main__ import parse_args
from emulator.gcp.config import (
    FLAG_FIELDS,
    RUNTIME_CONFIG_FIELDS,
    EmulatorConfig,
    add_flags,
    config_argv,
    config_from_flags,
)


def test_every_setting_but_storage_url_is_a_flag() -> None:
    assert set(FLAG_FIELDS) == set(EmulatorConfig.model_fields) - {"storage_url"}
    assert {"build_seconds", "gpu_quota", "sim_env"} <= RUNTIME_CONFIG_FIELDS
    assert not {"host", "port", "state_dir", "project"} & RUNTIME_CONFIG_FIELDS


def test_options_round_trip_through_the_generated_flags() -> None:
    wanted = {
        "project": "p1",
        "gpu_quota": 3,
        "propagation_delay_seconds": 1.5,
        "token_lifetime_seconds": 60,
        "ollama_engine": "llama",
        "sim_env": {"OLLAMA_SIM_SEED": "7", "X": "a=b"},
    }
    argv = config_argv(wanted)
    assert "--propagation-delay" in argv and "--token-lifetime" in argv
    parser = argparse.ArgumentParser()
    add_flags(parser)
    config = config_from_flags(parser.parse_args(argv))
    assert config.model_dump(include=set(wanted)) == wanted
    assert config.build_seconds == EmulatorConfig().build_seconds  # unset: the model's default


def test_unknown_options_and_bad_values_are_refused() -> None:
    with pytest.raises(TypeError, match="unknown emulator option 'gpu_quotas'"):
        config_argv({"gpu_quotas": 1})
    with pytest.raises(SystemExit) as exited:
        parse_args(["--gpu-quota", "-1"])
    assert exited.value.code == 2
    with pytest.raises(SystemExit):
        parse_args(["--ollama-engine", "gpu"])
