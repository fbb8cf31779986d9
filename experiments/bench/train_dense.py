"""One device, dense against blockwise attention: the training step behind ``attention=auto``.

``TrainConfig.attention="auto"`` trains a model whose config asks for the dense reference
attention (the oracle, and ``ModelConfig``'s default) with blockwise attention instead when
the mesh has no seq axis. Both are exact; this benchmark measures what the swap buys: the
whole training step (forward, backward, AdamW) of the same model on the same batch, one
device, at several sequence lengths, the cases taking turns round after round.

Writes ``results/train_dense.json`` (every timing, the compiled memory of each step, the
blockwise / dense ratios, the first losses of both) and ``results/train_dense.png``::

    rl-ring bench train_dense            # about 3 minutes on 2 CPU cores
    python -m experiments.bench.train_dense --seq-lens 320 1280 5120 --batch 1
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.bench import common
from experiments.bench import train as bench_train

ROOT = common.ROOT
IMPLS = ("reference", "blockwise")


@dataclass(frozen=True)
class DenseConfig:
    """What to measure (defaults: the shapes of the Dark Room context-scaling model)."""

    seq_lens: tuple[int, ...] = (320, 1280, 5120)
    """Tokens per sequence (multiples of 4: the AT-shaped batch has 4 tokens per step)."""
    batch: int = 1
    """Sequences per step (the context-scaling runs on ``data=8`` hold 1 per device)."""
    steps: int = 5
    """Timed steps per case, after one warm-up step that compiles."""
    width: int = 64
    """Model width."""
    depth: int = 4
    """Model layers."""
    heads: int = 4
    """Attention heads."""
    out: str = "results/train_dense.json"
    """JSON output path (the PNG goes beside it)."""
    overwrite: bool = False
    """Replace existing output files."""

    @classmethod
    def tiny(cls, out: str) -> DenseConfig:
        """Seconds: a 1-layer, 32-wide model at two short lengths (for tests)."""
        return cls(seq_lens=(64, 256), steps=2, width=32, depth=1, heads=2, out=out)


def check(cfg: DenseConfig) -> None:
    bad = [t for t in cfg.seq_lens if t <= 0 or t % 4]
    if bad or not cfg.seq_lens:
        raise ValueError(f"--seq-lens {list(cfg.seq_lens)}: expected positive multiples of 4 "
                         f"(4 tokens per step), found {bad or 'none'}")
    for name in ("batch", "steps", "width", "depth", "heads"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name} {getattr(cfg, name)}: expected at least 1")


def shape(cfg: DenseConfig, seq_len: int, impl: str):
    """The benchmark's AT-shaped step at ``seq_len`` tokens on one device."""
    s = bench_train.bench_shape(cfg, seq_len, impl, "seq=1")
    return s.replace(batch_size=cfg.batch, model=s.model.replace(remat="none"))


def run(cfg: DenseConfig) -> dict[str, Any]:
    import jax

    check(cfg)
    result: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "platform": {"machine": platform.machine(), "cpus": os.cpu_count(),
                     "python": platform.python_version(), "jax": jax.__version__,
                     "backend": jax.default_backend(),
                     "device_kind": jax.devices()[0].device_kind,
                     "load_average": common.load_average()},
        "model": {"width": cfg.width, "depth": cfg.depth, "heads": cfg.heads,
                  "tokens_per_step": 4, "dtype": "float32", "remat": "none"},
    }
    rows = []
    for seq_len in cfg.seq_lens:
        print(f"T={seq_len:,} x batch {cfg.batch}", flush=True)
        cases = bench_train.time_cases([shape(cfg, seq_len, impl) for impl in IMPLS], cfg.steps)
        for row in cases:
            point = bench_train.memory_point(shape(cfg, seq_len, row["impl"]))
            row.update(tokens_per_s=cfg.batch * seq_len / row["median_step_s"],
                       batch=cfg.batch, peak_bytes=point["peak_bytes"],
                       temp_bytes=point["temp_bytes"])
            print(f"  {row['impl']:9s} {row['tokens_per_s']:10,.0f} tokens/s (median step "
                  f"{row['median_step_s']:.3f} s), step memory {point['peak_bytes'] / 2**20:.1f}"
                  f" MiB", flush=True)
            rows.append(row)
    result["rows"] = rows
    ratios = {}
    for seq_len in cfg.seq_lens:
        dense, block = (next(r for r in rows if r["seq_len"] == seq_len and r["impl"] == i)
                        for i in IMPLS)
        ratios[str(seq_len)] = {
            "speedup": block["tokens_per_s"] / dense["tokens_per_s"],
            "memory_ratio": block["peak_bytes"] / dense["peak_bytes"],
            "first_loss_rel_diff": abs(block["loss"] - dense["loss"]) / abs(dense["loss"])}
    result["blockwise_vs_dense"] = ratios
    return result


def plot(result: dict[str, Any], png: Path) -> None:
    plt = common.pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    colors = {"reference": "#d62728", "blockwise": "#777"}
    for impl in IMPLS:
        rows = [r for r in result["rows"] if r["impl"] == impl]
        xs = [r["seq_len"] for r in rows]
        label = "dense (reference)" if impl == "reference" else impl
        ax1.plot(xs, [r["tokens_per_s"] for r in rows], "o-", color=colors[impl], label=label)
        ax2.plot(xs, [r["peak_bytes"] / 2**20 for r in rows], "o-", color=colors[impl],
                 label=label)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens per sequence")
        ax.legend(fontsize=8)
    ax1.set_yscale("log")
    ax1.set_ylabel("training tokens / s (one device)")
    ax1.set_title(f"training step, batch {result['config']['batch']}, "
                  f"{result['model']['depth']}x{result['model']['width']}")
    ax2.set_yscale("log")
    ax2.set_ylabel("compiled step memory (MiB)")
    ax2.set_title("memory of one step")
    fig.tight_layout()
    common.save_png(fig, png)


def main(argv: list[str] | None = None) -> int:
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = tyro.cli(DenseConfig, args=argv, prog="rl-ring bench train_dense")
    try:
        check(cfg)
    except ValueError as err:  # before any work: a message, not a traceback
        print(f"rl-ring bench train_dense: {err}", file=sys.stderr)
        return 2
    out = common.resolve_out(cfg.out, ROOT)
    common.check_outputs([out, out.with_suffix(".png")], overwrite=cfg.overwrite,
                         what="the dense-vs-blockwise training benchmark")
    t0 = time.perf_counter()
    result = run(cfg)
    result["wall_s"] = time.perf_counter() - t0
    common.write_result(result, out, plot)
    speed = ", ".join(f"{t}: {r['speedup']:.1f}x"
                      for t, r in result["blockwise_vs_dense"].items())
    print(f"blockwise / dense tokens/s per length: {speed}; wrote {out} and "
          f"{out.with_suffix('.png')} in {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
