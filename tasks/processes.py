"""Child processes for the CLI, local tooling and the emulators: wait until ready, then stop.

Stdlib only, so anything may import it (the emulators included, which import nothing else here).
Stopping is polite first — SIGTERM, or SIGINT for Prefect's server and worker, which shut down
cleanly on it — then SIGKILL after a grace period. With ``group=True`` the signals go to the
child's process group (a child started with ``start_new_session=True`` leads one), so whatever it
started goes too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS just handed out on ``host`` (bound and released; a child that can bind port
    0 itself and report it avoids the race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def group_alive(pgid: int) -> bool:
    """Whether any process is left in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _send(process: subprocess.Popen[Any], sig: int, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(process.pid, sig)
        elif process.poll() is None:
            process.send_signal(sig)


def stop_process(
    process: subprocess.Popen[Any],
    *,
    grace: float = 10.0,
    signals: Sequence[int] = (signal.SIGTERM,),
    group: bool = False,
) -> int | None:
    """Send each of ``signals`` in turn, waiting up to ``grace`` seconds after each, then SIGKILL;
    returns the exit code (None if even SIGKILL left it running). With ``group``, the last
    SIGKILL reaches the whole group even when the leader already exited."""
    for sig in signals:
        if process.poll() is not None:
            break
        _send(process, sig, group)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    if group:
        _send(process, signal.SIGKILL, group=True)  # what the leader started may outlive it
    elif process.poll() is None:
        _send(process, signal.SIGKILL, group=False)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    return process.poll()


def wait_ready(
    process: subprocess.Popen[Any],
    ready: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
) -> None:
    """Poll ``ready()`` until it is true; RuntimeError if ``process`` exits or time runs out
    (the caller adds its log's tail)."""
    deadline = time.monotonic() + timeout
    while not ready():
        code = process.poll()
        if code is not None:
            raise RuntimeError(f"{what} exited with code {code} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was not ready after {timeout:.0f} s")
        time.sleep(interval)
