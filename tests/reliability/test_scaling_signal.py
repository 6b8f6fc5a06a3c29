"""The scaling signal, measured: what KEDA reads (``resnet_images_in_flight``) under a ramp of
offered load on a real server with the cluster's batching settings.

The ScaledObject in k8s/keda/cpu (and the InferenceService in k8s/kserve/cpu) scales on the
images in flight per replica of the busiest model, against a threshold. For that to mean "this
replica is filling up", the metric must stay low while the replica keeps up, rise as the offered
load passes what it can serve, reach the threshold *before* the replica refuses its first
request (a 503: ``queue_full`` at the door, or ``queue_timeout`` at the deadline), and fall back
once the load goes away. This test offers open-loop load (requests at a fixed rate, whatever the
answers, as independent users do) in steps relative to the throughput measured first, scrapes
/metrics every 0.2 s, and checks each of those properties with the numbers.

One server, ``resnet50`` only (the slower model refuses first: its budget in time is the
tightest), the settings of k8s/base's ConfigMap (batch 32, queue 256, 2 s queue timeout), ONNX
Runtime on this machine's cores. Figures it printed are in docs/DEPLOYMENT.md ("Scaling on the
queue").
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, ServerProcess, start_server
from tests.imagegen import jpeg

pytestmark = pytest.mark.slow

MODEL = "resnet50"
DATA = jpeg(320, 240, seed=5)
SCRAPE_S = 0.2
# Offered load per step, as a fraction of the throughput measured before the ramp. Up to twice
# what the server serves, then back down to nothing.
RAMP_UP = (0.25, 0.5, 0.75, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0)
STEP_S = 3.0
DRAIN_S = 8.0
CLUSTER_SETTINGS = (
    "RESNET_MAX_BATCH_SIZE",
    "RESNET_MAX_QUEUE_SIZE",
    "RESNET_QUEUE_TIMEOUT_MS",
    "RESNET_MAX_QUEUE_DELAY_MS",
    "RESNET_INSTANCES",
)


def cluster_settings() -> dict[str, str]:
    """The batching settings of k8s/base's ConfigMap (the CPU overlay merges none of them)."""
    kustomization = yaml.safe_load((ROOT / "k8s" / "base" / "kustomization.yaml").read_text())
    (gen,) = kustomization["configMapGenerator"]
    literals = dict(lit.split("=", 1) for lit in gen["literals"])
    return {k: literals[k] for k in CLUSTER_SETTINGS}


def scaled_object_threshold() -> float:
    """The per-replica threshold of the Prometheus trigger in k8s/keda/cpu/scaledobject.yaml."""
    so = yaml.safe_load((ROOT / "k8s" / "keda" / "cpu" / "scaledobject.yaml").read_text())
    (trigger,) = [t for t in so["spec"]["triggers"] if t["type"] == "prometheus"]
    return float(trigger["metadata"]["threshold"])


@pytest.fixture(scope="module")
def srv(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    settings = {k.removeprefix("RESNET_").lower(): v for k, v in cluster_settings().items()}
    s = start_server(
        model_dir,
        tmp_path_factory.mktemp("signal"),
        models=MODEL,
        warmup_batch_sizes="1,32",
        **settings,
    )
    yield s
    s.stop()


def in_flight(text: str) -> float:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "resnet_images_in_flight" and s.labels.get("model") == MODEL:
                return float(s.value)
    raise AssertionError(f"resnet_images_in_flight{{model={MODEL!r}}} not exposed")


@dataclass
class Step:
    offered: float
    """requests per second sent during the step"""
    samples: list[float] = field(default_factory=list)
    """resnet_images_in_flight, scraped every SCRAPE_S"""
    answers: Counter[str] = field(default_factory=Counter)
    """ok or the error code, for the requests *sent* during this step"""

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples)


@dataclass
class Refusal:
    """The first 503 of the run."""

    code: str
    step: Step
    """the step its request was sent in"""
    at_door: float
    """images in flight by the last scrape before its request was sent: what the signal read
    when the request that would be refused arrived"""
    answered: float | None = None
    """images in flight scraped right after the 503 came back"""


class Ramp:
    """Open-loop load: ``offered`` requests per second, each on its own task."""

    def __init__(self, url: str) -> None:
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
        self.client = httpx.AsyncClient(base_url=url, limits=limits, timeout=60)
        self.scraper = httpx.AsyncClient(base_url=url, timeout=10)
        self.pending: set[asyncio.Task[None]] = set()
        self.latest = 0.0
        self.refusal: Refusal | None = None
        self.steps: list[Step] = []
        """every step run, in order"""
        self.unexpected: list[str] = []
        """answers other than 200 or a 503 refusal, and transport errors (a task's exception
        would be lost: finished tasks leave ``pending``)"""

    async def one(self, step: Step) -> None:
        at_door = self.latest
        try:
            r = await self.client.post(
                f"/predict/{MODEL}", content=DATA, headers={"content-type": "image/jpeg"}
            )
        except httpx.HTTPError as e:
            self.unexpected.append(repr(e))
            return
        if r.status_code == 200:
            step.answers["ok"] += 1
            return
        code = r.headers.get("content-type") == "application/json" and r.json().get("code")
        if r.status_code != 503 or code not in {"queue_full", "queue_timeout"}:
            self.unexpected.append(f"{r.status_code} {r.text}")
            return
        step.answers[code] += 1
        # The first refusal by when its request was sent: a queue_timeout comes back a
        # deadline later, after a queue_full sent in a later step may have come back.
        if self.refusal is None or self.steps.index(step) < self.steps.index(self.refusal.step):
            self.refusal = Refusal(code, step, at_door)
            self.refusal.answered = await self.scrape()

    async def scrape(self) -> float:
        return in_flight((await self.scraper.get("/metrics")).text)

    async def run(self, step: Step, seconds: float) -> None:
        """Send at ``step.offered`` req/s for ``seconds`` while scraping every SCRAPE_S."""
        self.steps.append(step)
        t0 = time.monotonic()
        sent = 0
        next_scrape = t0
        while (now := time.monotonic()) < t0 + seconds:
            if now >= next_scrape:
                self.latest = await self.scrape()
                step.samples.append(self.latest)
                next_scrape += SCRAPE_S
            due = int((now - t0) * step.offered) + (1 if step.offered else 0)
            for _ in range(due - sent):
                task = asyncio.create_task(self.one(step))
                self.pending.add(task)
                task.add_done_callback(self.pending.discard)
            sent = max(sent, due)
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        await asyncio.gather(*self.pending)
        await self.client.aclose()
        await self.scraper.aclose()


async def throughput(url: str, concurrency: int, seconds: float = 4.0) -> float:
    """Images per second the server answers 200 under a closed loop of ``concurrency`` clients
    (the batch size: full batches, the most it serves). A 503 (a cold start or a busy machine
    can make a few miss the 2 s deadline) is not counted."""
    done = 0
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:

        async def client(deadline: float) -> None:
            nonlocal done
            while time.monotonic() < deadline:
                r = await c.post(
                    f"/predict/{MODEL}", content=DATA, headers={"content-type": "image/jpeg"}
                )
                assert r.status_code in {200, 503}, r.text
                done += r.status_code == 200

        await asyncio.gather(*(client(time.monotonic() + 1.0) for _ in range(concurrency)))
        done = 0  # warm: connections, allocator, thread pools
        t0 = time.monotonic()
        await asyncio.gather(*(client(t0 + seconds) for _ in range(concurrency)))
        return done / (time.monotonic() - t0)


async def ramp(url: str, rate: float) -> tuple[list[Step], list[Step], Refusal]:
    """Up through RAMP_UP x ``rate`` (stopping one step after the step whose requests were
    first refused), then down to nothing."""
    load = Ramp(url)
    up: list[Step] = []
    down: list[Step] = []
    try:
        for fraction in RAMP_UP:
            step = Step(offered=fraction * rate)
            up.append(step)
            await load.run(step, STEP_S)
            if load.refusal is not None and load.refusal.step is not step:
                break  # a step past the first refusal: enough to see the shedding
        for fraction, seconds in ((0.25, STEP_S), (0.0, DRAIN_S)):
            step = Step(offered=fraction * rate)
            down.append(step)
            await load.run(step, seconds)
    finally:
        await load.close()
    assert load.unexpected == []
    assert load.refusal is not None, "the ramp never made the server refuse: raise RAMP_UP"
    return up, down, load.refusal


def test_in_flight_rises_before_the_first_refusal_and_falls_after(srv: ServerProcess) -> None:
    settings = cluster_settings()
    batch, queue = int(settings["RESNET_MAX_BATCH_SIZE"]), int(settings["RESNET_MAX_QUEUE_SIZE"])
    capacity = queue + int(settings["RESNET_INSTANCES"]) * batch
    timeout_s = float(settings["RESNET_QUEUE_TIMEOUT_MS"]) / 1000
    threshold = scaled_object_threshold()

    rate = asyncio.run(throughput(srv.url, concurrency=batch))
    up, down, refusal = asyncio.run(ramp(srv.url, rate))

    report = [
        f"{MODEL}: {rate:.1f} images/s at saturation; capacity {capacity}, "
        f"queue timeout {timeout_s:g} s, ScaledObject threshold {threshold:g}"
    ]
    for s in up + down:
        report.append(
            f"  offered {s.offered:5.1f}/s ({s.offered / rate:4.2f}x): in flight mean "
            f"{s.mean:5.1f} max {max(s.samples):4.0f}  answers {dict(s.answers)}"
        )
    report.append(
        f"  first refusal: {refusal.code}, sent at {refusal.step.offered:.1f}/s with "
        f"{refusal.at_door:.0f} in flight, {refusal.answered:.0f} when answered"
    )
    print("\n" + "\n".join(report))

    # Refusals start only once the offered load passes what the server serves.
    first = up.index(refusal.step)
    # (At 0.5x or more: the throughput was measured once, and a shared machine can slow down.)
    assert refusal.step.offered >= 0.5 * rate, f"refused at {refusal.step.offered:.1f}/s"
    for s in up[:first]:
        assert set(s.answers) == {"ok"}, s.answers

    # While it keeps up the signal is small: at three quarters of its throughput a replica
    # holds less than the threshold, so KEDA does not add replicas to a replica that copes.
    keeping_up = [s for s in up[:first] if s.offered <= 0.75 * rate]
    assert keeping_up and max(s.mean for s in keeping_up) < threshold, keeping_up
    # It rises with the load before the refusals start: the request refused first met a
    # value above the threshold at the door, so KEDA's query crossed it before any refusal.
    assert refusal.at_door > threshold, f"threshold {threshold:g}, {refusal.at_door:.0f} at door"
    assert refusal.at_door > 4 * max(s.mean for s in keeping_up) + 1
    # Never above the admission capacity (queue + instances x batch).
    assert max(x for s in up + down for x in s.samples) <= capacity
    assert refusal.answered is not None and refusal.answered <= capacity

    # After the ramp the backlog drains and the signal falls back to nothing.
    assert down[-1].samples[-1] == 0, down[-1].samples
    assert down[-1].mean < threshold
