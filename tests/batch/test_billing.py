"""The billed figure (tasks.batch.billing), Cloud Monitoring replaced by a recorded answer: its
window and price, provisional before the tail and the metrics delay are over and final after,
a failed read that loses nothing, and a final figure written into the run's own manifest only."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials

from tasks.batch import billing
from tasks.batch.cost import BilledCost, PriceAssumptions, estimate_cost
from tasks.batch.manifest import billed_rows
from tasks.batch.stores import LocalStore
from tasks.batch.target import Target
from tasks.clients import GoogleCloud

CLOUD = GoogleCloud(AnonymousCredentials(), "proj", "http://127.0.0.1:9")
L4 = Target("http://127.0.0.1:9", "svc", 7, 4, cpu=8, memory_gib=32, gpus=1)
START = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
END = START + dt.timedelta(seconds=100)
PRICES = PriceAssumptions(idle_tail_seconds=60, metrics_delay_seconds=30)


def window(target: Target = L4) -> BilledCost:
    return billing.billing_window(
        run="run-1",
        cloud=CLOUD,
        region="us-central1",
        target=target,
        prices=PRICES,
        started_at=START,
        ended_at=END,
        prompts=2000,
        output_tokens=500_000,
    )


@pytest.fixture
def monitoring(monkeypatch: pytest.MonkeyPatch) -> list[tuple[dt.datetime, dt.datetime]]:
    asked: list[tuple[dt.datetime, dt.datetime]] = []

    def answer(cloud: GoogleCloud, region: str, service: str, a: dt.datetime, b: dt.datetime):
        asked.append((a, b))
        return 250.0

    monkeypatch.setattr(billing, "billable_instance_seconds", answer)
    return asked


def test_window_price_and_per_unit_costs(monitoring: list[tuple[dt.datetime, dt.datetime]]) -> None:
    w = window()
    # 1 L4 without zonal redundancy + 8 vCPU + 32 GiB, us-central1 list prices.
    assert w.usd_per_instance_second == pytest.approx(0.0001867 + 8 * 0.000018 + 32 * 0.000002)
    assert w.window_end == (END + dt.timedelta(seconds=60)).isoformat()
    assert w.final_after == (END + dt.timedelta(seconds=90)).isoformat()
    zonal = window(
        Target("u", "svc", 7, 4, cpu=8, memory_gib=32, gpus=1, gpu_zonal_redundancy=True)
    )
    assert zonal.usd_per_instance_second - w.usd_per_instance_second == pytest.approx(
        0.0002909 - 0.0001867
    )

    early = billing.read_billed(CLOUD, w, now=END + dt.timedelta(seconds=5))
    assert early.status == "provisional" and early.instance_seconds == 250.0
    assert monitoring[-1] == (START, END + dt.timedelta(seconds=5))  # up to now, not beyond
    late = billing.read_billed(CLOUD, w, now=END + dt.timedelta(seconds=600))
    assert late.status == "final" and "final" in late.note
    assert monitoring[-1] == (START, END + dt.timedelta(seconds=90))  # up to final_after
    assert late.usd == pytest.approx(250 * w.usd_per_instance_second, abs=1e-6)
    assert late.usd_per_1k_prompts == pytest.approx(late.usd / 2, abs=1e-6)
    assert late.usd_per_1m_output_tokens == pytest.approx(late.usd * 2, abs=1e-6)
    rows = dict(billed_rows([early]))
    assert rows["billed cost status"].startswith("provisional (final after ")
    estimate = estimate_cost(PRICES, L4, 100.0, prompts=2000, output_tokens=500_000)
    assert estimate.usd_per_1k_prompts == pytest.approx(estimate.usd / 2, abs=1e-6)


def test_a_failed_read_keeps_the_figure_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*_: object) -> float:
        raise gexc.PermissionDenied("monitoring.timeSeries.list denied")

    monkeypatch.setattr(billing, "billable_instance_seconds", denied)
    none_yet = billing.read_billed(CLOUD, window(), now=END)
    assert none_yet.status == "unavailable" and "monitoring.timeSeries.list" in none_yet.note
    had = window().model_copy(update={"instance_seconds": 10.0, "usd": 0.01})
    kept = billing.read_billed(CLOUD, had, now=END)
    assert (kept.status, kept.instance_seconds) == ("provisional", 10.0)


def test_next_run_finalizes_and_only_the_runs_own_manifest_is_rewritten(
    tmp_path: Path, monitoring: list[tuple[dt.datetime, dt.datetime]]
) -> None:
    store = LocalStore(tmp_path)
    provisional = billing.read_billed(CLOUD, window(), now=END)
    store.put(billing.record_name(provisional), provisional.model_dump_json().encode())
    not_yet = window().model_copy(
        update={"run": "run-2", "final_after": "2999-01-01T00:00:00+00:00"}
    )
    store.put(billing.record_name(not_yet), not_yet.model_dump_json().encode())
    store.put("manifest.json", json.dumps({"run": "run-1", "cost": {"usd": 1.0}}).encode())

    done = billing.finalize_billed.fn(CLOUD, store)

    assert [b.run for b in done] == ["run-1"] and done[0].status == "final"
    saved = BilledCost.model_validate_json(store.read_bytes(billing.record_name(provisional)))
    assert saved.status == "final"
    assert BilledCost.model_validate_json(
        store.read_bytes(billing.record_name(not_yet))
    ).status == ("provisional")
    manifest = json.loads(store.read_bytes("manifest.json"))
    assert [b["status"] for b in manifest["cost"]["billed"]] == ["final"]
    assert manifest["cost"]["usd"] == 1.0

    store.put("manifest.json", json.dumps({"run": "run-3"}).encode())  # a newer run's
    billing.write_billing(store, saved)
    assert "cost" not in json.loads(store.read_bytes("manifest.json"))
