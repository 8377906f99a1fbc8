"""Google's discovery documents as the judge of what the flows send and the emulator answers.

google-api-python-client ships Google's own discovery documents (the machine-readable REST
reference: every method's HTTP path, query parameters and request/response schemas). `Judge`
checks one recorded HTTP exchange against them:

- the method and path are declared by some method of the APIs in scope (path variables matched
  against their declared `pattern`);
- every query parameter is declared, by the method or as a standard parameter;
- request and response bodies hold only declared fields, with declared JSON types and enum
  values (proto3 JSON: int64 as string or number, enums as name or, under
  `$alt=json;enum-encoding=int`, as number);
- `Operation.response` and `Operation.metadata` are judged by the schema their `@type` names;
- errors are `{"error": {"code", "message", "status", "details"}}` as `google.rpc.Status`.

The judge reports violations as sentences; it never raises on a bad exchange.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import googleapiclient
from google.protobuf import json_format

DOCUMENTS = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents"

# The APIs the flows call (issue 12: Cloud Run v2, Cloud Build v1, Artifact Registry v1, Service
# Usage v1, IAM v1, IAM Credentials v1), plus those the preflight and billing read. (Cloud Quotas
# has no document in google-api-python-client 2.202.)
SCOPE = (
    "run.v2",
    "cloudbuild.v1",
    "artifactregistry.v1",
    "serviceusage.v1",
    "iam.v1",
    "iamcredentials.v1",
    "cloudresourcemanager.v3",
    "monitoring.v3",
)
# APIs without a discovery document in google-api-python-client 2.202 (Cloud Quotas): judged by
# the official GAPIC client instead: its REST transport's HTTP rules (rest_base.py) for paths,
# and its proto messages, parsed strictly, for bodies.
GAPIC_SCOPE = ("google.cloud.cloudquotas_v1",)

# System parameters every Google REST API takes besides the documents' own `parameters`: the
# GAPIC REST transports send `$alt=json;enum-encoding=int` on every call (google-cloud-python,
# e.g. google/cloud/run_v2/services/services/transports/rest_base.py: `query_params["$alt"]`).
SYSTEM_QUERY = {"$alt", "$prettyPrint", "$fields", "$callback"}

# google.rpc.Code names (googleapis/google/rpc/code.proto), the `status` of an error body.
RPC_CODES = {
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
}  # fmt: skip

# google.rpc error detail messages (googleapis/google/rpc/error_details.proto) and their fields.
ERROR_DETAILS: dict[str, set[str]] = {
    "google.rpc.ErrorInfo": {"reason", "domain", "metadata"},
    "google.rpc.RetryInfo": {"retryDelay"},
    "google.rpc.DebugInfo": {"stackEntries", "detail"},
    "google.rpc.QuotaFailure": {"violations"},
    "google.rpc.PreconditionFailure": {"violations"},
    "google.rpc.BadRequest": {"fieldViolations"},
    "google.rpc.RequestInfo": {"requestId", "servingData"},
    "google.rpc.ResourceInfo": {"resourceType", "resourceName", "owner", "description"},
    "google.rpc.Help": {"links"},
    "google.rpc.LocalizedMessage": {"locale", "message"},
}

_INT = re.compile(r"^-?\d+$")
_DURATION = re.compile(r"^-?\d+(\.\d{1,9})?s$")
_DATETIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")
_FIELD_MASK = re.compile(r"^[A-Za-z0-9_.,]*$")


@dataclass(frozen=True)
class Exchange:
    """One HTTP request to the emulated APIs and the answer it got."""

    method: str
    path: str  # as sent, percent-encoded, without the query string
    query: Mapping[str, list[str]]
    request_body: Any
    status: int
    response_body: Any

    @property
    def int_enums(self) -> bool:
        return any("enum-encoding=int" in v for v in self.query.get("$alt", []))

    def __str__(self) -> str:
        return f"{self.method} /{self.path.strip('/')}"


@dataclass(frozen=True)
class _Method:
    api: str  # "run.v2"
    id: str  # "run.projects.locations.services.create"
    http_method: str
    regex: re.Pattern[str]
    path_patterns: dict[str, re.Pattern[str]]
    query: frozenset[str]
    request: str | None
    response: str | None


@dataclass
class _Document:
    name: str
    schemas: dict[str, dict[str, Any]]
    standard_query: frozenset[str]
    methods: list[_Method] = field(default_factory=list)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _path_regex(path: str) -> tuple[re.Pattern[str], list[str]]:
    """`v2/{+name}:exportImage` → a regex with one group per variable (`+` may span `/`)."""
    names: list[str] = []
    out = ""
    for literal, plus, var in re.findall(r"([^{]*)(?:\{(\+?)([^}]+)\})?", path):
        out += re.escape(literal)
        if var:
            names.append(var)
            out += f"(?P<v{len(names) - 1}>{'.+?' if plus else '[^/]+?'})"
    return re.compile(f"^{out}$"), names


def _walk_methods(resources: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for resource in resources.values():
        yield from resource.get("methods", {}).values()
        yield from _walk_methods(resource.get("resources", {}))


def load_document(name: str) -> _Document:
    raw = json.loads((DOCUMENTS / f"{name}.json").read_text())
    doc = _Document(name, raw["schemas"], frozenset(raw.get("parameters", {})))
    for method in _walk_methods(raw["resources"]):
        regex, names = _path_regex(method["path"])
        params = method.get("parameters", {})
        patterns = {
            f"v{i}": re.compile(params[var]["pattern"])
            for i, var in enumerate(names)
            if var in params and "pattern" in params[var]
        }
        doc.methods.append(
            _Method(
                api=name,
                id=method["id"],
                http_method=method["httpMethod"],
                regex=regex,
                path_patterns=patterns,
                query=frozenset(k for k, v in params.items() if v["location"] == "query"),
                request=method.get("request", {}).get("$ref"),
                response=method.get("response", {}).get("$ref"),
            )
        )
    return doc


@dataclass(frozen=True)
class _GapicMethod:
    """One REST binding of a GAPIC method, and its request/response proto-plus classes."""

    id: str
    http_method: str
    regex: re.Pattern[str]
    request: type[Any]
    response: type[Any]


def _template_regex(uri: str) -> re.Pattern[str]:
    """`/v1/{name=projects/*/locations/*}/x` → a regex (`*` one segment, `**` any)."""
    out = ""
    for literal, pattern in re.findall(r"([^{]*)(?:\{[^=}]+=([^}]+)\})?", uri.strip("/")):
        out += re.escape(literal)
        if pattern:
            out += "/".join(
                "[^/]+" if seg == "*" else ".+" if seg == "**" else re.escape(seg)
                for seg in pattern.split("/")
            )
    return re.compile(f"^{out}$")


def load_gapic(package: str) -> list[_GapicMethod]:
    """The REST bindings of every service of a GAPIC package, read from its own transports."""
    import importlib
    import inspect

    types = importlib.import_module(package)
    methods = []
    for module_name in _rest_base_modules(package):
        module = importlib.import_module(module_name)
        for transport in vars(module).values():
            if not inspect.isclass(transport):
                continue
            for name, binding in vars(transport).items():
                if not (name.startswith("_Base") and hasattr(binding, "_get_http_options")):
                    continue
                rpc = name.removeprefix("_Base")
                request = getattr(types, f"{rpc}Request", None)
                response = getattr(types, rpc.removeprefix("Get"), None)
                if rpc.startswith("List"):
                    response = getattr(types, f"{rpc}Response", None)
                if request is None or response is None:
                    continue
                for option in binding._get_http_options():
                    methods.append(
                        _GapicMethod(
                            f"{package}.{rpc}",
                            option["method"].upper(),
                            _template_regex(option["uri"]),
                            request,
                            response,
                        )
                    )
    return methods


def _rest_base_modules(package: str) -> list[str]:
    import importlib

    root = Path(importlib.import_module(package).__file__ or "").parent / "services"
    return [
        f"{package}.services.{p.parent.parent.name}.transports.rest_base"
        for p in root.glob("*/transports/rest_base.py")
    ]


def _proto_problem(message_class: type[Any], body: Any) -> str | None:
    try:
        message_class.from_json(json.dumps(body), ignore_unknown_fields=False)
    except (json_format.ParseError, TypeError, ValueError) as exc:
        return str(exc).splitlines()[0]
    return None


class Judge:
    """Checks exchanges against the discovery documents of `apis` (and GAPIC-only APIs)."""

    def __init__(self, apis: Iterable[str] = SCOPE, gapic: Iterable[str] = GAPIC_SCOPE) -> None:
        self.documents = [load_document(name) for name in apis]
        self.gapic = [m for package in gapic for m in load_gapic(package)]

    def _gapic_violations(self, exchange: Exchange) -> list[str] | None:
        """None when no GAPIC binding declares the path; else the violations found."""
        decoded = "/".join(unquote(s) for s in exchange.path.strip("/").split("/"))
        for method in self.gapic:
            if method.http_method != exchange.method or not method.regex.match(decoded):
                continue
            found = []
            fields = {_camel(f) for f in method.request.meta.fields}
            for name in exchange.query:
                if name not in SYSTEM_QUERY and name not in fields:
                    found.append(f"query parameter {name!r} is not declared")
            if exchange.status >= 400:
                found += list(_check_error(exchange.status, exchange.response_body))
            elif (problem := _proto_problem(method.response, exchange.response_body)) is not None:
                found.append(f"response: {problem}")
            return [f"{exchange} ({method.id}): {v}" for v in found]
        return None

    def candidates(self, method: str, path: str) -> list[tuple[_Document, _Method]]:
        decoded = "/".join(unquote(s) for s in path.strip("/").split("/"))
        found = []
        for doc in self.documents:
            for candidate in doc.methods:
                if candidate.http_method != method:
                    continue
                match = candidate.regex.match(decoded)
                if match and all(
                    p.search(match.group(g)) for g, p in candidate.path_patterns.items()
                ):
                    found.append((doc, candidate))
        return found

    def violations(self, exchange: Exchange) -> list[str]:
        candidates = self.candidates(exchange.method, exchange.path)
        if not candidates:
            gapic = self._gapic_violations(exchange)
            if gapic is not None:
                return gapic
            return [f"{exchange}: no method of {', '.join(SCOPE + GAPIC_SCOPE)} declares this path"]
        best: list[str] | None = None
        for doc, method in candidates:
            found = [f"{exchange} ({method.id}): {v}" for v in self._judge(doc, method, exchange)]
            if best is None or len(found) < len(best):
                best = found
            if not found:
                break
        return best or []

    def _judge(self, doc: _Document, method: _Method, exchange: Exchange) -> Iterator[str]:
        allowed = method.query | doc.standard_query | SYSTEM_QUERY
        for name in exchange.query:
            if name not in allowed:
                yield f"query parameter {name!r} is not declared"
        if exchange.request_body not in (None, {}, b"", ""):
            if method.request is None:
                yield "sends a body to a method that declares none"
            else:
                schema = _Schemas(doc, exchange.int_enums, request=True)
                yield from schema.check(exchange.request_body, {"$ref": method.request}, "request")
        if exchange.status >= 400:
            yield from _check_error(exchange.status, exchange.response_body)
        elif method.response is not None:
            schema = _Schemas(doc, exchange.int_enums, request=False)
            yield from schema.check(exchange.response_body, {"$ref": method.response}, "response")


@dataclass
class _Schemas:
    doc: _Document
    int_enums: bool
    request: bool  # proto3 JSON parsers accept the original snake_case names in requests

    def check(self, value: Any, schema: Mapping[str, Any], where: str) -> Iterator[str]:
        if "$ref" in schema:
            ref = schema["$ref"]
            if ref not in self.doc.schemas:
                yield f"{where}: schema {ref} is missing from {self.doc.name}"
                return
            schema = self.doc.schemas[ref]
        kind = schema.get("type", "any")
        if _is_any(schema) or (kind == "any" and isinstance(value, dict) and "@type" in value):
            yield from self._typed_any(value, where)
        elif kind == "object":
            yield from self._object(value, schema, where)
        elif kind == "array":
            if not isinstance(value, list):
                yield f"{where}: expected an array, got {_kind(value)}"
                return
            for i, item in enumerate(value):
                yield from self.check(item, schema.get("items", {}), f"{where}[{i}]")
        elif kind != "any":
            problem = _scalar_problem(value, schema, self.int_enums)
            if problem:
                yield f"{where}: {problem}"

    def _object(self, value: Any, schema: Mapping[str, Any], where: str) -> Iterator[str]:
        if not isinstance(value, dict):
            yield f"{where}: expected an object, got {_kind(value)}"
            return
        properties: Mapping[str, Any] = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            name = _camel(key) if self.request else key
            if name in properties:
                yield from self.check(item, properties[name], f"{where}.{name}")
            elif extra is not None:
                yield from self.check(item, extra, f"{where}.{key}")
            else:
                yield f"{where}: unknown field {key!r}"

    def _typed_any(self, value: Any, where: str) -> Iterator[str]:
        """An `Any` (Operation.response/metadata, Status.details): judged by its `@type`."""
        if not isinstance(value, dict) or not value.get("@type"):
            yield f"{where}: expected an Any with @type, got {str(value)[:60]}"
            return
        type_url = str(value["@type"])
        full = type_url.rsplit("/", 1)[-1]
        rest = {k: v for k, v in value.items() if k != "@type"}
        if full in ERROR_DETAILS:
            extra = set(rest) - ERROR_DETAILS[full]
            if extra:
                yield f"{where}<{full}>: unknown fields {sorted(extra)}"
            return
        schema_id = _schema_for_type(self.doc, full)
        if schema_id is None:
            yield f"{where}: @type {type_url} names no schema of {self.doc.name}"
            return
        yield from self.check(rest, {"$ref": schema_id}, f"{where}<{full}>")


def _is_any(schema: Mapping[str, Any]) -> bool:
    """Discovery renders `google.protobuf.Any` as an object whose values mention `@type`."""
    extra = schema.get("additionalProperties")
    return (
        schema.get("type") == "object"
        and isinstance(extra, dict)
        and "@type" in str(extra.get("description", ""))
    )


def _schema_for_type(doc: _Document, full_name: str) -> str | None:
    """`google.cloud.run.v2.Service` → `GoogleCloudRunV2Service` (or `Service` in older docs)."""
    if full_name == "google.protobuf.Empty":
        return "Empty" if "Empty" in doc.schemas else "GoogleProtobufEmpty"
    long_id = "".join(part[:1].upper() + part[1:] for part in full_name.split("."))
    for candidate in (long_id, full_name.rsplit(".", 1)[-1]):
        if candidate in doc.schemas:
            return candidate
    return None


def _kind(value: Any) -> str:
    return type(value).__name__


def _scalar_problem(value: Any, schema: Mapping[str, Any], int_enums: bool) -> str | None:
    kind, fmt = schema.get("type"), schema.get("format", "")
    if kind == "boolean":
        return None if isinstance(value, bool) else f"expected a boolean, got {value!r}"
    if kind == "integer":
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and _INT.match(value)
        )
        return None if ok else f"expected an integer, got {value!r}"
    if kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return (
            None if ok or value in ("NaN", "Infinity", "-Infinity") else f"not a number: {value!r}"
        )
    if kind != "string":
        return f"unexpected schema type {kind!r}"
    if "enum" in schema:
        if int_enums and isinstance(value, int) and not isinstance(value, bool):
            return None if 0 <= value < 1_000 else f"enum number out of range: {value}"
        return None if value in schema["enum"] else f"{value!r} is not one of {schema['enum']}"
    if fmt in ("int64", "uint64"):
        ok = isinstance(value, int) and not isinstance(value, bool)
        return (
            None
            if ok or (isinstance(value, str) and _INT.match(value))
            else f"not int64: {value!r}"
        )
    if not isinstance(value, str):
        return f"expected a string, got {value!r}"
    if fmt == "google-duration" and not _DURATION.match(value):
        return f"not a duration: {value!r}"
    if fmt == "google-datetime" and not _DATETIME.match(value):
        return f"not an RFC 3339 timestamp: {value!r}"
    if fmt == "google-fieldmask" and not _FIELD_MASK.match(value):
        return f"not a field mask: {value!r}"
    if fmt == "byte":
        try:
            base64.b64decode(
                value + "=" * (-len(value) % 4),
                altchars=b"-_" if "-" in value or "_" in value else None,
                validate=True,
            )
        except ValueError:
            return f"not base64: {value[:20]!r}"
    return None


def _check_error(status: int, body: Any) -> Iterator[str]:
    """Google's error shape: google.rpc.Status inside `error` (https://google.aip.dev/193)."""
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"], dict):
        yield f"error {status}: body is not {{'error': {{...}}}}: {str(body)[:80]}"
        return
    error = body["error"]
    unknown = set(error) - {"code", "message", "status", "details", "errors"}
    if unknown:
        yield f"error {status}: unknown fields {sorted(unknown)}"
    if error.get("code") != status:
        yield f"error {status}: error.code is {error.get('code')!r}"
    if not isinstance(error.get("message"), str) or not error["message"]:
        yield f"error {status}: no message"
    if error.get("status") not in RPC_CODES:
        yield f"error {status}: status {error.get('status')!r} is not a google.rpc.Code"
    for i, detail in enumerate(error.get("details", [])):
        type_url = str(detail.get("@type", "")) if isinstance(detail, dict) else ""
        name = type_url.rsplit("/", 1)[-1]
        if name not in ERROR_DETAILS:
            yield f"error {status}: details[{i}] has unknown @type {type_url!r}"
            continue
        extra = set(detail) - ERROR_DETAILS[name] - {"@type"}
        if extra:
            yield f"error {status}: details[{i}] ({name}) has unknown fields {sorted(extra)}"
