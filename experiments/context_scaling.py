"""Context that pays: in-context regret against context length on hard bandits.

    python -m experiments.context_scaling                     # bandit-hard, 3 training seeds
    python -m experiments.context_scaling --env bandit-gauss  # the Gaussian family
    python -m experiments.context_scaling --tiny --out /tmp/cs --workdir /tmp/cs_runs

Each configuration (agent x context window) and training seed, all through the library:
learning histories of the sources (Thompson sampling by default, UCB1 on request) on
training bandits (:func:`envs.learners.bandits.bandit_histories`, 4,096 pulls each) ->
Algorithm Distillation trained on windows of 256, 1,024 and 4,096 pulls (``agents.run.train``;
windows of ``ring_from`` pulls and more on mesh ``seq=8``, i.e. ring attention over 8 fake
CPU devices, shorter ones data-parallel on ``data=8``) -> the checkpoint played for 4,096
pulls on held-out bandits through the KV-cached policy
(``agents.policy.eval_policy_from_checkpoint``; windows shorter than the evaluation slide a
quarter window at a time) -> expected cumulative regret
against pulls, next to Thompson sampling, UCB1 and a random policy on the same bandits.

Also measured: each configuration's per-device memory of the compiled training step for
dense attention (1 device), blockwise (1 device) and ring (8 devices)
(``rl_ring.train.plan.plan_step``), train wall time and tokens/s, and the time per decoded
token at the longest context. Outputs: ``<out>/context_scaling[_<env>].json`` + ``.png``.
Checkpoints stay under ``--workdir`` (git-ignored ``runs/``), each one re-playable alone with
``rl-ring eval --checkpoint <workdir>/<env>/<agent>-w<W>-seed<S>/train --env <env>
--trials 4096 --envs 200``; finished runs are skipped when the command runs again.

Agents: :func:`default_agents` lists AD, and DPT as soon as ``agents.dpt`` imports (its
entries in :data:`AGENT_PLANS` build its data and options). Run it as a module: it fakes 8
CPU devices before JAX starts.
"""

from __future__ import annotations

from rl_ring.io import device_env, setup_cpu_devices

if __name__ == "__main__":
    setup_cpu_devices(8)  # see rl_ring.io.device_flags for why these flags

import dataclasses  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Literal  # noqa: E402

import numpy as np  # noqa: E402

RESULTS = "context_scaling"
BANDIT_ENVS = ("bandit-hard", "bandit-gauss")
BASELINES = ("thompson", "ucb", "random")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class ScalingConfig:
    """One context-scaling experiment on a bandit family (every window, agent and seed)."""

    env: str = "bandit-hard"
    """Bandit family (registry id)."""
    windows: tuple[int, ...] = (256, 1024, 4096)
    """Training context windows in pulls (= tokens: one token per one-pull episode)."""
    ring_from: int = 4096
    """Windows of at least this many pulls train with ring attention on mesh ``seq=8``;
    shorter ones data-parallel on mesh ``data=8`` (whole windows per device, the model's own
    attention). Measured on 2 busy cores: a 1-device mesh runs on one core only (330
    tokens/s at 1,024 pulls, against 600-850 for the 4,096 window on the ring)."""
    learners: tuple[str, ...] = ("thompson",)
    """Sources of the AD learning histories ("thompson", "ucb"), histories split evenly."""
    histories: int = 1000
    """Learning histories, each on a training bandit (history h on task h of a fixed shuffle)."""
    pulls: int = 4096
    """Pulls per learning history."""
    width: int = 64
    """Transformer width."""
    depth: int = 4
    """Transformer layers."""
    heads: int = 4
    """Attention heads."""
    dropout: float = 0.1
    """Dropout on embeddings and residual branches."""
    steps: int = 1000
    """Optimiser steps of every configuration."""
    batch_size: int = 16
    """Windows per batch."""
    lr: float = 1e-3
    """Peak learning rate (AdamW, linear warmup, cosine decay)."""
    warmup_steps: int = 100
    """Warmup steps."""
    eval_bandits: int = 200
    """Held-out bandits played (the first of a fixed shuffle of the test split)."""
    eval_pulls: int = 4096
    """Pulls per held-out bandit, all in one context (shorter windows slide)."""
    slide_fraction: float = 0.25
    """Fraction of the window that slides out of a full context at once (the KV cache is
    refilled at each slide; 0.25 keeps 3/4 to all of the window in context)."""
    greedy: bool = False
    """Act with the argmax arm instead of sampling from the predicted distribution."""
    memory_batch: int = 16
    """Batch of the training step compiled for the memory table."""
    memory_windows: tuple[int, ...] = ()
    """Windows whose training step is compiled for the memory table (empty: all)."""
    seed: int = 0
    """Seed of the data collection and the held-out bandits' reward streams."""

    def replace(self, **changes) -> ScalingConfig:
        return dataclasses.replace(self, **changes)

    def mesh(self, window: int) -> str:
        # A batch that does not split over 8 devices rides the ring too.
        ring = window >= self.ring_from or self.batch_size % 8
        return "seq=8" if ring else "data=8"


def main_config(env: str = "bandit-hard") -> ScalingConfig:
    """The full experiment (see docs/reproductions.md, "Context scaling")."""
    return ScalingConfig(env=env)


def tiny_config(env: str = "bandit-hard") -> ScalingConfig:
    """Seconds on CPU (the test): two short windows (the longer one on the ring), a tiny
    model, few histories and held-out bandits."""
    return ScalingConfig(env=env, windows=(16, 64), ring_from=64, histories=32, pulls=64,
                         width=32, depth=1, heads=2, dropout=0.0, steps=24, batch_size=8,
                         lr=3e-3, warmup_steps=5, eval_bandits=8, eval_pulls=80,
                         memory_batch=2, memory_windows=(64,))


# ---------------------------------------------------------------------- agents
@dataclass(frozen=True)
class AgentPlan:
    """How one agent enters the experiment: its training data and its options."""

    data: Callable[[ScalingConfig, list[int]], Any]
    """``data(cfg, tasks) -> EpisodeStore`` on the training bandits."""
    config: Callable[[ScalingConfig, int], Any]
    """``config(cfg, window) -> the agent's Config``."""


def _model(cfg: ScalingConfig):
    from rl_ring.models import ModelConfig

    return ModelConfig(width=cfg.width, depth=cfg.depth, num_heads=cfg.heads,
                       activation="gelu", dropout=cfg.dropout, max_timestep=16)


def ad_data(cfg: ScalingConfig, tasks: list[int]):
    """Learning histories of the sources, ``cfg.histories`` split evenly between them."""
    from envs.learners.bandits import bandit_histories
    from rl_ring.data import EpisodeStore

    params = family(cfg.env)
    stores = []
    per = -(-cfg.histories // len(cfg.learners))
    for i, learner in enumerate(cfg.learners):
        rows = [tasks[h % len(tasks)] for h in range(i * per, min(cfg.histories, (i + 1) * per))]
        stores.append(bandit_histories(cfg.env, params, rows, learner, cfg.pulls,
                                       seed=cfg.seed + 101 * i))
    if len(stores) == 1:
        return stores[0]
    return _concat(stores, EpisodeStore)


def _concat(stores, cls):
    """Stores of one-pull histories back to back, history ids made distinct."""
    offset, hist = 0, []
    for s in stores:
        hist.append(s.episode_extras["history_id"] + offset)
        offset += int(s.episode_extras["history_id"].max()) + 1
    n = sum(s.num_steps for s in stores)
    cat = {k: np.concatenate([getattr(s, k) for s in stores]) for k in (
        "observations", "actions", "rewards", "terminals", "timeouts")}
    meta = dict(stores[0].metadata, policy="+".join(s.metadata["policy"] for s in stores))
    return cls(**cat, episode_starts=np.arange(n + 1, dtype=np.int64),
               extras={"optimal_actions": np.concatenate(
                   [s.extras["optimal_actions"] for s in stores])},
               episode_extras={"history_id": np.concatenate(hist), **{k: np.concatenate(
                   [s.episode_extras[k] for s in stores]) for k in (
                   "task_id", "episode_in_history", "policy_noise")}}, metadata=meta)


def ad_config(cfg: ScalingConfig, window: int):
    import agents
    from agents.base import EvalDefaults

    return agents.get("ad").Config(
        window_steps=window, align="step", model=_model(cfg),
        evaluation=EvalDefaults(greedy=cfg.greedy,
                                slide_steps=max(1, int(window * cfg.slide_fraction))))


def _dpt_plan() -> AgentPlan:
    """DPT (``agents.dpt``, issue 10 section 1): uniform in-context datasets with the best-arm
    labels; its Config takes the same model and a context of ``window`` transitions. The
    module's own ``context_scaling_plan(cfg, window)`` wins when it defines one."""
    import agents.dpt as dpt

    if hasattr(dpt, "context_scaling_plan"):
        return dpt.context_scaling_plan()

    def data(cfg: ScalingConfig, tasks: list[int]):
        from envs.learners.bandits import bandit_histories

        return bandit_histories(cfg.env, family(cfg.env), [tasks[h % len(tasks)] for h in
                                                           range(cfg.histories)],
                                "random", cfg.pulls, seed=cfg.seed + 7)

    def config(cfg: ScalingConfig, window: int):
        from agents.base import EvalDefaults

        return dpt.Config(model=_model(cfg), context_steps=window, evaluation=EvalDefaults(
            greedy=cfg.greedy, slide_steps=max(1, int(window * cfg.slide_fraction))))

    return AgentPlan(data, config)


AGENT_PLANS: dict[str, Callable[[], AgentPlan]] = {
    "ad": lambda: AgentPlan(ad_data, ad_config),
    "dpt": _dpt_plan,
}


def default_agents() -> list[str]:
    """AD, and DPT when ``agents.dpt`` imports."""
    names = ["ad"]
    try:
        import agents.dpt  # noqa: F401
    except ImportError:
        pass
    else:
        names.append("dpt")
    return names


# ---------------------------------------------------------------------- pieces
def family(env: str):
    """The :class:`envs.bandit.BanditParams` of a bandit registry id."""
    from envs.bandit import BanditParams
    from envs.registry import IN_CONTEXT

    if env not in BANDIT_ENVS:
        raise ValueError(f"--env {env!r}: the context-scaling experiment runs on "
                         f"{', '.join(BANDIT_ENVS)}")
    return BanditParams(**IN_CONTEXT[env].kwargs)


def training_tasks(cfg: ScalingConfig) -> list[int]:
    """History h's bandit is entry h of a fixed shuffle of the training split."""
    from envs.registry import task_split

    tasks = task_split(cfg.env, "train")
    n = min(cfg.histories, len(tasks))
    return np.random.default_rng(4321).permutation(tasks)[:n].tolist()


def heldout_tasks(cfg: ScalingConfig) -> list[int]:
    from envs.registry import task_subset

    return task_subset(cfg.env, "test", cfg.eval_bandits)


def curve_points(pulls: int, points: int = 128) -> np.ndarray:
    """The pull counts (1-based) at which cumulative-regret curves are stored."""
    return np.unique(np.linspace(1, pulls, min(points, pulls)).round().astype(np.int64))


def regret_summary(regret: np.ndarray) -> dict[str, Any]:
    """Cumulative expected regret ``[B, P]`` per pull -> final mean / sem and the curve."""
    cum = np.cumsum(regret, axis=1)
    at = curve_points(regret.shape[1])
    final = cum[:, -1]
    per_pull = regret.mean(axis=0)
    p = regret.shape[1]
    return {"final_mean": float(final.mean()),
            "final_sem": float(final.std(ddof=1) / np.sqrt(len(final))) if len(final) > 1
            else 0.0,
            "final_per_bandit": final.tolist(), "curve_pulls": at.tolist(),
            "curve": cum[:, at - 1].mean(axis=0).tolist(),
            "per_pull_regret": {f"{a}-{b}": float(per_pull[a:b].mean())
                                for a, b in ((0, p // 4), (p // 4, p // 2), (p // 2, p))}}


def baselines(cfg: ScalingConfig) -> dict[str, Any]:
    """Thompson sampling, UCB1 and random arms on the held-out bandits."""
    from envs.learners.bandits import play

    params = family(cfg.env)
    means = params.means_of(heldout_tasks(cfg))
    return {name: regret_summary(play(params, means, name, cfg.eval_pulls,
                                      seed=cfg.seed + 1000 + i)["regret"])
            for i, name in enumerate(BASELINES)}


def play_policy(policy, params, means: np.ndarray, pulls: int, seed: int) -> dict[str, Any]:
    """A batched ``Policy`` plays ``pulls`` one-pull episodes on each bandit of ``means``
    (one row each, one context across all pulls); expected regret and decode timings.

    The rows run the ``rl_ring.eval`` protocol (reset, begin_trial, act, observe) without
    its per-episode report, which would hold ``rows x pulls`` episodes."""
    n = len(means)
    rows = np.arange(n)
    env_rng = np.random.default_rng([seed, 13])
    policy.reset(n, seeds=[seed * 100_003 + i for i in range(n)])
    mask, done = np.ones(n, bool), np.ones(n, bool)
    obs = np.zeros((n, 1), np.float32)
    regret = np.zeros((n, pulls))
    calls = getattr(policy, "calls", None)
    decode_s: list[tuple[int, float]] = []
    t_start = time.perf_counter()
    for t in range(pulls):
        policy.begin_trial(mask)
        before = dict(calls) if calls is not None else None
        t0 = time.perf_counter()
        arms = np.asarray(policy.act(obs, mask)).astype(np.int64)
        dt = time.perf_counter() - t0
        if calls is not None and calls.get("prefill") == before.get("prefill"):
            decode_s.append((t, dt))
        rewards = params.rewards(means[rows, arms], env_rng).astype(np.float32)
        policy.observe(rewards, done, ~done, mask)
        regret[:, t] = means.max(axis=1) - means[rows, arms]
    wall = time.perf_counter() - t_start
    out = regret_summary(regret)
    out["wall_s"] = wall
    late = [d for s, d in decode_s if s >= int(0.9 * pulls)] or [d for _, d in decode_s]
    if late:
        step = float(np.median(late))
        out["decode"] = {"rows": n, "context_tokens_at_end": pulls, "s_per_step": step,
                         "s_per_token": step / n, "measured_over_pulls": [int(0.9 * pulls),
                                                                         pulls]}
    return out


def run_name(agent: str, window: int, seed: int) -> str:
    return f"{agent}-w{window}-seed{seed}"


def train_config(cfg: ScalingConfig, agent: str, window: int, seed: int, data: str,
                 workdir: str):
    from rl_ring.train import TrainConfig
    from rl_ring.train.optim import OptimConfig

    mesh = cfg.mesh(window)
    return TrainConfig(
        agent=agent, data=data, env=cfg.env, workdir=workdir, steps=cfg.steps,
        batch_size=cfg.batch_size, mesh=mesh, devices=8, seed=seed,
        agent_config=AGENT_PLANS[agent]().config(cfg, window),
        optim=OptimConfig(lr=cfg.lr, warmup_steps=cfg.warmup_steps),
        log_every=max(1, min(10, cfg.steps // 20)), ckpt_every=min(100, cfg.steps),
        keep_checkpoints=2, progress=False, tensorboard=False)


def train(tcfg, *, watch: bool, stall_s: float = 300.0, restarts: int = 3) -> dict[str, Any]:
    """Trains ``tcfg``; in a child process restarted from its last checkpoint when it stalls
    (``watch``, as ``experiments.ad_darkroom.train_watched`` does and for the same reason:
    XLA:CPU collectives of 8 fake devices on a busy 2-core machine) or in this process."""
    from rl_ring.train.config import to_dict
    from rl_ring.train.metrics import read_metrics

    t0 = time.perf_counter()
    attempt = 0
    if watch:
        import subprocess

        job = Path(tcfg.workdir).with_suffix(".job.json")
        job.write_text(json.dumps({"config": to_dict(tcfg)}))
        env = {**device_env(8), "JAX_PLATFORMS": "cpu"}
        metrics = Path(tcfg.workdir) / "metrics.jsonl"
        cmd = [sys.executable, "-m", "experiments.context_scaling", "--worker", str(job)]
        for attempt in range(restarts + 1):  # noqa: B007
            child = subprocess.Popen(cmd, env=env)
            seen, last = -1, time.monotonic()
            while child.poll() is None:
                time.sleep(2.0)
                size = metrics.stat().st_size if metrics.exists() else 0
                if size != seen:
                    seen, last = size, time.monotonic()
                elif time.monotonic() - last > stall_s:
                    log(f"{tcfg.workdir}: no progress for {stall_s:.0f} s; restarting")
                    child.kill()
                    child.wait()
                    break
            if child.returncode == 0:
                break
            if child.returncode not in (-9, None):
                raise RuntimeError(f"{tcfg.workdir}: training exited with {child.returncode}")
        else:
            raise RuntimeError(f"{tcfg.workdir}: training stalled {restarts + 1} times")
    else:
        from agents.run import train as train_agent

        train_agent(tcfg)
    rows = read_metrics(tcfg.workdir)
    steady = [r["tokens_per_s"] for r in rows[1:] if "tokens_per_s" in r]
    return {"wall_s": time.perf_counter() - t0, "restarts": attempt,
            "tokens_per_s": float(np.median(steady)) if steady else 0.0,
            "compile_s": float(rows[0]["wall_time"]) if rows else 0.0,
            "final_loss": float(rows[-1]["loss"]) if rows else float("nan"),
            "history": [{k: r[k] for k in ("step", "loss", "accuracy", "tokens_per_s")
                         if k in r} for r in rows]}


def _worker(job_path: str) -> int:
    from agents.run import config_from_meta
    from agents.run import train as train_agent

    job = json.loads(Path(job_path).read_text())
    train_agent(config_from_meta({"config": job["config"]}))
    return 0


def step_memory(cfg: ScalingConfig, agent: str, window: int) -> dict[str, Any]:
    """Per-device bytes of the compiled training step: dense (reference attention, 1 device),
    blockwise (1 device), ring (8 devices, contiguous layout)."""
    from agents import registry
    from agents.base import DataSpec
    from rl_ring.train.plan import StepShape, plan_step

    module = registry.get(agent)
    spec = DataSpec(obs_dim=1, act_dim=family(cfg.env).arms, discrete_actions=True)
    agent_cfg = AGENT_PLANS[agent]().config(cfg, window)
    model = module.resolved_model(agent_cfg, spec)
    k = module.make_layout(agent_cfg, spec).tokens_per_step
    out = {}
    for label, impl, mesh in (("dense", "reference", "seq=1"), ("blockwise", "blockwise", "seq=1"),
                              ("ring", "ring", "seq=8")):
        shape = StepShape(name=f"{agent}-w{window}-{label}", agent=agent,
                          model=model.replace(attn_impl=impl), batch_size=cfg.memory_batch,
                          steps_per_sequence=window, tokens_per_step=k, mesh=mesh)
        rep = plan_step(shape)
        out[label] = {"mesh": rep.mesh, "devices": rep.devices, "peak_bytes": rep.peak_bytes,
                      "temp_bytes": rep.temp_bytes, "argument_bytes": rep.argument_bytes,
                      "compile_s": rep.compile_s}
    return {"batch_size": cfg.memory_batch, "tokens_per_sequence": window * k, **out}


# ---------------------------------------------------------------------- one run
def run_one(cfg: ScalingConfig, agent: str, window: int, seed: int, workdir: Path, data: str,
            *, watch: bool) -> dict[str, Any]:
    """Train -> play the held-out bandits; the record (also saved in the run's directory)."""
    from agents.policy import eval_policy_from_checkpoint
    from rl_ring.io import write_json

    name = run_name(agent, window, seed)
    rdir = workdir / name
    done = rdir / "record.json"
    key = {"config": dataclasses.asdict(cfg), "agent": agent, "window": window, "seed": seed}
    if done.exists():
        record = json.loads(done.read_text())
        if record["key"] == json.loads(json.dumps(key)):
            log(f"{name}: finished before, reusing {done}")
            return record
        shutil.rmtree(rdir)
    elif rdir.exists():
        shutil.rmtree(rdir)  # interrupted half way: start afresh
    rdir.mkdir(parents=True)
    tcfg = train_config(cfg, agent, window, seed, data, str(rdir / "train"))
    trained = train(tcfg, watch=watch)
    log(f"{name}: {cfg.steps} steps on mesh {tcfg.mesh} in {trained['wall_s']:.0f} s "
        f"({trained['tokens_per_s']:.0f} tokens/s), final loss {trained['final_loss']:.3f}")
    params = family(cfg.env)
    means = params.means_of(heldout_tasks(cfg))
    policy = eval_policy_from_checkpoint(tcfg.workdir, episode_steps=1)
    played = play_policy(policy, params, means, cfg.eval_pulls, seed=cfg.seed + 2000)
    record = {"key": key, "name": name, "agent": agent, "window": window, "seed": seed,
              "tokens_per_sequence": window * policy.k, "mesh": tcfg.mesh, "train": trained,
              "eval": played}
    write_json(record, done)
    log(f"{name}: cumulative regret at {cfg.eval_pulls} pulls {played['final_mean']:.1f} "
        f"+- {played['final_sem']:.1f} (eval {played['wall_s']:.0f} s)")
    return record


# ---------------------------------------------------------------------- the experiment
def summarize(cfg: ScalingConfig, records: list[dict[str, Any]], base: dict[str, Any],
              memory: dict[str, Any]) -> dict[str, Any]:
    """The results JSON: per configuration, the headline, the baselines and the targets."""
    configs, headline = [], {}
    for agent in dict.fromkeys(r["agent"] for r in records):
        xs, means, stds = [], [], []
        for w in cfg.windows:
            runs = [r for r in records if r["agent"] == agent and r["window"] == w]
            if not runs:
                continue
            finals = np.asarray([r["eval"]["final_mean"] for r in runs])
            curves = np.asarray([r["eval"]["curve"] for r in runs])
            entry = {
                "agent": agent, "window": w, "mesh": runs[0]["mesh"],
                "tokens_per_sequence": runs[0].get("tokens_per_sequence", w),
                "attention": "ring" if runs[0]["mesh"] == "seq=8" else "per device",
                "final_regret": {"mean": float(finals.mean()), "std": float(finals.std()),
                                 "per_seed": finals.tolist(),
                                 "sem_over_bandits": [r["eval"]["final_sem"] for r in runs]},
                "curve_pulls": runs[0]["eval"]["curve_pulls"],
                "curve_mean": curves.mean(axis=0).tolist(),
                "curve_std": curves.std(axis=0).tolist(),
                "train_wall_s": [r["train"]["wall_s"] for r in runs],
                "tokens_per_s": [r["train"]["tokens_per_s"] for r in runs],
                "final_loss": [r["train"]["final_loss"] for r in runs],
                "eval_wall_s": [r["eval"]["wall_s"] for r in runs],
                "memory": memory.get(f"{agent}-w{w}"),
                "decode": runs[0]["eval"].get("decode"),
                "seeds": [r["seed"] for r in runs],
            }
            configs.append(entry)
            xs.append(w)
            means.append(entry["final_regret"]["mean"])
            stds.append(entry["final_regret"]["std"])
        headline[agent] = {"windows": xs, "final_regret_mean": means, "final_regret_std": stds}
    longest = max(cfg.windows)
    decode = next((c["decode"] for c in configs if c["window"] == longest and c["decode"]),
                  None)
    return {"env": cfg.env, "bandit": family(cfg.env).to_dict(),
            "config": dataclasses.asdict(cfg), "eval_pulls": cfg.eval_pulls,
            "eval_bandits": len(heldout_tasks(cfg)), "configs": configs, "headline": headline,
            "baselines": {k: {kk: vv for kk, vv in v.items() if kk != "final_per_bandit"}
                          for k, v in base.items()},
            "decode_longest": decode, "targets": targets(cfg, records, base)}


def targets(cfg: ScalingConfig, records: list[dict[str, Any]],
            base: dict[str, Any]) -> dict[str, Any]:
    """Issue 10's bandit targets: the longest window within 1.25x Thompson sampling and below
    UCB1; the shortest window worse by more than 3 standard errors (over held-out bandits,
    pooled over training seeds)."""
    ts, ucb = base["thompson"]["final_mean"], base["ucb"]["final_mean"]
    out = {}
    lo, hi = min(cfg.windows), max(cfg.windows)
    for agent in dict.fromkeys(r["agent"] for r in records):
        def pooled(w, agent=agent):
            finals = [np.asarray(r["eval"]["final_per_bandit"]) for r in records
                      if r["agent"] == agent and r["window"] == w]
            return np.concatenate(finals) if finals else np.zeros(0)

        long, short = pooled(hi), pooled(lo)
        if not len(long) or not len(short):
            continue
        diff = float(short.mean() - long.mean())
        se = float(np.sqrt(short.var(ddof=1) / len(short) + long.var(ddof=1) / len(long)))
        out[agent] = {
            "longest_window": hi, "shortest_window": lo,
            "longest_over_thompson": float(long.mean() / ts) if ts else None,
            "within_1.25x_thompson": bool(long.mean() <= 1.25 * ts),
            "below_ucb": bool(long.mean() < ucb),
            "shortest_minus_longest": diff, "difference_se": se,
            "shortest_worse_by_3se": bool(diff > 3 * se),
        }
    return out


def run(cfg: ScalingConfig, agents_: list[str], seeds: int, workdir: Path, out: Path, *,
        watch: bool, name: str) -> dict[str, Any]:
    """Every agent x window x seed, the baselines and the memory table; writes the results."""
    from rl_ring.io import write_json

    t_start = time.perf_counter()
    tasks = training_tasks(cfg)
    records, memory = [], {}
    for agent in agents_:
        if agent not in AGENT_PLANS:
            raise ValueError(f"agent {agent!r}: known agents are {', '.join(AGENT_PLANS)}")
        plan = AGENT_PLANS[agent]()
        data_dir = workdir / f"data-{agent}"
        if not (data_dir / "store.json").exists():
            t0 = time.perf_counter()
            store = plan.data(cfg, tasks)
            store.save(data_dir, overwrite=True)
            log(f"{agent}: {store.num_episodes} pulls in {cfg.histories} histories on "
                f"{len(tasks)} training bandits ({time.perf_counter() - t0:.1f} s)")
        for w in cfg.windows:
            if w in (cfg.memory_windows or cfg.windows):
                memory[f"{agent}-w{w}"] = step_memory(cfg, agent, w)
            for s in range(seeds):
                records.append(run_one(cfg, agent, w, s, workdir, str(data_dir), watch=watch))
    base = baselines(cfg)
    summary = summarize(cfg, records, base, memory)
    summary["wall_s"] = time.perf_counter() - t_start
    summary["workdir"] = str(workdir)
    summary["files"] = {"plot": plot(summary, out / f"{name}.png").name}
    write_json(summary, out / f"{name}.json")
    for line in table(summary):
        print(line)
    return summary


# ---------------------------------------------------------------------- report
def table(summary: dict[str, Any]) -> list[str]:
    """A markdown table of the headline and the memory per configuration."""
    mib = 2**20
    lines = [f"context scaling on {summary['env']}: cumulative regret at "
             f"{summary['eval_pulls']} pulls, {summary['eval_bandits']} held-out bandits",
             "| agent | window | regret (mean +- std over seeds) | dense 1 dev | blockwise 1 dev "
             "| ring 8 dev | tokens/s |", "|---|---|---|---|---|---|---|"]
    for c in summary["configs"]:
        m = c["memory"] or {}
        mem = " | ".join(f"{m[k]['peak_bytes'] / mib:.1f} MiB" if k in m else "-"
                         for k in ("dense", "blockwise", "ring"))
        lines.append(f"| {c['agent']} | {c['window']} | {c['final_regret']['mean']:.1f} +- "
                     f"{c['final_regret']['std']:.1f} | {mem} | "
                     f"{np.mean(c['tokens_per_s']):.0f} |")
    for k, v in summary["baselines"].items():
        lines.append(f"| {k} | - | {v['final_mean']:.1f} +- {v['final_sem']:.1f} (sem) "
                     "| | | | |")
    return lines


def plot(summary: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rl_ring.io import save_figure

    fig, (ax, hx) = plt.subplots(1, 2, figsize=(11, 4))
    for c in summary["configs"]:
        y, s = np.asarray(c["curve_mean"]), np.asarray(c["curve_std"])
        line, = ax.plot(c["curve_pulls"], y, label=f"{c['agent'].upper()} window {c['window']}")
        ax.fill_between(c["curve_pulls"], y - s, y + s, color=line.get_color(), alpha=0.2)
    styles = {"thompson": ("k", "-"), "ucb": ("k", "--"), "random": ("grey", ":")}
    for k, v in summary["baselines"].items():
        colour, ls = styles.get(k, ("k", "-."))
        ax.plot(v["curve_pulls"], v["curve"], color=colour, ls=ls,
                label={"thompson": "Thompson sampling", "ucb": "UCB1"}.get(k, k))
        hx.axhline(v["final_mean"], color=colour, ls=ls, label=k)
    ax.set_xlabel("pulls (one-pull episodes in context)")
    ax.set_ylabel("cumulative regret")
    ax.set_title(f"{summary['env']}: {summary['eval_bandits']} held-out bandits")
    ax.legend(fontsize=7)
    for agent, h in summary["headline"].items():
        hx.errorbar(h["windows"], h["final_regret_mean"], yerr=h["final_regret_std"],
                    marker="o", capsize=3, label=f"{agent.upper()} (mean +- std over seeds)")
    hx.set_xscale("log", base=2)
    hx.set_xlabel("training context window (pulls)")
    hx.set_ylabel(f"cumulative regret at {summary['eval_pulls']} pulls")
    hx.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------- CLI
@dataclass(frozen=True)
class Args:
    """Options of the context-scaling experiment."""

    env: Literal["bandit-hard", "bandit-gauss"] = "bandit-hard"
    """Bandit family."""
    seeds: int = 3
    """Training seeds per configuration."""
    agents: tuple[str, ...] = field(default_factory=tuple)
    """Agents to train (default: AD, and DPT when agents.dpt imports)."""
    steps: int = 0
    """Override the optimiser steps (0: as configured)."""
    batch_size: int = 0
    """Override the windows per batch (0: as configured)."""
    windows: tuple[int, ...] = ()
    """Override the context windows in pulls (default: 256 1024 4096)."""
    tiny: bool = False
    """Seconds on CPU: tiny model, two short windows, few bandits (the test runs it)."""
    out: str = "results"
    """Directory of the JSON / PNG results."""
    workdir: str = "runs/context_scaling"
    """Where datasets, checkpoints and records of every run are kept (git-ignored)."""
    watch: bool = True
    """Train in a child process restarted when it stalls (off for --tiny: in this process)."""
    worker: str = ""
    """Internal: run one training job (a JSON file) in this process."""
    overwrite: bool = False
    """Replace result files already in --out, and allow a --workdir holding other files."""


def results_name(env: str) -> str:
    return RESULTS + ("" if env == "bandit-hard" else f"_{env.replace('-', '_')}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m experiments.context_scaling [options]``."""
    import tyro

    args = tyro.cli(Args, args=sys.argv[1:] if argv is None else argv,
                    prog="python -m experiments.context_scaling", description=__doc__)
    if args.worker:
        return _worker(args.worker)
    cfg = tiny_config(args.env) if args.tiny else main_config(args.env)
    if args.steps:
        cfg = cfg.replace(steps=args.steps)
    if args.batch_size:
        cfg = cfg.replace(batch_size=args.batch_size)
    if args.windows:
        cfg = cfg.replace(windows=tuple(args.windows))
    name = results_name(args.env)
    workdir = Path(args.workdir) / (f"tiny-{args.env}" if args.tiny else args.env)
    try:
        from rl_ring.io import check_results, claim_run_dir

        path = Path(args.out) / name
        check_results([path.with_suffix(".json"), path.with_suffix(".png")],
                      workdir=args.workdir, overwrite=args.overwrite,
                      what="context_scaling's results")
        claim_run_dir(args.workdir, kind="context_scaling", overwrite=args.overwrite)
        workdir.mkdir(parents=True, exist_ok=True)
        agents_ = list(args.agents) or default_agents()
        run(cfg, agents_, args.seeds, workdir, Path(args.out),
            watch=args.watch and not args.tiny, name=name)
    except (ValueError, OSError) as err:
        print(f"context_scaling: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
