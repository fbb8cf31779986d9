"""Env steps/s of the rollout workers: in-process vs worker processes, by number of rows.

The policy is the random one (no model), so this measures the evaluator and the
environments alone: the ceiling the transformer policy's decode time adds to. Each
configuration runs ``repeats`` seeds; a seed's steps/s excludes building the environments
(reported separately as ``make_s``) and the worker processes' start-up (``startup_s``).

    rl-ring bench eval_workers --out results     # or: python -m experiments.bench.eval_workers

writes ``results/bench_eval_workers.{json,png}`` (replaced only with ``--overwrite``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from envs.evaluation import env_factory, eval_tasks
from experiments.bench import common
from rl_ring.eval.env_spec import EnvSpec, headless_gl_default, make_env
from rl_ring.eval.policy import RandomPolicy
from rl_ring.eval.rollout import run_seed
from rl_ring.eval.workers import InProcessWorkers, SubprocessWorkers


def measure(
    env_id: str, mode: str, num_envs: int, *, trials: int, repeats: int,
    num_workers: int = 2, start_method: str = "spawn", max_steps: int | None = None,
) -> dict[str, Any]:
    """Runs ``repeats`` seeds of ``num_envs`` rows x ``trials`` episodes; returns timings."""
    tasks, factory = eval_tasks(env_id, "test"), env_factory(env_id)
    specs = [EnvSpec(env_id, task=tasks[i % len(tasks)], factory=factory)
             for i in range(num_envs)]
    t0 = time.perf_counter()
    if mode == "inprocess":
        workers = InProcessWorkers(num_envs)
    else:
        workers = SubprocessWorkers(num_envs, num_workers, start_method=start_method)
    startup = time.perf_counter() - t0
    rates, makes, steps = [], [], 0
    try:
        for seed in range(repeats):
            res = run_seed(workers, RandomPolicy, specs, seed=seed, trials=trials,
                           max_steps=max_steps)
            loop_s = res.wall_s - res.make_s
            rates.append(res.env_steps / loop_s)
            makes.append(res.make_s)
            steps += res.env_steps
            if any(e.status != "ok" for e in res.episodes):
                bad = next(e for e in res.episodes if e.status != "ok")
                raise RuntimeError(f"{env_id} {mode} x{num_envs}: episode failed: {bad.error}")
    finally:
        workers.close()
    return {
        "env_id": env_id, "mode": mode, "num_envs": num_envs,
        "workers": 0 if mode == "inprocess" else min(num_workers, num_envs),
        "start_method": None if mode == "inprocess" else start_method,
        "steps_per_s_median": statistics.median(rates), "steps_per_s": rates,
        "make_s_median": statistics.median(makes), "startup_s": startup, "env_steps": steps,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``rl-ring bench eval_workers``: writes results/bench_eval_workers.{json,png}."""
    p = argparse.ArgumentParser(prog="rl-ring bench eval_workers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--envs", nargs="+", default=["dmc:cartpole-swingup", "darkroom"])
    p.add_argument("--rows", nargs="+", type=int, default=[1, 4, 16])
    p.add_argument("--modes", nargs="+", default=["inprocess", "subprocess"])
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--start-method", default="spawn")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=8000,
                   help="target env steps per seed and configuration")
    p.add_argument("--out", default="results")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    args = p.parse_args(argv)
    out = Path(args.out)
    json_path, png_path = out / "bench_eval_workers.json", out / "bench_eval_workers.png"
    common.check_outputs([json_path, png_path], overwrite=args.overwrite,
                         what="the eval-workers benchmark")
    headless_gl_default()
    rows = []
    for env_id in args.envs:
        # one episode length probe decides how many trials give about --steps steps
        env = make_env(EnvSpec(env_id, task=eval_tasks(env_id, "test")[0],
                               factory=env_factory(env_id)), 0)
        length = getattr(getattr(env, "spec", None), "max_episode_steps", None) or 1000
        env.close()
        for n in args.rows:
            trials = max(1, round(args.steps / (length * n)))
            for mode in args.modes:
                r = measure(env_id, mode, n, trials=trials, repeats=args.repeats,
                            num_workers=args.workers, start_method=args.start_method)
                rows.append(r)
                print(f"{env_id:22s} {mode:10s} envs={n:3d} workers={r['workers']} "
                      f"{r['steps_per_s_median']:9.0f} steps/s  (make {r['make_s_median']:.2f} s,"
                      f" startup {r['startup_s']:.2f} s)", flush=True)
    result = {"benchmark": "eval_workers", "cpu_count": os.cpu_count(),
              "command": "rl-ring bench eval_workers " + " ".join(argv or []), "rows": rows}
    common.write_result(result, json_path, plot, png_path)
    print(json.dumps({"written": str(json_path)}))
    return 0


def plot(result: dict[str, Any], path: Path) -> None:
    plt = common.pyplot()
    rows = result["rows"]
    env_ids = sorted({r["env_id"] for r in rows})
    fig, axes = plt.subplots(1, len(env_ids), figsize=(5 * len(env_ids), 3.8), squeeze=False)
    for ax, env_id in zip(axes[0], env_ids, strict=True):
        for mode in ("inprocess", "subprocess"):
            sel = [r for r in rows if r["env_id"] == env_id and r["mode"] == mode]
            if sel:
                ax.plot([r["num_envs"] for r in sel], [r["steps_per_s_median"] for r in sel],
                        "o-", label=mode)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("environments (rows)")
        ax.set_ylabel("env steps/s (random policy)")
        ax.set_title(env_id)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    common.save_png(fig, path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
