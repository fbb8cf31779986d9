"""Compiled memory of one forward+backward pass of the trajectory transformer.

Nothing runs: the loss-and-gradient function is lowered and compiled for random tokens of
the requested shape and XLA's memory analysis is read back, so long sequences can be sized
on a laptop. ``rl-ring bench model_memory`` (or ``python -m experiments.bench.model_memory``)
sweeps the rematerialisation policies with the blockwise feed-forward on and off and writes
``results/model_memory.{json,png}`` (replaced only with ``--overwrite``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
from flax import nnx

from experiments.bench import common
from rl_ring.data.batch import Kind
from rl_ring.models.config import REMAT_POLICIES, ModelConfig
from rl_ring.models.losses import action_loss
from rl_ring.models.transformer import TrajectoryTransformer


def step_memory(cfg: ModelConfig, *, batch: int, seq: int) -> dict[str, int]:
    """Bytes XLA plans for a loss-and-gradient step of ``cfg`` on ``[batch, seq]`` tokens.

    The tokens follow the 4-token (return-to-go, state, action, reward) step layout.

    Returns:
        ``temp`` (activations and scratch), ``argument`` and ``output`` sizes in bytes.
    """
    widths = {Kind.RTG: 1, Kind.STATE: cfg.obs_dim, Kind.ACTION: cfg.act_dim, Kind.REWARD: 2}
    cfg = cfg.replace(token_features=tuple((k.name, w) for k, w in widths.items()))
    tokens = common.at_tokens(batch, seq, max(widths.values()), cfg.act_dim)
    graphdef, params = nnx.split(
        nnx.eval_shape(lambda: TrajectoryTransformer(cfg, rngs=nnx.Rngs(0)))
    )

    def loss(params, tokens):
        pred = nnx.merge(graphdef, params)(tokens)
        return action_loss(pred, tokens, discrete=cfg.discrete_actions)[0]

    compiled = jax.jit(jax.value_and_grad(loss)).lower(params, tokens).compile()
    m = compiled.memory_analysis()
    return {
        "temp": int(m.temp_size_in_bytes),
        "argument": int(m.argument_size_in_bytes),
        "output": int(m.output_size_in_bytes),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rl-ring bench model_memory",
                                description=__doc__.splitlines()[0])
    p.add_argument("--seq", type=int, default=16384, help="tokens per sequence")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn-chunk", type=int, default=512, help="tokens per FFN chunk")
    p.add_argument("--attn", default="blockwise", help="attention implementation")
    p.add_argument("--out", default="results/model_memory", help="output path without suffix")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    path = Path(args.out)
    common.check_outputs([path.with_suffix(".json"), path.with_suffix(".png")],
                         overwrite=args.overwrite, what="the model-memory benchmark")
    base = ModelConfig(
        obs_dim=17,
        act_dim=6,
        width=args.width,
        depth=args.depth,
        num_heads=args.heads,
        dropout=0.0,
        attn_impl=args.attn,
        attn_options=(("q_chunk", 512), ("k_chunk", 512)),
    )
    rows = []
    for remat in REMAT_POLICIES:
        for chunk in (args.ffn_chunk, args.seq):
            cfg = base.replace(remat=remat, ffn_chunk=chunk)
            mem = step_memory(cfg, batch=args.batch, seq=args.seq)
            row = {"remat": remat, "ffn_chunk": chunk, "temp_mib": mem["temp"] / 2**20}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = {
        "command": " ".join(["rl-ring bench model_memory", *argv]),
        "backend": jax.default_backend(),
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "overwrite")},
        "rows": rows,
    }
    common.write_result(out, path.with_suffix(".json"), plot, path.with_suffix(".png"))
    return 0


def plot(result: dict, path: Path) -> None:
    plt = common.pyplot()
    rows, args = result["rows"], argparse.Namespace(**result["config"])
    policies = list(dict.fromkeys(r["remat"] for r in rows))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, (chunk, label) in enumerate(
        ((args.ffn_chunk, "blockwise FFN"), (args.seq, "whole FFN"))
    ):
        vals = [
            next(r["temp_mib"] for r in rows if r["remat"] == p and r["ffn_chunk"] == chunk)
            for p in policies
        ]
        ax.bar([j + 0.4 * i for j in range(len(policies))], vals, width=0.4, label=label)
    ax.set_xticks([j + 0.2 for j in range(len(policies))], policies)
    ax.set_ylabel("compiled temporaries (MiB)")
    ax.set_title(f"train step, {args.seq} tokens, width {args.width}, depth {args.depth}")
    ax.legend()
    fig.tight_layout()
    common.save_png(fig, path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
