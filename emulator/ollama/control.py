"""Control endpoints under ``/_emulator/`` (a prefix Ollama never uses): tests and tooling only.

- ``POST /_emulator/faults``: queue scripted faults (sim engine);
- ``POST /_emulator/reset``: reseed the faults and unload every model;
- ``GET /_emulator/state``: engine, slots, models, loaded runners and faults drawn;
- ``GET /_emulator/requests``: the generation requests received (``request_log.py``).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from emulator.ollama.answers import rendering_errors, state_of
from emulator.ollama.errors import OllamaError
from emulator.ollama.wire import error_response, field_list, json_response, read_json

native = rendering_errors(error_response)  # the same rendering as the native API's


@native
async def control_faults(request: Request) -> Response:
    state = state_of(request)
    if state.faults is None:
        raise OllamaError(400, "fault injection needs the sim engine")
    data = await read_json(request, "FaultScript")
    script = field_list(data, "script", "FaultScript", "[]string")
    at_piece = data.get("at_piece", 1)
    if not isinstance(at_piece, int) or at_piece < 0:
        raise OllamaError(400, "at_piece must be an integer >= 0")
    try:
        state.faults.script([str(kind) for kind in script], at_piece)
    except ValueError as exc:
        raise OllamaError(400, str(exc)) from exc
    return json_response({"queued": len(script)})


@native
async def control_reset(request: Request) -> Response:
    state = state_of(request)
    raw = await request.body()
    data = await read_json(request, "Reset") if raw.strip() else {}
    seed = data.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise OllamaError(400, "seed must be an integer")
    if state.faults is not None:
        state.faults.reset(seed)
    await state.scheduler.shutdown()
    return json_response({"reset": True})


async def control_state(request: Request) -> Response:
    state = state_of(request)
    return json_response(
        {
            "engine": state.config.engine,
            "num_parallel": state.config.num_parallel,
            "models": [entry.describe() for entry in state.catalog.entries()],
            "loaded": [runner.entry.display for runner in state.scheduler.loaded()],
            "faults_drawn": state.faults.drawn if state.faults is not None else 0,
        }
    )
