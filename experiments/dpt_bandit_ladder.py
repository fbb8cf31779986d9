"""Why DPT learns nothing on ``bandit-hard`` at this machine's budget: a controlled ladder.

At the context-scaling budget (300 steps of 32 windows of 256 uniform pulls) DPT's loss on
``bandit-hard`` stays at ln 20, a uniform guess, flat over the pulls
(docs/reproductions.md, "Context scaling"). This script keeps everything but the bandit
family fixed (the same model, data pipeline, budget and seeds) and walks four Bernoulli
families that differ in one factor per step:

* ``arms5-wide``: 5 arms, success probabilities uniform in [0, 1) (registry ``bandit``);
* ``arms10-wide``, ``arms20-wide``: 10 (``bandit-10``) and 20 arms in [0, 1): the arm count
  changed;
* ``arms20-narrow``: 20 arms in [0.3, 0.7) (``bandit-hard``): the gaps changed.

Each family gets the same data (1,000 histories of 4,096 uniformly random pulls on training
bandits, every pull labelled with its bandit's best arm, as ``context_scaling`` makes DPT's),
and DPT trains on it with ``context_scaling``'s model and options. Each trained run is then
scored teacher-forced on fresh uniform pulls of *held-out* bandits of its family, per pull
(``context_scaling_floor.model_nll``), next to the two ends of what it can learn:

* ln K, the loss of a uniform guess (what a context-blind model gets);
* the floor, the entropy of the best arm's posterior under the family's prior given the
  pulls so far (``context_scaling_floor.imitation_floor`` on the same histories): no model
  does better on these targets.

``gap_closed`` = (ln K - loss) / (ln K - floor) over the window's pulls: 0 is a context-blind
model, 1 the Bayes-optimal one. Reported per run and as mean ± std over training seeds.

Usage::

    python -m experiments.dpt_bandit_ladder                  # 4 families x 2 seeds
    python -m experiments.dpt_bandit_ladder --seeds 1 --rungs arms5-wide arms20-wide
    python -m experiments.dpt_bandit_ladder --tiny           # seconds (the test)
    python -m experiments.dpt_bandit_ladder --rungs arms20-wide --seeds 1 --window 64 \
        --steps 1200 --tag w64 --workdir runs/dpt_bandit_ladder_w64   # a variant
    python -m experiments.dpt_bandit_ladder --rungs arms20-narrow --init-rung arms20-wide \
        --window 64 --steps 1200 --tag w64_curriculum --workdir runs/dpt_bandit_ladder_w64
        # a curriculum: bandit-hard's runs start from the 20-wide-arm runs
    python -m experiments.dpt_bandit_ladder --rungs arms20-narrow \
        --init-rung arms20-narrow-from-arms20-wide --init-workdir runs/dpt_bandit_ladder_w64 \
        --window 256 --steps 600 --online-pulls 4096 --tag w256 --workdir runs/dpt_w256
        # a third step at longer windows, from the curriculum runs of another ladder, each
        # run then played online for 4,096 pulls on context_scaling's 200 held-out bandits

Writes ``<out>/dpt_bandit_ladder[_<tag>].json`` and ``.png``; checkpoints and data stay under
``--workdir`` (git-ignored ``runs/``), finished runs are reused when asked for again.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rl_ring.io import setup_cpu_devices

if __name__ == "__main__":
    setup_cpu_devices(8)  # see rl_ring.io.device_flags for why these flags

RESULTS = "dpt_bandit_ladder"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass(frozen=True)
class Rung:
    """One Bernoulli family of the ladder."""

    label: str
    """What changed, in words."""
    arms: int
    low: float
    high: float
    num_tasks: int
    env: str
    """Its registry id, "" where the registry has none (written into the checkpoints)."""

    def params(self):
        from envs.bandit import BanditParams

        return BanditParams(arms=self.arms, low=self.low, high=self.high,
                            num_tasks=self.num_tasks)


RUNGS: dict[str, Rung] = {
    "arms5-wide": Rung("5 arms, p in [0, 1)", 5, 0.0, 1.0, 1000, "bandit"),
    "arms10-wide": Rung("10 arms, p in [0, 1)", 10, 0.0, 1.0, 1000, "bandit-10"),
    "arms20-wide": Rung("20 arms, p in [0, 1)", 20, 0.0, 1.0, 10_000, ""),
    "arms20-narrow": Rung("20 arms, p in [0.3, 0.7) (bandit-hard)", 20, 0.3, 0.7, 10_000,
                          "bandit-hard"),
}


@dataclass(frozen=True)
class LadderConfig:
    """The fixed part of the ladder: model, data and budget (context_scaling's DPT at the
    batch-32 budget), and how runs are scored."""

    window: int = 256
    """Pulls per training context (one TRANSITION and one STATE token each)."""
    steps: int = 300
    batch_size: int = 32
    histories: int = 1000
    """Training histories of uniform pulls, one per training bandit (a fixed shuffle)."""
    history_pulls: int = 4096
    width: int = 64
    depth: int = 4
    heads: int = 4
    dropout: float = 0.1
    lr: float = 1e-3
    warmup_steps: int = 100
    score_bandits: int = 128
    """Held-out bandits scored (first of a fixed shuffle of the test split)."""
    samples: int = 500
    """Posterior draws per history and position of the floor."""
    stride: int = 4
    """The floor is estimated at every stride-th pull."""
    seed: int = 0
    """Seed of the data and of the scoring histories."""

    def scaling(self):
        """The same run as a ``context_scaling`` configuration (its DPT plan and training)."""
        from experiments.context_scaling import ScalingConfig

        return ScalingConfig(
            env="bandit-hard", windows=(self.window,), histories=self.histories,
            history_episodes=self.history_pulls, width=self.width, depth=self.depth,
            heads=self.heads, dropout=self.dropout, steps=self.steps,
            batch_size=self.batch_size, lr=self.lr, warmup_steps=self.warmup_steps,
            seed=self.seed)


def tiny_config() -> LadderConfig:
    """Seconds on CPU: a 1-layer model, 16-pull windows, a few steps and bandits."""
    return LadderConfig(window=16, steps=4, batch_size=8, histories=16, history_pulls=64,
                        width=32, depth=1, heads=2, dropout=0.0, lr=3e-3, warmup_steps=2,
                        score_bandits=4, samples=50, stride=4)


def tasks_of(rung: Rung, split: str, n: int) -> list[int]:
    """The first ``n`` of a fixed shuffle of the family's train / test split."""
    from envs.bandit import task_split

    tasks = task_split(split, num_tasks=rung.num_tasks)
    return np.random.default_rng(4321).permutation(tasks)[:n].tolist()


def gap_closed(nll: float, floor: float, arms: int) -> float:
    """(ln K - loss) / (ln K - floor): 0 for a context-blind model, 1 at the floor."""
    return (math.log(arms) - nll) / (math.log(arms) - floor)


# ---------------------------------------------------------------------- one run
def run_dir(work: Path, name: str, seed: int, init: str = "") -> Path:
    """Where rung ``name``'s run of ``seed`` lives (started from rung ``init``'s run, if any)."""
    return work / (f"{name}-from-{init}-seed{seed}" if init else f"{name}-seed{seed}")


def run_rung(cfg: LadderConfig, name: str, seed: int, work: Path, *, watch: bool,
             source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Data (once per family) -> DPT trained -> scored on held-out bandits; the record.

    ``source``: the finished record of another run of the same seed this one starts from, a
    curriculum step (``TrainConfig.init_from``): a rung's run in ``work`` or a finished run
    of another ladder (``record["dir"]``); the two must have the same arm count. The record
    returned names its run directory (``dir``)."""
    from envs.learners.bandits import bandit_histories
    from experiments import context_scaling as cs
    from rl_ring.io import write_json

    rung = RUNGS[name]
    params = rung.params()
    data = work / f"data-{name}"
    if not (data / "store.json").exists():
        store = bandit_histories(rung.env or name, params, tasks_of(rung, "train",
                                 cfg.histories), "random", cfg.history_pulls,
                                 seed=cfg.seed + 7)
        store.save(data, overwrite=True)
    init = family(source) if source is not None else ""
    init_dir = Path(source["dir"]) / "train" if source is not None else None
    rdir = run_dir(work, name, seed, init)
    done = rdir / "record.json"
    key = {"config": dataclasses.asdict(cfg), "rung": dataclasses.asdict(rung), "seed": seed}
    if source is not None:
        key["init"] = source["key"]
    if done.exists():
        record = json.loads(done.read_text())
        if record["key"] == json.loads(json.dumps(key)):
            log(f"{rdir.name}: finished before, reusing {done}")
            if init_dir and "zero_shot" not in record:  # written before it was scored
                record["zero_shot"], = held_out_scores(cfg, name, [init_dir])
                write_json(record, done)
            return {**record, "dir": str(rdir)}
    if rdir.exists():
        shutil.rmtree(rdir)  # another configuration, or interrupted half way
    rdir.mkdir(parents=True)
    scfg = cfg.scaling()
    tcfg = cs.train_config(scfg, "dpt", cfg.window, seed, str(data), str(rdir / "train"))
    tcfg = tcfg.replace(env=rung.env,
                        init_from=str(init_dir or ""))
    trained = cs.train(tcfg, watch=watch)
    log(f"{rdir.name}: {cfg.steps} steps in {trained['wall_s']:.0f} s "
        f"({trained['tokens_per_s']:.0f} tokens/s), final loss {trained['final_loss']:.3f}")

    t0 = time.perf_counter()
    # The source is scored too, as it is, before any step here: what carried over.
    scores = held_out_scores(cfg, name, [rdir / "train", *([init_dir] if init_dir else [])])
    record = {"key": key, "name": name, "seed": seed, "arms": rung.arms, "init": init,
              "family": f"{name}-from-{init}" if init else name,
              "label": f"{rung.label}, from the {init} run" if init else rung.label,
              "train": trained, **scores[0], "score_wall_s": time.perf_counter() - t0}
    if init_dir:
        record["zero_shot"] = scores[1]
    write_json(record, done)
    log(f"{rdir.name}: loss {record['nll']:.3f} +- {record['nll_sem']:.3f} on held-out "
        f"bandits (ln K {math.log(rung.arms):.3f}, floor {record['floor']:.3f}): "
        f"gap closed {record['gap_closed']:.3f}")
    return {**record, "dir": str(rdir)}


def finished_source(init_work: Path, init: str, seed: int) -> dict[str, Any]:
    """The finished run ``<init>-seed<seed>`` of another ladder's work directory (a rung, or a
    curriculum family ``<rung>-from-<rung>``), as a curriculum source."""
    done = run_dir(init_work, init, seed) / "record.json"
    if not done.is_file():
        raise ValueError(f"--init-workdir {init_work}: no finished run {init!r} of seed {seed} "
                         f"(expected {done}; run that ladder first)")
    return {**json.loads(done.read_text()), "dir": str(done.parent)}


def online_scores(cfg: LadderConfig, record: dict[str, Any], pulls: int, bandits: int
                  ) -> dict[str, Any]:
    """A finished run played online: its own sampled pulls fill its context (the window
    sliding by a quarter once full), ``pulls`` pulls on each of its family's first ``bandits``
    held-out bandits, with ``context_scaling``'s evaluation (the same bandits, seeds and
    regret summary as its table). Cached in the run's record."""
    from experiments import context_scaling as cs
    from rl_ring.io import write_json

    want = {"pulls": pulls, "bandits": bandits}
    rdir = Path(record["dir"])
    saved = json.loads((rdir / "record.json").read_text())  # as played since, if it was
    if {k: saved.get("online", {}).get(k) for k in want} == want:
        return saved["online"]
    t0 = time.perf_counter()
    played = cs.evaluate_run(online_config(cfg, record["name"], pulls, bandits),
                             str(rdir / "train"), rdir, cfg.window)
    online = {**want, **played, "eval_wall_s": time.perf_counter() - t0}
    write_json({**saved, "online": online}, rdir / "record.json")
    log(f"{rdir.name}: online regret at {pulls} pulls {online['final_mean']:.1f} +- "
        f"{online['final_sem']:.1f} over {bandits} held-out bandits "
        f"({online['eval_wall_s']:.0f} s)")
    return online


def online_config(cfg: LadderConfig, name: str, pulls: int, bandits: int):
    """``context_scaling``'s configuration that plays rung ``name``'s held-out bandits."""
    return cfg.scaling().replace(env=RUNGS[name].env, eval_tasks=bandits, eval_episodes=pulls)


def online_baselines(cfg: LadderConfig, name: str, pulls: int, bandits: int
                     ) -> dict[str, Any]:
    """Thompson sampling (also with the family's prior), UCB1 and random arms on the bandits
    :func:`online_scores` plays (``context_scaling.bandit_baselines``: the same seeds)."""
    from experiments import context_scaling as cs

    scfg = online_config(cfg, name, pulls, bandits)
    means = cs.family(scfg.env).means_of(cs.heldout_tasks(scfg))
    return cs.bandit_baselines(scfg, means, pulls)


def held_out_scores(cfg: LadderConfig, name: str, checkpoints: list[Path]
                    ) -> list[dict[str, Any]]:
    """Trained runs (their work directories) scored on rung ``name``: teacher-forced on
    ``cfg.window`` fresh uniform pulls of the family's first ``cfg.score_bandits`` held-out
    bandits, against the floor on the same pulls (:func:`score`; pulls and floor made once)."""
    from envs.learners.bandits import bandit_histories
    from experiments import context_scaling_floor as csf

    rung = RUNGS[name]
    params = rung.params()
    tasks = tasks_of(rung, "test", cfg.score_bandits)
    floor = csf.imitation_floor(params, params.means_of(tasks), cfg.window, cfg.seed,
                                samples=cfg.samples, stride=cfg.stride, learner="random",
                                prior="family")
    store = bandit_histories(rung.env or name, params, tasks, "random", cfg.window,
                             cfg.seed)
    scored = [csf.model_nll(c, store, cfg.window) for c in checkpoints]
    return [score(s["nll"], s["correct"], floor, rung.arms) for s in scored]


def score(nll: np.ndarray, correct: np.ndarray, floor: dict[str, Any], arms: int
          ) -> dict[str, Any]:
    """A run's loss ``nll`` and hits ``correct`` ``[bandits, pulls]`` against the floor
    (estimated at ``floor["positions"]``): means over the floor's positions, the loss's SE
    over bandits, the gap closed, and the per-pull curves."""
    pos = np.asarray(floor["positions"])
    per_bandit = nll[:, pos].mean(axis=1)
    mean, fl = float(per_bandit.mean()), float(np.mean(floor["entropy"]))
    return {
        "nll": mean,
        "nll_sem": float(per_bandit.std(ddof=1) / np.sqrt(len(per_bandit)))
        if len(per_bandit) > 1 else 0.0,
        "accuracy": float(correct[:, pos].mean()),
        "floor": fl, "ceiling": float(np.mean(floor["top_probability"])),
        "uniform": math.log(arms), "gap_closed": gap_closed(mean, fl, arms),
        "curve": {"positions": pos.tolist(), "nll": nll[:, pos].mean(axis=0).tolist(),
                  "accuracy": correct[:, pos].mean(axis=0).tolist(),
                  "floor": list(floor["entropy"]),
                  "ceiling": list(floor["top_probability"])},
    }


# ---------------------------------------------------------------------- the ladder
def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per family: mean ± std over seeds of the loss, gap closed and accuracy."""
    out = {}
    for name in dict.fromkeys(family(r) for r in records):
        rs = [r for r in records if family(r) == name]
        row = {"label": rs[0]["label"], "arms": rs[0]["arms"], "seeds": [r["seed"] for r in rs],
               "init": rs[0].get("init", ""),
               "uniform": rs[0]["uniform"], "floor": float(np.mean([r["floor"] for r in rs])),
               "ceiling": float(np.mean([r["ceiling"] for r in rs]))}
        for k in ("nll", "gap_closed", "accuracy"):
            row.update(_over_seeds(k, [r[k] for r in rs]))
        row["nll_sem_over_bandits"] = float(np.mean([r["nll_sem"] for r in rs]))
        if all("zero_shot" in r for r in rs):  # curriculum steps: their sources, as they were
            for k in ("nll", "gap_closed", "accuracy"):
                row[f"zero_shot_{k}"] = [r["zero_shot"][k] for r in rs]
        if all("online" in r for r in rs):  # played online: regret at the last pull
            v = [r["online"]["final_mean"] for r in rs]
            row.update(online_pulls=rs[0]["online"]["pulls"],
                       online_bandits=rs[0]["online"]["bandits"], online_regret=v,
                       **_over_seeds("online_regret", v),
                       online_regret_sem_over_bandits=float(np.mean(
                           [r["online"]["final_sem"] for r in rs])))
        first = [r["train"]["history"][0]["loss"] for r in rs if r["train"]["history"]]
        row["train_loss_first"] = float(np.mean(first)) if first else float("nan")
        row["train_loss_final"] = float(np.mean([r["train"]["final_loss"] for r in rs]))
        row["train_wall_s"] = float(np.mean([r["train"]["wall_s"] for r in rs]))
        out[name] = row
    return out


def _over_seeds(key: str, values: list[float]) -> dict[str, float | None]:
    """``<key>_mean`` and ``<key>_std`` over seeds (the std None for one seed)."""
    v = np.asarray(values, np.float64)
    return {f"{key}_mean": float(v.mean()), f"{key}_std": float(v.std()) if len(v) > 1 else None}


def family(record: dict[str, Any]) -> str:
    """A run's family: its rung, or ``<rung>-from-<init rung>`` for a curriculum step (records
    written before curricula existed have no ``family``)."""
    return record.get("family", record["name"])


def _pm(row: dict[str, Any], key: str) -> str:
    """`` +- std`` of a family's row, nothing for one seed."""
    return "" if row[key] is None else f" +- {row[key]:.3f}"


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    online = result.get("online_baselines")
    fig, axes = plt.subplots(1, 3 if online else 2, figsize=(18 if online else 12, 4.5))
    ax1, ax2 = axes[:2]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(result["families"]):
        col = colors[i % len(colors)]
        rs = [r for r in result["runs"] if family(r) == name]
        lnk = rs[0]["uniform"]
        c = rs[0]["curve"]
        x = np.asarray(c["positions"])
        below = lnk - np.mean([r["curve"]["nll"] for r in rs], axis=0)
        ax1.plot(x, below, color=col, label=f"DPT, {rs[0]['label']} ({len(rs)} seeds)")
        ax1.plot(x, lnk - np.asarray(c["floor"]), color=col, ls="--", lw=1,
                 label="its floor (best arm's posterior)")
        for r in rs:
            h = r["train"]["history"]
            ax2.plot([p["step"] for p in h], [p["loss"] - lnk for p in h], color=col,
                     alpha=0.8, label=f"{rs[0]['label']}, seed {r['seed']}")
        if online and all("online" in r for r in rs):
            o = rs[0]["online"]
            axes[2].plot(o["curve_x"], np.mean([r["online"]["curve"] for r in rs], axis=0),
                         color=col, label=f"DPT, {rs[0]['label']} ({len(rs)} seeds)")
    ax1.axhline(0.0, color="gray", lw=0.8)
    ax1.set(xlabel="pull in the context (held-out bandits, uniform pulls)",
            ylabel="ln K - loss on the best arm (nats)",
            title="what DPT reads from its context, against the most it could")
    ax2.axhline(0.0, color="gray", lw=0.8)
    ax2.set(xlabel="optimiser step", ylabel="training loss - ln K (nats)",
            title="training loss relative to a uniform guess")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    if online:
        for rung, base in online.items():
            for i, (name, b) in enumerate(base.items()):
                axes[2].plot(b["curve_x"], b["curve"], color="gray", lw=1,
                             ls=("--", ":", "-.", (0, (1, 3)))[i % 4], label=f"{name} ({rung})")
        axes[2].set(xlabel="pull (held-out bandits, one context, window sliding)",
                    ylabel="cumulative expected regret", title="played online")
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class Args:
    """Options of the DPT bandit ladder."""

    rungs: tuple[str, ...] = tuple(RUNGS)
    """Families to run (arms5-wide, arms10-wide, arms20-wide, arms20-narrow)."""
    seeds: int = 2
    """Training seeds per family."""
    steps: int = 0
    """Override the optimiser steps (0: 300)."""
    batch_size: int = 0
    """Override the windows per batch (0: 32)."""
    window: int = 0
    """Override the pulls per context (0: 256); runs are scored over that many pulls."""
    init_rung: str = ""
    """A curriculum: every rung of --rungs starts from this rung's run of the same seed (in
    --workdir; trained first when missing) instead of a fresh initialisation; it must have
    the same arm count. Both appear in the results. With --init-workdir, a finished run of
    that directory: a rung or a curriculum family (e.g. arms20-narrow-from-arms20-wide)."""
    init_workdir: str = ""
    """Where the --init-rung runs are, finished: another ladder's --workdir (e.g. one at a
    shorter --window), for a curriculum of several steps. They are scored zero-shot here but
    are not part of these results."""
    online_pulls: int = 0
    """Also play every run online (0: not): its own sampled pulls fill its context, the
    window sliding, for this many pulls on each of --online-bandits held-out bandits of its
    family, next to Thompson sampling, UCB1 and random on the same bandits
    (context_scaling's evaluation: same bandits and seeds). --rungs with a registry env only
    (an --init-rung without one is not played)."""
    online_bandits: int = 200
    """Held-out bandits played online (the first of context_scaling's)."""
    tag: str = ""
    """Results are <out>/dpt_bandit_ladder_<tag>.json / .png (a variant beside the main one;
    give it its own --workdir too: a changed configuration retrains the runs it finds)."""
    tiny: bool = False
    """Seconds on CPU (the test)."""
    out: str = "results"
    """Directory of the JSON / PNG."""
    workdir: str = "runs/dpt_bandit_ladder"
    """Data, checkpoints and records of every run (git-ignored)."""
    watch: bool = True
    """Train in a watched child process (off for --tiny)."""
    overwrite: bool = False
    """Replace result files already in --out, and allow a --workdir holding other files."""


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m experiments.dpt_bandit_ladder [options]``."""
    import tyro

    from rl_ring.io import check_results, claim_run_dir, write_json

    args = tyro.cli(Args, args=sys.argv[1:] if argv is None else argv,
                    prog="python -m experiments.dpt_bandit_ladder", description=__doc__)
    try:
        if unknown := [r for r in args.rungs if r not in RUNGS]:
            raise ValueError(f"--rungs {unknown}: expected some of {', '.join(RUNGS)}")
        if args.init_workdir and not args.init_rung:
            raise ValueError("--init-workdir needs --init-rung (which of its runs to start from)")
        if args.init_rung:
            base = args.init_rung.split("-from-")[0] if args.init_workdir else args.init_rung
            if base not in RUNGS:
                raise ValueError(f"--init-rung {args.init_rung!r}: expected one of "
                                 f"{', '.join(RUNGS)}" + (", or a curriculum family of "
                                 "--init-workdir (<rung>-from-<rung>)" if args.init_workdir
                                 else ""))
            if bad := [r for r in args.rungs if r == args.init_rung
                       or RUNGS[r].arms != RUNGS[base].arms]:
                raise ValueError(f"--init-rung {args.init_rung} ({RUNGS[base].arms} "
                                 f"arms) cannot start --rungs {bad}: another rung with as many "
                                 "arms (the model's shapes follow the arm count)")
        if args.online_pulls < 0 or args.online_bandits < 1:
            raise ValueError(f"--online-pulls {args.online_pulls} / --online-bandits "
                             f"{args.online_bandits}: expected >= 0 / >= 1")
        if args.online_pulls and (bad := [r for r in args.rungs if not RUNGS[r].env]):
            raise ValueError(f"--online-pulls: rungs {bad} have no registry env to play "
                             "(online play needs one)")
        if args.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
        cfg = tiny_config() if args.tiny else LadderConfig()
        if args.steps:
            cfg = dataclasses.replace(cfg, steps=args.steps)
        if args.batch_size:
            cfg = dataclasses.replace(cfg, batch_size=args.batch_size)
        if args.window:
            cfg = dataclasses.replace(cfg, window=args.window)
        if args.tag and not args.tag.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"--tag {args.tag!r}: letters, digits, - and _ only")
        path = Path(args.out) / (f"{RESULTS}_{args.tag}" if args.tag else RESULTS)
        check_results([path.with_suffix(".json"), path.with_suffix(".png")],
                      workdir=args.workdir, overwrite=args.overwrite,
                      what="the DPT ladder's results")
        # finished elsewhere (checked before anything is written): sources only, not results
        finished = [finished_source(Path(args.init_workdir), args.init_rung, s)
                    for s in range(args.seeds)] if args.init_workdir else []
        work = claim_run_dir(args.workdir, kind="dpt_bandit_ladder", overwrite=args.overwrite)
        t0 = time.perf_counter()
        watch = args.watch and not args.tiny
        if finished:
            sources, records = finished, []
        else:
            sources = ([run_rung(cfg, args.init_rung, s, work, watch=watch)
                        for s in range(args.seeds)] if args.init_rung else [])
            records = list(sources)
        records += [run_rung(cfg, name, s, work, watch=watch,
                             source=sources[s] if sources else None)
                    for name in args.rungs for s in range(args.seeds)]
        result = {"config": dataclasses.asdict(cfg)}
        if args.online_pulls:
            for r in records:  # an --init-rung without a registry env is not played
                if RUNGS[r["name"]].env:
                    r["online"] = online_scores(cfg, r, args.online_pulls, args.online_bandits)
            result["online_baselines"] = {
                name: online_baselines(cfg, name, args.online_pulls, args.online_bandits)
                for name in dict.fromkeys(r["name"] for r in records if "online" in r)}
        families = summarize(records)
        result.update(families=families,
                      runs=[{k: v for k, v in r.items() if k != "key"} for r in records],
                      wall_s=time.perf_counter() - t0, workdir=str(work))
        path.parent.mkdir(parents=True, exist_ok=True)
        result["files"] = {"plot": plot(result, path.with_suffix(".png")).name}
        write_json(result, path.with_suffix(".json"))
    except (ValueError, OSError) as err:
        print(f"dpt_bandit_ladder: {err}", file=sys.stderr)
        return 2
    for name, f in families.items():
        n = len(f["seeds"])
        print(f"{name:14s} {f['label']:40s} ({n} seed{'s' * (n > 1)}) loss {f['nll_mean']:.3f}"
              f"{_pm(f, 'nll_std')} (SE over bandits {f['nll_sem_over_bandits']:.3f}; ln K "
              f"{f['uniform']:.3f}, floor {f['floor']:.3f}); gap closed "
              f"{f['gap_closed_mean']:.3f}{_pm(f, 'gap_closed_std')}; accuracy "
              f"{f['accuracy_mean']:.3f} (ceiling {f['ceiling']:.3f})")
        if "online_regret_mean" in f:
            print(f"{'':14s} online regret at {f['online_pulls']} pulls "
                  f"{f['online_regret_mean']:.1f}{_pm(f, 'online_regret_std')} (SE over "
                  f"bandits {f['online_regret_sem_over_bandits']:.1f})")
    for name, base in result.get("online_baselines", {}).items():
        print(f"{name:14s} online baselines: " + ", ".join(
            f"{k} {b['final_mean']:.1f}" for k, b in base.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
