"""The HTTP app: every API's route table assembled in one place, one dispatcher.

The dispatcher percent-decodes the path segment by segment (the REST clients quote path
variables: `%40`, `%3A`), ignores `$alt`/`alt`, requires a valid access token on every route
but the anonymous ones (401 UNAUTHENTICATED, checked first as on Google), checks the API's
enablement (403 SERVICE_DISABLED), calls one handler and renders errors as Google does.
Anything not implemented answers 501 naming the method and path.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as StarletteRoute

from emulator.gcp import (
    artifact_registry,
    auth,
    cloud_build,
    cloud_quotas,
    cloud_run,
    iam,
    iam_credentials,
    monitoring,
    resource_manager,
    resource_policies,
    service_usage,
    storage_front,
)
from emulator.gcp.auth.identity import authenticate
from emulator.gcp.config import RUNTIME_CONFIG_FIELDS, EmulatorConfig
from emulator.gcp.errors import GoogleApiError, invalid_argument, unimplemented
from emulator.gcp.protojson import message_to_json
from emulator.gcp.registry import Backend, BackendFactory, Emulator
from emulator.gcp.request_log import RequestLog
from emulator.gcp.routing import Call, Route, gate_project
from emulator.gcp.service_usage.gate import require_enabled

log = logging.getLogger("emulator.gcp")

JSON_TYPE = "application/json; charset=UTF-8"


def backend_factories() -> dict[str, BackendFactory]:
    """One backend per emulated API (Cloud Build and Cloud Run register here too)."""
    factories: dict[str, BackendFactory] = {
        "service_usage": service_usage.ServiceUsageBackend,
        "artifact_registry": artifact_registry.ArtifactRegistryBackend,
        "iam": iam.IamBackend,
        "cloud_build": cloud_build.CloudBuildBackend,
        "cloud_run": cloud_run.CloudRunBackend,
        "cloud_quotas": cloud_quotas.CloudQuotasBackend,
        "resource_manager": resource_manager.ResourceManagerBackend,
        "service_account_policies": iam_credentials.ServiceAccountPolicies,
        "monitoring": monitoring.MonitoringBackend,
        "storage_front": storage_front.StorageFront,
        "resource_policies": resource_policies.ResourcePolicies,
    }
    return factories


def api_routes(emulator: Emulator) -> list[Route]:
    """The whole route table: control endpoints, operations, then each API."""
    table = [
        *control_routes(),
        *operation_routes(),
        *service_usage.routes(emulator),
        *artifact_registry.routes(emulator),
        *iam.routes(emulator),
        *iam_credentials.routes(emulator),
        *auth.routes(emulator),
        *cloud_build.routes(emulator),
        *cloud_run.routes(emulator),
        *cloud_quotas.routes(emulator),
        *resource_manager.routes(emulator),
        *monitoring.routes(emulator),
        *resource_policies.routes(emulator),
    ]
    # A route with a custom verb (`:enable`) wins over a variable that would swallow it.
    return sorted(table, key=lambda r: r.verb is None)


def create_emulator(config: EmulatorConfig) -> Emulator:
    signer = auth.TokenSigner.load_or_create(config.state_dir)
    emulator = Emulator(config, signer, backend_factories())
    emulator.load()
    return emulator


# ---------------------------------------------------------------------------------------------
# Operations (shared store; each API's poll path) and control endpoints.


def operation_routes() -> list[Route]:
    def poll_global(call: Call) -> dict[str, Any]:
        return call.emulator.operations.get_json(f"operations/{call.param('name')}")

    def poll_located(call: Call) -> dict[str, Any]:
        p = call.params
        name = f"projects/{p['project']}/locations/{p['location']}/operations/{p['operation']}"
        return call.emulator.operations.get_json(name)

    located = "/projects/{project}/locations/{location}/operations/{operation}"
    return [
        Route("GET", "/v1/operations/{name=**}", poll_global),
        Route("GET", "/v1" + located, poll_located),
        Route("GET", "/v2" + located, poll_located),
    ]


def control_routes() -> list[Route]:
    def state(call: Call) -> dict[str, Any]:
        return call.emulator.snapshot()

    def reset(call: Call) -> dict[str, Any]:
        call.emulator.reset()
        return {}

    def config(call: Call) -> dict[str, Any]:
        unknown = set(call.body) - RUNTIME_CONFIG_FIELDS
        if unknown:
            raise invalid_argument(
                f"cannot change {sorted(unknown)} at run time; allowed: "
                f"{sorted(RUNTIME_CONFIG_FIELDS)}"
            )
        try:
            updated = EmulatorConfig.model_validate(
                {**call.emulator.config.model_dump(), **call.body}
            )
        except ValueError as exc:
            raise invalid_argument(str(exc)) from exc
        call.emulator.config = updated
        return json.loads(updated.model_dump_json())

    return [
        Route("GET", "/_emulator/state", state),
        Route("POST", "/_emulator/reset", reset),
        Route("POST", "/_emulator/config", config),
    ]


# ---------------------------------------------------------------------------------------------
# The dispatcher.


def path_segments(request: Request) -> list[str]:
    """The request path split on "/" and percent-decoded one segment at a time."""
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if raw else request.url.path
    path = path.split("?", 1)[0].strip("/")
    return [unquote(s) for s in path.split("/")] if path else []


def _json_body(raw: bytes, content_type: str) -> dict[str, Any]:
    if not raw.strip() or ("json" not in content_type and not raw.lstrip().startswith(b"{")):
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise invalid_argument(f"Invalid JSON payload received. {exc}") from exc
    if not isinstance(body, dict):
        raise invalid_argument("Invalid JSON payload received. Expected an object.")
    return body


def render(result: Any) -> Response:
    if isinstance(result, Response):
        return result
    body = {} if result is None else message_to_json(result)
    return Response(json.dumps(body), media_type=JSON_TYPE)


def create_app(emulator: Emulator, routes: list[Route] | None = None) -> Starlette:
    table = routes if routes is not None else api_routes(emulator)

    async def dispatch(request: Request) -> Response:
        segments = path_segments(request)
        for route in table:
            params = route.match(request.method, segments)
            if params is not None:
                break
        else:
            path = "/" + "/".join(segments)
            return unimplemented(
                f"emulator.gcp does not implement {request.method} {path}"
            ).response()
        try:
            caller = None if route.anonymous else authenticate(request, route.service)
            raw = await request.body()
            body = _json_body(raw, request.headers.get("content-type", ""))
            call = Call(emulator, request, params, request.query_params, body, caller, raw)
            with emulator.lock:
                project = gate_project(params)
                if route.service is not None and project:
                    require_enabled(emulator, project, route.service)
                result = route.handler(call)
            if inspect.isawaitable(result):
                result = await result
            if request.method != "GET" or "/operations/" in route.template:
                with emulator.lock:
                    emulator.save()
            return render(result)
        except GoogleApiError as exc:
            return exc.response()
        except Exception as exc:  # a bug in the emulator: loud, Google-shaped 500
            log.exception("emulator.gcp: %s %s failed", request.method, request.url.path)
            return GoogleApiError(
                500, "INTERNAL", f"emulator.gcp internal error: {exc!r}"
            ).response()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            emulator.close()

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    # Cloud Storage: fake-gcs-server behind the front (emulator/gcp/storage_front.py).
    storage = storage_front.StorageProxy(emulator)
    storage_routes = [
        StarletteRoute(prefix + "{path:path}", storage.handle, methods=methods)
        for prefix in storage_front.PREFIXES
    ]
    app = Starlette(
        routes=[*storage_routes, StarletteRoute("/{path:path}", dispatch, methods=methods)],
        middleware=[Middleware(RequestLog)],
        lifespan=lifespan,
    )
    app.state.emulator = emulator
    return app


__all__ = ["Backend", "api_routes", "backend_factories", "create_app", "create_emulator"]
