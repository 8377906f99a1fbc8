"""Cloud Build v1 routes, global (`/v1/projects/{project}/builds`) and regional
(`/v1/projects/{project}/locations/{location}/builds`): create, list, get, cancel.

Create fetches the source over HTTP: the handler is a coroutine, so the dispatcher releases the
emulator's lock before it runs; it prepares the build under the lock, fetches and plans it in a
worker thread without the lock, then queues it under the lock again.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from emulator.gcp.cloud_build.backend import CloudBuildBackend
from emulator.gcp.cloud_build.identity import check_act_as
from emulator.gcp.cloud_build.spec import SERVICE, Build
from emulator.gcp.errors import invalid_argument, unimplemented
from emulator.gcp.routing import Call, Route

if TYPE_CHECKING:
    from emulator.gcp.registry import Emulator


def _backend(call: Call) -> CloudBuildBackend:
    return call.emulator.get(CloudBuildBackend)


def _where(call: Call) -> tuple[str, str]:
    return call.param("project"), call.params.get("location", "global")


async def create(call: Call) -> dict[str, Any]:
    project, location = _where(call)
    with call.emulator.lock:
        backend = _backend(call)
        build = backend.prepare_build(project, location, call.body)
        if call.body.get("serviceAccount"):
            assert call.caller is not None  # the dispatcher answers 401 to an anonymous call
            check_act_as(call.emulator, project, build.service_account, call.caller)
    plan = await asyncio.to_thread(backend.fetch_and_plan, build)
    with call.emulator.lock:
        return _backend(call).queue_build(build, location, plan)


def get(call: Call) -> Build:
    return _backend(call).get_build(*_where(call), call.param("id"))


def list_(call: Call) -> dict[str, Any]:
    q = call.query
    size = q.get("pageSize", "0")
    if not size.isdigit():
        raise invalid_argument(f"Invalid value at 'page_size' (TYPE_INT32), \"{size}\"")
    if q.get("filter"):
        raise unimplemented("emulator.gcp does not implement list filters for builds")
    return _backend(call).list_builds(*_where(call), int(size), q.get("pageToken", ""))


def cancel(call: Call) -> Build:
    return _backend(call).cancel_build(*_where(call), call.param("id"))


def routes(emulator: Emulator) -> list[Route]:
    glob = "/v1/projects/{project}/builds"
    loc = "/v1/projects/{project}/locations/{location}/builds"
    return [
        Route("POST", glob, create, SERVICE),
        Route("GET", glob, list_, SERVICE),
        Route("GET", glob + "/{id}", get, SERVICE),
        Route("POST", glob + "/{id}:cancel", cancel, SERVICE),
        Route("POST", loc, create, SERVICE),
        Route("GET", loc, list_, SERVICE),
        Route("GET", loc + "/{id}", get, SERVICE),
        Route("POST", loc + "/{id}:cancel", cancel, SERVICE),
    ]
