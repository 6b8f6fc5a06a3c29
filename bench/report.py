"""``BENCHMARKS.md``: every table of one run, per variant (provider x precision).

Every number printed comes from the :class:`bench.results.Results` of one run; ``BATCHING.md`` is
written by :mod:`bench.report_batching`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from . import machine, plots, summary, threads
from .agreement import PHOTOS as AGREEMENT_PHOTOS
from .agreement import Agreement, Sourced, at_load
from .fmt import mib, ms, num, pct, table, x, yes
from .limits import MACS_PER_IMAGE
from .overload import FAST_REFUSAL_S, Overload
from .report_batching import batching_md
from .results import Results
from .run import LOAD_PHOTO
from .targets import LITSERVE, NAIVE, SERVER
from .variants import Variant

PEER_DESC = {
    NAIVE: "naive FastAPI app: the server's engine (same file, provider and precision) made "
    "once at start-up, a plain `def` handler (FastAPI's thread pool) that preprocesses and runs "
    "one image under a lock, no batching.",
    LITSERVE: "LitServe (PyPI `litserve`) with its own dynamic batching around the server's "
    "engine (same file, provider and precision): `max_batch_size` = the server's, "
    "`batch_timeout` = {delay} ms, one worker process, one API server process; the image is "
    'sent as JSON `{{"image": base64}}` because LitServe cannot pass a multipart upload to its '
    "worker process (it pickles requests).",
}
PEER_GOAL_RATIO = 1.15
PEER_GOAL_ARCHS = ("resnet50",)
"""the peer goals (>= 1.15x peak, lower p99 at their peak) are stated for ResNet50"""


def label(key: str) -> str:
    return Variant.parse(key).label


def _served(res: Results) -> list[str]:
    """Variants measured under load, by architecture in plan order."""
    keys = {p.variant for p in res.closed if p.target == SERVER}
    return [v.key for v in res.plan.served if v.key in keys]


def _executes(res: Results, key: str) -> str:
    info = res.served.get(key) or res.engines.get(key) or {}
    return str(info.get("precision", "?"))


def _env(res: Results) -> list[str]:
    cfg, f = res.cfg, res.cpu_features
    la, lb = res.load_before, res.load_after
    flags = ", ".join(f.get("matrix_flags", [])) or "none"
    runtimes = ", ".join(f"{k} {v}" for k, v in res.runtimes.items())
    files = "; ".join(
        f"`{n}` {m['precision']} (weights {m['weights']}"
        f"{', random' if m['random_weights'] == 'true' else ''})"
        for n, m in res.files.items()
    )
    limits_only = [v.key for v in res.plan.limits if v not in res.plan.served]
    out = [
        f"- **Command**: `{res.command}` (mode `{cfg.mode}`), started {res.started}, "
        f"took {res.duration_s / 60:.1f} min ("
        + ", ".join(f"{k} {v / 60:.1f}" for k, v in res.steps.items())
        + ").",
        f"- **CPU**: {res.cpu.model}, {res.cpu.cpus} CPUs available. Matrix flags read from "
        f"/proc/cpuinfo: {flags}; bf16 units: **{'yes' if f.get('bf16') else 'no'}**, int8 "
        f"dot products: **{f.get('int8_units', '?')}**. Runtimes: {runtimes}.",
        f"- **Threads** (the server's defaults on this machine, used for every measurement "
        f"unless a table says otherwise): engine intra-op {res.threads}, preprocessing pool "
        f"{res.pool_threads} threads, one instance per model; max batch {cfg.max_batch_size}.",
        f"- **Load average** (1/5/15 min) before: {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}, after: "
        f"{lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f}. The load generator, the servers and the "
        "benchmark all share these cores; its CPU use is in every load table.",
        "- **Images**: real photographs bundled with scikit-image (`skimage.data.astronaut`, "
        "`chelsea`, `coffee`), resized with Lanczos to each size and JPEG-encoded (quality 90) "
        f"in memory. Load tests upload `chelsea` at {LOAD_PHOTO[0]}x{LOAD_PHOTO[1]} "
        f"({res.load_jpeg_kb:.0f} KB).",
        f"- **Model files**: {files}. Weights do not change speed; random weights make the "
        "agreement figures pessimistic (flat softmax, see section 2).",
        "- **Variants** (served model name @ provider; `cpu` = ONNX Runtime's CPU provider, "
        "`openvino` = the OpenVINO runtime): under load "
        + ", ".join(f"`{v.key}`" for v in res.plan.served)
        + (
            f"; limits table only: {', '.join(f'`{k}`' for k in limits_only)}"
            if limits_only
            else ""
        )
        + ". Each server was started as `python -m bench.serve --provider P --models NAME ...` "
        "(the server's own CLI with named threads, see section 6).",
    ]
    for key, why in res.plan.skipped.items():
        out.append(f"  - **skipped** `{key}`: {why}.")
    if not cfg.agreement_check:
        out.append(
            "  - **Agreement check at load off** (`--no-agreement-check`): every server here "
            "started with `--agreement-check false`, so that files whose agreement misses "
            "their floors (random weights) are measured under load as well. Speed does not "
            "depend on the weights' values; their agreement is in section 2, and a server with "
            "the default settings refuses them."
        )
    out += [
        f"- **Method**: closed-loop phases {cfg.phase_seconds:g} s after "
        f"{cfg.warmup_seconds:g} s warm-up, {cfg.repeats} interleaved round(s) (each round "
        "walks every concurrency, each concurrency every server of the model: all its "
        "variants and the peers); the fast variant of each model and the peers at concurrency "
        f"{', '.join(map(str, cfg.concurrency))}, the other variants at "
        f"{', '.join(map(str, cfg.secondary_concurrency))}. Medians over rounds are quoted, "
        "error and 503 counts are summed, and the spread is shown where it decides a verdict.",
        "",
    ]
    return out


def _met(ok: bool | None) -> str:
    """' yes' / ' **no**' after a figure with a goal."""
    return "" if ok is None else f" {yes(ok)}"


def _headline(res: Results) -> list[str]:
    out = [
        "## Headline",
        "",
        "Goals in the column names; *yes* / ***no*** after a figure says whether it met its "
        "goal (measured, never assumed). *Fast*: the served variant of each model with the "
        "best in-process ceiling in this run (section 1), the one the peers run.",
        "",
    ]
    body: list[list[str]] = []
    for key in _served(res):
        h = summary.headline(res, key)
        fast = " (fast)" if key in res.fast.values() else ""
        t = _saturation_threads(res, key)
        loop = (
            "-"
            if t is None
            else (
                f"{num(t.loop, 2)} core, {num(t.loop_ms_per_request, 2)} ms/request; fills a core "
                f"at {x(summary.ratio(t.loop_limit, h.server_peak))} the peak"
            )
        )
        c1 = (
            "-"
            if h.p50_c1 != h.p50_c1
            else (
                f"{ms(h.p50_c1)} vs {ms(h.direct)} ms ({h.p50_c1 / h.direct:.2f}x)"
                + _met(h.p50_c1 <= h.p50_budget)
            )
        )
        body.append(
            [
                f"{label(key)}{fast}",
                num(h.server_peak),
                f"{h.ratio_parts:.2f} (of {num(h.parts_ceiling)})" + _met(h.ratio_parts >= 0.85),
                f"{h.ratio_ceiling:.2f} (of {num(h.ceiling)})" + _met(h.ratio_ceiling >= 0.9),
                f"{h.ratio_raw:.2f} (of {num(h.raw_best)})",
                x(h.vs_fp32_same_provider),
                x(h.vs_fp32_cpu),
                c1,
                f"{ms(h.p99_sat)} (c={h.sat_level:g})",
                loop,
            ]
        )
    out += table(
        [
            "variant",
            "server peak req/s",
            "server / ceiling: decode + engine alone on all cores, img/s (goal >= 0.85)",
            "server / in-process pipeline img/s (goal >= 0.9)",
            "server / raw engine at its best batch (< 1: a hard bound)",
            "vs the fp32 server, same provider",
            "vs the fp32@cpu server",
            "p50 at concurrency 1 vs a direct call, ms (goal <= 1.1x + 2 ms)",
            "p99 at saturation ms",
            "event loop at saturation (section 6)",
        ],
        body,
    )
    body = []
    for key in res.fast.values():
        goal = Variant.parse(key).arch in PEER_GOAL_ARCHS
        for p in summary.peers(res, key):
            body.append(
                [
                    label(key),
                    p.peer,
                    num(p.ours_peak),
                    num(p.peer_peak),
                    f"{p.ratio:.2f}" + _met(p.ratio >= PEER_GOAL_RATIO if goal else None),
                    f"{ms(p.ours_p99)} vs {ms(p.peer_p99)} (c={p.level:g})"
                    + _met(p.ours_p99 < p.peer_p99 if goal else None),
                ]
            )
    if body:
        out += [
            "Peers on the fast variant (same model file, provider and precision; the goals "
            f"are stated for {', '.join(PEER_GOAL_ARCHS)}):",
            "",
        ]
        out += table(
            [
                "variant",
                "peer",
                "server peak req/s",
                "peer peak req/s",
                f"server / peer (goal >= {PEER_GOAL_RATIO})",
                "p99 at the peer's peak, server vs peer, ms (goal: lower)",
            ],
            body,
        )
    for peer, note in res.peer_notes.items():
        out.append(f"- Peer `{peer}`: {note}.")
    body = [_overload_headline(o) for o in res.overload]
    if body:
        out += [f"Overload ({res.cfg.overload_factor:g}x the peak, open loop; section 5):", ""]
        out += table(
            [
                "variant",
                "queue timeout s",
                "accepted p99 ms (goal < 2 x timeout)",
                "refusals: >= 50 ms / without Retry-After / other errors (goal: 0 / 0 / 0)",
                "RSS peak vs the bound the settings imply, MiB",
            ],
            body,
        )
    spreads = ", ".join(f"{label(k)} {pct(summary.noise(res, k))}" for k in _served(res))
    out += [
        "",
        f"**Noise.** The same in-process measurement, repeated between load rounds, "
        f"moved by (max - min) / median = {spreads} in this run: the cores are shared "
        "with whatever else runs on the machine (see the load averages above). Ratios "
        "closer to 1 than that spread are a tie, not a win or a loss. Peak throughput is "
        "the best concurrency level of the medians over rounds.",
        "",
        "![throughput](bench/throughput_vs_concurrency.png)",
        "",
    ]
    return out


def _overload_headline(o: Overload) -> list[str]:
    p = o.phase
    slow = sum(r >= FAST_REFUSAL_S for r in p.refusal_latencies)
    worst = max(p.refusal_latencies, default=math.nan)
    p99_ok = p.pct(99) < o.p99_goal_s if p.ok else None
    refusals_ok = slow == 0 and p.refusals_without_retry_after == 0 and p.errors == 0
    return [
        label(o.variant),
        f"{o.limits.queue_timeout_ms / 1000:g}",
        f"{ms(p.pct(99))} ({p.ok} accepted) vs {ms(o.p99_goal_s)}" + _met(p99_ok),
        f"{slow} / {p.refusals_without_retry_after} / {p.errors} of {p.rejected} refused "
        f"(slowest {ms(worst)} ms)" + _met(refusals_ok),
        f"{mib(o.rss_peak)} (before {mib(o.rss_before)}) vs {mib(o.bound)}"
        + _met(o.rss_peak <= o.bound),
    ]


def _limits(res: Results) -> list[str]:
    cpu = res.cpu
    out = [
        "## 1. The limits of this machine",
        "",
        "### Raw engine (preprocessed crops, the engine alone)",
        "",
    ]
    base = {(p.variant, p.batch): p.images_per_s for p in res.raw}
    body = []
    for p in res.raw:
        v = Variant.parse(p.variant)
        util = (
            (p.images_per_s * 2 * MACS_PER_IMAGE.get(v.arch, math.nan) / (cpu.peak_gflops * 1e9))
            if v.precision == "fp32"
            else math.nan
        )
        ref = base.get((v.reference.key, p.batch), math.nan)
        body.append(
            [
                v.label,
                _executes(res, p.variant),
                str(p.batch),
                ms(p.latency_s),
                ms(p.p90_s),
                ms(p.latency_s / p.batch),
                num(p.images_per_s),
                x(p.images_per_s / ref),
                pct(util),
            ]
        )
    out += table(
        [
            "variant",
            "executes",
            "batch",
            "ms / batch (p50)",
            "p90",
            "ms / image",
            "images/s",
            "vs fp32@cpu",
            "of peak FP32 FLOP/s",
        ],
        body,
    )
    out += [
        "Variants and batch sizes interleaved (two passes, each over every variant and size). "
        "*executes*: the precision the engine reports its convolutions run in (OpenVINO counts "
        "them per layer). "
        f"Peak FLOP/s is an **estimate**: {cpu.cpus} cores x {cpu.ghz:.2f} GHz ({cpu.ghz_source}) "
        f"x {cpu.flops_per_cycle} FP32 FLOPs/cycle ({cpu.isa}, two FMA units assumed) = "
        f"{cpu.peak_gflops:.0f} GFLOP/s, given for fp32 only; turbo clocks and AVX-512 "
        "down-clocking both move it. FLOPs per image = 2 x MACs (1.81 G resnet18, 4.09 G "
        "resnet50).",
        "",
        "### Preprocessing alone (decode + resize + centre crop, one thread)",
        "",
    ]
    body = [
        [
            f"{p.size[0]}x{p.size[1]}",
            num(p.jpeg_kb, 0),
            ms(p.median_s),
            ms(p.p90_s),
            num(1 / p.median_s),
        ]
        for p in res.prep
    ]
    out += table(["photo size", "JPEG KB", "ms / image (p50)", "p90", "images/s per core"], body)
    out += ["### In-process pipeline (the server's preprocessing + the same engine, no HTTP)", ""]
    body = [
        [
            label(k),
            ms(p.seq_median_s),
            ms(p.seq_p99_s),
            num(p.seq_images_per_s),
            num(p.pooled_images_per_s),
            str(p.pooled_window),
            num(p.pooled_mean_batch),
            ", ".join(num(r) for r in p.pooled_rounds),
            num(p.ceiling_images_per_s),
        ]
        for k, p in res.pipe.items()
    ]
    out += table(
        [
            "variant",
            "sequential ms / image (p50)",
            "p99",
            "sequential images/s",
            "pooled images/s",
            "pooled in-flight",
            "pooled mean batch",
            "pooled images/s per round",
            "ceiling images/s",
        ],
        body,
    )
    out += [
        f"*Sequential*: one {LOAD_PHOTO[0]}x{LOAD_PHOTO[1]} photo at a time, preprocess then a "
        "batch-1 run: the latency denominator. *Pooled*: the server's shape without HTTP: "
        f"a {res.pool_threads}-thread preprocessing pool keeps a window of images in flight "
        "(one image per pool thread, half a batch, or two full batches: the best is shown) "
        "while one thread runs eager batches of whatever is ready; for the served variants it "
        "is measured again before each load round (servers idle) and the *ceiling* is the "
        "better of sequential and the median pooled rate over those rounds (listed). Same "
        "photo as the load tests.",
        "",
    ]
    out += ["### Ceiling: decode + engine alone on all cores", ""]
    body = [
        [
            label(k),
            ms(c.decode_s),
            f"{num(c.engine_images_per_s)} (batch {c.engine_batch})",
            ms(c.engine_core_s),
            str(c.cores),
            num(c.images_per_s),
        ]
        for k, c in res.ceiling.items()
    ]
    out += table(
        [
            "variant",
            "decode core-ms / image",
            "engine images/s at its best batch",
            "engine core-ms / image",
            "cores",
            "ceiling images/s",
        ],
        body,
    )
    out += [
        "Each image costs one core the preprocessing of the load photo (thread CPU time, "
        "median) plus cores / (engine images/s at its best batch) of engine: *ceiling* = "
        "cores / (decode + engine core-ms). No HTTP, no batching wait, no hand-off: what the "
        "parts alone allow.",
        "",
    ]
    return out


METHOD = [
    "## Method: what runs during a phase, the ceiling, marked phases", "",
    "- **One process under test.** Every server and peer is started in its own process group. "
    "During each load phase every other one is paused (SIGSTOP of its whole group, children "
    "included: LitServe's idle workers poll); so are all of them while the in-process "
    "pipeline is measured between rounds, and every server but the one paired with the "
    "direct call during the paired latency. At the end each is stopped by its group: "
    "SIGTERM (and SIGCONT, so a paused one sees it), then SIGKILL for whatever of the group "
    "is still alive 2 s after its leader exited (no orphans).",
    "- **CPU of the whole machine per phase.** `/proc/PID/stat` of every process and the "
    "machine's busy time (`/proc/stat`) are read before and after each phase; the difference "
    "is attributed to the process group under test, the load generator (the benchmark "
    "process), every other process by name, and *unattributed* (processes that came and "
    "went within the phase).",
    f"- **Marked phase.** Where everything but the process under test and the load "
    f"generator used more than {machine.OTHERS_LIMIT_CORES:g} of a core over the phase, the "
    "phase is marked in *Phase isolation* with the largest users: its figures measure a "
    "shared machine, not the server.",
    "- **Ceiling (decode + engine alone).** cores / (decode core-seconds per image + cores / "
    "raw engine images/s at its best batch): the images/s the parts would reach on all "
    "cores with no HTTP, batching wait or hand-off. Decode is the load photo's preprocessing "
    "in thread CPU time (median); both are measured in the same run, before any server "
    "starts.", "",
]  # fmt: skip


def _isolation(res: Results) -> list[str]:
    """Every load phase: what else ran on the machine, and the phases marked for it."""
    phases = [*res.closed, *res.open, *res.batching, *res.splits, *(o.phase for o in res.overload)]
    if not phases:
        return []
    marked = [p for p in phases if p.marked]
    worst = max(phases, key=lambda p: p.others_cores)
    out = [
        "## Phase isolation",
        "",
        f"During each phase every other server and peer was paused (SIGSTOP of its process "
        f"group) and the CPU of every process on the machine was read before and after. "
        f"A phase is *marked* when the processes other than the one under test and the "
        f"load generator used more than {machine.OTHERS_LIMIT_CORES:g} of a core: "
        f"**{len(marked)} of {len(phases)} phases marked** (the most: "
        f"{worst.others_cores:.2f} cores, {worst.target} {worst.kind} {worst.level:g}).",
        "",
    ]
    if marked:
        body = [
            [
                p.target,
                label(p.variant) if p.variant else "-",
                f"{p.kind} {p.level:g}",
                f"{p.others_cores:.2f}",
                ", ".join(f"{k} {v:.2f}" for k, v in list(p.others_top.items())[:3]),
            ]
            for p in marked
        ]
        out += table(
            ["server", "variant", "phase", "other processes, cores", "largest (cores)"], body
        )
        out += [
            "A marked phase measured the server on a shared machine: its figures are "
            "not the server's; rerun on an idle machine.",
            "",
        ]
    return out


def _figures(a: Agreement | None) -> list[str]:
    """top-1 (count), top-5 overlap, softmax L1 max (mean), max relative logit error."""
    if a is None:
        return ["-"] * 4
    return [
        f"{a.top1:.3f} ({a.top1_count})",
        f"{a.top5_overlap:.3f}",
        f"{a.softmax_l1_max:.3g} ({a.softmax_l1_mean:.2g})",
        f"{a.max_rel_logit_error:.3g}",
    ]


def _short(s: Sourced | None) -> str:
    if s is None:
        return "-"
    a = s.agreement
    return (
        f"{a.top1_count} / {a.top5_overlap:.3f} / {a.softmax_l1_max:.3g} / "
        f"{a.max_rel_logit_error:.3g}"
    )


def _agreement(res: Results) -> list[str]:
    out = [
        "## 2. Speed beside agreement",
        "",
        "What each variant costs in agreement with fp32, next to what it buys in speed. "
        "*Speed-up*: the server's closed-loop peak against the fp32 server on the same "
        "provider and against fp32 on ONNX Runtime's CPU provider (raw engine: its best "
        "batch). *Agreement*, measured in this run: "
        f"{len(AGREEMENT_PHOTOS) * res.cfg.agreement_views} crops ({len(AGREEMENT_PHOTOS)} "
        "scikit-image photos held out from INT8 calibration: "
        f"{', '.join(AGREEMENT_PHOTOS)}; {res.cfg.agreement_views} view(s) each; the "
        "server's preprocessing) through this variant and through the fp32 file "
        "on ONNX Runtime's CPU provider, compared by `contract.agreement.compare`: top-1 "
        "agreement (crops agreeing / all), top-5 overlap, softmax L1 distance (worst crop, "
        "mean in brackets; 0..2), max relative logit error (`max |z - z_ref| / max "
        "|z_ref|`, worst crop). Beside them, as top-1 / top-5 / L1 / rel: what the export "
        "step recorded in the file (metadata `agreement`) and what the server measured "
        "when it loaded the variant (`GET /models`), both against the float64 reference "
        "on the verification photos.",
        "",
    ]
    body = []
    keys = [v.key for v in res.plan.limits if v != v.reference and v.key in res.engines]
    for key in keys:
        v = Variant.parse(key)
        top = summary.peak(res, key)
        same = Variant(v.arch, v.provider)
        peak = top.throughput if top else math.nan
        vs_same = math.nan if same == v else summary.ratio(peak, summary.server_peak(res, same))
        vs_cpu = summary.ratio(peak, summary.server_peak(res, v.reference))
        raw = summary.ratio(summary.raw_best(res, key), summary.raw_best(res, v.reference.key))
        body.append(
            [
                v.label,
                _executes(res, key),
                num(peak),
                x(vs_same),
                x(vs_cpu),
                x(raw),
                *_figures(res.agreement.get(key)),
                _short(res.recorded.get(key)),
                _short(at_load(res.served.get(key, {}))),
            ]
        )
    out += table(
        [
            "variant",
            "executes",
            "server peak req/s",
            "speed-up vs fp32 same provider",
            "vs fp32@cpu",
            "raw engine vs fp32@cpu",
            "top-1 agreement",
            "top-5 overlap",
            "softmax L1 max (mean)",
            "max rel logit error",
            "recorded at export",
            "server's check at load",
        ],
        body,
    )
    for key, note in res.agreement_notes.items():
        out.append(f"- {label(key)}: agreement not measured: {note}.")
    for key in keys:
        if (rec := res.recorded.get(key)) is not None:
            out.append(f"- {label(key)} recorded {rec.source}.")
        if (load := at_load(res.served.get(key, {}))) is not None:
            out.append(f"- {label(key)} checked by the server: {load.source}.")
    out += [
        "",
        "With random weights the softmax is nearly flat, so a top-1 is decided by tiny "
        "margins and flips more than with trained weights; a fp32 variant on another "
        "runtime shows the floor of numerical differences between runtimes.",
        "",
    ]
    return out


def _closed(res: Results, key: str, target: str) -> list[str]:
    gpu = res.cfg.gpu
    body = []
    for r in summary.rows(res.closed, key, target):
        body.append(
            [
                f"{r.level:g}",
                num(r.throughput),
                ", ".join(num(t) for t in r.throughputs),
                ms(r.p50),
                ms(r.p90),
                ms(r.p99),
                ms(r.max),
                str(r.errors),
                str(r.rejected),
                num(r.mean_batch),
                num(r.server_cpu, 2),
                num(r.client_cpu, 2),
                num(r.rss_mib, 0),
                *([num(r.gpu_util, 0), num(r.gpu_mem, 0)] if gpu else []),
            ]
        )
    return table(
        [
            "concurrency",
            "req/s",
            "per round",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "errors",
            "503",
            "mean batch",
            "server CPU (cores)",
            "client CPU (cores)",
            "RSS MiB",
            *(["GPU util %", "GPU mem MiB"] if gpu else []),
        ],
        body,
    )


def _server(res: Results) -> list[str]:
    out = ["## 3. The server under load", ""]
    for key in _served(res):
        pol = res.policy.get(key, {})
        info = res.served.get(key, {})
        engine = info.get("engine", {})
        out += [
            f"### {label(key)}: closed loop (batching policy `{pol.get('policy', '?')}`; "
            f"`/models`: precision {info.get('precision', '?')}, provider "
            f"{info.get('provider', '?')}, {engine.get('runtime', '?')})",
            "",
        ]
        out += _closed(res, key, SERVER)
    for key in res.fast.values():
        rs = summary.rows(res.open, key, SERVER)
        if not rs:
            continue
        out += [
            f"### {label(key)}: open loop (Poisson arrivals, latency from the scheduled send)",
            "",
        ]
        body = [
            [
                num(r.level),
                num(r.throughput),
                ms(r.p50),
                ms(r.p90),
                ms(r.p99),
                ms(r.max),
                str(r.errors),
                str(r.rejected),
                num(r.mean_batch),
                num(r.server_cpu, 2),
                num(r.client_cpu, 2),
                num(r.rss_mib, 0),
            ]
            for r in rs
        ]
        out += table(
            [
                "offered req/s",
                "achieved req/s",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "max ms",
                "errors",
                "503",
                "mean batch",
                "server CPU",
                "client CPU",
                "RSS MiB",
            ],
            body,
        )
    out += [
        "Mean batch size is the server's own `resnet_inference_count_total` / "
        "`resnet_inference_exec_count_total` delta over the phase (warm-up included); "
        "server CPU is the server process tree's CPU time / wall time; client CPU is the "
        "load generator's.",
        "",
        "![latency vs load](bench/latency_vs_load.png)",
        "",
    ]
    return out


def _peers(res: Results) -> list[str]:
    out = [
        "## 4. Peers on the fast variant (same run, photo, model file, provider and precision)",
        "",
    ]
    for peer in res.cfg.peers:
        if peer in PEER_DESC:
            desc = PEER_DESC[peer].format(delay=f"{res.cfg.batching_delay_ms:g}")
            out.append(f"- **{peer}**: {desc}")
    out.append("")
    for key in res.fast.values():
        ts = summary.targets(res, key)
        if len(ts) < 2:
            continue
        per = {t: {r.level: r for r in summary.rows(res.closed, key, t)} for t in ts}
        header = [
            "concurrency",
            *[f"{t} req/s" for t in ts],
            *[f"server / {t}" for t in ts[1:]],
            *[f"{t} p50 ms" for t in ts],
            *[f"{t} p99 ms" for t in ts],
        ]
        body = []
        for level in sorted(per[SERVER]):
            rs = [per[t].get(level) for t in ts]
            thr = [r.throughput if r else math.nan for r in rs]
            body.append(
                [
                    f"{level:g}",
                    *[num(v) for v in thr],
                    *[num(thr[0] / v, 2) if v else "-" for v in thr[1:]],
                    *[ms(r.p50) if r else "-" for r in rs],
                    *[ms(r.p99) if r else "-" for r in rs],
                ]
            )
        out += [f"### {label(key)}", "", *table(header, body)]
        for t in ts[1:]:
            out += [f"{t} in detail:", "", *_closed(res, key, t)]
    return out


def _overload(res: Results) -> list[str]:
    if not res.overload:
        return []
    cfg = res.cfg
    lim = res.overload[0].limits
    short = min(cfg.overload_queue_timeouts_ms) / 1000
    drains = {o.variant: o.limits.admission_capacity / o.peak for o in res.overload}
    long = [label(k) for k, d in drains.items() if d >= short]
    out = [
        "## 5. Overload",
        "",
        f"Open-loop Poisson arrivals at {cfg.overload_factor:g}x each variant's closed-loop "
        f"peak for {cfg.overload_seconds:g} s (after {cfg.overload_warmup_seconds:g} s "
        "unmeasured), each on a fresh server with the benchmark's settings and a queue "
        "timeout of "
        + " or ".join(f"{t / 1000:g} s" for t in cfg.overload_queue_timeouts_ms)
        + ". Why: the server admits up to its admission budget "
        f"({lim.admission_capacity} images = max_queue_size {lim.max_queue_size} + "
        f"{lim.instances} instance(s) x max_batch_size {lim.max_batch_size}) and drops what "
        "is not dispatched by the deadline; the budget holds capacity / peak seconds of work "
        "(the *drain time* below: "
        + ", ".join(f"{label(k)} {d:.1f} s" for k, d in drains.items())
        + "). When the timeout is longer than the drain time, no admitted request can reach "
        "its deadline: the p99 goal holds by construction and the phase tests only the "
        "door. "
        f"At {short:g} s the deadline is shorter than the drain time"
        + (
            f" of {', '.join(long)}"
            if long
            else " of none of the variants (then it tests nothing more than the default)"
        )
        + ": requests are admitted that cannot be dispatched in time, and the phase tests "
        "the deadline (`queue_timeout` drops) and whether a dispatched batch still ends "
        "within 2 x the timeout. Settings (the same for every phase but the timeout):",
        "",
    ]
    out += table(
        ["setting", "value"],
        [
            ["max_queue_size (images)", str(lim.max_queue_size)],
            ["max_batch_size", str(lim.max_batch_size)],
            ["instances", str(lim.instances)],
            ["admission capacity (images in flight per model)", str(lim.admission_capacity)],
            ["max_concurrent_requests", str(lim.max_concurrent_requests)],
            [
                "max_body_bytes_in_flight",
                f"{lim.max_body_bytes_in_flight} ({mib(lim.max_body_bytes_in_flight)} MiB)",
            ],
            ["max_image_pixels", str(lim.max_image_pixels)],
            ["preprocess threads", str(lim.preprocess_threads)],
            ["engine intra-op threads", str(lim.intra_op_threads)],
        ],
    )
    body = []
    for o in res.overload:
        p = o.phase
        codes = ", ".join(f"{c} {n}" for c, n in sorted(p.refusal_codes.items())) or "-"
        slow = sum(r >= FAST_REFUSAL_S for r in p.refusal_latencies)
        refused = sorted(p.refusal_latencies)

        def q(v: float, refused: list[float] = refused) -> str:
            return ms(_percentile(refused, v)) if refused else "-"

        body.append(
            [
                label(o.variant),
                f"{o.limits.queue_timeout_ms / 1000:g}",
                f"{num(p.level)} ({o.factor:g} x {num(o.peak)})",
                num(o.limits.admission_capacity / o.peak, 2),
                num(p.throughput),
                ms(p.pct(50)),
                ms(p.pct(99)),
                ms(o.p99_goal_s),
                codes,
                f"{q(50)} / {q(99)} / {q(100)}",
                str(slow),
                str(p.refusals_without_retry_after),
                str(p.errors),
            ]
        )
    out += table(
        [
            "variant",
            "queue timeout s",
            "offered req/s (x peak)",
            "drain time of the admission budget s",
            "accepted req/s",
            "accepted p50 ms",
            "accepted p99 ms",
            "goal: p99 <",
            "503 by code",
            "refusal ms p50 / p99 / max",
            "refusals >= 50 ms",
            "503 without Retry-After",
            "other errors",
        ],
        body,
    )
    body = []
    for o in res.overload:
        rej = o.server_series("resnet_rejected_requests_total")
        outcomes = o.server_series("resnet_requests_total")
        buckets = o.server_series("resnet_request_duration_seconds_bucket")
        fast = buckets.get("0.05", 0.0)  # only non-zero deltas are kept
        total = sum(outcomes.values())
        body.append(
            [
                label(o.variant),
                f"{o.limits.queue_timeout_ms / 1000:g}",
                ", ".join(f"{r} {n:.0f}" for r, n in sorted(rej.items())) or "-",
                ", ".join(f"{r} {n:.0f}" for r, n in sorted(outcomes.items())) or "-",
                f"{fast:.0f} of {total:.0f}",
                mib(o.rss_before),
                mib(o.rss_peak),
                mib(o.rss_after),
                f"{mib(o.hwm_before)} -> {mib(o.hwm_after)}",
                mib(o.bound),
                yes(o.rss_peak <= o.bound),
            ]
        )
    out += table(
        [
            "variant",
            "queue timeout s",
            "server: refused by reason",
            "server: answers by outcome",
            "server: answered in <= 50 ms",
            "RSS before MiB",
            "RSS peak MiB",
            "RSS after MiB",
            "peak-RSS mark (VmHWM) MiB",
            "bound MiB",
            "within",
        ],
        body,
    )
    first = res.overload[0]
    terms = first.limits.bound_terms(first.crop_bytes)
    out += [
        "*Client side*: every refusal's time from its scheduled send to the 503; the code "
        "is the `code` of the JSON body. *Server side*: deltas of "
        "`resnet_rejected_requests_total{reason}`, `resnet_requests_total{outcome}` and of "
        "the `resnet_request_duration_seconds` bucket `le=0.05` over the phase, warm-up "
        "included (refusals made by the limits middleware are recorded with a duration of "
        "0). *RSS*: `VmRSS` of the server process sampled every 50 ms; *bound* = RSS before "
        "the phase + "
        + " + ".join(f"{name} {mib(b)} MiB" for name, b in terms.items())
        + ". The bound counts data buffers, not Python objects per request.",
        "",
    ]
    out += _overload_reading(res)
    return out


def _overload_reading(res: Results) -> list[str]:
    """What the overload phases show, from their numbers."""
    out = []
    for o in res.overload:
        p = o.phase
        timeouts = p.refusal_codes.get("queue_timeout", 0)
        door = p.rejected - timeouts
        drain = o.limits.admission_capacity / o.peak
        t = o.limits.queue_timeout_ms / 1000
        if not p.rejected:
            continue
        if timeouts:
            out.append(
                f"- {label(o.variant)}, timeout {t:g} s: {timeouts} of {p.rejected} "
                f"refusals were deadline drops, which take the timeout by construction; "
                f"{door} were refused at the door. The admission budget "
                f"({o.limits.admission_capacity} images) holds {drain:.1f} s of work at "
                f"the peak, more than the {t:g} s deadline: the server admits requests it "
                "cannot dispatch in time. To refuse them at the door instead, the budget "
                f"would have to be about peak x timeout = {o.peak * t:.0f} images."
            )
        else:
            out.append(
                f"- {label(o.variant)}, timeout {t:g} s: every refusal was made at the "
                f"door ({', '.join(p.refusal_codes)}); the accepted requests' p99 "
                f"({ms(p.pct(99))} ms) is set by the {drain:.1f} s of work the admission "
                "budget holds at the peak, not by the deadline."
            )
    return [*out, ""] if out else []


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def _saturation_threads(res: Results, key: str) -> summary.Threads | None:
    sat = summary.saturation(res, key)
    return summary.thread_usage(res.closed, key, SERVER, sat.level) if sat else None


def _threads(res: Results) -> list[str]:
    out = [
        "## 6. Does the event loop or the GIL cap throughput before the cores do?",
        "",
        "CPU time of each thread of the server process over the measured span of a "
        "closed-loop phase at saturation (the lowest concurrency within 5% of the peak), "
        "from `/proc/PID/task/*/schedstat` and `comm`, as cores (CPU seconds per wall "
        "second), medians over rounds. Groups: *event loop* = the main thread (uvicorn's "
        "asyncio loop: HTTP, routing, batcher, responses); *decode* = `preprocess_*`; "
        "*runner* = `<model>-run<i>_*` (calls the engine, which also computes on the calling "
        "thread); *engine runtime* = threads Python did not start (ONNX Runtime's "
        "intra-op pool, OpenVINO's TBB workers); *framework threads* = AnyIO / asyncio pools. "
        "So that every thread has its name whatever the Python version, the servers run as "
        "`python -m bench.serve` (the server's own `main`, with each thread's OS name set "
        "from its Python name and its id logged) and the naive peer does the same. *Runnable, no core*: the process's "
        "threads' run-queue time (schedstat) per wall second: demand the cores could not "
        "serve; *loop wait*: the event loop's share of the span spent so.",
        "",
    ]
    body = []
    verdicts: list[tuple[str, summary.Threads, float]] = []
    rows_for: list[tuple[str, str]] = [(k, SERVER) for k in _served(res)]
    rows_for += [(k, NAIVE) for k in res.fast.values() if NAIVE in summary.targets(res, k)]
    for key, target in rows_for:
        sat = summary.saturation(res, key, target)
        t = summary.thread_usage(res.closed, key, target, sat.level) if sat else None
        if t is None or sat is None:
            continue
        verdicts.append((f"{label(key)} {target}", t, sat.throughput))
        body.append(
            [
                label(key),
                target,
                f"{t.level:g}",
                num(sat.throughput),
                *[num(t.cores.get(g, 0.0), 2) for g in threads.GROUPS],
                num(t.total, 2),
                num(t.waiting, 2),
                pct(t.loop_wait),
                num(t.loop_ms_per_request, 2),
                num(t.loop_limit, 0),
                x(summary.ratio(t.loop_limit, sat.throughput)),
            ]
        )
    out += table(
        [
            "variant",
            "server",
            "concurrency",
            "req/s",
            *[f"{g} (cores)" for g in threads.GROUPS],
            "process (cores)",
            "runnable, no core (cores)",
            "loop wait",
            "loop ms / request",
            "loop would fill a core at req/s",
            "vs measured",
        ],
        body,
    )
    out += _threads_verdict(res, verdicts)
    return out


def _threads_verdict(res: Results, verdicts: list[tuple[str, summary.Threads, float]]) -> list[str]:
    ours = [(n, t, r) for n, t, r in verdicts if n.endswith(SERVER)]
    if not ours:
        return []
    cores = res.cpu.cpus
    head = min(summary.ratio(t.loop_limit, r) for _, t, r in ours)
    busiest = max(ours, key=lambda v: v[1].loop)
    lo, hi = min(t.total for _, t, _ in ours), max(t.total for _, t, _ in ours)
    demand = min(t.total + (t.waiting if t.waiting == t.waiting else 0.0) for _, t, _ in ours)
    loop_share = max(t.loop / t.total for _, t, _ in ours if t.total)
    native = min(
        t.cores.get(threads.RUNTIME, 0.0)
        + t.cores.get(threads.RUNNER, 0.0)
        + t.cores.get(threads.DECODE, 0.0)
        for _, t, _ in ours
    )
    used = num(lo, 2) if num(lo, 2) == num(hi, 2) else f"{num(lo, 2)}-{num(hi, 2)}"
    out = [
        f"**What the numbers say.** At saturation the server process uses {used} of the "
        f"{cores} cores, the rest going to the load generator and to "
        "whatever else runs on the machine. Its event loop uses at most "
        f"{num(busiest[1].loop, 2)} of a core ({busiest[0]}: "
        f"{num(busiest[1].loop_ms_per_request, 2)} ms of loop CPU per request, "
        f"{pct(loop_share)} of the process's CPU), so it would fill its core only at "
        f"{head:.1f}x the measured peak or more. The GIL: the loop holds it for nearly all "
        "its CPU time; the runner, decode and runtime threads (at least "
        f"{num(native, 2)} cores here) spend theirs mostly in native code that releases it "
        "(the engine, libjpeg, the resize), so at most the loop's share plus the Python "
        "glue of the others contends for it. A GIL limit would show as idle cores while "
        "requests wait: "
        + (
            f"here the process's threads used or waited for at least {num(demand, 2)} of "
            f"the {cores} cores (CPU plus run-queue time), so the cores are what runs out."
            if demand >= 0.8 * cores
            else f"here the process's threads used or waited for only {num(demand, 2)} of the "
            f"{cores} cores at saturation, so something other than the cores limits it (the "
            "GIL, the core budget or the batching; this table cannot tell them apart)."
        )
    ]
    if head >= 2:
        cores_at = head * cores
        out.append(
            f"Extrapolating linearly (throughput proportional to cores, loop cost per "
            f"request constant), one process's loop would saturate at about "
            f"{cores_at:.0f} cores' worth of this throughput: **one worker process is "
            f"enough on this machine; several would pay only past roughly {cores_at:.0f} "
            "cores, or with an engine much faster per request (a GPU).**"
        )
    else:
        out.append(
            "**The loop is within 2x of saturating at the measured peak: a second "
            "worker process (or less loop work per request) is what would raise the "
            "ceiling first.**"
        )
    for n, t, _ in verdicts:
        if n.endswith(NAIVE):
            out.append(
                f"The naive peer ({n}) spends {num(t.loop_ms_per_request, 2)} ms of loop "
                f"CPU per request; its handler work (decode and inference) runs in "
                f"FastAPI's thread pool ({num(t.cores.get(threads.POOL, 0.0), 2)} cores)."
            )
    return [*out, ""]


def _splits(res: Results) -> list[str]:
    if not res.splits:
        return []
    out = [
        "## 7. Thread split (fast variant, interleaved)",
        "",
        "The server sizes its threads from a core budget (`server/flow/cpubudget.py`): an engine "
        "run holds `intra_op_threads` cores, a decode one. Each layout is a server started "
        "with the flags listed; the layouts alternate within each round, at concurrency 1 "
        "and at the saturation concurrency of the default layout's sweep.",
        "",
    ]
    body = []
    for key in dict.fromkeys(p.variant for p in res.splits):
        targets = list(dict.fromkeys(p.target for p in res.splits if p.variant == key))
        for t in targets:
            name = t.removeprefix("split ").strip()
            flags = " ".join(f"--{k} {v}" for k, v in res.split_flags.get(name, {}).items())
            for r in summary.rows(res.splits, key, t):
                body.append(
                    [
                        label(key),
                        name,
                        flags or "(defaults)",
                        f"{r.level:g}",
                        num(r.throughput),
                        ", ".join(num(v) for v in r.throughputs),
                        ms(r.p50),
                        ms(r.p99),
                        num(r.server_cpu, 2),
                    ]
                )
    out += table(
        [
            "variant",
            "layout",
            "flags",
            "concurrency",
            "images/s",
            "per round",
            "p50 ms",
            "p99 ms",
            "server CPU (cores)",
        ],
        body,
    )
    out += ["One image per request, so images/s = requests/s.", ""]
    return out


def _breakdown(res: Results) -> list[str]:
    out = ["## 8. Where a request's time goes (server's own histograms)", ""]
    for key in _served(res):
        body = []
        for c in sorted({r.level for r in summary.rows(res.closed, key, SERVER)}):
            parts = plots.breakdown_parts(res, key, c)
            if parts:
                body.append([f"{c:g}", *[num(v, 2) for v in parts], num(sum(parts), 2)])
        out += [f"### {label(key)} (mean ms per request, closed loop, first round)", ""]
        out += table(["concurrency", *plots.PARTS, "total"], body)
    out += [
        "*inference* is the mean duration of a batch execution (`resnet_inference_seconds` "
        "sum / count): every request waits for its whole batch. *HTTP + framework* is the "
        "server's `resnet_request_duration_seconds` minus queue wait, preprocess and "
        "inference; *client + socket + accept* is the client-measured mean latency minus the "
        "server's request duration: the load generator, the loopback socket, and the time a "
        "request waits before the server's handler starts (accept, HTTP parsing, reading "
        "the body while the event loop is busy).",
        "",
        "![where the time goes](bench/time_breakdown.png)",
        "",
    ]
    return out


def _findings(res: Results) -> list[str]:
    out = ["## 9. Where the server falls short, and why", ""]
    for key in _served(res):
        h = summary.headline(res, key)
        sat = summary.saturation(res, key)
        parts = plots.breakdown_parts(res, key, h.sat_level) or [math.nan] * 5
        c1 = plots.breakdown_parts(res, key, 1) or [math.nan] * 5
        pts = [p for p in res.raw if p.variant == key]
        batch_gain = h.raw_best / pts[0].images_per_s if pts else math.nan
        tie = max(0.05, h.noise)
        gain_word = "barely lowers" if batch_gain < 1.15 else "lowers"
        vs_ceiling = (
            "a tie within this run's noise"
            if abs(h.ratio_ceiling - 1) < tie
            else "above it"
            if h.ratio_ceiling > 1
            else "**below it**"
        )
        out.append(
            f"- **{label(key)}**: peak {num(h.server_peak)} req/s = {h.ratio_ceiling:.2f} x the "
            f"in-process pipeline ({num(h.ceiling)} img/s; {vs_ceiling}) and "
            f"{h.ratio_raw:.2f} x the raw engine alone at its best batch "
            f"({num(h.raw_best)} img/s, no preprocessing, no HTTP)."
        )
        if sat is not None:
            out.append(
                f"  - *Why not more*: at saturation (concurrency {h.sat_level:g}) the server "
                f"process already uses {num(sat.server_cpu, 2)} of {res.cpu.cpus} cores (the "
                f"load generator {num(sat.client_cpu, 2)}). Inference is the bulk of it, and "
                f"on this CPU batching {gain_word} its cost: the best batch size gives "
                f"{batch_gain:.2f}x the images/s of batch 1 (see BATCHING.md; the server's "
                f"mean batch here is {num(sat.mean_batch)}). What the server adds on the same "
                f"cores is preprocessing ({num(c1[3], 2)} ms per image at concurrency 1) and "
                f"per-request HTTP/asyncio work: {num(c1[0] + c1[1], 2)} ms per request at "
                f"concurrency 1, {num(parts[0] + parts[1], 1)} ms at saturation, where the "
                f"event loop competes with {res.threads} engine threads and "
                f"{res.pool_threads} decode threads for {res.cpu.cpus} cores (section 6 has "
                "the CPU per thread group)."
            )
        for p in summary.peers(res, key):
            verdict = (
                "a tie within this run's noise"
                if abs(p.ratio - 1) < tie
                else "ahead"
                if p.ratio > 1
                else "**behind**"
            )
            out.append(
                f"  - vs {p.peer}: {p.ratio:.2f}x at peak ({verdict}); p99 at its peak "
                f"(concurrency {p.level:g}) {ms(p.ours_p99)} ms vs {ms(p.peer_p99)} ms. The "
                "peers run the same preprocessing and the same engine on the same cores, so "
                "once the cores are full all are bound by the same inference cost; what can "
                "differ is batching (worth at most the batch gain above) and per-request "
                "overhead."
            )
        if h.p50_c1 == h.p50_c1:
            lat = "within" if h.p50_c1 <= h.p50_budget else "**outside**"
            out.append(
                f"  - p50 at concurrency 1: {ms(h.p50_c1)} ms, {lat} the budget of "
                f"{ms(h.p50_budget)} ms (direct call {ms(h.direct)} ms; medians of the same "
                f"interleaved pairs). At concurrency 1 a request spends "
                f"{num(c1[0] + c1[1], 2)} ms in HTTP, framework and client code, "
                f"{num(c1[3], 2)} ms preprocessing and {num(c1[4], 2)} ms inferring."
            )
    out.append("")
    return out


def benchmarks_md(res: Results) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python -m bench` (`make bench`) from one run; do not edit by hand.",
        "",
    ]
    lines += _env(res) + METHOD + _headline(res) + _limits(res) + _agreement(res) + _server(res)
    lines += _peers(res) + _overload(res) + _threads(res) + _splits(res) + _breakdown(res)
    lines += _isolation(res) + _findings(res)
    lines += [
        "See also [BATCHING.md](BATCHING.md) for the batching policy measured in this run.",
        "",
    ]
    return "\n".join(lines)


#: The GPU section: measured on a lent GPU machine by ``bench/gpu_session.sh``, not by this
#: run (no GPU here), kept by hand beside its raw results and appended to every report.
GPU_SECTION = Path(__file__).resolve().parents[1] / "docs" / "bench" / "gpu" / "GPU.md"


def write(res: Results, out: Path) -> list[Path]:
    """Write BENCHMARKS.md (with :data:`GPU_SECTION` appended), BATCHING.md and the plots
    (under ``out/bench/``)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = plots.write_all(res, out / "bench")
    gpu = "\n" + GPU_SECTION.read_text() if GPU_SECTION.exists() else ""
    for name, text in (
        ("BENCHMARKS.md", benchmarks_md(res) + gpu),
        ("BATCHING.md", batching_md(res)),
    ):
        (out / name).write_text(text)
        paths.append(out / name)
    return paths
