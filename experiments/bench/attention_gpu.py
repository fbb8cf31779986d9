"""Attention on one GPU: the fused Pallas kernel against XLA blockwise, dense and cuDNN.

Prepared to run in one call on a lent GPU (results/attention_gpu.json + PNG, with the
device name):

    rl-ring bench attention_gpu --overwrite                  # the full grid, ~5-8 min on an H200
    rl-ring bench attention_gpu --dry-run --out /tmp/a.json  # CPU: tiny shapes, interpret mode

For every head dimension (64, 128), mask (causal, full) and sequence length (4K .. 128K) it
times, in bfloat16 with float32 accumulation, forward and forward+backward of:

- ``pallas``: ``blockwise_attention(..., kernel="pallas")`` (the fused kernel per block pair);
- ``xla``: ``blockwise_attention(..., kernel="xla")`` (the XLA-generated chunk loop);
- ``dense``: ``reference_attention`` (only where its ``T x T`` scores fit, ``--dense-max``);
- ``cudnn``: ``jax.nn.dot_product_attention(..., implementation="cudnn")``, the vendor's
  fused kernel (GPU only);
- ``ring1``: ``attention(impl="ring")`` on a 1-device mesh with the Pallas kernel, against
  the kernel alone (the ring's own overhead).

Before timing, each (head dim, mask) checks the Pallas kernel's output and gradients against
the dense reference at a small length (``check_*`` entries, max abs error). FLOPs count
visible pairs only: forward ``4 B H D * visible``, forward+backward 3.5x that. Cases slower
than ``--case-budget`` seconds are not repeated at longer lengths (recorded as skipped), and
the JSON is rewritten after every case so that a run cut short still leaves its numbers.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from dataclasses import dataclass

from experiments.bench.common import check_outputs, median, pyplot, save_png, timed, write_result

IMPLS = ("pallas", "xla", "dense", "cudnn", "ring1")
MODES = ("fwd", "fwd_bwd")


@dataclass(frozen=True)
class GPUBenchConfig:
    """What to benchmark (defaults: the full GPU grid)."""

    seq_lens: tuple[int, ...] = (4096, 8192, 16384, 32768, 65536, 131072)
    """Sequence lengths T (one device)."""
    head_dims: tuple[int, ...] = (64, 128)
    """Head dimensions D."""
    causal: tuple[bool, ...] = (True, False)
    """Masks: causal and full."""
    heads: int = 16
    """Query (= K/V) heads."""
    batch: int = 1
    """Batch size."""
    dtype: str = "bfloat16"
    """Input dtype."""
    repeats: int = 5
    """Timed runs per case after one warm-up."""
    impls: tuple[str, ...] = IMPLS
    """Which implementations to time."""
    dense_max: int = 16384
    """Longest T for the dense reference (its scores are ``B H T T`` float32)."""
    xla_max: int = 32768
    """Longest T for the XLA blockwise path (it is the slow one on a GPU)."""
    case_budget: float = 20.0
    """Seconds: an implementation whose median exceeds this stops at that length."""
    check_len: int = 1024
    """T of the correctness check against the dense reference."""
    dry_run: bool = False
    """CPU check: T=128/256 (unless --seq-lens), D=64, 2 heads, float32, interpret mode,
    no cuDNN."""
    out: str = "results/attention_gpu.json"
    """Result JSON (the PNG goes beside it)."""
    overwrite: bool = False
    """Replace existing result files."""


def resolve(cfg: GPUBenchConfig) -> GPUBenchConfig:
    """The dry-run preset applied."""
    if not cfg.dry_run:
        return cfg
    default = GPUBenchConfig()
    seq_lens = (128, 256) if cfg.seq_lens == default.seq_lens else cfg.seq_lens
    return dataclasses.replace(
        cfg, seq_lens=seq_lens, head_dims=(64,), heads=2, dtype="float32", repeats=1,
        impls=tuple(i for i in cfg.impls if i != "cudnn"), dense_max=256, xla_max=256,
        check_len=96,
    )


def attention_flops(batch: int, heads: int, head_dim: int, seq: int, causal: bool,
                    backward: bool) -> float:
    """FLOPs of the visible work (see the module docstring)."""
    visible = seq * (seq + 1) / 2 if causal else seq * seq
    fwd = 4.0 * batch * heads * head_dim * visible
    return 3.5 * fwd if backward else fwd


def _fn(impl: str, causal: bool, mesh, **kernel_options):
    """``f(q, k, v) -> out`` of one implementation, in ``[B, T, H, D]``; ``kernel_options``
    (AttentionOptions fields, e.g. ``interpret=False, kernel_platform="tpu"``) go to the
    Pallas paths (the tests lower them for a GPU / TPU from a CPU)."""
    import jax

    from rl_ring.attention import (
        AttentionOptions,
        attention,
        blockwise_attention,
        reference_attention,
    )

    if impl == "pallas":
        opts = AttentionOptions(kernel="pallas", **kernel_options)
        return lambda q, k, v: blockwise_attention(q, k, v, causal=causal, options=opts)
    if impl == "xla":
        opts = AttentionOptions(kernel="xla")
        return lambda q, k, v: blockwise_attention(q, k, v, causal=causal, options=opts)
    if impl == "dense":
        return lambda q, k, v: reference_attention(q, k, v, causal=causal)
    if impl == "cudnn":
        return lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, is_causal=causal, implementation="cudnn")
    if impl == "ring1":
        opts = AttentionOptions(kernel="pallas", **kernel_options)
        return lambda q, k, v: attention(q, k, v, impl="ring", mesh=mesh, causal=causal,
                                         options=opts)
    raise ValueError(f"attention_gpu: unknown implementation {impl!r}; one of {IMPLS}")


def _compiled(fn, backward: bool):
    import jax
    import jax.numpy as jnp

    if not backward:
        return jax.jit(fn)

    def fwd_bwd(q, k, v, ct):
        out, vjp = jax.vjp(fn, q, k, v)
        return out, vjp(ct.astype(out.dtype))

    del jnp
    return jax.jit(fwd_bwd)


def _inputs(cfg: GPUBenchConfig, seq: int, head_dim: int, seed: int = 0):
    import jax
    import jax.numpy as jnp

    dtype = jnp.dtype(cfg.dtype)
    keys = jax.random.split(jax.random.key(seed), 4)
    shape = (cfg.batch, seq, cfg.heads, head_dim)
    q, k, v, ct = (jax.random.normal(key, shape, jnp.float32).astype(dtype) for key in keys)
    return q, k, v, ct


def check_kernel(cfg: GPUBenchConfig, head_dim: int, causal: bool) -> dict:
    """Max abs error of the Pallas kernel's output and gradients against the dense reference
    (computed in float32 from the same bf16 inputs)."""
    import jax
    import jax.numpy as jnp

    q, k, v, ct = _inputs(cfg, cfg.check_len, head_dim, seed=1)
    f32 = [x.astype(jnp.float32) for x in (q, k, v, ct)]
    got_out, got_grads = _compiled(_fn("pallas", causal, None), True)(q, k, v, ct)
    want_out, want_grads = _compiled(_fn("dense", causal, None), True)(*f32)
    err = lambda a, b: float(jnp.max(jnp.abs(a.astype(jnp.float32) - b)))
    scale = lambda b: float(jnp.max(jnp.abs(b)))
    names = ("out", "dq", "dk", "dv")
    gots = (got_out, *got_grads)
    wants = (want_out, *want_grads)
    jax.block_until_ready(gots)
    return {
        "seq_len": cfg.check_len,
        **{f"max_abs_err_{n}": err(g, w) for n, g, w in zip(names, gots, wants, strict=True)},
        **{f"max_abs_{n}": scale(w) for n, w in zip(names, wants, strict=True)},
    }


def _skip_reason(cfg: GPUBenchConfig, impl: str, seq: int, stopped: set) -> str | None:
    if impl == "dense" and seq > cfg.dense_max:
        return f"T > dense_max={cfg.dense_max}"
    if impl == "xla" and seq > cfg.xla_max:
        return f"T > xla_max={cfg.xla_max}"
    if impl in stopped:
        return f"slower than case_budget={cfg.case_budget}s at a shorter T"
    return None


def run(cfg: GPUBenchConfig, save=None) -> dict:
    """Runs the grid; ``save(result)`` is called after every case."""
    import jax

    from rl_ring.sharding import make_mesh

    cfg = resolve(cfg)
    mesh = make_mesh("seq=1", devices=jax.devices()[:1])
    dev = jax.devices()[0]
    result = {
        "config": dataclasses.asdict(cfg),
        "platform": {
            "backend": jax.default_backend(), "device_kind": dev.device_kind,
            "jax": jax.__version__, "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "flops_convention": "fwd = 4*B*H*D*visible pairs; fwd_bwd = 3.5 x fwd",
        "checks": {}, "timings": {}, "skipped": {},
    }
    save = save or (lambda r: None)
    start = time.perf_counter()
    for d in cfg.head_dims:
        for causal in cfg.causal:
            tag = f"D{d} {'causal' if causal else 'full'}"
            try:
                result["checks"][tag] = check_kernel(cfg, d, causal)
            except Exception as err:  # recorded, not fatal: the timings may still run
                result["checks"][tag] = {"error": f"{type(err).__name__}: {err}"[:2000]}
            save(result)
            stopped: set[str] = set()
            for seq in cfg.seq_lens:
                q, k, v, ct = _inputs(cfg, seq, d)
                for impl in cfg.impls:
                    for mode in MODES:
                        key = f"{impl} {tag} T{seq} {mode}"
                        reason = _skip_reason(cfg, impl, seq, stopped)
                        if reason:
                            result["skipped"][key] = reason
                            continue
                        backward = mode == "fwd_bwd"
                        try:
                            f = _compiled(_fn(impl, causal, mesh), backward)
                            args = (q, k, v, ct) if backward else (q, k, v)
                            timed(lambda f=f, args=args: f(*args))  # compile + warm-up
                            runs = [timed(lambda f=f, args=args: f(*args))
                                    for _ in range(cfg.repeats)]
                        except Exception as err:
                            result["skipped"][key] = f"{type(err).__name__}: {err}"[:2000]
                            save(result)
                            continue
                        ms = median(runs) * 1e3
                        flops = attention_flops(cfg.batch, cfg.heads, d, seq, causal, backward)
                        result["timings"][key] = {
                            "impl": impl, "head_dim": d, "causal": causal, "seq_len": seq,
                            "mode": mode, "runs_ms": [round(r * 1e3, 3) for r in runs],
                            "median_ms": round(ms, 3),
                            # 4 significant digits: the CPU dry run's ~1e-4 TFLOP/s
                            # rounded to 3 decimals became 0 (and ratios of it 0 / 0).
                            "tflop_per_s": float(f"{flops / (ms * 1e-3) / 1e12:.4g}"),
                        }
                        if ms * 1e-3 > cfg.case_budget:
                            stopped.add(impl)
                        save(result)
                del q, k, v, ct
    result["ratios"] = ratios(result)
    result["seconds"] = round(time.perf_counter() - start, 1)
    save(result)
    return result


def ratios(result: dict) -> dict:
    """Per case: Pallas / cuDNN and Pallas / XLA throughput, ring1 / Pallas time."""
    t = result["timings"]
    out = {}
    for key, entry in t.items():
        if entry["impl"] != "pallas":
            continue
        rest = key[len("pallas "):]
        row = {}
        for other, name in (("cudnn", "pallas_over_cudnn"), ("xla", "pallas_over_xla")):
            if f"{other} {rest}" in t:
                row[name] = round(entry["tflop_per_s"] / t[f"{other} {rest}"]["tflop_per_s"], 3)
        if f"ring1 {rest}" in t:
            row["ring1_time_over_pallas"] = round(t[f"ring1 {rest}"]["median_ms"]
                                                  / entry["median_ms"], 3)
        out[rest] = row
    return out


def plot(result: dict, path) -> None:
    """TFLOP/s against T, one panel per (D, mask, mode), one line per implementation."""
    plt = pyplot()
    cfg = result["config"]
    panels = [(d, c, m) for d in cfg["head_dims"] for c in cfg["causal"] for m in MODES]
    cols = 4
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, (d, causal, mode) in zip(axes.flat, panels, strict=False):
        for impl in cfg["impls"]:
            pts = sorted(
                (e["seq_len"], e["tflop_per_s"]) for e in result["timings"].values()
                if e["impl"] == impl and e["head_dim"] == d and e["causal"] == causal
                and e["mode"] == mode
            )
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=impl)
        ax.set_xscale("log", base=2)
        ax.set_title(f"D={d} {'causal' if causal else 'full'} {mode}", fontsize=9)
        ax.set_xlabel("T")
        ax.set_ylabel("TFLOP/s")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"attention on {result['platform']['device_kind']} ({cfg['dtype']})")
    fig.tight_layout()
    save_png(fig, path)


def main(argv: list[str] | None = None) -> int:
    import tyro

    cfg = tyro.cli(GPUBenchConfig, args=sys.argv[1:] if argv is None else argv)
    out = os.path.abspath(cfg.out)
    png = os.path.splitext(out)[0] + ".png"
    check_outputs([out, png], overwrite=cfg.overwrite, what="rl-ring bench attention_gpu")
    from rl_ring.io import write_json

    result = run(cfg, save=lambda r: write_json(r, out))
    write_result(result, out, plot, png)
    for rest, row in result["ratios"].items():
        print(rest, row)
    print(f"wrote {out} and {png} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
