"""How close the bandit models come to their training targets: the imitation floor.

AD is trained to predict Thompson sampling's next arm from the pulls before it. No model can
do better on those targets than Thompson sampling's own action distribution: at pull ``t``
its action is arm ``a`` with probability ``p_t(a) = P(a's posterior draw is the largest)``
under the Beta(1, 1)-prior posteriors of the pulls so far. So the lowest reachable training
loss is the entropy ``H(p_t)`` (averaged over pulls), and the highest reachable accuracy
(argmax prediction) is ``max_a p_t(a)``.

DPT is trained to predict the *best* arm from uniformly random pulls. Its targets' own
distribution given the pulls is the posterior probability that each arm is the best under
the family's prior (``bandit-hard``: means uniform in [0.3, 0.7), so Beta posteriors
truncated to that range): ``p*_t(a)``, the action distribution of posterior sampling that
knows the prior. Its entropy is DPT's floor, ``max_a p*_t(a)`` its ceiling.

This script estimates both by Monte Carlo on fresh histories of training bandits (Thompson
sampling's for AD, uniform pulls for DPT), per pull position, and puts next to them each
trained run's final training loss and accuracy (the mean of ``metrics.jsonl`` over the last
``--last-steps`` optimiser steps). The gap is what training has not learnt yet.

The trained runs are also scored on those fresh histories directly: each run's loss per
pull on its agent's targets, teacher-forced (the recorded arms in context, no dropout), with
its windows cut back to back. Its mean minus the floor is the run's mean KL divergence from
the targets' distribution; its argmax accuracy against the ceiling says whether it has found
the likeliest target.

With ``--sweep-run NAME`` it instead plays one finished run on the experiment's held-out
bandits at several sampling temperatures (0: the argmax), next to Thompson sampling, UCB1
and random on the same bandits: whether a sharper (or a flatter) distribution than the
model's own changes its regret.

Usage::

    python -m experiments.context_scaling_floor --workdir runs/context_scaling/bandit-hard
    python -m experiments.context_scaling_floor --workdir runs/context_scaling/bandit-hard \
        --sweep-run ad-w4096-seed0

Writes ``<out>/context_scaling_floor.json`` and ``.png`` (the sweep:
``context_scaling_temperature.json`` / ``.png``).
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = "context_scaling_floor"
RESULTS_SWEEP = "context_scaling_temperature"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

RUN_DIR = re.compile(r"^(?P<agent>[a-z]+)-w(?P<window>\d+)-seed(?P<seed>\d+)$")
BUCKETS = ((0, 256), (256, 1024), (1024, 4096))
"""Pull ranges the floor is also reported over."""


def thompson_action_probs(alpha: np.ndarray, beta: np.ndarray, samples: int,
                          rng: np.random.Generator,
                          support: tuple[float, float] | None = None) -> np.ndarray:
    """Monte Carlo estimate of Beta-Bernoulli posterior sampling's action probabilities.

    Args:
        alpha, beta: ``[B, K]`` Beta posterior parameters of ``B`` histories' ``K`` arms.
        samples: posterior draws per history.
        support: the prior's range of the means (a uniform prior on it: the posterior is the
            Beta truncated to it). None: Thompson sampling's Beta(1, 1) prior.

    Returns:
        ``[B, K]``: the fraction of draws in which each arm's sample was the largest.
    """
    from envs.learners.bandits import posterior_draws

    best = np.argmax(posterior_draws(alpha, beta, samples, rng, support), axis=-1)  # [samples, B]
    k = alpha.shape[-1]
    return np.stack([(best == a).mean(axis=0) for a in range(k)], axis=-1)


def entropy(p: np.ndarray, samples: int) -> np.ndarray:
    """Entropy (nats) of the rows of ``p`` estimated from ``samples`` draws each, with the
    Miller-Madow correction ``(nonzero bins - 1) / (2 samples)`` for the plug-in's bias."""
    safe = np.where(p > 0, p, 1.0)
    plug_in = -np.sum(p * np.log(safe), axis=-1)
    return plug_in + (np.count_nonzero(p, axis=-1) - 1) / (2.0 * samples)


FLOORS = {
    # agent: (the learner whose histories it reads, the prior of its targets' distribution)
    "ad": ("thompson", "uniform"),
    "dpt": ("random", "family"),
}
"""What each agent's floor is estimated on: AD imitates Thompson sampling (Beta(1, 1)
prior); DPT predicts the best arm from uniform pulls (the family's own prior)."""


def imitation_floor(params, means: np.ndarray, pulls: int, seed: int, *, samples: int,
                    stride: int, learner: str = "thompson",
                    prior: str = "uniform") -> dict[str, Any]:
    """The entropy and top probability of posterior sampling's action distribution along
    histories of ``learner``.

    Plays ``learner`` (:func:`envs.learners.bandits.play`) on every bandit of ``means``
    ``[B, arms]`` for ``pulls`` pulls, rebuilds the posteriors before each pull and
    estimates ``p_t`` at every ``stride``-th pull. ``prior="uniform"``: Beta(1, 1), Thompson
    sampling's own action distribution (AD's targets on Thompson histories).
    ``prior="family"``: the family's uniform prior on ``[low, high)``, the distribution of
    the best arm given the pulls (DPT's targets).

    Returns:
        ``positions`` (pull index t, 0-based), ``entropy`` and ``top_probability``: per
        position, the mean over histories.
    """
    from envs.learners.bandits import play

    if params.distribution != "bernoulli":
        raise ValueError(f"the floor is computed for Bernoulli bandits; got "
                         f"{params.distribution!r}")
    if prior not in ("uniform", "family"):
        raise ValueError(f"prior {prior!r}: expected 'uniform' or 'family'")
    support = None if prior == "uniform" else (params.low, params.high)
    out = play(params, means, learner, pulls, seed)
    arms, rewards = out["arms"], out["rewards"]
    b, k = means.shape
    rng = np.random.default_rng([seed, 17])
    positions = np.arange(0, pulls, stride)
    ent, top = np.zeros(len(positions)), np.zeros(len(positions))
    wins, pulled = np.zeros((b, k)), np.zeros((b, k))
    rows = np.arange(b)
    t_prev = 0
    for i, t in enumerate(positions):
        for s in range(t_prev, t):  # the posterior after pulls 0 .. t-1
            wins[rows, arms[:, s]] += rewards[:, s]
            pulled[rows, arms[:, s]] += 1.0
        t_prev = t
        p = thompson_action_probs(1.0 + wins, 1.0 + pulled - wins, samples, rng, support)
        ent[i] = entropy(p, samples).mean()
        top[i] = p.max(axis=-1).mean()
    return {"positions": positions.tolist(), "entropy": ent.tolist(),
            "top_probability": top.tolist()}


def model_nll(run_dir: Path, store, pulls: int, batch: int = 8) -> dict[str, np.ndarray]:
    """A trained run's loss on its agent's targets in fresh histories, per pull
    (teacher-forced, no dropout).

    The histories of ``store`` (``pulls`` steps each, stored history after history; bandits:
    one-pull episodes; grids of fixed-length episodes work alike) are cut into the run's
    windows back to back (pull ``t`` sits at index ``t mod window`` of its window, as a
    window drawn in training at that start sees it), and each window is scored whole. AD's
    target is the recorded arm; DPT's the best arm (``store.extras["optimal_actions"]``), its
    in-context dataset the history itself (grouped by ``history_id``).

    Returns:
        ``nll`` and ``correct`` (argmax equals the target), ``[histories, pulls]``.
    """
    import dataclasses

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from agents import registry
    from agents.run import load_checkpoint
    from rl_ring.data.samplers import label_array

    model, tcfg, norm, _ = load_checkpoint(run_dir, attn_impl="blockwise")
    module = registry.get(tcfg.agent)
    acfg = tcfg.agent_config
    h = store.num_steps // pulls  # pulls: steps per history (bandits: one per episode)
    if tcfg.agent == "ad":
        w, targets = acfg.window_steps, np.asarray(store.actions)

        def spec(hist, start):  # history samplers: absolute stream start
            return {"history": hist, "start": hist * pulls + start}
    elif tcfg.agent == "dpt":
        acfg = dataclasses.replace(acfg, group_key="history_id", context="window")
        w, targets = acfg.context_steps, label_array(store, acfg.label_key)

        def spec(hist, start):  # groups are the histories 0 .. h-1, start inside the group
            return {"group": hist, "start": start}
    else:
        raise ValueError(f"{run_dir}: agent {tcfg.agent!r} has no bandit floor (ad, dpt)")
    if pulls % w:
        raise ValueError(f"{run_dir}: window {w} does not divide {pulls} pulls")
    sampler = module.make_sampler(store, acfg, batch_size=batch, seed=0, norm=norm)

    graph, graph_state = nnx.split(model)

    @jax.jit
    def score(graph_state, tokens):
        m = nnx.merge(graph, graph_state)
        logits = m(tokens, deterministic=True).astype(jnp.float32)
        logp = jax.nn.log_softmax(logits, axis=-1)
        ids = tokens["target_ids"].astype(jnp.int32)
        nll = -jnp.take_along_axis(logp, ids[..., None], axis=-1)[..., 0]
        return nll, (jnp.argmax(logits, axis=-1) == ids), tokens["loss_mask"]

    windows = [(hist, s) for hist in range(h) for s in range(0, pulls, w)]
    nll, correct = np.zeros((h, pulls)), np.zeros((h, pulls), bool)
    for i in range(0, len(windows), batch):
        chunk = windows[i:i + batch]
        chunk_padded = chunk + [chunk[0]] * (batch - len(chunk))
        hist = np.asarray([c[0] for c in chunk_padded])
        start = np.asarray([c[1] for c in chunk_padded])
        tokens = {k: jnp.asarray(v) for k, v in
                  sampler.batch_of(spec(hist, start)).tokens().items()}
        n, c, mask = (np.asarray(x) for x in score(graph_state, tokens))
        ids = np.asarray(tokens["target_ids"])
        for r, (hh, t0) in enumerate(chunk):
            sel = mask[r].astype(bool)
            st = hh * pulls + t0
            if sel.sum() != w or not np.array_equal(ids[r][sel], targets[st:st + w]):
                raise AssertionError(f"{run_dir}: window {i + r} does not hold pulls "
                                     f"{t0}-{t0 + w} of history {hh}")
            nll[hh, t0:t0 + w], correct[hh, t0:t0 + w] = n[r][sel], c[r][sel]
    return {"nll": nll, "correct": correct}


def temperature_sweep(cfg, run_dir: Path, temperatures: tuple[float, ...],
                      means: np.ndarray, pulls: int) -> list[dict[str, Any]]:
    """One trained run played on the bandits ``means`` (``pulls`` in one context, as the
    experiment plays them) at each sampling temperature (0: the argmax action): cumulative
    regret, ± SE over bandits."""
    from agents.policy import eval_policy_from_checkpoint
    from experiments import context_scaling as cs

    params = cs.family(cfg.env)
    rows = []
    for tau in temperatures:
        policy = eval_policy_from_checkpoint(
            run_dir, episode_steps=cfg.episode_steps, greedy=tau == 0,
            **({} if tau == 0 else {"temperature": tau}))
        played = cs.play_policy(policy, params, means, pulls, seed=cfg.seed + 2000)
        rows.append({"temperature": tau, "greedy": tau == 0, "tasks": len(means),
                     "pulls": pulls,
                     "regret": played["final_mean"], "regret_sem": played["final_sem"],
                     "wall_s": played["wall_s"]})
        log(f"{run_dir.parent.name} at temperature {tau}: regret {played['final_mean']:.1f} "
            f"+- {played['final_sem']:.1f} ({played['wall_s']:.0f} s)")
    return rows


def run_losses(workdir: Path, last_steps: int) -> list[dict[str, Any]]:
    """Every trained run in ``workdir`` (``<agent>-w<W>-seed<S>/train/metrics.jsonl``): its
    final training loss and accuracy (means over the logs of the last ``last_steps`` steps)
    and its loss curve."""
    runs = []
    for d in sorted(Path(workdir).iterdir()):
        m = RUN_DIR.match(d.name)
        metrics = d / "train" / "metrics.jsonl"
        if not m or not metrics.exists() or not (d / "record.json").exists():  # finished
            continue
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if "loss" in r and "accuracy" in r]
        if not rows:
            continue
        last = rows[-1]["step"]
        tail = [r for r in rows if r["step"] > last - last_steps]
        runs.append({
            "agent": m["agent"], "window": int(m["window"]), "seed": int(m["seed"]),
            "steps": last, "final_loss": float(np.mean([r["loss"] for r in tail])),
            "final_accuracy": float(np.mean([r["accuracy"] for r in tail])),
            "logs_averaged": len(tail),
            "curve_steps": [r["step"] for r in rows], "curve_loss": [r["loss"] for r in rows],
        })
    return runs


def bucket_means(per_pull: np.ndarray, positions: np.ndarray) -> dict[str, float]:
    """Means of a per-position quantity over each of :data:`BUCKETS` (and ``all``)."""
    out = {"all": float(per_pull.mean())}
    for lo, hi in BUCKETS:
        sel = (positions >= lo) & (positions < hi)
        if sel.any():
            out[f"{lo}-{hi}"] = float(per_pull[sel].mean())
    return out


def summarize(floors: dict[str, dict[str, Any]], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per agent, its floor over all pulls and per bucket; per (agent, window), the mean over
    seeds of the runs' loss on the fresh histories (``nll_by_pull``, when scored) and
    training logs, and their gaps to their agent's floor. Each floor keeps its curve."""
    out: dict[str, Any] = {"floors": {}, "configs": []}
    for agent, fl in floors.items():
        pos = np.asarray(fl["positions"])
        out["floors"][agent] = {
            "source": fl["source"], "prior": fl["prior"], "pulls": fl["pulls"],
            "entropy": bucket_means(np.asarray(fl["entropy"]), pos),
            "top_probability": bucket_means(np.asarray(fl["top_probability"]), pos),
            "curve": {k: fl[k] for k in ("positions", "entropy", "top_probability")},
            "wall_s": fl["wall_s"]}
    for agent, window in sorted({(r["agent"], r["window"]) for r in runs}):
        rs = [r for r in runs if (r["agent"], r["window"]) == (agent, window)]
        loss = np.asarray([r["final_loss"] for r in rs])
        acc = np.asarray([r["final_accuracy"] for r in rs])
        c = {"agent": agent, "window": window, "seeds": [r["seed"] for r in rs],
             "steps": [r["steps"] for r in rs],
             "train_loss_mean": float(loss.mean()), "train_loss_std": float(loss.std()),
             "train_accuracy_mean": float(acc.mean()), "train_accuracy_std": float(acc.std())}
        if agent in floors and all("nll_by_pull" in r for r in rs):
            pos = np.asarray(floors[agent]["positions"])
            f_ent = out["floors"][agent]["entropy"]
            nll = np.mean([r["nll_by_pull"] for r in rs], axis=0)[pos]
            hit = np.mean([r["accuracy_by_pull"] for r in rs], axis=0)[pos]
            per_seed = [float(np.asarray(r["nll_by_pull"]).mean()) for r in rs]
            c.update({
                "nll": bucket_means(nll, pos), "nll_per_seed": per_seed,
                "nll_std": float(np.std(per_seed)),
                "accuracy": bucket_means(hit, pos),
                "nll_above_floor": {k: v - f_ent[k] for k, v in bucket_means(nll, pos).items()},
            })
        out["configs"].append(c)
    return out


FLOOR_LABELS = {  # agent: (whose distribution, the target, the histories)
    "ad": ("Thompson's own action", "Thompson's next arm", "fresh Thompson histories"),
    "dpt": ("the best arm's posterior", "the best arm", "fresh uniform pulls"),
}


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agents_ = list(result["floors"])
    fig, axes = plt.subplots(len(agents_), 2, figsize=(11, 4 * len(agents_)), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (ax1, ax2), agent in zip(axes, agents_, strict=True):
        fl = result["floors"][agent]["curve"]
        what, target, hist = FLOOR_LABELS.get(agent, ("the targets'", "the targets",
                                                      "fresh histories"))
        ax1.plot(fl["positions"], fl["entropy"], color="black", lw=2,
                 label=f"floor: {what} entropy")
        ax2.plot(fl["positions"], fl["top_probability"], color="black", lw=2,
                 label=f"ceiling: {what} top probability")
        for i, c in enumerate(result["configs"]):
            curve = result["curves"].get(f"{c['agent']}-w{c['window']}")
            if curve is None or c["agent"] != agent:
                continue
            label = f"{c['agent']} window {c['window']} ({len(c['seeds'])} seeds)"
            col = colors[i % len(colors)]
            ax1.plot(curve["x"], curve["nll"], color=col, label=label)
            ax2.plot(curve["x"], curve["accuracy"], color=col, label=label)
        ax1.set(xlabel=f"pull t in the history ({hist})", ylabel="nats per pull",
                title=f"{agent}: loss on {target}")
        ax2.set(xlabel=f"pull t in the history ({hist})", ylabel="accuracy",
                title=f"{agent}: argmax accuracy on {target}")
        ax1.legend(fontsize=7)
        ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class Args:
    """Options of the imitation-floor analysis."""

    workdir: str = "runs/context_scaling/bandit-hard"
    """The context-scaling work folder of one family (holds <agent>-w<W>-seed<S>/ runs of
    ad and dpt)."""
    env: str = "bandit-hard"
    """Bandit family of the runs (Bernoulli)."""
    histories: int = 32
    """Fresh histories on training bandits the floors are estimated on (Thompson sampling's
    for AD, uniform pulls for DPT)."""
    pulls: int = 0
    """Pulls per history (0: AD the family's configured history length, DPT its longest
    window)."""
    samples: int = 500
    """Posterior draws per history and position."""
    stride: int = 16
    """Estimate p_t at every stride-th pull."""
    sweep_run: str = ""
    """Instead of the floor: play this run of --workdir (e.g. ad-w4096-seed0) at each of
    --temperatures and write context_scaling_temperature.json / .png."""
    temperatures: tuple[float, ...] = (1.0, 0.5, 0.25, 0.0)
    """Sampling temperatures of the sweep (0: the argmax action)."""
    sweep_tasks: int = 64
    """Held-out bandits of the sweep (the first of the experiment's)."""
    sweep_pulls: int = 0
    """Pulls per bandit of the sweep (0: the experiment's evaluation length)."""
    bin: int = 64
    """Pulls per point of the saved per-pull curves (at most a 16th of the history)."""
    last_steps: int = 100
    """A run's final loss / accuracy: the mean of its logs over this many last steps."""
    seed: int = 0
    """Seed of the histories and draws."""
    out: str = "results"
    """Directory of the JSON / PNG."""
    overwrite: bool = False
    """Replace result files already in --out."""


def floor_analysis(args: Args, cfg, work: Path, path: Path) -> dict[str, Any]:
    """Each agent's floor and every finished run's loss on fresh histories; writes JSON +
    PNG."""
    from envs.learners.bandits import bandit_histories
    from experiments import context_scaling as cs
    from rl_ring.io import write_json

    runs = run_losses(work, args.last_steps)
    if not runs:
        raise ValueError(f"--workdir {work}: no finished <agent>-w<W>-seed<S> run (train/"
                         f"metrics.jsonl and record.json) in it")
    agents_ = sorted({r["agent"] for r in runs})
    if unknown := [a for a in agents_ if a not in FLOORS]:
        raise ValueError(f"--workdir {work}: runs of {unknown}; the floor knows "
                         f"{sorted(FLOORS)}")
    params = cs.family(args.env)
    tasks = cs.training_tasks(cfg)[: args.histories]
    means = params.means_of(tasks)
    t0 = time.perf_counter()
    floors, curves = {}, {}
    for agent in agents_:
        learner, prior = FLOORS[agent]
        rs = [r for r in runs if r["agent"] == agent]
        # AD: the sources' history length; DPT: its longest window (its contexts are windows
        # of uniform pulls, where the position in the stream carries no information).
        pulls = args.pulls or (cfg.history_episodes if agent == "ad"
                               else max(r["window"] for r in rs))
        t1 = time.perf_counter()
        floor = imitation_floor(params, means, pulls, args.seed, samples=args.samples,
                                stride=args.stride, learner=learner, prior=prior)
        floors[agent] = {"source": learner, "prior": prior, "pulls": pulls, **floor,
                         "wall_s": time.perf_counter() - t1}
        log(f"{agent}: floor on {pulls} pulls of {learner} histories ({prior} prior) in "
            f"{time.perf_counter() - t1:.0f} s")
        # The same histories (play() with the same bandits and seed) as an EpisodeStore.
        store = bandit_histories(args.env, params, tasks, learner, pulls, args.seed)
        for r in rs:
            scored = model_nll(work / f"{agent}-w{r['window']}-seed{r['seed']}" / "train",
                               store, pulls)
            r["nll_by_pull"] = scored["nll"].mean(axis=0).tolist()
            r["accuracy_by_pull"] = scored["correct"].mean(axis=0).tolist()
            log(f"{agent}-w{r['window']}-seed{r['seed']}: loss on fresh histories "
                f"{scored['nll'].mean():.3f}")
        step = min(args.bin, max(1, pulls // 16))
        bins = np.arange(pulls) // step
        counts = np.bincount(bins)
        for window in sorted({r["window"] for r in rs}):
            ws = [r for r in rs if r["window"] == window]
            nll = np.mean([r["nll_by_pull"] for r in ws], axis=0)
            hit = np.mean([r["accuracy_by_pull"] for r in ws], axis=0)
            curves[f"{agent}-w{window}"] = {
                name: (np.bincount(bins, y) / counts).tolist()
                for name, y in (("x", np.arange(pulls)), ("nll", nll), ("accuracy", hit))}
    summary = summarize(floors, runs)
    result = {"env": args.env, "workdir": str(work), "histories": len(tasks),
              "samples": args.samples, "stride": args.stride, "last_steps": args.last_steps,
              **summary, "curves": curves,
              "runs": [{k: v for k, v in r.items() if not k.endswith("_by_pull")}
                       for r in runs],
              "wall_s": time.perf_counter() - t0}
    path.parent.mkdir(parents=True, exist_ok=True)
    result["files"] = {"plot": plot(result, path.with_suffix(".png")).name}
    write_json(result, path.with_suffix(".json"))
    for agent, f in result["floors"].items():
        print(f"{agent} floor over pulls 0-{f['pulls']} of {f['source']} histories: entropy "
              f"{f['entropy']['all']:.3f} nats, top probability "
              f"{f['top_probability']['all']:.3f}")
    for c in result["configs"]:
        f = result["floors"][c["agent"]]
        print(f"{c['agent']} window {c['window']} ({len(c['seeds'])} seeds): loss on fresh "
              f"histories {c['nll']['all']:.3f} +- {c['nll_std']:.3f} "
              f"({c['nll_above_floor']['all']:+.3f} above the floor), accuracy "
              f"{c['accuracy']['all']:.3f} (ceiling {f['top_probability']['all']:.3f})")
    return result


def sweep_analysis(args: Args, cfg, work: Path, path: Path) -> dict[str, Any]:
    """The temperature sweep of one run next to the sources on the same bandits."""
    from experiments import context_scaling as cs
    from rl_ring.io import write_json

    if not (work / args.sweep_run / "record.json").exists():
        raise ValueError(f"--sweep-run {args.sweep_run}: no finished run of that name in "
                         f"{work}")
    for tau in args.temperatures:
        if not (np.isfinite(tau) and tau >= 0):
            raise ValueError(f"--temperatures: {tau} is not a number >= 0 (0: the argmax)")
    t0 = time.perf_counter()
    means = cs.family(args.env).means_of(cs.heldout_tasks(cfg)[: args.sweep_tasks])
    pulls = args.sweep_pulls or cfg.eval_episodes
    rows = temperature_sweep(cfg, work / args.sweep_run / "train", tuple(args.temperatures),
                             means, pulls)
    sources = {name: {"regret": b["final_mean"], "regret_sem": b["final_sem"]}
               for name, b in cs.bandit_baselines(cfg, means, pulls).items()}
    result = {"env": args.env, "workdir": str(work), "run": args.sweep_run,
              "tasks": len(means), "pulls": pulls, "rows": rows, "sources": sources,
              "wall_s": time.perf_counter() - t0}
    path.parent.mkdir(parents=True, exist_ok=True)
    result["files"] = {"plot": plot_sweep(result, path.with_suffix(".png")).name}
    write_json(result, path.with_suffix(".json"))
    for r in rows:
        print(f"temperature {r['temperature']}{' (argmax)' if r['greedy'] else ''}: regret "
              f"{r['regret']:.1f} +- {r['regret_sem']:.1f}")
    for name, b in sources.items():
        print(f"{name}: regret {b['regret']:.1f} +- {b['regret_sem']:.1f}")
    return result


def plot_sweep(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    rows = result["rows"]
    labels = [("argmax" if r["greedy"] else f"T={r['temperature']:g}") for r in rows]
    ax.bar(labels, [r["regret"] for r in rows], yerr=[r["regret_sem"] for r in rows],
           color="tab:blue", capsize=3, label=result["run"])
    styles = {"thompson": "-", "ucb": "--", "random": ":"}
    for name, b in result["sources"].items():
        ax.axhline(b["regret"], color="black", ls=styles.get(name, "-."), label=name)
    ax.set(ylabel=f"cumulative regret at {result['pulls']} pulls",
           title=f"{result['run']}: sampling temperature, {result['tasks']} held-out bandits")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m experiments.context_scaling_floor [options]``."""
    import tyro

    from experiments import context_scaling as cs
    from rl_ring.io import check_results

    args = tyro.cli(Args, args=sys.argv[1:] if argv is None else argv,
                    prog="python -m experiments.context_scaling_floor", description=__doc__)
    try:
        cfg = cs.main_config(args.env)
        if not cfg.bandit:
            raise ValueError(f"--env {args.env!r}: the floor is for the bandit families")
        work = Path(args.workdir)
        if not work.is_dir():
            raise ValueError(f"--workdir {work}: no such folder (expected a context-scaling "
                             f"work folder holding <agent>-w<W>-seed<S>/train runs)")
        path = Path(args.out) / (RESULTS_SWEEP if args.sweep_run else RESULTS)
        check_results([path.with_suffix(".json"), path.with_suffix(".png")],
                      workdir=None, overwrite=args.overwrite,
                      what="context_scaling_floor's results")
        if args.sweep_run:
            sweep_analysis(args, cfg, work, path)
        else:
            floor_analysis(args, cfg, work, path)
    except (ValueError, OSError) as err:
        print(f"context_scaling_floor: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
