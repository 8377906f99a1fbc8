"""The Ollama emulator without HTTP: names, durations, options, stops, sim text, faults."""

from __future__ import annotations

import math

import pytest

from emulator.ollama.catalog import build_entry, parse_model_name, parse_spec
from emulator.ollama.config import (
    FaultRates,
    SimConfig,
    keep_alive_from_env,
    keep_alive_from_json,
    parse_go_duration,
)
from emulator.ollama.engine import Job, Message, StopMatcher, check_format
from emulator.ollama.errors import OllamaError
from emulator.ollama.options import GenOptions, parse_options
from emulator.ollama.sim import FaultInjector, count_tokens, render_prompt, sim_pieces


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300.0), ("1h30m", 5400.0), ("0", 0.0), ("1.5s", 1.5), ("250ms", 0.25), ("-1m", -60.0)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10", 'time: missing unit in duration "10"'),
        ("5x", 'time: unknown unit "x" in duration "5x"'),
        ("", 'time: invalid duration ""'),
    ],
)
def test_go_duration_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_go_duration(text)


def test_keep_alive_forms() -> None:
    assert keep_alive_from_json(None) is None
    assert keep_alive_from_json(30) == 30.0
    assert keep_alive_from_json("2m") == 120.0
    assert math.isinf(keep_alive_from_json(-1) or 0)
    assert math.isinf(keep_alive_from_json("-1m") or 0)
    assert keep_alive_from_env(None) == 300.0
    assert keep_alive_from_env("90") == 90.0
    assert keep_alive_from_env("1h") == 3600.0
    assert math.isinf(keep_alive_from_env("-1"))
    with pytest.raises(ValueError):
        keep_alive_from_json("10")


def test_model_names_follow_ollama_defaults() -> None:
    assert parse_model_name("gemma2").display == "gemma2:latest"
    assert parse_model_name("gemma2:9b").display == "gemma2:9b"
    assert parse_model_name("library/gemma2:9b").key == parse_model_name("GEMMA2:9B").key
    assert parse_model_name("me/gemma2:9b").display == "me/gemma2:9b"
    assert parse_model_name("example.com/me/m:t").full == "example.com/me/m:t"
    with pytest.raises(OllamaError, match="invalid model name"):
        parse_model_name("bad name!")


def test_specs_are_validated_per_engine() -> None:
    entry = build_entry(parse_spec("gemma2:9b=smollm2:135m"), "llama")
    assert entry.standin is not None and entry.standin.key == "smollm2:135m"
    assert entry.is_standin and "NOT the real gemma2:9b" in entry.describe()
    assert not build_entry(parse_spec("smollm2:135m"), "llama").is_standin
    with pytest.raises(ValueError, match="no real model 'gemma2:9b'"):
        build_entry(parse_spec("gemma2:9b"), "llama")
    with pytest.raises(ValueError, match="plain model names"):
        build_entry(parse_spec("a=smollm2:135m"), "sim")
    with pytest.raises(ValueError, match="NAME or NAME=STANDIN"):
        parse_spec("a=")


def test_options_defaults_are_ollamas() -> None:
    options = parse_options(None)
    assert (options.num_predict, options.temperature, options.top_k, options.top_p) == (
        -1,
        0.8,
        40,
        0.9,
    )
    assert (options.min_p, options.seed, options.repeat_penalty) == (0.0, -1, 1.0)
    merged = parse_options({"num_predict": 5.0, "stop": ["x"], "unknown_key": 1})
    assert merged.num_predict == 5 and merged.stop == ("x",)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"temperature": "hot"}, 'option "temperature" must be of type float32'),
        ({"num_predict": "5"}, 'option "num_predict" must be of type integer'),
        ({"use_mmap": 1}, 'option "use_mmap" must be of type boolean'),
        ({"stop": "x"}, 'option "stop" must be of type array'),
    ],
)
def test_option_type_errors_are_500_like_ollama(raw: dict[str, object], message: str) -> None:
    with pytest.raises(OllamaError) as info:
        parse_options(raw)
    assert (info.value.status, info.value.message) == (500, message)


def test_stop_matcher_holds_back_partial_stops() -> None:
    matcher = StopMatcher(("END",))
    assert matcher.feed("hello E") == ("hello ", False)
    assert matcher.feed("N") == ("", False)
    assert matcher.feed("D tail") == ("", True)
    other = StopMatcher(("END",))
    assert other.feed("E") == ("", False)
    assert other.feed("x") == ("Ex", False)
    assert other.flush() == ""


def test_format_validation() -> None:
    assert check_format(None) is None and check_format("") is None
    assert check_format("json") == "json"
    assert check_format({"type": "object"}) == {"type": "object"}
    with pytest.raises(OllamaError, match='expected "json" or a valid JSON Schema object'):
        check_format("yaml")


def _job(prompt: str, **options: object) -> Job:
    return Job(
        messages=(Message("user", prompt),),
        prompt=prompt,
        options=parse_options(options or None),
    )


def test_sim_text_is_deterministic_and_counted() -> None:
    config = SimConfig()
    job = _job("Why is the sky blue?")
    rendered = render_prompt(job)
    first = sim_pieces(job, rendered, "gemma2:9b", config)
    assert first == sim_pieces(job, rendered, "gemma2:9b", config)
    assert first != sim_pieces(job, rendered, "other:1b", config)
    seeded = _job("Why is the sky blue?", seed=7)
    assert sim_pieces(seeded, rendered, "gemma2:9b", config) != first
    text = "".join(first)
    assert count_tokens(text) == len(first)
    assert config.min_tokens <= len(first) and text.endswith(".")


def test_sim_json_format_is_valid_json() -> None:
    import json

    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    }
    job = Job(messages=None, prompt="x", options=GenOptions(), format=schema)
    value = json.loads("".join(sim_pieces(job, "x", "m", SimConfig())))
    assert set(value) == {"name", "age"} and isinstance(value["age"], int)


def test_fault_draws_repeat_for_the_same_seed() -> None:
    rates = FaultRates(busy_503=0.2, error_500=0.1, reset=0.1, midstream=0.1, stall=0.1)
    first = FaultInjector(SimConfig(seed=3, faults=rates))
    second = FaultInjector(SimConfig(seed=3, faults=rates))
    other = FaultInjector(SimConfig(seed=4, faults=rates))
    a = [first.draw() for _ in range(50)]
    assert a == [second.draw() for _ in range(50)]
    assert a != [other.draw() for _ in range(50)]
    kinds = {f.kind for f in a if f is not None}
    assert kinds == {"503", "500", "reset", "midstream", "stall"}
    first.reset()
    assert [first.draw() for _ in range(50)] == a


def test_fault_script_comes_first() -> None:
    injector = FaultInjector(SimConfig())
    assert not injector.active
    injector.script(["reset", "none"], at_piece=0)
    assert injector.active
    first = injector.draw()
    assert first is not None and (first.kind, first.at_piece) == ("reset", 0)
    assert injector.draw() is None
    with pytest.raises(ValueError, match="unknown fault"):
        injector.script(["boom"])


def test_sim_config_rejects_bad_rates() -> None:
    with pytest.raises(ValueError, match="at most 1"):
        SimConfig(faults=FaultRates(busy_503=0.7, reset=0.7)).validate()
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        SimConfig(faults=FaultRates(stall=-0.1)).validate()


def test_cut_output_applies_limits_and_stops() -> None:
    from emulator.ollama.sim import cut_output

    pieces = ["One", " two", " three", "."]
    assert cut_output(pieces, 10, ()) == (["One", " two", " three", "."], "stop")
    assert cut_output(pieces, 2, ()) == (["One", " two"], "length")
    assert cut_output(pieces, 10, (" thr",)) == (["One", " two", ""], "stop")
    texts, reason = cut_output(pieces, 10, ("wo t",))
    assert ("".join(texts), reason) == ("One t", "stop")
    assert cut_output(pieces, 0, ()) == ([], "length")
