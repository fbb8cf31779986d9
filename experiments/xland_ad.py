"""Algorithm Distillation on XLand-MiniGrid: 4,096-step contexts against 16,384, held-out rulesets.

    python -m experiments.xland_ad                         # main run (see XLandRun), 3 seeds
    python -m experiments.xland_ad --plan                  # `rl-ring plan` of the published AD
    python -m experiments.xland_ad --tiny --out /tmp/xl    # seconds (the test runs it)

Everything through the library, nothing downloaded:

1. **Data.** Noisy-expert learning histories (``envs.xland_expert.noisy_expert_histories``:
   the shortest-path expert, acting at random with a probability falling from 1 to 0 over
   each history) on the training rulesets of a generated ``trivial`` benchmark
   (``xland:XLand-MiniGrid-R1-9x9:trivial-n<N>``: one goal, no rules, distractors), written
   in the XLand-100B layout (``rl_ring.data.xland.XLandWriter``) under ``--workdir``.
2. **Training.** AD (``agents.ad``) on windows read straight from that file
   (``XLandHistorySampler`` through ``agents.run.xland_recipe``), one per context length
   (``--windows``, default 4,096 and 16,384 steps), ``--seeds`` seeds each, ring attention
   over 8 fake CPU devices (mesh ``seq=8``), in a watched child process that resumes from
   its checkpoint if an in-process collective stalls (see ``experiments.ad_darkroom``).
   ``--agents ad dpt`` adds DPT, its labelled in-context windows (expert actions as
   labels, one learning history each) also read straight from the file
   (``XLandDPTWindowSampler``).
3. **Evaluation** in context on the held-out rulesets (never trained on): one context
   across ``eval_episodes`` episodes per row, each row on its own ruleset, played in the
   JAX-native rollout (:func:`evaluate_in_context`; ``XLandRun.eval_backend="workers"``:
   the Python workers, DPT's fallback) -> return against in-context episode, next to the
   source's own curve on the same rulesets, the source at fixed noise levels, the expert
   (noise 0) and random (noise 1).

Outputs: ``<out>/xland_ad.json`` + ``.png``; ``--plan``: ``<out>/xland_plan.json``. Run it as
a module: it fakes 8 CPU devices before JAX starts (64 for ``--plan``).
"""

from __future__ import annotations

import sys

from rl_ring.io import device_env, run_watched, setup_cpu_devices

if __name__ == "__main__":
    setup_cpu_devices(64 if "--plan" in sys.argv else 8)

import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

RESULTS = "xland_ad"
PLAN_RESULTS = "xland_plan"
GIB = 1 << 30


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class XLandRun:
    """One AD training run and how its data is collected and it is evaluated."""

    name: str = "main"
    env: str = "xland:XLand-MiniGrid-R1-9x9:trivial-n320"
    """Env id with its benchmark: 320 generated trivial rulesets, 256 train / 64 held out."""
    train_rulesets: int = 64
    """Training rulesets used (the first of the fixed train split)."""
    histories_per_ruleset: int = 2
    history_steps: int = 16384
    """Steps of each learning history (>= the longest window)."""
    noise_start: float = 1.0
    noise_end: float = 0.0
    noise_decay: float = 0.8
    """Fraction of a history over which the random-action probability falls."""
    collect_seed: int = 0
    collect_batch: int = 32
    """Histories collected per jitted call."""
    max_steps: int = 0
    """Episode step limit (0: xminigrid's, 3 H W = 243 in a 9x9 room)."""
    agent: str = "ad"
    """"ad" (windows streamed from the file) or "dpt" (expert-action labels, in-context
    windows of one learning history, also streamed from the file)."""
    window_steps: int = 4096
    """Steps of context: AD's window, DPT's context_steps."""
    width: int = 64
    depth: int = 4
    heads: int = 4
    dropout: float = 0.1
    steps: int = 1000
    batch_size: int = 8
    lr: float = 3e-4
    warmup_steps: int = 100
    mesh: str = "seq=8"
    train_seed: int = 0
    eval_rulesets: int = 16
    """Held-out rulesets evaluated (the first of the test split); one row per ruleset."""
    eval_episodes: int = 40
    eval_seeds: int = 2
    greedy: bool = False
    eval_backend: str = "jax"
    """"jax": the JAX-native rollout (:mod:`rl_ring.eval.jax_rollout`, one jitted scan, each
    row on its own held-out ruleset); "workers": the evaluator's Python workers (the check;
    also what DPT's two-token policy falls back to)."""
    baseline_steps: int = 4096
    """Steps per history of the fixed-noise baselines."""
    noise_levels: tuple[float, ...] = (1.0, 0.5, 0.25, 0.1, 0.0)
    tiny_model: bool = False

    def replace(self, **kw) -> XLandRun:
        return dataclasses.replace(self, **kw)


def main_run() -> XLandRun:
    return XLandRun()


def tiny_run() -> XLandRun:
    """Seconds: 256-step histories of 8 rulesets, 64 / 128-step windows, a tiny model."""
    return XLandRun(
        name="tiny", env="xland:XLand-MiniGrid-R1-9x9:trivial-n10", train_rulesets=8,
        histories_per_ruleset=1, history_steps=256, window_steps=64, steps=4, batch_size=2,
        warmup_steps=1, eval_rulesets=2, eval_episodes=3, eval_seeds=1, baseline_steps=256,
        noise_levels=(1.0, 0.0), tiny_model=True, dropout=0.0, max_steps=40,
        collect_batch=8)


# ---------------------------------------------------------------------- data
def rulesets(run: XLandRun, split: str, count: int) -> list[int]:
    from envs import xland

    _, spec = xland.parse_id(run.env)
    ids = xland.task_split(spec, split)
    if count > len(ids):
        raise ValueError(f"{run.env}: asked for {count} {split} rulesets, the split has "
                         f"{len(ids)}")
    return ids[:count]


def env_kwargs(run: XLandRun) -> dict[str, int]:
    """xminigrid params the run overrides."""
    return {"max_steps": run.max_steps} if run.max_steps else {}


def histories(run: XLandRun, ids: list[int], *, steps: int, seed: int, noise=None
              ) -> dict[str, np.ndarray]:
    """Noisy-expert histories ``[len(ids), steps]`` (one per entry), in batches of
    ``run.collect_batch`` (the last padded: one compilation per history length)."""
    from envs.xland_expert import NoisyExpertSchedule, noisy_expert_histories

    sched = NoisyExpertSchedule(run.noise_start, run.noise_end, run.noise_decay) \
        if noise is None else NoisyExpertSchedule(noise, noise, 1.0)
    parts, batch = [], run.collect_batch
    for lo in range(0, len(ids), batch):
        chunk = ids[lo:lo + batch]
        padded = chunk + chunk[-1:] * (batch - len(chunk))
        out = noisy_expert_histories(run.env, padded, steps=steps, seed=seed, schedule=sched,
                                     first_index=lo, **env_kwargs(run))
        parts.append({k: v[:len(chunk)] for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def write_histories(run: XLandRun, path: Path) -> dict[str, Any]:
    """The training histories as an XLand-layout file (one group per ruleset)."""
    from envs import xland
    from rl_ring.data.xland import XLandWriter

    ids = rulesets(run, "train", run.train_rulesets)
    xid, spec = xland.parse_id(run.env)
    rows = [r for r in ids for _ in range(run.histories_per_ruleset)]
    h = histories(run, rows, steps=run.history_steps, seed=run.collect_seed)
    k = run.histories_per_ruleset
    with XLandWriter(path) as w:
        for j, rid in enumerate(ids):
            sel = slice(j * k, (j + 1) * k)
            g = w.create_group(spec, xid, rid, k, run.history_steps)
            g.append(states=xland.compressed_view(h["observations"][sel]),
                     actions=h["actions"][sel], rewards=h["rewards"][sel],
                     dones=h["dones"][sel], expert_actions=h["expert_actions"][sel])
    curve = episode_curve(h, run.eval_episodes)
    return {"rulesets": ids, "histories": len(rows), "steps": len(rows) * run.history_steps,
            "episodes": int(h["dones"].sum()), "curve": curve}


def episode_returns(h: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Each history's returns of its finished episodes, in order."""
    out = []
    for rew, done in zip(h["rewards"], h["dones"], strict=True):
        ends = np.flatnonzero(done)
        cum = np.concatenate([[0.0], np.cumsum(rew, dtype=np.float64)])
        out.append(np.diff(np.concatenate([[0.0], cum[ends + 1]])))
    return out


def episode_curve(h: dict[str, np.ndarray], episodes: int) -> list[float | None]:
    """Mean return of the k-th episode over histories, k < ``episodes``."""
    rets = episode_returns(h)
    return [float(np.mean(v)) if (v := [r[k] for r in rets if len(r) > k]) else None
            for k in range(episodes)]


def baselines(run: XLandRun) -> dict[str, Any]:
    """The source on the held-out rulesets: its learning curve (same schedule and history
    length as the training data) and its mean episode return at fixed noise levels
    (noise 0 = the expert, 1 = uniformly random actions)."""
    ids = rulesets(run, "test", run.eval_rulesets)
    src = histories(run, ids, steps=run.history_steps, seed=run.collect_seed + 1000)
    out = {"rulesets": ids, "source_curve": episode_curve(src, run.eval_episodes),
           "noise_levels": {}}
    for eps in run.noise_levels:
        h = histories(run, ids, steps=run.baseline_steps, seed=run.collect_seed + 2000,
                      noise=eps)
        rets = np.concatenate(episode_returns(h))
        out["noise_levels"][str(eps)] = {
            "noise": eps, "mean": float(rets.mean()) if rets.size else 0.0,
            "episodes": int(rets.size)}
    out["expert"] = out["noise_levels"].get("0.0", {}).get("mean")
    out["random"] = out["noise_levels"].get("1.0", {}).get("mean")
    return out


# ---------------------------------------------------------------------- training
def train_config(run: XLandRun, data: str, workdir: str):
    import agents
    from agents.base import EvalDefaults
    from rl_ring.models import ModelConfig
    from rl_ring.train import TrainConfig
    from rl_ring.train.optim import OptimConfig

    if run.tiny_model:
        model = ModelConfig.tiny().replace(max_timestep=1000)
    else:
        model = ModelConfig(width=run.width, depth=run.depth, num_heads=run.heads,
                            activation="gelu", dropout=run.dropout, max_timestep=1000)
    evaluation = EvalDefaults(greedy=run.greedy, slide_steps=0)
    if run.agent == "ad":
        agent_cfg = agents.get("ad").Config(window_steps=run.window_steps, model=model,
                                            evaluation=evaluation)
    elif run.agent == "dpt":
        # The query of every step is labelled with the expert's action (the file's
        # expert_actions); the in-context data is the window of one learning history before
        # it, as an agent acting online builds it. agents.run.train streams these windows
        # from the file (XLandDPTWindowSampler), like AD's: no EpisodeStore in memory.
        agent_cfg = agents.get("dpt").Config(
            context_steps=run.window_steps, context="window", group_key="history_id",
            order_key="episode_in_history", label_key="expert_actions", model=model,
            evaluation=evaluation)
    else:
        raise ValueError(f"XLandRun.agent must be 'ad' or 'dpt', got {run.agent!r}")
    return TrainConfig(
        agent=run.agent, data=data, env=run.env, workdir=workdir, steps=run.steps,
        batch_size=run.batch_size, mesh=run.mesh, seed=run.train_seed, agent_config=agent_cfg,
        optim=OptimConfig(lr=run.lr, warmup_steps=run.warmup_steps),
        log_every=max(1, min(10, run.steps // 20)), ckpt_every=min(100, run.steps),
        keep_checkpoints=2, progress=False, tensorboard=False)


def train_watched(run: XLandRun, data: str, workdir: str, *, in_process: bool = False,
                  stall_s: float = 600.0, restarts: int = 3) -> dict[str, Any]:
    """Trains (a child process on 8 fake devices, restarted from its last checkpoint if it
    stops making progress; see ``rl_ring.io.run_watched`` for why), or in
    this process with ``in_process``. Returns the metrics and steady-state tokens/s."""

    from rl_ring.train.metrics import read_metrics

    def result(attempt: int) -> dict[str, Any]:
        rows = read_metrics(workdir)
        steady = [r["tokens_per_s"] for r in rows[1:]]
        return {"history": [{k: r[k] for k in ("step", "loss", "accuracy", "tokens_per_s")
                             if k in r} for r in rows],
                "tokens_per_s": float(np.median(steady)) if steady else 0.0,
                "compile_s": rows[0]["wall_time"] if rows else 0.0, "restarts": attempt}

    if in_process:
        from agents.run import train

        train(train_config(run, data, workdir))
        return result(0)
    job = Path(workdir).with_suffix(".job.json")
    job.write_text(json.dumps({"run": dataclasses.asdict(run), "data": data,
                               "workdir": workdir}))
    return result(run_watched(
        [sys.executable, "-m", "experiments.xland_ad", "--worker", str(job)],
        env={**device_env(8), "JAX_PLATFORMS": "cpu"}, name=run.name,
        progress=Path(workdir) / "metrics.jsonl", stall_s=stall_s, restarts=restarts, log=log))


def _worker(job_path: str) -> int:
    from agents.run import train

    job = json.loads(Path(job_path).read_text())
    raw = dict(job["run"])
    raw["noise_levels"] = tuple(raw["noise_levels"])
    train(train_config(XLandRun(**raw), job["data"], job["workdir"]))
    return 0


# ---------------------------------------------------------------------- evaluation
class OneHotView:
    """The XLand adapter's observation (``[V*V*2]`` tile, colour) encoded as the training
    file's one-hot cells (``rl_ring.data.xland.encode_states``), so that the policy sees
    the features it was trained on."""

    def __new__(cls, env):
        import gymnasium as gym

        from rl_ring.data import xland as xd

        class _Wrapped(gym.ObservationWrapper):
            def __init__(self, inner):
                super().__init__(inner)
                n = xd.obs_dim("onehot")
                self.observation_space = gym.spaces.Box(0.0, 1.0, (n,), np.float32)

            def observation(self, obs):
                cells = np.asarray(obs).reshape(-1, 2).astype(np.int64)
                states = (cells[:, 0] * xd.NUM_COLORS + cells[:, 1]).reshape(xd.VIEW, xd.VIEW)
                return xd.encode_states(states.astype(np.uint8), "onehot")

        return _Wrapped(env)


def onehot_env(env_id: str, **kwargs):
    """``envs.make(env_id, **kwargs)`` seen through :class:`OneHotView` (picklable with
    ``functools.partial``)."""
    from envs.registry import make

    return OneHotView(make(env_id, **kwargs))


def onehot_table() -> np.ndarray:
    """``[cells, features]`` float32: row ``c`` is cell ``c``'s (``tile * NUM_COLORS +
    colour``) one-hot features, as ``rl_ring.data.xland.encode_states`` encodes it."""
    from rl_ring.data import xland as xd

    cells = xd.NUM_TILES * xd.NUM_COLORS
    grid = np.repeat(np.arange(cells, dtype=np.uint8), xd.VIEW * xd.VIEW)
    enc = xd.encode_states(grid.reshape(cells, xd.VIEW, xd.VIEW), "onehot")
    return enc[:, :xd.obs_dim("onehot") // (xd.VIEW * xd.VIEW)]


def jax_env(run: XLandRun):
    """``(env_reset(key_seed, ruleset), env_step)``: :func:`onehot_env`'s env (XLandEnv seen
    through :class:`OneHotView`) as the pure, unbatched functions of
    :mod:`rl_ring.eval.jax_rollout`, the row task being its ruleset index. ``key_seed`` is
    the PRNG key seed XLandEnv draws at ``reset(seed=...)`` (:func:`reset_key_seeds`)."""
    import jax
    import jax.numpy as jnp

    from envs import xland

    reset_fn, step_fn = xland.xland_functional(run.env, **env_kwargs(run))
    table = jnp.asarray(onehot_table())

    def obs(ts):
        return table[xland.compressed_view(ts.observation).reshape(-1)].reshape(-1)

    def env_reset(key_seed, ruleset):
        ts = reset_fn(jax.random.key(key_seed), jnp.asarray(ruleset, jnp.int32))
        return ts, obs(ts)

    def env_step(ts, action):
        ts = step_fn(ts, jnp.asarray(action, jnp.int32))
        last = ts.last()
        terminated = last & (ts.discount == 0)
        return ts, obs(ts), ts.reward, terminated, last & ~terminated

    return env_reset, env_step


def reset_key_seeds(episode_seeds: np.ndarray) -> np.ndarray:
    """int32 key seed of each episode seed: what ``XLandEnv.reset(seed=s)`` draws from its
    generator (Gymnasium's seeding of ``s``, then ``integers(2**31)``) and keys xminigrid's
    reset with, so the JAX path's rows start the workers' episodes."""
    from gymnasium.utils import seeding

    flat = [int(seeding.np_random(int(s))[0].integers(2**31)) for s in np.ravel(episode_seeds)]
    return np.asarray(flat, np.int32).reshape(np.shape(episode_seeds))


def jax_policy(policy):
    """``(init, step)`` of ``agents.policy.functional_policy`` for a checkpoint's cached
    evaluation policy, or ``(None, why)`` where the JAX rollout cannot run it (DPT's two
    tokens per step, a policy that empties its context between trials)."""
    from agents.policy import CachedPolicy, functional_policy

    if not isinstance(policy, CachedPolicy) or not policy.trial_context:
        return None, f"{type(policy).__name__} without a context across trials"
    try:
        return functional_policy(policy.model, policy.layout, policy.spec,
                                 context_steps=policy.capacity // policy.k,
                                 slide_steps=policy.slide // policy.k,
                                 greedy=policy.greedy, temperature=policy.temperature), None
    except ValueError as err:
        return None, str(err)


JAX_EVAL_CHUNK = 1024
"""Steps per compiled call of the JAX evaluation (it stops once every row is done)."""


def jax_evaluator(run: XLandRun, policy_fns, *, envs: int, trials: int):
    """``play(seed, rulesets) -> SeedResult``: evaluation seed ``seed`` of ``envs`` rows in
    the JAX-native rollout, row ``i`` on ruleset ``rulesets[i]`` (the rollout's row tasks)
    for ``trials`` episodes in one context, with the evaluator's episode and policy seeds
    (``run_seed``'s). Compiled once, for any seeds and rulesets; played in compiled calls
    of ``JAX_EVAL_CHUNK`` steps until every row is done."""
    import jax

    from envs import xland
    from rl_ring.eval.jax_rollout import make_rollout_steps, rollout_seeds, seed_result

    _, params = xland.env_params(run.env, **env_kwargs(run))
    total = trials * int(params.max_steps)  # every episode ends by the env's limit
    chunk = min(total, JAX_EVAL_CHUNK)
    env_reset, env_step = jax_env(run)
    start, advance = make_rollout_steps(env_reset, env_step, *policy_fns, num_envs=envs,
                                        num_steps=chunk, trials=trials)

    def play(seed: int, rulesets: list[int]):
        ep_seeds, pol_seeds = rollout_seeds(seed, envs, trials)
        t0 = time.perf_counter()
        state = start(reset_key_seeds(ep_seeds), pol_seeds, np.asarray(rulesets, np.int32))
        for _ in range(-(-total // chunk)):
            state = advance(state)
            if not bool(state.active.any()):
                break
        out = jax.block_until_ready(state.out)
        return seed_result(out, seed=seed, episode_seeds=ep_seeds,
                           wall_s=time.perf_counter() - t0, tasks=[int(r) for r in rulesets])

    return play


def evaluate_jax(cfg, run: XLandRun, policy_fns, tasks: list[int], *, policy_name: str
                 ) -> dict[str, Any]:
    """``rl_ring.eval.evaluate``'s seeds, rows (``assign_tasks``: row ``i`` on its own
    ruleset), episode seeds and report (``cfg.out/report.json`` + ``returns.png``) through
    :func:`jax_evaluator` (one compilation for every seed)."""
    from rl_ring.eval.env_spec import assign_tasks
    from rl_ring.eval.report import build_report, plot_report, validate_report
    from rl_ring.io import check_output_dir, write_json

    check_output_dir(cfg.out, overwrite=cfg.overwrite, what="an evaluation report")
    play = jax_evaluator(run, policy_fns, envs=cfg.envs, trials=cfg.trials)
    results = [play(cfg.first_seed + s, assign_tasks(tasks, s, cfg.envs))
               for s in range(cfg.seeds)]
    config = {k: v for k, v in dataclasses.asdict(cfg).items()
              if k not in ("progress", "overwrite")}
    config.update(env_id=cfg.env, policy=policy_name, backend="jax")
    report = build_report(results, config=config, num_envs=cfg.envs, trials=cfg.trials,
                          score_name=cfg.score_name or cfg.env)
    report["files"]["plot"] = plot_report(report, Path(cfg.out) / "returns.png",
                                          x_label=cfg.x_label).name
    validate_report(report)
    write_json(report, Path(cfg.out) / "report.json")
    return report


def evaluate_in_context(run: XLandRun, workdir: str, out: str) -> dict[str, Any]:
    """In-context evaluation of a trained agent on the held-out rulesets: one row per
    ruleset, one context across ``run.eval_episodes`` episodes, ``run.eval_seeds`` seeds.
    ``run.eval_backend``: "jax" plays them in the JAX-native rollout (:func:`evaluate_jax`;
    a policy it cannot run, DPT's, falls back to the workers, logged), "workers" through the
    evaluator's Python workers. Both play the same episodes for the same seeds (greedy
    actions; sampled ones draw from different generators).

    Returns:
        ``per_episode`` mean return per in-context episode, ``per_seed`` curves, ``wall_s``,
        ``backend`` ("jax" or "workers": the one that ran).
    """
    from agents.policy import eval_policy_from_checkpoint
    from envs import xland
    from rl_ring.eval import EvalConfig, evaluate

    if run.eval_backend not in ("jax", "workers"):
        raise ValueError(f"XLandRun.eval_backend must be 'jax' or 'workers', got "
                         f"{run.eval_backend!r}")
    ids = rulesets(run, "test", run.eval_rulesets)
    _, params = xland.env_params(run.env, **env_kwargs(run))
    episode = int(params.max_steps)
    # A full context drops one episode's worth of steps (a quarter of a short context).
    policy = eval_policy_from_checkpoint(workdir, episode_steps=episode,
                                         slide_steps=min(episode, run.window_steps // 4))
    cfg = EvalConfig(env=run.env, out=out, trials=run.eval_episodes, envs=len(ids),
                     seeds=run.eval_seeds, task_split="test", progress=False,
                     x_label="in-context episode", overwrite=True)  # our own work dir
    t0 = time.perf_counter()
    fns, why = jax_policy(policy) if run.eval_backend == "jax" else (None, None)
    if why:
        log(f"{run.name}: the JAX rollout cannot run this policy ({why}); evaluating "
            "through the Python workers")
    if fns is not None:
        report = evaluate_jax(cfg, run, fns, ids, policy_name=f"checkpoint:{workdir}")
    else:
        report = evaluate(cfg, make_env=functools.partial(onehot_env, run.env,
                                                          **env_kwargs(run)),
                          tasks=ids, policy=policy)
    per_trial = report["summary"]["return"]["per_trial"]
    seeds = sorted({e["seed"] for e in report["episodes"]})
    per_seed = []
    for s in seeds:
        curve = np.full(run.eval_episodes, np.nan)
        for k in range(run.eval_episodes):
            v = [e["return"] for e in report["episodes"]
                 if e["seed"] == s and e["trial"] == k and e["return"] is not None]
            curve[k] = np.mean(v) if v else np.nan
        per_seed.append([None if np.isnan(x) else float(x) for x in curve])
    return {"per_episode": per_trial["mean"], "per_seed": per_seed,
            "wall_s": time.perf_counter() - t0, "backend": "jax" if fns is not None else "workers"}


# ---------------------------------------------------------------------- one run
EVAL_FIELDS = frozenset({"eval_rulesets", "eval_episodes", "eval_seeds", "greedy",
                         "eval_backend", "baseline_steps", "noise_levels"})
"""XLandRun fields that change only the evaluation (a run trained before is evaluated again)."""


def same_training(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether two run configs (``asdict``, as JSON) train the same checkpoint: equal outside
    :data:`EVAL_FIELDS`; a field an older record lacks counts as equal when the new config
    holds its default (the field did not exist, so the old run used that behaviour)."""
    defaults = json.loads(json.dumps(dataclasses.asdict(XLandRun())))
    for key in (set(old) | set(new)) - EVAL_FIELDS:
        if key not in new:
            return False
        if old.get(key, defaults.get(key)) != new[key]:
            return False
    return True


def run_one(run: XLandRun, data: Path, workdir: Path, *, in_process: bool) -> dict[str, Any]:
    """Train -> evaluate; the run's record (kept in its directory and reused)."""
    from rl_ring.io import write_json

    rdir = workdir / run.name
    done = rdir / "record.json"
    config = json.loads(json.dumps(dataclasses.asdict(run)))
    record = json.loads(done.read_text()) if done.exists() else None
    if record is not None and record["config"] == config:
        log(f"{run.name}: finished before, reusing {done}")
        return record
    if record is not None and same_training(record["config"], config):
        # Only how it is evaluated changed: keep the trained checkpoint, evaluate again.
        log(f"{run.name}: trained before with this configuration, evaluating again")
        trained, train_s = record["train"], record["train_s"]
        shutil.rmtree(rdir / "eval", ignore_errors=True)
        done.unlink()
    else:
        if rdir.exists():
            shutil.rmtree(rdir)
        rdir.mkdir(parents=True)
        t0 = time.perf_counter()
        trained = train_watched(run, str(data), str(rdir / "train"), in_process=in_process)
        train_s = time.perf_counter() - t0
        log(f"{run.name}: {run.steps} steps of {run.window_steps}-step windows in "
            f"{train_s:.0f} s ({trained['tokens_per_s']:.0f} tokens/s)")
    ev = evaluate_in_context(run, str(rdir / "train"), str(rdir / "eval"))
    record = {"name": run.name, "config": config, "agent": run.agent,
              "window_steps": run.window_steps,
              "train_seed": run.train_seed, "train_s": train_s, "train": trained,
              "eval": ev}
    write_json(record, done)
    from experiments.xland_ad_report import last_half

    log(f"{run.name}: held-out return, last half of {run.eval_episodes} episodes: "
        f"{last_half(ev['per_episode'])} (eval {ev['wall_s']:.0f} s)")
    return record


# ---------------------------------------------------------------------- drivers
@dataclass(frozen=True)
class Args:
    """Options of the XLand-MiniGrid Algorithm Distillation experiment."""

    windows: tuple[int, ...] = (4096, 16384)
    """Context lengths (steps per training window) compared."""
    agents: tuple[str, ...] = ("ad",)
    """Agents trained: "ad", and "dpt" (both stream their windows from the file)."""
    seeds: int = 3
    """Training seeds per context length."""
    steps: int = 0
    """Override the optimiser steps (0: as configured)."""
    train_rulesets: int = 0
    """Override the training rulesets (0: as configured)."""
    history_steps: int = 0
    """Override the steps per learning history (0: as configured, >= the longest window)."""
    eval_episodes: int = 0
    """Override the in-context episodes per evaluation row (0: as configured)."""
    eval_rulesets: int = 0
    """Override the held-out rulesets evaluated (0: as configured)."""
    width: int = 0
    """Override the model width (0: as configured)."""
    depth: int = 0
    """Override the model depth (0: as configured)."""
    batch_size: int = 0
    """Override the training batch (sequences per step; 0: as configured)."""
    tiny: bool = False
    """Seconds on CPU: a tiny model and dataset (the test runs it; windows 64 and 128)."""
    plan: bool = False
    """Write `rl-ring plan` numbers of the published AD configuration instead."""
    plan_compile: bool = True
    """--plan: compile each step (XLA's memory analysis) where it fits, besides the
    analytic attention memory."""
    out: str = "results"
    workdir: str = "runs/xland_ad"
    in_process: bool = False
    """Train in this process instead of a watched child process (the tiny variant does)."""
    overwrite: bool = False
    worker: str = ""
    """Internal: run one training job (a JSON file) in this process."""


def base_run(args: Args) -> XLandRun:
    run = tiny_run() if args.tiny else main_run()
    changes = {k: getattr(args, k) for k in ("steps", "train_rulesets", "history_steps",
                                             "eval_episodes", "eval_rulesets", "width", "depth",
                                             "batch_size")
               if getattr(args, k)}
    run = run.replace(**changes)
    windows = (64, 128) if args.tiny and args.windows == Args.windows else args.windows
    if max(windows) > run.history_steps:
        raise ValueError(f"--windows {max(windows)} is longer than a learning history "
                         f"({run.history_steps} steps); raise --history-steps")
    return run


def run_main(args: Args, workdir: Path) -> dict[str, Any]:
    from experiments import xland_ad_report as report
    from rl_ring.io import write_json

    base = base_run(args)
    windows = (64, 128) if args.tiny and args.windows == Args.windows else args.windows
    t_start = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data" / f"histories-{_data_key(base)}.hdf5"
    if not data.exists():
        data.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        info = write_histories(base, data)
        info["collect_s"] = time.perf_counter() - t0
        write_json(info, data.with_suffix(".json"))
        log(f"collected {info['histories']} histories ({info['steps']} steps, "
            f"{info['episodes']} episodes) in {info['collect_s']:.1f} s -> {data}")
    info = json.loads(data.with_suffix(".json").read_text())
    base_info = baselines(base)
    records = []
    for agent in args.agents:
        for w in windows:
            for s in range(args.seeds):
                name = f"w{w}-seed{s}" if agent == "ad" else f"{agent}-w{w}-seed{s}"
                run = base.replace(name=name, agent=agent, window_steps=w, train_seed=s)
                records.append(run_one(run, data, workdir,
                                       in_process=args.in_process or args.tiny))
    summary = report.summarize(base, records, base_info, info)
    summary["wall_s"] = time.perf_counter() - t_start
    summary["command"] = "python -m experiments.xland_ad " + " ".join(sys.argv[1:])
    out = Path(args.out)
    summary["files"] = {"plot": report.plot(summary, out / f"{RESULTS}.png").name}
    write_json(summary, out / f"{RESULTS}.json")
    for line in report.table(summary):
        print(line)
    return summary


def _data_key(run: XLandRun) -> str:
    import hashlib

    key = {k: getattr(run, k) for k in ("env", "train_rulesets", "histories_per_ruleset",
                                        "history_steps", "noise_start", "noise_end",
                                        "noise_decay", "collect_seed", "max_steps")}
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


# ---------------------------------------------------------------------- plan
PLAN_STEPS = (4096, 32768, 131072, 1 << 20)
PLAN_DEVICES = (8, 64)
PLAN_SINGLE_EXTRA = (262144, 524288)
"""One-device rows between 128K and 1M steps: where one 80 GiB GPU stops fitting."""
GPU_BYTES = 80 * GIB


def published_model():
    """The published XLand AD model: 8 layers, 8 heads, hidden 512 (2,048 MLP), one token
    per step; observations as this library's 625 one-hot features (the published model
    embeds each of the 25 cells' tile and colour in 64 dimensions: the input projection is
    a rounding error next to the transformer)."""
    from rl_ring.data.xland import NUM_ACTIONS, obs_dim
    from rl_ring.models import ModelConfig

    return ModelConfig(width=512, depth=8, num_heads=8, activation="gelu", dropout=0.0,
                       max_timestep=1000, obs_dim=obs_dim("onehot"), act_dim=NUM_ACTIONS,
                       discrete_actions=True)


def run_plan(args: Args) -> dict[str, Any]:
    """Per-device memory of the published AD configuration (batch 1 sequence) at 4K-1M
    steps per sequence: ring attention over 8 and 64 devices (mesh ``seq=n``) and one
    device (blockwise attention), from ``rl_ring.train.plan``: the analytic attention
    memory of every strategy and, with ``plan_compile``, XLA's memory analysis of the
    compiled step for the shapes that compile here in reasonable time."""
    import jax

    from agents import base as agent_base
    from agents.ad import ADConfig, make_layout
    from rl_ring.io import write_json
    from rl_ring.sharding import parse_mesh_spec
    from rl_ring.train.plan import StepShape, human_bytes, plan_step, shape_attention_memory

    spec = agent_base.DataSpec(obs_dim=625, act_dim=6, discrete_actions=True)
    model = published_model()
    layout = make_layout(ADConfig(), spec)
    model = agent_base.model_config(model, spec, layout)
    rows: list[dict[str, Any]] = []
    out = Path(args.out) / f"{PLAN_RESULTS}.json"

    def summary() -> dict[str, Any]:
        one = [r for r in rows if r["devices"] == 1 and "peak_bytes" in r]
        fits = [r["steps"] for r in one if r["fits_80gib"]]
        stops = [r["steps"] for r in one if not r["fits_80gib"]]
        limit = None
        if len(one) >= 2:  # peak is affine in the steps: the line through the two longest
            a, b = sorted(one, key=lambda r: r["steps"])[-2:]
            slope = (b["peak_bytes"] - a["peak_bytes"]) / (b["steps"] - a["steps"])
            limit = int(a["steps"] + (GPU_BYTES - a["peak_bytes"]) / slope) if slope > 0 else None
        return {"model": {"depth": 8, "heads": 8, "width": 512, "embedding": 64,
                          "obs_dim": model.obs_dim, "batch_sequences": 1},
                "rows": rows, "gpu_bytes": GPU_BYTES,
                "single_device_fits_up_to_steps": max(fits) if fits else None,
                "single_device_first_not_fitting_steps": min(stops) if stops else None,
                "single_device_limit_steps_estimate": limit,
                "command": "python -m experiments.xland_ad --plan"}

    grid = [(t, n) for t in PLAN_STEPS for n in (1, *PLAN_DEVICES)]
    grid += [(t, 1) for t in PLAN_SINGLE_EXTRA]
    for steps, n in sorted(grid):
        impl = "blockwise" if n == 1 else "ring"
        shape = StepShape(name=f"xland-ad-{steps}-{n}", agent="ad",
                          model=model.replace(attn_impl=impl), batch_size=1,
                          steps_per_sequence=steps, tokens_per_step=1, mesh=f"seq={n}",
                          description="published XLand AD")
        attn = shape_attention_memory(shape, parse_mesh_spec(f"seq={n}"))
        row = {"steps": steps, "devices": n, "mesh": f"seq={n}", "attention": impl,
               "attention_fwd_bwd_bytes_per_layer": attn[impl]["fwd_bwd"],
               "attention_all_strategies": {k: v["fwd_bwd"] for k, v in attn.items()}}
        if args.plan_compile and n <= len(jax.devices()):
            t0 = time.perf_counter()
            rep = plan_step(shape)
            row.update({"compiled": True, "peak_bytes": rep.peak_bytes,
                        "params_bytes": rep.params_bytes,
                        "opt_state_bytes": rep.opt_state_bytes,
                        "temp_bytes": rep.temp_bytes, "num_params": rep.num_params,
                        "compile_s": rep.compile_s})
            log(f"plan {steps:>8} steps on {n:>2} devices: peak "
                f"{human_bytes(rep.peak_bytes)} per device "
                f"({time.perf_counter() - t0:.0f} s)")
        row["fits_80gib"] = row["peak_bytes"] <= GPU_BYTES if "peak_bytes" in row else None
        rows.append(row)
        write_json(summary(), out)  # after every row: a long plan keeps what it measured
    return summary()


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m experiments.xland_ad [options]``."""
    import tyro

    args = tyro.cli(Args, args=sys.argv[1:] if argv is None else argv,
                    prog="python -m experiments.xland_ad", description=__doc__)
    if args.worker:
        return _worker(args.worker)
    try:
        from rl_ring.io import check_results, claim_run_dir

        if args.plan:
            check_results([Path(args.out) / f"{PLAN_RESULTS}.json"], workdir=None,
                          overwrite=args.overwrite, what="xland_ad's plan")
            run_plan(args)
            return 0
        name = Path(args.out) / RESULTS
        check_results([name.with_suffix(".json"), name.with_suffix(".png")],
                      workdir=args.workdir, overwrite=args.overwrite, what="xland_ad's results")
        claim_run_dir(args.workdir, kind="xland_ad", overwrite=args.overwrite)
        run_main(args, Path(args.workdir) / ("tiny" if args.tiny else "main"))
    except (ValueError, OSError) as err:
        print(f"xland_ad: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
