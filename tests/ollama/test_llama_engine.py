"""The llama engine without HTTP: what a slot's earlier generations may not change."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from emulator.ollama.catalog import build_entry, parse_spec
from emulator.ollama.engine import Done, Job, Message, Piece
from emulator.ollama.llama import LlamaEngine
from emulator.ollama.options import parse_options

pytestmark = pytest.mark.llama


def test_every_generation_evaluates_its_whole_prompt() -> None:
    """One slot runs B, A, B, B: each run evaluates B's whole prompt again and gives the same
    text for the same seed. Reusing the cached prefix would evaluate only the tail (one token for
    a repeated prompt), and on AVX-512 CPUs that shorter batch samples different text."""
    entry = build_entry(parse_spec("smollm2:135m"), "llama")
    options = parse_options({"num_predict": 5, "seed": 7})

    async def run() -> list[tuple[str, Done, list[int]]]:
        model: Any = await LlamaEngine(num_threads=1).load(entry, num_ctx=512, num_parallel=1)
        llm = model._contexts[0]
        evaluated: list[int] = []
        eval_tokens = llm.eval

        def spy(tokens: Any) -> Any:
            evaluated.append(len(tokens))
            return eval_tokens(tokens)

        llm.eval = spy
        runs: list[tuple[str, Done, list[int]]] = []
        try:
            for prompt in ("Name a fruit.", "Count to three.", "Name a fruit.", "Name a fruit."):
                job = Job(messages=(Message("user", prompt),), prompt="", options=options)
                evaluated.clear()
                text, done = "", None
                async for item in model.generate(0, job):
                    if isinstance(item, Piece):
                        text += item.text
                    else:
                        done = item
                assert done is not None
                runs.append((text, done, list(evaluated)))
        finally:
            await model.close()
        return runs

    runs = asyncio.run(run())
    for _, done, evaluated in runs:
        assert evaluated[0] == done.prompt_eval_count  # the whole prompt, in one batch
        assert all(n == 1 for n in evaluated[1:])  # then one token at a time
    first, _, again, last = runs
    assert first[0] == again[0] == last[0]
    assert first[1].context == again[1].context == last[1].context
