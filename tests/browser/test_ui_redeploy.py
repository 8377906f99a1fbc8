"""The Prefect UI in a real browser, on the local operating environment.

Playwright drives Debian's chromium (never `playwright install`: it downloads a browser). The
stack is the one `scripts/local_stack.py up` starts: Prefect's server and UI on a free port,
emulator.gcp with the sim engine, two process workers, the deployments from prefect.yaml — the
session's `local_stack` (tests/plugins/local_stack.py), which tests/prefect/test_local_stack.py
then stops with Ctrl-C. Screenshots of every step go to a tmp dir (printed; kept by pytest's
tmp_path retention).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.plugins.local_stack import SharedStack, UpProcess

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DEPLOYMENTS = ("redeploy", "nightly-batch", "cleanup-sweep", "pipeline", "teardown-failed-pipeline")
RUN_TIMEOUT = 420.0
UI_TIMEOUT_MS = 90_000


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {CHROMIUM} is missing: apt-get install -y chromium")
    pytest.skip(f"Debian's chromium is not installed ({CHROMIUM}): apt-get install -y chromium")


@pytest.fixture(scope="module")
def stack(local_stack: SharedStack) -> UpProcess:
    """The running stack; that its Ctrl-C leaves no process is checked where it is stopped."""
    _require_chromium()
    started = local_stack.running()
    groups = started.process_groups()
    assert len(groups) == 4, groups  # emulator, server, two process workers (local/stack.py)
    return started


def _api(stack: UpProcess, method: str, path: str, **kwargs: Any) -> Any:
    response = httpx.request(method, f"{stack.api_url}{path}", timeout=60, **kwargs)
    response.raise_for_status()
    return response.json()


def _deployment_id(stack: UpProcess, flow: str, name: str) -> str:
    return str(_api(stack, "GET", f"/deployments/name/{flow}/{name}")["id"])


def _runs_of(stack: UpProcess, deployment_id: str) -> list[dict[str, Any]]:
    body = {"deployments": {"id": {"any_": [deployment_id]}}}
    runs: list[dict[str, Any]] = _api(stack, "POST", "/flow_runs/filter", json=body)
    return runs


def _wait_final(stack: UpProcess, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + RUN_TIMEOUT
    run: dict[str, Any] = {}
    while time.monotonic() < deadline:
        stack.check_alive()
        run = _api(stack, "GET", f"/flow_runs/{run_id}")
        if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(0.5)
    raise AssertionError(f"flow run {run_id} not final after {RUN_TIMEOUT} s: {run.get('state')}")


def test_quick_run_of_the_redeploy_deployment_completes_and_shows_its_artifacts(
    stack: UpProcess, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"screenshots: {shots}")
    deployment_id = _deployment_id(stack, "deploy", "redeploy")
    assert _runs_of(stack, deployment_id) == []

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(UI_TIMEOUT_MS)
            # expect()'s own default is 5 s: on loaded cores the deployments list took longer.
            expect.set_options(timeout=UI_TIMEOUT_MS)

            # 1. The UI lists the deployments.
            page.goto(f"{stack.ui_url}/deployments", wait_until="domcontentloaded")
            for name in DEPLOYMENTS:
                expect(page.get_by_text(name, exact=True).first).to_be_visible()
            expect(page.get_by_text("Can't connect to Server API")).to_have_count(0)
            page.screenshot(path=shots / "1-deployments.png", full_page=True)

            # 2. The redeploy deployment: Run → Quick run.
            page.get_by_text("redeploy", exact=True).first.click()
            page.wait_for_url(f"**/deployments/deployment/{deployment_id}**")
            page.screenshot(path=shots / "2-redeploy.png")
            page.get_by_role("button", name="Run", exact=True).click()
            page.get_by_text("Quick run", exact=True).click()

            # 3. That click created one flow run of this deployment; the worker runs it.
            deadline = time.monotonic() + 60
            runs = _runs_of(stack, deployment_id)
            while not runs and time.monotonic() < deadline:
                time.sleep(1)
                runs = _runs_of(stack, deployment_id)
            assert len(runs) == 1, runs
            page.screenshot(path=shots / "3-quick-run.png")
            run = _wait_final(stack, runs[0]["id"])
            assert run["state_type"] == "COMPLETED", run["state"]

            # 4. The run's page shows it Completed, and its artifacts.
            page.goto(f"{stack.ui_url}/runs/flow-run/{run['id']}", wait_until="domcontentloaded")
            expect(page.get_by_text(run["name"]).first).to_be_visible()
            expect(page.get_by_text("Completed").first).to_be_visible()
            page.screenshot(path=shots / "4-flow-run.png")
            page.get_by_text("Artifacts", exact=True).first.click()
            expect(page.get_by_text("deploy-ollama-gemma").first).to_be_visible()
            page.screenshot(path=shots / "5-artifacts.png", full_page=True)
        finally:
            browser.close()
