"""The context-scaling experiment's report: the recipe-scale memory plan, table and figure.

**Recipe scale.** Would a context length fit one accelerator without the ring? Sized for the
README's full-scale recipe model (``agents.presets.PAPER_AT_EXORL``: the Ring Attention
paper's 350M in-context RL transformer, width 1,024, 28 layers, 16 heads, bfloat16 compute,
full rematerialisation) with each agent's token layout and one sequence per device, at the
experiment's windows and at longer ones (``ScalingConfig.plan_windows``). The per-device
bytes of a training step are analytic (:func:`step_bytes`), built on
:func:`rl_ring.train.plan.attention_memory` (what ``rl-ring plan`` reports per attention
call): dense attention and blockwise attention on one device, ring attention over 8 and 64
devices. Nothing is compiled: the shapes reach 800K tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

GIB = 1024**3
ACCELERATORS = {"16GiB": 16 * GIB, "80GiB": 80 * GIB}
"""Accelerator memories a context is checked against (bytes)."""
LAYOUTS = (("dense", 1), ("blockwise", 1), ("ring", 8), ("ring", 64))
"""(attention, devices on the sequence axis) of the recipe-scale plan."""
STATE_BYTES_PER_PARAM = 16
"""float32 parameters, AdamW's two moments and the gradients."""


@dataclass(frozen=True)
class RecipeScale:
    """The model a context is sized for (defaults: ``agents.presets.PAPER_AT_EXORL``)."""

    width: int = 1024
    """Transformer width."""
    depth: int = 28
    """Layers."""
    heads: int = 16
    """Attention heads (as many K/V heads)."""
    ffn_mult: int = 4
    """Feed-forward width over the model width."""
    dtype_bytes: int = 2
    """Bytes per activation element (bfloat16 compute)."""
    chunk: int = 1000
    """Query / key chunk of the blockwise and ring kernels."""
    batch: int = 1
    """Sequences per device."""

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


def step_bytes(scale: RecipeScale, *, num_params: int, tokens: int, devices: int,
               attention: str) -> dict[str, int]:
    """Analytic per-device bytes of one training step at ``scale``.

    With ``L = tokens / devices`` the tokens a device holds (ring; ``tokens`` on one
    device), ``b`` sequences, ``w`` width, ``B`` bytes per activation, ``f`` the
    feed-forward multiple:

    - ``state``: ``num_params x 16`` (parameters, AdamW moments, gradients; replicated on a
      sequence mesh);
    - ``saved``: full rematerialisation keeps each layer's input, ``depth x b L w B``;
    - ``layer``: one layer recomputed in the backward, ``b L (4 + 2f) w B`` (q, k, v, the
      attention output and the feed-forward's hidden layer before and after the activation);
    - ``attention``: one attention call forward+backward from
      :func:`rl_ring.train.plan.attention_memory`: ``blockwise`` (one device) or ``ring``
      (``devices``); ``dense`` is the blockwise kernel with a single chunk as long as the
      sequence (the ``b h T^2`` float32 scores) plus their gradient, another ``b h T^2``.

    A lower bound: XLA's temporaries come on top (the compiled 350M step at 512K tokens on
    one device is 114.6 GiB, this estimate about half; see docs/reproductions.md), so a
    "does not fit" is safe and a "fits" optimistic.
    """
    from rl_ring.train.plan import attention_memory

    if attention not in ("dense", "blockwise", "ring"):
        raise ValueError(f"attention {attention!r}: expected dense, blockwise or ring")
    if attention != "ring" and devices != 1:
        raise ValueError(f"{attention} attention runs on one device, got {devices}")
    tokens = devices * math.ceil(tokens / devices)  # the sampler pads rows to the mesh
    local = tokens // devices
    b, w, nb = scale.batch, scale.width, scale.dtype_bytes
    common = dict(heads=scale.heads, kv_heads=scale.heads, head_dim=scale.head_dim, batch=b,
                  dtype_bytes=nb)
    if attention == "dense":
        attn = attention_memory(seq_len=tokens, num_devices=1, chunk=tokens, **common)
        attn_bytes = attn["blockwise"]["fwd_bwd"] + b * scale.heads * tokens * tokens * 4
    else:
        attn = attention_memory(seq_len=tokens, num_devices=devices, chunk=scale.chunk,
                                **common)
        attn_bytes = attn["blockwise" if attention == "blockwise" else "ring"]["fwd_bwd"]
    out = {"state": num_params * STATE_BYTES_PER_PARAM,
           "saved": scale.depth * b * local * w * nb,
           "layer": b * local * (4 + 2 * scale.ffn_mult) * w * nb,
           "attention": int(attn_bytes)}
    out["total"] = sum(out.values())
    return out


def fits(total: int) -> dict[str, bool]:
    """Whether ``total`` bytes fit each of :data:`ACCELERATORS`."""
    return {name: total <= cap for name, cap in ACCELERATORS.items()}


def would_not_fit(rows: list[dict[str, Any]]) -> dict[str, list[int]]:
    """The context lengths (episodes) that fit no single accelerator of a size without the
    ring: neither dense nor blockwise attention on one device fits it."""
    out = {}
    for name in ACCELERATORS:
        out[name] = sorted({r["window"] for r in rows
                            if not any(r[k]["fits"][name] for k in ("dense", "blockwise"))})
    return out


def num_params(model) -> int:
    """Parameters of a ModelConfig's transformer (abstract: nothing allocated)."""
    import jax
    from flax import nnx

    from rl_ring.models import TrajectoryTransformer

    shapes = nnx.eval_shape(lambda: TrajectoryTransformer(model, rngs=nnx.Rngs(0)))
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(shapes, nnx.Param)))


def recipe_plan(cfg, agents_: list[str], agent_shape: Callable[..., tuple[Any, int]],
                scale: RecipeScale | None = None) -> dict[str, Any]:
    """Every agent x context (the windows and ``cfg.plan_windows``) sized at the recipe scale
    for each of :data:`LAYOUTS`, with the verdicts per accelerator. ``agent_shape(cfg,
    agent, window)`` gives an agent's ``(model, tokens per step)``
    (:func:`experiments.context_scaling.agent_shape`; passed in, since that module imports
    this one)."""
    scale = scale or RecipeScale()
    contexts = sorted({*cfg.windows, *cfg.plan_windows})
    rows = []
    for agent in agents_:
        model, k = agent_shape(cfg, agent, min(cfg.windows))
        model = model.replace(width=scale.width, depth=scale.depth, num_heads=scale.heads,
                              ffn_mult=scale.ffn_mult)
        n = num_params(model)
        for w in contexts:
            tokens = cfg.window_steps(w) * k
            row = {"agent": agent, "window": w, "tokens": tokens, "num_params": n,
                   "trained": w in cfg.windows}
            for attention, devices in LAYOUTS:
                m = step_bytes(scale, num_params=n, tokens=tokens, devices=devices,
                               attention=attention)
                key = attention if attention != "ring" else f"ring{devices}"
                row[key] = {"devices": devices, "bytes": m, "fits": fits(m["total"])}
            rows.append(row)
    per_agent = {a: would_not_fit([r for r in rows if r["agent"] == a]) for a in agents_}
    return {"model": {"name": "paper-at-exorl (agents.presets.PAPER_AT_EXORL)",
                      **{f: getattr(scale, f) for f in scale.__dataclass_fields__}},
            "accelerators_bytes": ACCELERATORS, "rows": rows,
            "would_not_fit_without_ring": per_agent,
            "method": "analytic (experiments.context_scaling_report.step_bytes on "
                      "rl_ring.train.plan.attention_memory), a lower bound"}


# ---------------------------------------------------------------------- table
def table(summary: dict[str, Any]) -> list[str]:
    """Markdown tables: the headline with the compiled memory, and the recipe-scale plan."""
    mib = 2**20
    m = summary["metric"]
    unit = "pulls" if summary["episode_steps"] == 1 else "episodes"
    lines = [f"context scaling on {summary['env']}: final {m['name']} ({m['at']}), "
             f"{summary['eval_tasks']} held-out tasks",
             f"| agent | window ({unit}) | tokens | final (mean +- std over seeds) | dense 1 dev "
             "| blockwise 1 dev | ring 8 dev | tokens/s |", "|---|---|---|---|---|---|---|---|"]
    for c in summary["configs"]:
        mem = c["memory"] or {}
        cells = " | ".join(f"{mem[k]['peak_bytes'] / mib:.1f} MiB" if k in mem else "-"
                           for k in ("dense", "blockwise", "ring"))
        lines.append(f"| {c['agent']} | {c['window']} | {c['tokens_per_sequence']} | "
                     f"{c['final']['mean']:.3f} +- {c['final']['std']:.3f} | {cells} | "
                     f"{np.mean(c['tokens_per_s']):.0f} |")
    for k, v in summary["baselines"].items():
        lines.append(f"| {k} | - | - | {v['final_mean']:.3f} +- {v['final_sem']:.3f} (sem) "
                     "| | | | |")
    if "optimal" in summary:
        lines.append(f"| optimum | - | - | {summary['optimal']:.3f} | | | | |")
    recipe = summary.get("recipe_scale")
    if recipe:
        lines += ["", "recipe scale (350M, bf16, one sequence), analytic GiB per device:",
                  f"| agent | context ({unit}) | tokens | dense 1 | blockwise 1 | ring 8 "
                  "| ring 64 | fits without ring |", "|---|---|---|---|---|---|---|---|"]
        for r in recipe["rows"]:
            gib = " | ".join(f"{r[k]['bytes']['total'] / GIB:.1f}"
                             for k in ("dense", "blockwise", "ring8", "ring64"))
            ok = [n for n in ACCELERATORS if r["blockwise"]["fits"][n] or r["dense"]["fits"][n]]
            lines.append(f"| {r['agent']} | {r['window']} | {r['tokens']} | {gib} | "
                         f"{', '.join(ok) or 'neither'} |")
    return lines


# ---------------------------------------------------------------------- figure
def plot(summary: dict[str, Any], path: Path) -> Path:
    """Left: the in-context curves per window beside the baselines; right: the headline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rl_ring.io import save_figure

    m = summary["metric"]
    fig, (ax, hx) = plt.subplots(1, 2, figsize=(11, 4))
    for c in summary["configs"]:
        y, s = np.asarray(c["curve_mean"]), np.asarray(c["curve_std"])
        line, = ax.plot(c["curve_x"], y, label=f"{c['agent'].upper()} window {c['window']}")
        ax.fill_between(c["curve_x"], y - s, y + s, color=line.get_color(), alpha=0.2)
    styles = {"thompson": ("k", "-"), "ucb": ("k", "--"), "random": ("grey", ":"),
              "thompson-prior": ("k", "-."), "posterior": ("k", "-"),
              "optimistic": ("k", "--")}
    names = {"thompson": "Thompson sampling", "ucb": "UCB1",
             "thompson-prior": "Thompson, family's prior",
             "posterior": "posterior sampling (source)", "optimistic": "optimistic (source)"}
    for k, v in summary["baselines"].items():
        colour, ls = styles.get(k, ("k", "-."))
        if summary["episode_steps"] > 1 and k == "random":
            ax.axhline(v["final_mean"], color=colour, ls=ls, label="random")
        else:
            ax.plot(v["curve_x"], v["curve"], color=colour, ls=ls, label=names.get(k, k))
        hx.axhline(v["final_mean"], color=colour, ls=ls, label=k)
    if "optimal" in summary:
        for a in (ax, hx):
            a.axhline(summary["optimal"], color="g", ls="-.", label="optimum")
    ax.set_xlabel(m["x"])
    ax.set_ylabel(m["name"])
    ax.set_title(f"{summary['env']}: {summary['eval_tasks']} held-out tasks")
    ax.legend(fontsize=7)
    for agent, h in summary["headline"].items():
        hx.errorbar(h["windows"], h["final_mean"], yerr=h["final_std"], marker="o",
                    capsize=3, label=f"{agent.upper()} (mean +- std over seeds)")
    hx.set_xscale("log", base=2)
    unit = "pulls" if summary["episode_steps"] == 1 else "episodes"
    hx.set_xlabel(f"training context window ({unit})")
    hx.set_ylabel(f"{m['name']}, {m['at']}")
    hx.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path
