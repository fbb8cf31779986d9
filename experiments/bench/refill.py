"""Refill benchmark: a sliding-window policy's cache refill over the rows that slid against a
forward pass over the whole batch.

Writes ``results/refill.json`` and ``results/refill.png`` (existing ones are replaced only
with ``--overwrite``)::

    rl-ring bench refill            # Key-to-Door's evaluation shape, about a minute on 2 cores
    rl-ring bench refill --quick    # fewer rows and rounds
    python -m experiments.bench.refill   # the same

A KV-cached policy whose context is full drops its oldest steps and re-reads the rest in one
forward pass (``agents.policy.CachedPolicy``, ``functional_policy``). In an evaluation whose
rows end episodes at different steps, a few rows slide at each step. This benchmark times,
for ``k`` rows out of ``batch`` to refill,

- **rows that slid**: ``Decoder.prefill(tokens, rows)``, which runs the forward pass over
  those rows alone (``rl_ring.models.decode.prefill_rows``, padded to a power-of-two bucket);
- **whole batch**: the pure ``prefill(model, tokens, cache, rows)`` jitted with a donated
  cache, whose forward pass covers every row (what ``Decoder.prefill`` ran before).

Both write the same keys and values into the refilled rows (``agreement``: the largest
difference, and the untouched rows unchanged). The defaults are the shape of the Key-to-Door
evaluation of ``experiments.context_scaling``: 158 rows of 800 slots (16 episodes of 50
steps), a refill of 600 tokens (a quarter of the window slid out), AD's model (width 64, 4
layers, 4 heads, blockwise attention as ``eval_policy_from_checkpoint`` builds it). Weights
are random: a forward pass costs the same whatever they are.

Timings on a shared machine are noisy: the cases are timed in interleaved rounds, reported
by their medians, and compared within one run; the load average is recorded.
"""

from __future__ import annotations

import dataclasses
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments.bench import common


@dataclass(frozen=True)
class BenchRefillConfig:
    """What to measure (defaults: the Key-to-Door evaluation's shape)."""

    out: str = "results/refill.json"
    """Output JSON path (the PNG goes next to it)."""
    batch: int = 158
    """Rows of the cache (evaluation environments side by side)."""
    capacity: int = 800
    """Slots per row (the window in tokens)."""
    fill: int = 600
    """Real tokens of each refilled context."""
    refill_rows: tuple[int, ...] = (1, 2, 8, 32, 158)
    """Rows refilled at once (each at most ``batch``)."""
    width: int = 64
    depth: int = 4
    heads: int = 4
    attn_impl: str = "blockwise"
    """The forward pass's attention (the evaluation's: blockwise)."""
    rounds: int = 5
    """Timed rounds (after one untimed call of each case, which compiles it)."""
    overwrite: bool = False
    """Replace existing result files."""

    def __post_init__(self) -> None:
        for name in ("batch", "capacity", "fill", "width", "depth", "heads", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got "
                                 f"{getattr(self, name)}")
        if self.fill > self.capacity:
            raise ValueError(f"--fill {self.fill} exceeds --capacity {self.capacity}")
        bad = [k for k in self.refill_rows if not 1 <= k <= self.batch]
        if not self.refill_rows or bad:
            raise ValueError(f"--refill-rows {list(self.refill_rows)}: each must lie in "
                             f"[1, --batch={self.batch}]")

    @classmethod
    def quick_preset(cls, out: str = "results/refill.json") -> BenchRefillConfig:
        return cls(out=out, refill_rows=(1, 8, 158), rounds=3)

    @classmethod
    def tiny_preset(cls, out: str) -> BenchRefillConfig:
        """Seconds (the test)."""
        return cls(out=out, batch=8, capacity=64, fill=40, refill_rows=(1, 3, 8), width=32,
                   depth=2, heads=2, rounds=2)


def build(cfg: BenchRefillConfig):
    """``(model, tokens)``: a random AD-shaped model and ``batch`` contexts of ``fill`` real
    tokens in ``capacity`` slots."""
    from flax import nnx

    from rl_ring.data.batch import Kind
    from rl_ring.models import ModelConfig, TrajectoryTransformer

    mcfg = ModelConfig(obs_dim=3, act_dim=5, discrete_actions=True, width=cfg.width,
                       depth=cfg.depth, num_heads=cfg.heads, activation="gelu", dropout=0.0,
                       max_timestep=50, attn_impl=cfg.attn_impl)
    model = TrajectoryTransformer(mcfg, rngs=nnx.Rngs(0))
    features = max(mcfg.kind_features.values())
    b, c = cfg.batch, cfg.capacity
    rng = np.random.default_rng(0)
    slots = np.broadcast_to(np.arange(c, dtype=np.int32), (b, c))
    tokens = {"kind": np.full((b, c), int(Kind[next(iter(mcfg.kind_features))]), np.int32),
              "values": rng.normal(size=(b, c, features)).astype(np.float32),
              "positions": slots.copy(), "timesteps": (slots % 50).astype(np.int32),
              "valid": slots < cfg.fill}
    return model, tokens


def run(cfg: BenchRefillConfig) -> dict[str, Any]:
    """Times both refills for every ``refill_rows``; checks they write the same cache."""
    import jax
    from flax import nnx

    from rl_ring.models.decode import Decoder, init_cache, prefill, refill_bucket

    model, tokens = build(cfg)
    graphdef, state = nnx.split(model)

    def _whole(state, cache, tokens, rows):
        return prefill(nnx.merge(graphdef, state), tokens, cache, rows)

    whole_fn = jax.jit(_whole, donate_argnums=1)
    dec = Decoder(model, cfg.batch, cfg.capacity)
    whole_cache = [init_cache(model, cfg.batch, cfg.capacity)]

    def rows_of(k: int) -> np.ndarray:
        rows = np.zeros(cfg.batch, bool)
        rows[np.linspace(0, cfg.batch - 1, k).round().astype(int)] = True
        return rows

    def slid(rows):
        return lambda: dec.prefill(tokens, rows)

    def whole(rows):
        def call():
            _, whole_cache[0] = whole_fn(state, whole_cache[0], tokens, rows)
            return whole_cache[0].k
        return call

    # Agreement: both paths write the same keys/values into the refilled rows and leave the
    # others as they were (zeros in a fresh cache).
    rows = rows_of(min(3, cfg.batch))
    dec.reset()
    dec.prefill(tokens, rows)
    _, ref = whole_fn(state, init_cache(model, cfg.batch, cfg.capacity), tokens, rows)
    k_slid, k_whole = np.asarray(dec.cache.k), np.asarray(ref.k)
    agreement = {
        "rows": int(rows.sum()),
        "max_abs_kv_diff": float(np.abs(k_slid - k_whole).max()),
        "untouched_rows_zero": bool(np.all(k_slid[:, ~rows] == 0)),
        "lengths_equal": bool(np.array_equal(np.asarray(dec.cache.length),
                                              np.asarray(ref.length))),
    }

    calls = {}
    for k in cfg.refill_rows:
        r = rows_of(k)
        calls[(k, "rows_that_slid")] = slid(r)
        calls[(k, "whole_batch")] = whole(r)
    for call in calls.values():  # compile every case before timing
        common.timed(call)
    load_start = common.load_average()
    times = common.round_robin({key: lambda c=c: common.timed(c) for key, c in calls.items()},
                               cfg.rounds)
    out_rows = []
    for k in cfg.refill_rows:
        slid_s, whole_s = times[(k, "rows_that_slid")], times[(k, "whole_batch")]
        out_rows.append({
            "rows_refilled": k,
            "bucket": refill_bucket(k, cfg.batch),
            "rows_that_slid_s": slid_s,
            "whole_batch_s": whole_s,
            "rows_that_slid_median_s": common.median(slid_s),
            "whole_batch_median_s": common.median(whole_s),
            "speedup": common.median(whole_s) / common.median(slid_s),
        })
    return {
        "benchmark": "refill",
        "config": dataclasses.asdict(cfg),
        "platform": {"machine": platform.machine(), "python": sys.version.split()[0],
                     "jax": jax.__version__, "devices": [str(d) for d in jax.devices()][:1]},
        "load_average": {"start": load_start, "end": common.load_average()},
        "agreement": agreement,
        "rows": out_rows,
        "compilations": dec.compilations,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def plot(result: dict[str, Any], path: Path) -> None:
    plt = common.pyplot()
    rows = result["rows"]
    k = [r["rows_refilled"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(k, [r["rows_that_slid_median_s"] for r in rows], "o-", label="rows that slid")
    ax.plot(k, [r["whole_batch_median_s"] for r in rows], "s--", label="whole batch")
    c = result["config"]
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"rows refilled (of {c['batch']})")
    ax.set_ylabel("seconds per refill (median)")
    ax.set_title(f"KV-cache refill, {c['fill']} of {c['capacity']} slots, width {c['width']}, "
                 f"{c['depth']} layers", fontsize=9)
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    common.save_png(fig, path)


def write(result: dict[str, Any], out: Path) -> Path:
    return common.write_result(result, out, plot)


def main(argv: list[str] | None = None) -> int:
    import tyro

    @dataclass(frozen=True)
    class Args(BenchRefillConfig):
        quick: bool = False
        """Fewer rows and rounds."""

    # A bad size is refused by tyro (exit 2, the message naming the option).
    args = tyro.cli(Args, args=sys.argv[1:] if argv is None else argv,
                    prog="rl-ring bench refill", description=__doc__)
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(BenchRefillConfig)}
    cfg = BenchRefillConfig.quick_preset(args.out) if args.quick else \
        BenchRefillConfig(**fields)
    cfg = dataclasses.replace(cfg, overwrite=args.overwrite)
    out = Path(cfg.out)
    common.check_outputs([out, out.with_suffix(".png")], overwrite=cfg.overwrite,
                         what="the refill benchmark's results")
    result = run(cfg)
    path = write(result, out)
    for r in result["rows"]:
        print(f"{r['rows_refilled']:>4} rows: rows that slid {r['rows_that_slid_median_s']:.4f}"
              f" s, whole batch {r['whole_batch_median_s']:.4f} s ({r['speedup']:.1f}x)")
    print(f"agreement: {result['agreement']}\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
