"""Training-step benchmark: ring vs blockwise throughput, longest trainable context, paper plan.

Writes ``results/train.json`` (config, platform, every measurement, ratios, pass/fail per
target) and ``results/train.png`` (existing ones are replaced only with ``--overwrite``)::

    rl-ring bench train --quick      # about 2 minutes on 2 CPU cores
    rl-ring bench train              # full: T=8192, 16 GB search, paper plan
    python -m experiments.bench.train --quick   # the same

Three parts, all on the same 4-layer, 128-wide trajectory transformer (AT token layout,
batch 1, float32, full rematerialisation per layer):

1. Tokens/s of a whole training step (forward, backward, AdamW) at one total sequence
   length: blockwise attention on 1 device against ring attention on ``--devices`` fake CPU
   devices (contiguous and zigzag layouts). On CPU the fake devices share the machine's
   cores, so the ratio measures the ring's overhead (sharding, ``ppermute``, per-device
   scheduling) at equal total work; target >= 0.9.
2. The longest context one training step fits in a memory budget: the compiled step's
   ``memory_analysis()`` (arguments + outputs - aliased + temporaries, per device) times the
   devices that share this machine's RAM, doubling the length until the budget is passed,
   for dense (reference) attention and blockwise on 1 device and ring on ``--devices``. The
   largest length within ``--confirm-budget-gb`` is then really run, one step, in a fresh
   process whose peak resident memory is measured.
3. ``rl-ring plan`` for the paper's configuration (353.8M parameters, 512K tokens) on 64 and
   256 simulated devices.

Run it as a command: it fakes ``--devices`` CPU devices, which must be set before JAX starts.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.bench import common

ROOT = common.ROOT
TARGETS = {"ring_vs_blockwise_tokens_per_s": 0.9}
GIB = 1024**3


@dataclass(frozen=True)
class BenchConfig:
    """What to measure (defaults: the full run)."""

    quick: bool = False
    """Small preset (about 2 minutes): T=2048, 0.5 GiB search, no runs, 64-device plan only."""
    seq_len: int = 8192
    """Total tokens per sequence of the throughput comparison (a multiple of 4 x 2 x devices)."""
    devices: int = 8
    """Fake CPU devices of the ring."""
    steps: int = 5
    """Timed training steps per case (after one warm-up step that compiles)."""
    width: int = 128
    """Model width."""
    depth: int = 4
    """Model layers."""
    heads: int = 4
    """Attention heads."""
    budget_gb: float = 16.0
    """Memory budget (GiB, all devices together) of the longest-context search."""
    start_len: int = 1024
    """Shortest sequence of the search (grown until the budget is passed)."""
    growth: int = 2
    """Factor between successive lengths of the search."""
    impls: tuple[str, ...] = ("reference", "blockwise", "ring")
    """Attention implementations of the search (ring on --devices, the others on 1)."""
    max_len: int = 1 << 22
    """Longest sequence the search tries."""
    confirm_budget_gb: float = 4.0
    """Really run one step at the longest length within this budget (0 = skip)."""
    confirm_max_len: int = 16384
    """...and no longer than this (a step at 100K+ tokens takes hours on 2 CPU cores)."""
    plan_meshes: tuple[str, ...] = ("seq=64", "seq=256")
    """Meshes of the paper-configuration plan ('' entries skipped)."""
    platform: str = "cpu"
    """cpu: --devices fake CPU devices sharing this machine's RAM; gpu: the real accelerators
    (each with its own memory; ring cases need at least 2)."""
    out: str = "results/train.json"
    """JSON output path (the PNG goes beside it)."""
    overwrite: bool = False
    """Replace existing output files."""
    worker: str = ""
    """Internal: a JSON job for a child process (one confirmation step)."""

    @classmethod
    def quick_preset(cls) -> BenchConfig:
        """About 2 minutes: short throughput run, coarse 0.5 GiB search, 64-device plan."""
        return cls(quick=True, seq_len=2048, steps=2, budget_gb=0.5, start_len=2048,
                   growth=4, confirm_budget_gb=0.0, plan_meshes=("seq=64",))

    @classmethod
    def tiny(cls, out: str) -> BenchConfig:
        """Seconds: a 1-layer, 32-wide model, every part but the paper plan (for tests)."""
        return cls(quick=True, seq_len=256, steps=1, width=32, depth=1, heads=2,
                   budget_gb=0.03, start_len=256, growth=4, max_len=1024,
                   impls=("reference", "ring"), confirm_budget_gb=0.005, plan_meshes=(),
                   out=out)


def _set_devices(n: int, platform: str = "cpu") -> None:
    # Before JAX starts: this process's fake CPU devices (or nothing to fake on a GPU).
    if platform != "cpu":
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
        return
    common.fake_cpu_devices(n)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def bench_shape(cfg: BenchConfig, seq_len: int, impl: str, mesh: str, layout="contiguous"):
    """The 4x128 AT-shaped step of the benchmark at ``seq_len`` tokens."""
    from agents.presets import BENCH_4x128

    model = BENCH_4x128.model.replace(
        width=cfg.width, depth=cfg.depth, num_heads=cfg.heads, attn_impl=impl,
        attn_layout=layout,
    )
    return BENCH_4x128.replace(model=model, steps_per_sequence=seq_len // 4, mesh=mesh)


def synthetic_batch(shape, seed: int = 0):
    """A batch shaped like an AT chain: 4 tokens per step, loss on the state tokens."""
    from rl_ring.data.batch import TokenBatch

    tokens = common.at_tokens(shape.batch_size, shape.seq_len, shape.feature_dim,
                              shape.model.act_dim, seed=seed)
    return TokenBatch(**tokens, tokens_per_step=4)


def build_step(shape):
    """(jitted step, state, placed batch, devices) for ``shape`` on the first devices."""
    import jax

    from rl_ring import sharding
    from rl_ring.models import TrajectoryTransformer
    from rl_ring.train.loader import MeshLoader
    from rl_ring.train.optim import OptimConfig, make_optimizer
    from rl_ring.train.recipe import model_loss, rule_specs
    from rl_ring.train.state import build_state
    from rl_ring.train.step import jit_step, make_step_fn

    spec = sharding.parse_mesh_spec(shape.mesh)
    mesh = sharding.make_mesh(spec, devices=jax.devices()[: spec.size])
    tx, sched = make_optimizer(OptimConfig(), 1000)
    state, shardings, parts = build_state(
        lambda r: TrajectoryTransformer(shape.model, rngs=r), tx, 0, mesh, rule_specs)
    loader = MeshLoader(mesh, shape.batch_size, shape.model.attn_layout)
    example = synthetic_batch(shape)
    batch = loader.place(example)
    step = jit_step(make_step_fn(parts, model_loss, tx, sched, mesh=mesh),
                    shardings, loader.shardings(example), mesh)
    return step, state, batch, spec.size


# Memory points already compiled, by (impl, mesh, layout, seq_len): the search reuses them.
_POINTS: dict[tuple, dict[str, Any]] = {}


def _key(shape) -> tuple:
    return (shape.model.attn_impl, shape.mesh, shape.model.attn_layout, shape.seq_len)


def _point(ma, seq_len: int, devices: int, compile_s: float) -> dict[str, Any]:
    peak = (ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes
            + ma.temp_size_in_bytes)
    return {"seq_len": seq_len, "devices": devices, "peak_bytes": peak,
            "temp_bytes": ma.temp_size_in_bytes, "argument_bytes": ma.argument_size_in_bytes,
            "total_bytes": peak * devices, "compile_s": compile_s}


def _budget_bytes(point: dict[str, Any], platform: str) -> int:
    # Fake CPU devices share one RAM: all of them count. Real devices each have their own.
    return point["total_bytes"] if platform == "cpu" else point["peak_bytes"]


def time_cases(shapes: list, steps: int) -> list[dict[str, Any]]:
    """Compiles every case, then times ``steps`` rounds of one step per case.

    The cases take turns, round after round, so a change in the machine's load (other
    processes) falls on all of them alike; each case reports its median step time.
    """
    import jax

    cases = []
    for shape in shapes:
        step, state, batch, n = build_step(shape)
        t0 = time.perf_counter()
        compiled = step.lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
        _POINTS[_key(shape)] = _point(compiled.memory_analysis(), shape.seq_len, n, compile_s)
        state, metrics = compiled(state, batch)  # warm-up
        jax.block_until_ready(metrics)
        cases.append({"shape": shape, "compiled": compiled, "state": state, "batch": batch,
                      "n": n, "compile_s": compile_s, "loss": float(metrics["loss"])})

    def one_step(c: dict[str, Any]) -> float:
        t0 = time.perf_counter()
        c["state"], metrics = c["compiled"](c["state"], c["batch"])
        jax.block_until_ready(metrics)
        return time.perf_counter() - t0

    times = common.round_robin({i: lambda c=c: one_step(c) for i, c in enumerate(cases)}, steps)
    rows = []
    for i, c in enumerate(cases):
        c["times"] = times[i]
        shape, med = c["shape"], statistics.median(c["times"])
        rows.append({
            "impl": shape.model.attn_impl, "layout": shape.model.attn_layout,
            "mesh": shape.mesh, "devices": c["n"], "seq_len": shape.seq_len,
            "compile_s": c["compile_s"], "step_s": c["times"], "median_step_s": med,
            "tokens_per_s": shape.seq_len / med, "loss": c["loss"],
        })
    return rows


def memory_point(shape) -> dict[str, Any]:
    """Compiled per-device memory of one step (nothing allocated)."""
    from rl_ring.train.plan import plan_step

    if _key(shape) in _POINTS:
        return _POINTS[_key(shape)]
    r = plan_step(shape)
    point = {"seq_len": shape.seq_len, "devices": r.devices, "peak_bytes": r.peak_bytes,
             "temp_bytes": r.temp_bytes, "argument_bytes": r.argument_bytes,
             "total_bytes": r.peak_bytes * r.devices, "compile_s": r.compile_s}

    _POINTS[_key(shape)] = point
    return point


def longest_context(cfg: BenchConfig, impl: str, mesh: str) -> dict[str, Any]:
    """Grows the sequence until the step's memory passes the budget (all fake CPU devices
    together, or one real device)."""
    points: list[dict[str, Any]] = []
    n = int(mesh.split("=")[1])
    t = max(cfg.start_len, 8 * n)
    budget = cfg.budget_gb * GIB
    while t <= cfg.max_len:
        try:
            p = memory_point(bench_shape(cfg, t, impl, mesh))
        except Exception as err:  # noqa: BLE001
            # A GPU compiler runs candidate kernels while autotuning: a step far over the
            # device's memory fails to compile. That length does not fit.
            if "RESOURCE_EXHAUSTED" not in str(err):
                raise
            points.append({"seq_len": t, "error": str(err).splitlines()[0][:300]})
            print(f"  {impl:9s} {mesh:6s} T={t:>8,}: does not compile (out of memory)",
                  flush=True)
            break
        p["budget_bytes"] = _budget_bytes(p, cfg.platform)
        points.append(p)
        print(f"  {impl:9s} {mesh:6s} T={t:>8,}: {p['budget_bytes'] / GIB:8.3f} GiB "
              f"(compiled in {p['compile_s']:.0f} s)", flush=True)
        if p["budget_bytes"] > budget:
            break
        t *= cfg.growth
    fits = [p for p in points if "error" not in p and p["budget_bytes"] <= budget]
    return {"impl": impl, "mesh": mesh, "points": points,
            "longest_seq_len": fits[-1]["seq_len"] if fits else 0,
            "hit_search_cap": bool(fits) and fits[-1] is points[-1]}


def confirm_run(cfg: BenchConfig, impl: str, mesh: str, seq_len: int, predicted: int):
    """Runs one training step at ``seq_len`` in a child process; its peak memory and time."""
    job = {"impl": impl, "mesh": mesh, "seq_len": seq_len}
    cmd = [sys.executable, "-m", "experiments.bench.train", "--worker", json.dumps(job),
           "--width", str(cfg.width), "--depth", str(cfg.depth), "--heads", str(cfg.heads),
           "--devices", str(cfg.devices), "--platform", cfg.platform]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=ROOT)
    if proc.returncode != 0:
        return {**job, "ok": False, "error": proc.stderr[-2000:]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if cfg.platform != "cpu":
        return {**job, "ok": True, **out, "predicted_peak_bytes": predicted,
                "measured_over_predicted_peak": out["device_peak_bytes"] / predicted}
    grown = out["peak_rss_bytes"] - out["baseline_rss_bytes"]
    want = out["predicted_step_growth_bytes"]
    return {**job, "ok": True, **out, "predicted_total_bytes": predicted,
            "measured_step_growth_bytes": grown,
            "measured_over_predicted_growth": grown / want if want else None}


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def worker(cfg: BenchConfig) -> None:
    """Child process: one compiled step of a job; prints JSON with the memory it added.

    The state and batch are allocated and the step compiled; the compiler's freed memory is
    returned to the OS (``malloc_trim``), the resident-set high-water mark reset
    (``/proc/self/clear_refs``) and the step run, so the growth measured is the step's own:
    temporaries and outputs not written into donated inputs, plus whatever the CPU runtime
    allocates beyond XLA's buffer assignment (thread pools on first use).
    """
    import jax

    job = json.loads(cfg.worker)
    shape = bench_shape(cfg, job["seq_len"], job["impl"], job["mesh"])
    step, state, batch, n = build_step(shape)
    compiled = step.lower(state, batch).compile()
    ma = compiled.memory_analysis()
    jax.block_until_ready((state, batch))
    if cfg.platform != "cpu":
        # A real device counts its own allocations: the peak of the whole process so far.
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        loss = float(metrics["loss"])
        elapsed = time.perf_counter() - t0
        stats = jax.devices()[0].memory_stats() or {}
        print(json.dumps({"device_peak_bytes": stats.get("peak_bytes_in_use", 0),
                          "device_limit_bytes": stats.get("bytes_limit", 0),
                          "step_s": elapsed, "loss": loss}))
        return
    # The compiler's freed memory goes back to the OS, so the step's allocations show.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    base = _status_bytes("VmRSS")
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    loss = float(metrics["loss"])
    elapsed = time.perf_counter() - t0
    peak = _status_bytes("VmHWM")
    predicted = (ma.temp_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes) * n
    print(json.dumps({"baseline_rss_bytes": base, "peak_rss_bytes": peak, "step_s": elapsed,
                      "argument_bytes_all_devices": ma.argument_size_in_bytes * n,
                      "predicted_step_growth_bytes": predicted, "loss": loss}))


def paper_plan(mesh: str) -> dict[str, Any]:
    """``rl-ring plan paper-at-exorl --mesh MESH`` in a fresh process (it fakes the devices)."""
    out = ROOT / "results" / f".plan-{mesh.replace('=', '')}.json"
    cmd = [sys.executable, "-m", "rl_ring.cli.plan", "paper-at-exorl", "--mesh", mesh,
           "--json-out", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=ROOT, env=env)
    if proc.returncode != 0:
        return {"mesh": mesh, "ok": False, "error": proc.stderr[-2000:]}
    report = json.loads(out.read_text())
    out.unlink()
    return {"mesh": mesh, "ok": True, "table": proc.stdout.strip(), **report}


def run(cfg: BenchConfig) -> dict[str, Any]:
    import jax

    from rl_ring.train.plan import human_bytes

    n = cfg.devices if cfg.platform == "cpu" else len(jax.devices())
    result: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "platform": {"machine": platform.machine(), "processor": platform.processor(),
                     "cpus": os.cpu_count(), "python": platform.python_version(),
                     "jax": jax.__version__, "backend": jax.default_backend(),
                     "devices": len(jax.devices()),
                     "device_kind": jax.devices()[0].device_kind},
        "model": {"width": cfg.width, "depth": cfg.depth, "heads": cfg.heads,
                  "tokens_per_step": 4, "batch": 1, "dtype": "float32", "remat": "full"},
    }
    # 1. throughput at equal total length
    print(f"throughput at T={cfg.seq_len:,}", flush=True)
    cases = [("blockwise", "seq=1", "contiguous")]
    if n > 1:
        cases.append(("ring", f"seq={n}", "contiguous"))
        if not cfg.quick:
            cases.append(("ring", f"seq={n}", "zigzag"))
    if cfg.platform != "cpu":
        cases.insert(0, ("reference", "seq=1", "contiguous"))
    rows = time_cases([bench_shape(cfg, cfg.seq_len, impl, mesh, layout)
                       for impl, mesh, layout in cases], cfg.steps)
    for row in rows:
        print(f"  {row['impl']:9s} {row['mesh']:6s} {row['layout']:10s} "
              f"{row['tokens_per_s']:10,.0f} tokens/s (median step {row['median_step_s']:.3f} s)",
              flush=True)
    base = next(r["tokens_per_s"] for r in rows if r["impl"] == "blockwise")
    for row in rows:
        row["vs_blockwise"] = row["tokens_per_s"] / base
    rings = [r for r in rows if r["impl"] == "ring"]
    best_ring = max((r["vs_blockwise"] for r in rings), default=None)
    result["throughput"] = {"rows": rows, "ring_vs_blockwise": best_ring,
                            "tokens_per_s_blockwise": base}
    if rings:
        result["throughput"]["tokens_per_s_ring"] = max(r["tokens_per_s"] for r in rings)
    # 2. longest context within the budget
    print(f"longest context within {cfg.budget_gb} GiB (compiled memory analysis)", flush=True)
    searches = [longest_context(cfg, impl, f"seq={n}" if impl == "ring" else "seq=1")
                for impl in cfg.impls if impl != "ring" or n > 1]
    result["longest_context"] = {s["impl"]: s for s in searches}
    dense = result["longest_context"].get("reference")
    ring = result["longest_context"].get("ring")
    if dense and ring and dense["longest_seq_len"]:
        result["longest_context"]["ring_over_dense"] = (
            ring["longest_seq_len"] / dense["longest_seq_len"])
    # ...confirmed by running the longest length within the confirmation budget
    confirms = []
    if cfg.confirm_budget_gb > 0:
        for s in searches:
            fits = [p for p in s["points"] if "error" not in p
                    and p["budget_bytes"] <= cfg.confirm_budget_gb * GIB
                    and p["seq_len"] <= cfg.confirm_max_len]
            if not fits:
                continue
            p = fits[-1]
            print(f"  running one {s['impl']} step at T={p['seq_len']:,} "
                  f"(predicted {human_bytes(p['budget_bytes'])})", flush=True)
            c = confirm_run(cfg, s["impl"], s["mesh"], p["seq_len"], p["budget_bytes"])
            confirms.append(c)
            if c["ok"] and cfg.platform != "cpu":
                print(f"    device peak {human_bytes(c['device_peak_bytes'])}, "
                      f"{c['step_s']:.1f} s", flush=True)
            elif c["ok"]:
                print(f"    the step added {human_bytes(c['measured_step_growth_bytes'])} "
                      f"resident (compiled analysis: "
                      f"{human_bytes(c['predicted_step_growth_bytes'])}), "
                      f"{c['step_s']:.1f} s", flush=True)
    result["confirmed_runs"] = confirms
    # 3. the paper's configuration
    plans = []
    for mesh in cfg.plan_meshes:
        if mesh:
            print(f"plan paper-at-exorl on {mesh}", flush=True)
            plans.append(paper_plan(mesh))
            if plans[-1]["ok"]:
                print(plans[-1]["table"], flush=True)
    result["paper_plan"] = plans
    result["targets"] = {
        "ring_vs_blockwise_tokens_per_s": {
            "target": TARGETS["ring_vs_blockwise_tokens_per_s"], "measured": best_ring,
            "pass": None if best_ring is None
            else best_ring >= TARGETS["ring_vs_blockwise_tokens_per_s"]},
    }
    return result


def plot(result: dict[str, Any], png: Path) -> None:
    plt = common.pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    rows = result["throughput"]["rows"]
    labels = [f"{r['impl']}\n{r['mesh']} {r['layout']}" for r in rows]
    colors = {"reference": "#d62728", "blockwise": "#777", "ring": "#1f77b4"}
    ax1.bar(labels, [r["tokens_per_s"] for r in rows],
            color=[colors[r["impl"]] if r["layout"] != "zigzag" else "#2ca02c" for r in rows])
    ax1.set_ylabel("training tokens / s")
    ax1.set_title(f"training step, T={rows[0]['seq_len']:,} total tokens")
    budget = result["config"]["budget_gb"]
    for impl, color in (("reference", "#d62728"), ("blockwise", "#777"), ("ring", "#1f77b4")):
        s = result["longest_context"].get(impl)
        if s is None:
            continue
        pts = [p for p in s["points"] if "error" not in p]
        xs = [p["seq_len"] for p in pts]
        ys = [p["budget_bytes"] / GIB for p in pts]
        ax2.plot(xs, ys, "o-", color=color, label=f"{impl} ({s['mesh']}): "
                 f"{s['longest_seq_len']:,} tokens")
    for c in result["confirmed_runs"]:
        if c.get("ok"):
            # resident state and batch + what the step added while running (CPU), or the
            # device's peak (GPU)
            measured = (c["device_peak_bytes"] if "device_peak_bytes" in c else
                        c["argument_bytes_all_devices"] + c["measured_step_growth_bytes"])
            ax2.plot(c["seq_len"], measured / GIB, "kx")
    ax2.axhline(budget, color="k", ls="--", lw=1, label=f"budget {budget} GiB")
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("sequence length (tokens)")
    on_cpu = result["config"]["platform"] == "cpu"
    ax2.set_ylabel(f"step memory, {'all devices' if on_cpu else 'per device'} (GiB)")
    ax2.set_title("compiled memory of one step (x: measured)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    common.save_png(fig, png)


def write(result: dict[str, Any], out: Path) -> None:
    """Writes the JSON at ``out`` and the PNG beside it."""
    common.write_result(result, out, plot)


def main(argv: list[str] | None = None) -> int:
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = tyro.cli(BenchConfig, args=argv, prog="rl-ring bench train")
    if cfg.quick:
        given = {a.lstrip("-").split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}
        quick = BenchConfig.quick_preset()
        cfg = dataclasses.replace(quick, **{k: getattr(cfg, k) for k in given
                                            if k in {f.name for f in dataclasses.fields(cfg)}})
    out = common.resolve_out(cfg.out, ROOT)
    if not cfg.worker:
        common.check_outputs([out, out.with_suffix(".png")], overwrite=cfg.overwrite,
                             what="the training benchmark")
    _set_devices(cfg.devices, cfg.platform)
    if cfg.worker:
        worker(cfg)
        return 0
    t0 = time.perf_counter()
    result = run(cfg)
    result["wall_s"] = time.perf_counter() - t0
    write(result, out)
    ratio = result["throughput"]["ring_vs_blockwise"]
    print(f"ring/blockwise tokens/s {'n/a' if ratio is None else f'{ratio:.2f}'} "
          f"(target >= {TARGETS['ring_vs_blockwise_tokens_per_s']}); wrote {out} and "
          f"{out.with_suffix('.png')} in {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
