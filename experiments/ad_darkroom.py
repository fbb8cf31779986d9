"""Algorithm Distillation on Dark Room (and Key-to-Door), evaluated on held-out goals.

    python -m experiments.ad_darkroom                       # main run, 3 training seeds
    python -m experiments.ad_darkroom --experiment sources  # one controlled experiment
    python -m experiments.ad_darkroom --experiment all      # every experiment, in sequence
    python -m experiments.ad_darkroom --env keydoor         # Key-to-Door
    python -m experiments.ad_darkroom --tiny --out /tmp/ad  # seconds (the test runs it)

Each run, all through the library: learning histories of a source algorithm on the training
goals (``envs.learners.history.collect_histories``) -> AD trained with ring attention over 8
fake CPU devices (``rl_ring.train.train``, mesh ``seq=8``) on windows of many consecutive
episodes -> in-context evaluation on the held-out goals and on the training goals
(``rl_ring.eval.evaluate`` with the KV-cached policy of ``agents.eval_policy_from_checkpoint``),
one context across 40 episodes per row -> return against in-context episode, next to the
source's own learning curve on the held-out goals, a random policy and the optimal return.
The loss on histories of held-out goals (never trained on) is measured beside the loss on
training-goal histories: the gap shows memorisation without any rollout.

Outputs: ``<out>/ad_darkroom.json`` + ``.png`` (main), ``<out>/ad_darkroom_experiments.json``
+ ``.png`` (the experiments, one record per run, updated after every run); Key-to-Door writes
``ad_darkroom_keydoor*``. Finished runs are kept under ``--workdir`` and skipped when the
command runs again. Run it as a module: it fakes 8 CPU devices before JAX starts.
"""

from __future__ import annotations

from rl_ring.io import device_env, run_watched, setup_cpu_devices

if __name__ == "__main__":
    setup_cpu_devices(8)  # see rl_ring.io.device_flags for why these flags

import dataclasses  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Literal  # noqa: E402

import numpy as np  # noqa: E402

from experiments.configs.ad_darkroom import (  # noqa: E402
    EPISODE_STEPS,
    ADRun,
    experiments,
    main_run,
    tiny_run,
)

RESULTS = "ad_darkroom"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------- pieces
def training_tasks(run: ADRun) -> list[int]:
    """The training tasks of a run: the split, or its first k after a fixed shuffle."""
    from envs.registry import task_subset

    try:
        return task_subset(run.env, "train", run.history.num_tasks)
    except ValueError as err:
        raise ValueError(f"HistorySpec.{err}") from None


def collect(run: ADRun, tasks: list[int] | str, seed_offset: int = 0):
    """Learning histories of the run's source on ``tasks`` (an EpisodeStore)."""
    from envs.learners.grid import NoiseSchedule
    from envs.learners.history import collect_histories
    from envs.learners.qlearning import QLearningConfig

    h = run.history
    n_tasks = len(tasks) if isinstance(tasks, list) else None
    noise = None
    if h.learner != "qlearning":
        noise = NoiseSchedule(start=h.noise_start, end=h.noise_end, decay_fraction=h.noise_decay)
    return collect_histories(
        run.env, h.learner, tasks=tasks, episodes_per_history=h.episodes_per_history,
        histories=h.histories if n_tasks is not None else None, seed=h.seed + seed_offset,
        qlearning=QLearningConfig(eps_decay_fraction=h.q_eps_decay), noise=noise,
    )


def collect_argv(run: ADRun, out: str) -> list[str]:
    """``rl-ring collect`` arguments that write the run's training histories (the same
    arrays as :func:`collect` on :func:`training_tasks`) to ``out``."""
    h = run.history
    argv = [run.env, "--policy", h.learner, "--tasks", "train", "--num-tasks",
            str(h.num_tasks), "--episodes-per-history", str(h.episodes_per_history),
            "--histories", str(h.histories), "--seed", str(h.seed), "--q-eps-decay",
            str(h.q_eps_decay), "--out", out]
    if h.learner != "qlearning":
        argv[-2:-2] = ["--learner-noise", str(h.noise_start), str(h.noise_end),
                       str(h.noise_decay)]
    return argv


def train_config(run: ADRun, data: str, workdir: str, *, progress: bool = False):
    """The TrainConfig of a run (AD agent, ring attention on the run's mesh)."""
    import agents
    from rl_ring.models import ModelConfig
    from rl_ring.train import TrainConfig
    from rl_ring.train.optim import OptimConfig

    model = ModelConfig(width=run.width, depth=run.depth, num_heads=run.heads,
                        activation="gelu", dropout=run.dropout, max_timestep=1000)
    from agents.base import EvalDefaults

    # The checkpoint carries how this run is evaluated (sampled or greedy actions, one
    # episode of slide), so `rl-ring eval --checkpoint` reproduces the experiment's numbers.
    agent_cfg = agents.get("ad").Config(window_steps=run.window_steps, align=run.align,
                                        model=model,
                                        evaluation=EvalDefaults(greedy=run.greedy, slide_steps=0))
    # Checkpoints every eval_every steps (all kept, to be evaluated), else every 100 steps
    # (the last two kept): a stalled training process resumes from there (see train_watched).
    ckpt = run.eval_every or min(100, run.steps)
    keep = -(-run.steps // ckpt) if run.eval_every else 2
    return TrainConfig(
        agent="ad", data=data, env=run.env, workdir=workdir, steps=run.steps,
        batch_size=run.batch_size, mesh=run.mesh, seed=run.train_seed, agent_config=agent_cfg,
        optim=OptimConfig(lr=run.lr, warmup_steps=run.warmup_steps),
        log_every=max(1, min(10, run.steps // 20)), ckpt_every=ckpt, keep_checkpoints=keep,
        progress=progress, tensorboard=False,
    )


def train_watched(run: ADRun, data: str, workdir: str, *, progress: bool = False,
                  stall_s: float = 300.0, restarts: int = 3) -> dict[str, Any]:
    """Trains in a child process on fake CPU devices, restarting it from its last checkpoint
    if it stops making progress (``rl_ring.io.run_watched`` says why). The run is a pure
    function of (seed, step), so a resumed run ends exactly where an uninterrupted one would.

    Returns:
        ``history`` (the metrics lines), ``tokens_per_s`` (steady state), ``compile_s``
        (first step) and ``restarts`` (how many stalls were recovered).
    """
    from rl_ring.train.metrics import read_metrics

    job = Path(workdir).with_suffix(".job.json")
    job.write_text(json.dumps({"run": dataclasses.asdict(run), "data": data,
                               "workdir": workdir, "progress": progress}))
    attempt = run_watched([sys.executable, "-m", "experiments.ad_darkroom", "--worker", str(job)],
                          env={**device_env(8), "JAX_PLATFORMS": "cpu"}, name=run.name,
                          progress=Path(workdir) / "metrics.jsonl", stall_s=stall_s,
                          restarts=restarts, log=log)
    rows = read_metrics(workdir)
    steady = [r["tokens_per_s"] for r in rows[1:]]
    return {"history": rows, "tokens_per_s": float(np.median(steady)) if steady else 0.0,
            "compile_s": rows[0]["wall_time"] if rows else 0.0, "restarts": attempt}


def _worker(job_path: str) -> int:
    """Child process of :func:`train_watched`: one (resumable) training run."""
    from agents.run import train
    from experiments.configs.ad_darkroom import HistorySpec

    job = json.loads(Path(job_path).read_text())
    raw = dict(job["run"])
    run = ADRun(**{**raw, "history": HistorySpec(**raw["history"])})
    train(train_config(run, job["data"], job["workdir"], progress=job["progress"]))
    return 0


def evaluate_checkpoint(run: ADRun, workdir: str, split: str, seeds: int, out: str,
                        step: int | None = None) -> dict[str, Any]:
    """In-context evaluation of a checkpoint on ``split`` tasks; per-episode mean returns."""
    import envs
    from agents.policy import eval_policy_from_checkpoint
    from envs.evaluation import env_factory, eval_tasks
    from rl_ring.eval import EvalConfig, evaluate

    # Decoding from the checkpoint's own evaluation defaults (see train_config): the same
    # path as `rl-ring eval --checkpoint`.
    policy = eval_policy_from_checkpoint(workdir, step=step, episode_steps=EPISODE_STEPS[run.env])
    cfg = EvalConfig(env=run.env, out=out, trials=run.eval_episodes, envs=run.eval_rows,
                     seeds=seeds, task_split=split, progress=False,
                     x_label="in-context episode",
                     overwrite=True)  # inside this experiment's own claimed work directory
    report = evaluate(cfg, make_env=env_factory(run.env), tasks=eval_tasks(run.env, split),
                      policy=policy)
    tasks = sorted({e["task"] for e in report["episodes"]})
    optimal = float(np.mean([envs.optimal_return(run.env, t) for t in tasks]))
    per_trial = report["summary"]["return"]["per_trial"]
    by_seed = per_seed_curves(report)
    seed_windows = [window_stats(c, optimal)["window_return"] for c in by_seed]
    return {"split": split, "tasks": tasks, "optimal": optimal, **window_stats(
        per_trial["mean"], optimal), "per_episode": per_trial["mean"],
            "eval_seed_window_returns": seed_windows, "eval_seed_curves": by_seed,
            "per_episode_std_over_seeds": per_trial["std"], "wall_s": report["timing"]["wall_s"]}


def per_seed_curves(report: dict[str, Any]) -> list[list[float]]:
    """Each evaluation seed's mean return per in-context episode (over its rows)."""
    seeds = sorted({e["seed"] for e in report["episodes"]})
    trials = 1 + max(e["trial"] for e in report["episodes"])
    curves = []
    for s in seeds:
        rows = np.full((trials, len(report["episodes"])), np.nan)
        for i, e in enumerate(x for x in report["episodes"] if x["seed"] == s):
            if e["return"] is not None:
                rows[e["trial"], i] = e["return"]
        curves.append(np.nanmean(rows, axis=1).tolist())
    return curves


def window_stats(per_episode: list[float | None], optimal: float) -> dict[str, Any]:
    """Mean return over in-context episodes 20-40 (the last half when fewer) vs optimal."""
    y = np.asarray([np.nan if v is None else v for v in per_episode], np.float64)
    lo = 19 if len(y) >= 40 else len(y) // 2
    mean = float(np.nanmean(y[lo:40])) if len(y) else float("nan")
    return {"window": [lo + 1, min(len(y), 40)], "window_return": mean,
            "window_fraction_of_optimal": mean / optimal if optimal else None}


def loss_on(workdir: str, store, batches: int, seed: int = 777) -> dict[str, float]:
    """Mean loss / accuracy of a checkpoint (no dropout) on fresh windows of ``store``."""
    import jax.numpy as jnp

    import agents
    from agents.run import load_checkpoint

    model, cfg, norm, _ = load_checkpoint(workdir, attn_impl="blockwise")
    module = agents.get("ad")
    sampler = module.make_sampler(store, cfg.agent_config, batch_size=16, seed=seed, norm=norm)
    losses, accs = [], []
    for _ in range(batches):
        tokens = {k: jnp.asarray(v) for k, v in sampler.next_batch().tokens().items()}
        loss, metrics = module.loss_fn(model, tokens)
        losses.append(float(loss))
        accs.append(float(metrics["accuracy"]))
    return {"loss": float(np.mean(losses)), "accuracy": float(np.mean(accs))}


def source_curve(run: ADRun, split: str = "test") -> dict[str, Any]:
    """The source's own learning curve on ``split`` tasks (same histories as training)."""
    from envs.learners.history import learning_curve

    h = run.history
    store = collect(run.replace(history=dataclasses.replace(h, histories=0)), split,
                    seed_offset=1000)
    mean, sem = learning_curve(store)
    return {"learner": h.learner, "mean": mean.tolist(), "sem": sem.tolist(), "store": store}


def random_baseline(run: ADRun, out: str) -> dict[str, Any]:
    """A uniformly random policy on the held-out tasks, 3 evaluation seeds."""
    from envs.evaluation import env_factory, eval_tasks
    from rl_ring.eval import EvalConfig, evaluate

    cfg = EvalConfig(env=run.env, out=out, policy="random", trials=run.eval_episodes,
                     envs=run.eval_rows, seeds=3, task_split="test", progress=False,
                     overwrite=True)  # inside this experiment's own claimed work directory
    report = evaluate(cfg, make_env=env_factory(run.env), tasks=eval_tasks(run.env, "test"))
    mean = report["summary"]["return"]["per_trial"]["mean"]
    return {"per_episode": mean, "mean": float(np.mean(mean))}


# ---------------------------------------------------------------------- one run
def run_one(run: ADRun, workdir: Path, *, progress: bool = False) -> dict[str, Any]:
    """Collect -> train -> evaluate -> losses; the run's record (also saved in its dir)."""
    from rl_ring.io import write_json

    rdir = workdir / run.name
    done = rdir / "record.json"
    if done.exists():
        record = json.loads(done.read_text())
        if record["config"] == dataclasses.asdict(run):
            log(f"{run.name}: finished before, reusing {done}")
            return record
        shutil.rmtree(rdir)
    elif rdir.exists():
        shutil.rmtree(rdir)  # a run interrupted half way: start it afresh
    rdir.mkdir(parents=True)
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    tasks = training_tasks(run)
    store = collect(run, tasks)
    store.save(rdir / "data")
    from envs.learners.history import learning_curve

    train_curve = learning_curve(store)[0].tolist()
    timing["collect_s"] = time.perf_counter() - t0
    log(f"{run.name}: {store.num_episodes} episodes of {run.history.learner} on "
        f"{len(tasks)} {run.env} tasks ({timing['collect_s']:.1f} s)")

    t0 = time.perf_counter()
    cfg = train_config(run, str(rdir / "data"), str(rdir / "train"))
    result = train_watched(run, cfg.data, cfg.workdir, progress=progress)
    timing["train_s"] = time.perf_counter() - t0
    history = [{k: r[k] for k in ("step", "loss", "accuracy", "tokens_per_s") if k in r}
               for r in result["history"]]
    log(f"{run.name}: trained {run.steps} steps in {timing['train_s']:.0f} s "
        f"({result['tokens_per_s']:.0f} tokens/s, first step {result['compile_s']:.0f} s, "
        f"{result['restarts']} restarts)")

    t0 = time.perf_counter()
    source = source_curve(run)
    losses = {"train_tasks": loss_on(cfg.workdir, store, run.loss_batches),
              "heldout_tasks": loss_on(cfg.workdir, source.pop("store"), run.loss_batches)}
    evals = {"test": evaluate_checkpoint(run, cfg.workdir, "test", run.eval_test_seeds,
                                         str(rdir / "eval_test"))}
    if run.eval_train_seeds:
        evals["train"] = evaluate_checkpoint(run, cfg.workdir, "train", run.eval_train_seeds,
                                             str(rdir / "eval_train"))
    by_step = []
    if run.eval_every:
        for step in range(run.eval_every, run.steps, run.eval_every):
            ev = evaluate_checkpoint(run, cfg.workdir, "test", run.eval_test_seeds,
                                     str(rdir / f"eval_test_{step}"), step=step)
            by_step.append({"step": step, **{k: ev[k] for k in ("window_return",
                                                                  "window_fraction_of_optimal")}})
        by_step.append({"step": run.steps, **{k: evals["test"][k] for k in (
            "window_return", "window_fraction_of_optimal")}})
    timing["eval_s"] = time.perf_counter() - t0
    source.update(window_stats(source["mean"], evals["test"]["optimal"]))
    record = {
        "name": run.name, "config": dataclasses.asdict(run), "timing": timing,
        "data": {"episodes": store.num_episodes, "steps": store.num_steps,
                 "tasks": tasks, "train_curve": train_curve},
        "train": {"history": history, "tokens_per_s": result["tokens_per_s"],
                  "compile_s": result["compile_s"], "restarts": result["restarts"]},
        "loss": losses, "eval": evals, "eval_by_step": by_step, "source_heldout": source,
    }
    write_json(record, done)
    t = evals["test"]
    log(f"{run.name}: held-out episodes {t['window'][0]}-{t['window'][1]}: "
        f"{t['window_return']:.2f} = {t['window_fraction_of_optimal']:.0%} of optimal "
        f"{t['optimal']:.2f}; loss train-goal {losses['train_tasks']['loss']:.3f} "
        f"held-out-goal {losses['heldout_tasks']['loss']:.3f} "
        f"(eval {timing['eval_s']:.0f} s)")
    return record


# ---------------------------------------------------------------------- drivers
@dataclass(frozen=True)
class Args:
    """Options of the Algorithm Distillation reproduction."""

    experiment: str = "main"
    """'main' (the main run over --seeds training seeds), an experiment name, or 'all'."""
    env: Literal["darkroom", "keydoor"] = "darkroom"
    """Task family."""
    seeds: int = 3
    """Training seeds of the main run."""
    steps: int = 0
    """Override every run's optimiser steps (0: as configured)."""
    tiny: bool = False
    """Seconds on CPU: a tiny model and dataset (the test runs it)."""
    out: str = "results"
    """Directory of the JSON / PNG results."""
    workdir: str = "runs/ad_darkroom"
    """Where datasets, checkpoints and evaluation reports of every run are kept."""
    progress: bool = False
    """Show training progress bars."""
    worker: str = ""
    """Internal: run one training job (a JSON file) in this process."""
    overwrite: bool = False
    """Replace result files already in --out, and allow a --workdir holding files other than
    an earlier ad_darkroom run's (they are kept)."""


def results_name(env: str, kind: str = "") -> str:
    """``ad_darkroom[_keydoor][_experiments]``."""
    return RESULTS + ("" if env == "darkroom" else f"_{env}") + (f"_{kind}" if kind else "")


def run_main(args: Args, workdir: Path) -> dict[str, Any]:
    """The main run over training seeds, with baselines; writes <out>/ad_darkroom.json/png."""
    from experiments import ad_darkroom_report as report
    from rl_ring.io import write_json

    base = tiny_run(args.env) if args.tiny else main_run(args.env)
    if args.steps:
        base = base.replace(steps=args.steps)
    t_start = time.perf_counter()
    records = [run_one(base.replace(name=f"main-seed{s}", train_seed=s), workdir,
                       progress=args.progress)
               for s in range(args.seeds)]
    baselines = {"random": random_baseline(base, str(workdir / "baseline_random"))}
    if base.history.learner != "qlearning":
        q = base.replace(history=dataclasses.replace(
            base.history, learner="qlearning", episodes_per_history=max(40, base.eval_episodes)))
        curve = source_curve(q)
        curve.pop("store")
        baselines["qlearning_heldout"] = curve
    summary = report.summarize_main(records, baselines)
    summary["wall_s"] = time.perf_counter() - t_start
    out = Path(args.out)
    name = results_name(args.env)
    summary["files"] = {"plot": report.plot_main(summary, out / f"{name}.png").name}
    write_json(summary, out / f"{name}.json")
    for line in report.main_table(summary):
        print(line)
    return summary


def run_experiments(args: Args, names: list[str], workdir: Path) -> dict[str, Any]:
    """Runs the named experiments in sequence; the log is rewritten after every run."""
    from experiments import ad_darkroom_report as report
    from rl_ring.io import write_json

    grid = experiments(args.env)
    unknown = [n for n in names if n not in grid]
    if unknown:
        raise ValueError(f"--experiment {unknown[0]!r}: known experiments are main, all, "
                         f"{', '.join(grid)}")
    out = Path(args.out)
    path = out / f"{results_name(args.env, 'experiments')}.json"
    log_data = json.loads(path.read_text()) if path.exists() else {"experiments": {}}
    for name in names:
        exp = grid[name]
        runs = exp.runs
        if args.tiny:
            tiny = tiny_run(args.env)
            # The tiny variant keeps each run's name and decoding, not its size.
            runs = tuple(tiny.replace(name=r.name, greedy=r.greedy) for r in runs[:2])
        if args.steps:
            runs = tuple(r.replace(steps=args.steps) for r in runs)
        entry = {"question": exp.question, "runs": []}
        log_data["experiments"][name] = entry
        for run in runs:
            record = run_one(run, workdir, progress=args.progress)
            entry["runs"].append(report.compact(record))
            write_json(log_data, path)
    log_data["files"] = {"plot": report.plot_experiments(
        log_data, out / f"{results_name(args.env, 'experiments')}.png").name}
    write_json(log_data, path)
    for line in report.experiment_tables(log_data, names):
        print(line)
    return log_data


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m experiments.ad_darkroom [options]``."""
    import tyro

    args = tyro.cli(Args, args=sys.argv[1:] if argv is None else argv,
                    prog="python -m experiments.ad_darkroom", description=__doc__)
    if args.worker:
        return _worker(args.worker)
    workdir = Path(args.workdir) / ("tiny" if args.tiny else args.env)
    try:
        from rl_ring.io import check_results, claim_run_dir

        if args.experiment == "main":
            name = Path(args.out) / results_name(args.env)
            check_results([name.with_suffix(".json"), name.with_suffix(".png")],
                          workdir=args.workdir, overwrite=args.overwrite,
                          what="ad_darkroom's results")
        claim_run_dir(args.workdir, kind="ad_darkroom", overwrite=args.overwrite)
        if args.experiment == "main":
            run_main(args, workdir)
        else:
            names = list(experiments(args.env)) if args.experiment == "all" else [
                args.experiment]
            run_experiments(args, names, workdir)
    except (ValueError, OSError) as err:
        print(f"ad_darkroom: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
