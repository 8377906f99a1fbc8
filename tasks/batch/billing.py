"""The billed figure of a run: Cloud Run's own billable instance time (Cloud Monitoring,
``tasks.monitoring``) over the run's window plus the idle tail, at the list prices of the
revision's instance (``tasks.batch.cost.instance_price``: GPU count, zonal redundancy, vCPU,
memory).

The window is (run start, run end + idle tail]. Cloud Run keeps billing an idle instance for the
tail, and a sample shows up in Cloud Monitoring up to ``metrics_delay_seconds`` later, so:
- at the report the figure is read once: ``provisional`` (the tail has not passed yet);
- read again from ``final_after`` (window end + delay) it is ``final``: by the same flow run when
  ``await_billed`` is set (after the lease is released), else by the next run on the output.
Every read writes ``billing/<run>/<region>.<service>.json`` (one figure per Cloud Run target); a
final read also rewrites its entry in ``manifest.json``'s ``cost.billed`` when the manifest still
is that run's (a generation-matched write).
The read reaches up to ``final_after`` so that the last 60-s sample, which ends after the window,
is in; an instance another run starts in those few minutes would be counted too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging

from google.api_core import exceptions as gexc
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.batch.cost import BilledCost, PriceAssumptions, instance_price, per_unit
from tasks.batch.manifest import BatchManifest
from tasks.batch.outputs import MANIFEST
from tasks.batch.stores import ObjectStore
from tasks.batch.target import Target
from tasks.clients import GoogleCloud
from tasks.errors import ObjectChangedError, OllamaCloudRunError
from tasks.monitoring import billable_instance_seconds

BILLING_PREFIX = "billing/"
logger = logging.getLogger(__name__)


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat()


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def utc_now() -> dt.datetime:
    """Now. Tests replace it, together with ``sleep``, to let an idle tail pass on their own
    clock (the emulator's Cloud Run follows its ``clock_offset_seconds``) instead of waiting."""
    return dt.datetime.now(dt.UTC)


async def sleep(seconds: float) -> None:
    """``await_billed``'s wait for the idle tail and the metrics delay (see ``utc_now``)."""
    await asyncio.sleep(seconds)


def billing_window(
    *,
    run: str,
    cloud: GoogleCloud,
    region: str,
    target: Target,
    prices: PriceAssumptions,
    started_at: dt.datetime,
    ended_at: dt.datetime,
    prompts: int,
    output_tokens: int,
) -> BilledCost:
    """The run's billed figure before any read: its window and price, no seconds yet."""
    per_second, _ = instance_price(prices, target)
    window_end = ended_at + dt.timedelta(seconds=prices.idle_tail_seconds)
    return BilledCost(
        status="provisional",
        run=run,
        project=cloud.project,
        region=region,
        service=str(target.service),
        usd_per_instance_second=per_second,
        prompts=prompts,
        output_tokens=output_tokens,
        window_start=_iso(started_at),
        run_end=_iso(ended_at),
        window_end=_iso(window_end),
        final_after=_iso(window_end + dt.timedelta(seconds=prices.metrics_delay_seconds)),
    )


def read_billed(
    cloud: GoogleCloud, billed: BilledCost, now: dt.datetime | None = None
) -> BilledCost:
    """``billed`` read from Cloud Monitoring now: final once ``final_after`` has passed. A read
    that fails leaves the figure as it was, ``unavailable`` if there was none, and says why."""
    now = now or utc_now()
    final_after = _at(billed.final_after)
    end = min(now, final_after)
    try:
        seconds = billable_instance_seconds(
            cloud, billed.region, billed.service, _at(billed.window_start), end
        )
    except (OllamaCloudRunError, gexc.GoogleAPICallError, gexc.RetryError) as exc:
        status = "unavailable" if billed.instance_seconds is None else billed.status
        note = f"Cloud Monitoring could not be read at {_iso(now)}: {exc}"
        return billed.model_copy(update={"status": status, "note": note})
    usd = round(seconds * billed.usd_per_instance_second, 6)
    final = now >= final_after
    return billed.model_copy(
        update={
            "status": "final" if final else "provisional",
            "instance_seconds": round(seconds, 3),
            "usd": usd,
            "usd_per_1k_prompts": per_unit(usd, billed.prompts, 1000),
            "usd_per_1m_output_tokens": per_unit(usd, billed.output_tokens, 1_000_000),
            "read_at": _iso(now),
            "note": (
                "final: read after the idle tail and the metrics delay"
                if final
                else f"provisional: the idle tail and Cloud Monitoring's delay end at "
                f"{billed.final_after}; read again then (await_billed, or the next run)"
            ),
        }
    )


def record_name(billed: BilledCost) -> str:
    return f"{BILLING_PREFIX}{billed.run}/{billed.region}.{billed.service}.json"


def write_billing(store: ObjectStore, billed: BilledCost) -> None:
    """Its ``billing/`` record, and its entry of ``manifest.json``'s ``cost.billed`` when the
    figure is final and the manifest still is that run's (generation-matched: a newer run's is
    left alone)."""
    store.put(record_name(billed), billed.model_dump_json(indent=2).encode())
    found = store.read_versioned(MANIFEST) if billed.status == "final" else None
    if found is None:
        return
    data, generation = found
    manifest = json.loads(data)
    if manifest.get("run") != billed.run:
        return
    entries = manifest.setdefault("cost", {}).setdefault("billed", [])
    same = [
        i
        for i, e in enumerate(entries)
        if (e["service"], e["region"]) == (billed.service, billed.region)
    ]
    if same:
        entries[same[0]] = billed.model_dump(mode="json")
    else:
        entries.append(billed.model_dump(mode="json"))
    try:
        store.write_if(MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode(), generation)
    except ObjectChangedError:
        logger.info("manifest.json changed meanwhile; the final figure is in billing/")


@task(name="read-billed-cost", cache_policy=NO_CACHE)
def bill_run(cloud: GoogleCloud, billed: BilledCost, store: ObjectStore) -> BilledCost:
    """Read the run's billed figure (provisional at the report) and record it."""
    billed = read_billed(cloud, billed)
    store.put(record_name(billed), billed.model_dump_json(indent=2).encode())
    return billed


@task(name="finalize-billed-cost", cache_policy=NO_CACHE)
def finalize_billed(cloud: GoogleCloud, store: ObjectStore) -> list[BilledCost]:
    """Every ``billing/<run>.json`` still provisional whose ``final_after`` has passed, read
    again and written final (the next run on an output does this for the earlier ones)."""
    now = utc_now()
    done = []
    for info in store.list(BILLING_PREFIX):
        try:
            billed = BilledCost.model_validate_json(store.read_bytes(info.name))
        except ValueError:
            continue  # not ours, or damaged: left as it is
        if billed.status == "final" or _at(billed.final_after) > now:
            continue
        billed = read_billed(cloud, billed, now)
        write_billing(store, billed)
        done.append(billed)
    return done


async def attach_billed(
    manifest: BatchManifest,
    cloud: GoogleCloud | None,
    store: ObjectStore,
    targets: list[Target],
    prices: PriceAssumptions,
) -> None:
    """At the report: earlier runs' figures made final, and this run's, one per Cloud Run
    target, read (provisional unless the tail and the delay are 0) onto ``manifest.cost``. A
    target's prompts are the answers it gave; its output tokens the run's in that proportion."""
    services = [t for t in targets if t.service and t.region]
    if cloud is None or not services:
        return
    manifest.cost.earlier_runs_billed = await asyncio.to_thread(finalize_billed, cloud, store)
    answered = {r.name: r.ok for r in manifest.targets}
    total_ok = sum(answered.values()) or 1
    for target in services:
        ok = answered.get(target.label, manifest.this_run.sent) if len(targets) > 1 else None
        window = billing_window(
            run=manifest.run,
            cloud=cloud,
            region=str(target.region),
            target=target,
            prices=prices,
            started_at=_at(manifest.timings.started_at),
            ended_at=_at(manifest.timings.finished_at),
            prompts=manifest.this_run.sent if ok is None else ok,
            output_tokens=manifest.tokens.eval
            if ok is None
            else round(manifest.tokens.eval * ok / total_ok),
        )
        billed = await asyncio.to_thread(bill_run, cloud, window, store)
        manifest.cost.billed.append(billed)


async def await_final_billed(
    cloud: GoogleCloud, store: ObjectStore, manifest: BatchManifest, artifact_key: str
) -> None:
    """``await_billed``: wait until the run's figures can be final, read them, write them
    (billing/ and, if still this run's, manifest.json) and publish the summary again."""
    pending = [b for b in manifest.cost.billed if b.status != "final"]
    if not pending:
        return
    last = max(_at(b.final_after) for b in pending)
    wait = max(0.0, (last - utc_now()).total_seconds())
    logger.info(f"waiting {wait:.0f} s for the final billed cost of {manifest.run}")
    await sleep(wait + 0.05)
    final = []
    for billed in manifest.cost.billed:
        if billed.status != "final":
            billed = await asyncio.to_thread(read_billed, cloud, billed)
            await asyncio.to_thread(write_billing, store, billed)
        final.append(billed)
    manifest.cost.billed = final
    await manifest.publish_summary(artifact_key)
