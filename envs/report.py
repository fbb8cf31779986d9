"""Measurements of the behaviour policies and source learners, written to ``results/``.

    python -m envs.report scripted            # return per noise level of every controller
    python -m envs.report histories           # source learners' learning curves
    python -m envs.report sac --env dmc:cartpole-swingup --steps 100000
    python -m envs.report all --tiny          # seconds: the same code on tiny budgets

Each writes ``results/envs_<name>.json`` and a PNG beside it; ``docs/envs.md`` quotes them.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from envs.collect import collect_random, collect_scripted
from envs.learners.history import collect_histories, learning_curve
from envs.learners.sac import SACConfig, train_sac
from rl_ring.io import save_figure, write_json

SCRIPTED_LEVELS = {
    "dmc:cartpole-swingup": (0.0, 0.3, 1.0, 2.0, 5.0),
    "dmc:cartpole-balance": (0.0, 1.0, 2.0, 5.0),
    "dmc:pendulum-swingup": (0.0, 0.3, 0.6, 0.8, 1.0),
    "dmc:point_mass-easy": (0.0, 0.3, 1.0, 2.0, 5.0),
}


def _write(out_dir: Path, name: str, payload: dict, fig=None) -> Path:
    """Writes ``envs_<name>.json`` (and ``.png``) atomically; returns the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        **payload,
    }
    path = write_json(payload, out_dir / f"envs_{name}.json")
    if fig is not None:
        save_figure(fig, out_dir / f"envs_{name}.png", dpi=110, bbox_inches="tight")
    return path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def scripted(out_dir: Path, *, episodes: int, seed: int) -> dict:
    """Mean/std return of every scripted controller at each noise level."""
    rows = {}
    for env_id, levels in SCRIPTED_LEVELS.items():
        start = time.perf_counter()
        store = collect_scripted(env_id, episodes * len(levels), noise=levels, seed=seed)
        noise = store.episode_extras["policy_noise"]
        ret = store.episode_returns
        rows[env_id] = {
            f"{lv:g}": {
                "mean": float(ret[noise == np.float32(lv)].mean()),
                "std": float(ret[noise == np.float32(lv)].std()),
                "episodes": int((noise == np.float32(lv)).sum()),
            }
            for lv in levels
        }
        rows[env_id]["seconds"] = round(time.perf_counter() - start, 1)
        rand = collect_random(env_id, episodes, seed=seed).episode_returns
        rows[env_id]["random"] = {
            "mean": float(rand.mean()),
            "std": float(rand.std()),
            "episodes": episodes,
        }
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for env_id, levels in SCRIPTED_LEVELS.items():
        means = [rows[env_id][f"{lv:g}"]["mean"] for lv in levels]
        ax.plot(levels, means, marker="o", label=env_id)
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set(xlabel="action noise std", ylabel="episode return")
    ax.legend(fontsize=8)
    payload = {"episodes_per_level": episodes, "seed": seed, "returns": rows}
    _write(out_dir, "scripted", payload, fig)
    return payload


def histories(out_dir: Path, *, tiny: bool, seed: int) -> dict:
    """Learning curves of the source learners (mean over histories, one per task)."""
    runs = {
        "darkroom/qlearning": ("darkroom", "qlearning", "train", 100, None),
        "keydoor/qlearning": ("keydoor", "qlearning", "train", 200, 50),
        "bandit/ucb": ("bandit", "ucb", "train", 100, None),
        "bandit/thompson": ("bandit", "thompson", "train", 100, None),
    }
    result = {}
    plt = _plt()
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.2))
    for ax, (name, (env_id, learner, split, eph, n_hist)) in zip(axes, runs.items(), strict=True):
        if tiny:
            eph, n_hist = max(10, eph // 10), 4
        start = time.perf_counter()
        store = collect_histories(
            env_id, learner, tasks=split, episodes_per_history=eph, histories=n_hist, seed=seed
        )
        mean, sem = learning_curve(store)
        result[name] = {
            "histories": int(store.episode_extras["history_id"].max()) + 1,
            "episodes_per_history": eph,
            "mean_return": [round(float(x), 4) for x in mean],
            "sem": [round(float(x), 4) for x in sem],
            "seconds": round(time.perf_counter() - start, 1),
        }
        ax.plot(mean)
        ax.fill_between(np.arange(len(mean)), mean - sem, mean + sem, alpha=0.3)
        ax.set(title=name, xlabel="episode in history", ylabel="mean return")
    payload = {"seed": seed, "tiny": tiny, "curves": result}
    _write(out_dir, "histories", payload, fig)
    return payload


def sac(out_dir: Path, *, env_id: str, steps: int, hidden: int, seed: int, tiny: bool) -> dict:
    """One SAC run: training-episode returns and deterministic evaluations vs env steps."""
    config = SACConfig(hidden=hidden)
    eval_every = max(1000, steps // 20)
    if tiny:
        config = SACConfig(hidden=32, batch_size=32, warmup_steps=200)
        eval_every = steps
    run = train_sac(
        env_id, steps=steps, seed=seed, config=config, eval_every=eval_every, eval_episodes=2
    )
    store = run.store
    payload = {
        "env_id": env_id,
        "steps": int(store.num_steps),
        "seed": seed,
        "tiny": tiny,
        "sac_config": store.metadata["sac_config"],
        "seconds": round(run.seconds, 1),
        "train_returns": [round(float(r), 2) for r in store.episode_returns],
        "train_env_steps": [int(s) for s in store.episode_extras["env_steps"]],
        "eval_curve": [[int(s), round(float(r), 2)] for s, r in run.eval_curve],
    }
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(payload["train_env_steps"], payload["train_returns"], ".", label="training episodes")
    if run.eval_curve:
        s, r = zip(*run.eval_curve, strict=True)
        ax.plot(s, r, "-o", label="deterministic eval (2 episodes)")
    ax.set(xlabel="env steps", ylabel="episode return", title=f"SAC on {env_id}")
    ax.legend()
    name = "sac_" + env_id.replace(":", "_").replace("-", "_")
    _write(out_dir, name, payload, fig)
    return payload


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m envs.report", description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["scripted", "histories", "sac", "all"])
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="tiny budgets (a smoke check)")
    p.add_argument("--env", default="dmc:cartpole-swingup", help="SAC env id")
    p.add_argument("--steps", type=int, default=100_000, help="SAC env steps")
    p.add_argument("--hidden", type=int, default=SACConfig.hidden, help="SAC hidden width")
    args = p.parse_args(argv)
    if args.what in ("scripted", "all"):
        res = scripted(args.out, episodes=1 if args.tiny else 10, seed=args.seed)
        for env_id, row in res["returns"].items():
            levels = ", ".join(
                f"{k}: {v['mean']:.1f}" for k, v in row.items() if isinstance(v, dict)
            )
            print(f"{env_id}: {levels}")
    if args.what in ("histories", "all"):
        res = histories(args.out, tiny=args.tiny, seed=args.seed)
        for name, c in res["curves"].items():
            m = c["mean_return"]
            k = max(1, len(m) // 10)
            print(f"{name}: first {k} {np.mean(m[:k]):.2f} -> last {k} {np.mean(m[-k:]):.2f}")
    if args.what in ("sac", "all"):
        steps = 1000 if args.tiny else args.steps
        res = sac(
            args.out, env_id=args.env, steps=steps, hidden=args.hidden, seed=args.seed,
            tiny=args.tiny,
        )  # fmt: skip
        print(f"SAC {args.env}: {res['steps']} steps in {res['seconds']} s")
        print(f"deterministic eval (env steps, return): {res['eval_curve']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
