"""``rl-ring collect``: datasets of chosen quality, collected locally, seeded and reproducible.

    rl-ring collect dmc:cartpole-swingup --policy scripted --noise 0 0.3 1 --episodes 30 \\
        --format exorl --out data/cartpole_scripted
    rl-ring collect darkroom --policy qlearning --tasks train --episodes-per-history 100 \\
        --out data/darkroom_histories
    rl-ring collect dmc:cartpole-swingup --policy sac --steps 100000 --format exorl --out data/sac

Policies: ``random`` (any env), ``scripted`` (controllers and grid oracles of
:mod:`envs.scripted`, with ``--noise`` levels), ``qlearning`` / ``ucb`` / ``thompson``
(learning histories on in-context tasks, :mod:`envs.learners.history`), ``sac`` (the whole
replay of an online SAC run, :mod:`envs.learners.sac`).

Reproducibility: episode ``i`` of seed ``S`` resets with ``episode_seed(S, i)`` and draws its
policy noise from ``episode_seed(S, i, tag=1)``, so the same command gives byte-identical
arrays.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated, Literal

import gymnasium as gym
import numpy as np
import tyro
from tqdm import tqdm

from envs.learners.grid import NoiseSchedule
from envs.learners.history import LEARNERS, collect_histories, learning_curve
from envs.learners.ppo_xland import PPOConfig
from envs.learners.qlearning import QLearningConfig
from envs.learners.sac import SACConfig, train_sac
from envs.recording import episode_seed, run_episode
from envs.registry import IN_CONTEXT, base_id, make, space_dict, task_split, task_subset
from envs.scripted import ORACLES, make_policy, scripted_envs
from rl_ring.data import EpisodeStore
from rl_ring.data.formats import check_dataset_target
from rl_ring.io import jsonable

POLICIES = ("random", "scripted", *LEARNERS, "sac", "noisy-expert", "ppo")
GRID_LEARNERS = ("noisy_oracle", "posterior", "optimistic")
FORMATS = ("store", "exorl", "d4rl", "minari", "xland")


@dataclass(frozen=True)
class CollectConfig:
    """Options of ``rl-ring collect``."""

    env: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="ENV")]
    """Env id (see envs.list_envs()), e.g. dmc:cartpole-swingup, gym:Hopper-v5, darkroom."""
    out: Path
    """Output: a directory (store, exorl buffer, minari dataset) or a .hdf5 file (d4rl)."""
    policy: Literal["random", "scripted", "qlearning", "ucb", "thompson", "noisy_oracle",
                    "posterior", "optimistic", "sac", "noisy-expert", "ppo"] = "random"
    """Behaviour policy: random, scripted, a source learner's learning histories (qlearning,
    ucb, thompson; grid learners noisy_oracle, posterior, optimistic), SAC's replay, the
    XLand shortest-path expert with decaying noise (noisy-expert, xland: ids) or PPO's
    learning histories (ppo, xland: ids; --ppo.* options)."""
    episodes: int | None = None
    """Episodes to collect (random, scripted); for learners, the total over all histories."""
    format: Literal["store", "exorl", "d4rl", "minari", "xland"] = "store"
    """Output format: EpisodeStore directory, ExoRL buffer, D4RL HDF5, Minari dataset or the
    XLand-100B HDF5 layout (xland, noisy-expert and ppo histories only)."""
    seed: int = 0
    """Seed of everything random in the run."""
    noise: tuple[float, ...] = (0.0,)
    """Scripted policy noise levels; episode i uses noise[i % len(noise)]."""
    tasks: Literal["train", "test", "all"] = "train"
    """Task split of an in-context env (tasks are used in turn)."""
    num_tasks: int = 0
    """Use only the first k tasks of the split after a fixed shuffle (0: all), the subset the
    experiments' HistorySpec.num_tasks names (learners and random)."""
    learner_noise: tuple[float, float, float] | None = None
    """Grid learners (noisy_oracle, posterior, optimistic): random-action probability START
    END DECAY_FRACTION over each history (default: the learner's own schedule)."""
    q_eps_decay: float = QLearningConfig.eps_decay_fraction
    """Q-learning: fraction of a history over which epsilon decays from 1 to 0.05."""
    episodes_per_history: int = 100
    """Episodes of each learning history (qlearning, ucb, thompson)."""
    histories: int | None = None
    """Number of learning histories (default: episodes / episodes_per_history, else one per
    task of the split)."""
    steps: int = 100_000
    """Env steps of a SAC run (rounded up to whole episodes)."""
    sac_hidden: int = SACConfig.hidden
    """Hidden width of the SAC networks."""
    eval_every: int = 0
    """SAC: evaluate the deterministic policy every this many env steps (0: never)."""
    dataset_id: str | None = None
    """Minari dataset id (default: the --out directory's name, with -v0 added if unversioned)."""
    benchmark: Path | None = None
    """xland: ids: a benchmark file you have (xminigrid's bz2 format; it is unpickled, so name
    only files you trust). Default: the benchmark the id names (trivial)."""
    rulesets: str | None = None
    """noisy-expert, ppo: the XLand rulesets, "train" / "test" / "all" or ids "0,5,9" /
    "0-99" (default: --tasks with --num-tasks)."""
    history_steps: int = 4096
    """noisy-expert, ppo: env steps of each history (episodes reset automatically); for ppo
    a multiple of --ppo.rollout-steps. ppo's --histories is the number of PPO runs per
    ruleset, each recording --ppo.num-envs histories."""
    ppo: PPOConfig = PPOConfig()
    """ppo: hyperparameters (envs.learners.ppo_xland.PPOConfig)."""
    quiet: bool = False
    """No progress bar."""
    overwrite: bool = False
    """Allow --out to hold data already: replace only the files a dataset of --format consists
    of (an existing dataset's), keep every other file. Without it a non-empty --out is refused."""


# ---------------------------------------------------------------------- collectors
def _tasks_for(env_id: str, split: str) -> list[int] | None:
    return task_split(env_id, split) if env_id in IN_CONTEXT or is_in_context(env_id) else None


def is_in_context(env_id: str) -> bool:
    """Whether ``env_id`` takes a task (also the XLand families, built on the fly)."""
    try:
        task_split(env_id, "all")
    except ValueError:
        return False
    return True


def _rulesets(cfg: CollectConfig, env_id: str) -> list[int]:
    """``--rulesets``: a split name, or ids ``"0,5,9"`` / ``"0-99"``."""
    spec = cfg.rulesets
    if spec is None:
        return task_subset(env_id, cfg.tasks, cfg.num_tasks)
    if spec in ("train", "test", "all"):
        return task_subset(env_id, spec, cfg.num_tasks)
    ids: list[int] = []
    try:
        for part in spec.split(","):
            lo, sep, hi = part.strip().partition("-")
            ids.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise ValueError(f"--rulesets {spec!r}: expected train, test, all, or ids like "
                         "'0,5,9' or '0-99'") from None
    return ids


def collect_xland_noisy_expert(cfg: CollectConfig, env_id: str) -> EpisodeStore:
    """``--policy noisy-expert`` on an ``xland:`` id (:mod:`envs.xland_expert`)."""
    from envs.xland_expert import NoisyExpertSchedule, collect_noisy_expert

    if not env_id.startswith("xland:"):
        raise ValueError(f"--policy noisy-expert is for xland: ids, got {env_id!r}")
    schedule = NoisyExpertSchedule()
    if cfg.learner_noise is not None:
        start, end, decay = cfg.learner_noise
        schedule = NoisyExpertSchedule(start=start, end=end, decay_fraction=decay)
    rulesets = _rulesets(cfg, env_id)
    per = cfg.histories or 1
    bar = tqdm(total=len(rulesets) * per, unit="history", disable=cfg.quiet)
    store = collect_noisy_expert(env_id, rulesets, histories_per_ruleset=per,
                                 steps=cfg.history_steps, seed=cfg.seed, schedule=schedule,
                                 progress=bar.update)
    bar.close()
    store.metadata["source_format"] = "rl_ring.collect"
    return store


def collect_xland_ppo(cfg: CollectConfig, env_id: str) -> EpisodeStore:
    """``--policy ppo`` on an ``xland:`` id (:mod:`envs.learners.ppo_xland`)."""
    from envs.learners.ppo_xland import collect_ppo

    if not env_id.startswith("xland:"):
        raise ValueError(f"--policy ppo is for xland: ids, got {env_id!r}")
    cfg.ppo.updates_for(cfg.history_steps)  # a bad length fails before any work
    rulesets = _rulesets(cfg, env_id)
    per = cfg.histories or 1
    bar = tqdm(total=len(rulesets) * per * cfg.ppo.num_envs * cfg.history_steps, unit="step",
               disable=cfg.quiet, desc="ppo")
    store = collect_ppo(env_id, rulesets, steps=cfg.history_steps, runs_per_ruleset=per,
                        config=cfg.ppo, seed=cfg.seed, progress=bar.update)
    bar.close()
    store.metadata["source_format"] = "rl_ring.collect"
    return store


def _episodes(
    env_id: str,
    episodes: int,
    seed: int,
    act_for: Callable,
    *,
    tasks: list[int] | None,
    progress=None,
) -> tuple[list[dict[str, np.ndarray]], list[int | None]]:
    """Runs ``episodes`` episodes; ``act_for(i, task)`` gives the policy of episode ``i``."""
    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    env = make(env_id)
    out, used_tasks = [], []
    try:
        for i in range(episodes):
            task = None if tasks is None else tasks[i % len(tasks)]
            options = None if task is None else {"task": task}
            act = act_for(i, task, env)
            out.append(run_episode(env, act, seed=episode_seed(seed, i), options=options))
            used_tasks.append(task)
            if progress is not None:
                progress(1)
    finally:
        env.close()
    return out, used_tasks


def _base_metadata(env_id: str, policy: str, seed: int) -> dict:
    env = make(env_id)
    try:
        meta = {
            "env_id": env_id,
            "policy": policy,
            "seed": seed,
            "source_format": "rl_ring.collect",
            "action_space": space_dict(env.action_space),
            "observation_space": space_dict(env.observation_space),
        }
        layout = getattr(env.unwrapped, "observation_layout", None)
        if layout:
            meta["observation_layout"] = {k: list(v) for k, v in layout.items()}
        return meta
    finally:
        env.close()


def collect_random(
    env_id: str, episodes: int, *, seed: int = 0, tasks: str = "train", num_tasks: int = 0,
    progress=None,
) -> EpisodeStore:
    """Uniformly random actions; in-context envs cycle through the tasks of ``tasks`` (the
    first ``num_tasks`` of them, as :func:`~envs.registry.task_subset` picks, when not 0):
    with optimal-action labels, the uniform in-context datasets of DPT."""
    task_ids = task_subset(env_id, tasks, num_tasks) if env_id in IN_CONTEXT else None

    def act_for(i, task, env):
        space = env.action_space
        space.seed(episode_seed(seed, i, tag=1))
        discrete = isinstance(space, gym.spaces.Discrete)
        return lambda obs: int(space.sample()) if discrete else space.sample()

    eps, used = _episodes(env_id, episodes, seed, act_for, tasks=task_ids, progress=progress)
    extras = {} if task_ids is None else {"task_id": np.asarray(used, np.int64)}
    return EpisodeStore.from_episodes(
        eps, episode_extras=extras, metadata=_base_metadata(env_id, "random", seed)
    )


def collect_scripted(
    env_id: str,
    episodes: int,
    *,
    noise: Sequence[float] = (0.0,),
    seed: int = 0,
    tasks: str = "train",
    progress=None,
) -> EpisodeStore:
    """A scripted controller (or grid oracle) with noise level ``noise[i % len(noise)]``."""
    if base_id(env_id) not in scripted_envs():
        raise ValueError(
            f"--policy scripted: no scripted policy for {env_id!r}; "
            f"available for {', '.join(scripted_envs())}"
        )
    if not noise:
        raise ValueError("--noise: give at least one noise level")
    task_ids = _tasks_for(env_id, tasks) if env_id in ORACLES else None
    levels = [float(n) for n in noise]

    def act_for(i, task, env):
        return make_policy(
            env_id,
            action_space=env.action_space,
            noise=levels[i % len(levels)],
            seed=episode_seed(seed, i, tag=1),
            task=task,
        )

    eps, used = _episodes(env_id, episodes, seed, act_for, tasks=task_ids, progress=progress)
    noise_of = [levels[i % len(levels)] for i in range(episodes)]
    extras = {"policy_noise": np.asarray(noise_of, np.float32)}
    if task_ids is not None:
        extras["task_id"] = np.asarray(used, np.int64)
    meta = _base_metadata(env_id, "scripted", seed)
    meta["noise_levels"] = levels
    return EpisodeStore.from_episodes(eps, episode_extras=extras, metadata=meta)


# ---------------------------------------------------------------------- writers
def output_path(fmt: str, out: Path, env_id: str, policy: str) -> Path:
    """Where ``write`` puts a ``fmt`` dataset for ``--out out`` (a D4RL file inside a
    directory gets the env's and policy's name)."""
    out = Path(out)
    if fmt == "d4rl" and out.suffix not in (".hdf5", ".h5"):
        return out / f"{env_id.replace(':', '-')}-{policy}.hdf5"
    return out


def write(store: EpisodeStore, fmt: str, out: Path, *, dataset_id: str | None = None,
          overwrite: bool = False) -> Path:
    """Writes ``store`` in ``fmt`` ("store", "exorl", "d4rl", "minari"); returns the path.

    The target must hold no data unless ``overwrite`` (see :mod:`rl_ring.io`)."""
    out = Path(out)
    if fmt == "store":
        return store.save(out, overwrite=overwrite)
    if fmt == "xland":
        from envs.xland_expert import store_to_groups
        from rl_ring.data.xland import write_xland

        return write_xland(out, store_to_groups(store), overwrite=overwrite)
    if fmt == "exorl" and "physics" not in store.extras:
        raise ValueError(
            f"--format exorl needs dm_control physics states; {store.metadata.get('env_id')!r} "
            "is not a dm_control env (use store, d4rl or minari)"
        )
    import rl_ring.data as data

    name = {"exorl": "write_exorl", "d4rl": "write_d4rl", "minari": "write_minari"}[fmt]
    writer = getattr(data, name, None)
    if writer is None:
        raise RuntimeError(
            f"--format {fmt}: rl_ring.data.{name} is not available in this checkout; "
            "use --format store"
        )
    if fmt == "exorl":
        writer(store, out, overwrite=overwrite)
        return out
    if fmt == "d4rl":
        path = output_path(fmt, out, str(store.metadata.get("env_id", "env")),
                           str(store.metadata.get("policy", "data")))
        writer(store, path, overwrite=overwrite)
        return path
    writer(store, out, dataset_id=dataset_id, overwrite=overwrite)
    return out


# ---------------------------------------------------------------------- CLI
def run(cfg: CollectConfig) -> EpisodeStore:
    """Collects the dataset ``cfg`` describes (without writing it)."""
    env_id = cfg.env
    if cfg.benchmark is not None:
        from envs.xland import with_benchmark

        env_id = with_benchmark(env_id, str(cfg.benchmark))
        cfg = replace(cfg, env=env_id)
    make(cfg.env).close()  # unknown ids fail here, before any work
    if cfg.policy == "noisy-expert":
        return collect_xland_noisy_expert(cfg, cfg.env)
    if cfg.policy == "ppo":
        return collect_xland_ppo(cfg, cfg.env)
    if cfg.format == "xland":
        raise ValueError("--format xland holds learning histories: use --policy noisy-expert "
                         "or ppo")
    if cfg.policy == "sac":
        bar = tqdm(total=cfg.steps, unit="step", disable=cfg.quiet, desc="sac")
        config = SACConfig(hidden=cfg.sac_hidden)
        result = train_sac(
            cfg.env,
            steps=cfg.steps,
            seed=cfg.seed,
            config=config,
            eval_every=cfg.eval_every,
            progress=bar.update,
        )
        bar.close()
        store = result.store
        store.metadata["eval_curve"] = [[int(s), float(r)] for s, r in result.eval_curve]
        store.metadata["seconds"] = round(result.seconds, 1)
        return store
    if cfg.policy in LEARNERS:
        if cfg.env not in IN_CONTEXT:
            raise ValueError(
                f"--policy {cfg.policy}: learning histories are for the in-context envs "
                f"{', '.join(IN_CONTEXT)}, got {cfg.env!r}"
            )
        histories = cfg.histories
        if histories is None and cfg.episodes is not None:
            histories = max(1, cfg.episodes // cfg.episodes_per_history)
        task_ids = task_subset(cfg.env, cfg.tasks, cfg.num_tasks)
        n_hist = histories or len(task_ids)
        noise = None
        if cfg.learner_noise is not None:
            if cfg.policy not in GRID_LEARNERS:
                raise ValueError(f"--learner-noise is for the grid learners {GRID_LEARNERS}, "
                                 f"not --policy {cfg.policy}")
            start, end, decay = cfg.learner_noise
            noise = NoiseSchedule(start=start, end=end, decay_fraction=decay)
        bar = tqdm(total=n_hist * cfg.episodes_per_history, unit="ep", disable=cfg.quiet)
        store = collect_histories(
            cfg.env,
            cfg.policy,
            tasks=task_ids,
            episodes_per_history=cfg.episodes_per_history,
            histories=histories,
            seed=cfg.seed,
            qlearning=QLearningConfig(eps_decay_fraction=cfg.q_eps_decay),
            progress=bar.update,
            noise=noise,
        )
        bar.close()
        store.metadata["source_format"] = "rl_ring.collect"
        return store
    if cfg.episodes is None:
        raise ValueError(f"--policy {cfg.policy}: give --episodes N")
    bar = tqdm(total=cfg.episodes, unit="ep", disable=cfg.quiet, desc=cfg.policy)
    if cfg.policy == "random":
        store = collect_random(
            cfg.env, cfg.episodes, seed=cfg.seed, tasks=cfg.tasks, num_tasks=cfg.num_tasks,
            progress=bar.update,
        )
    else:
        store = collect_scripted(
            cfg.env,
            cfg.episodes,
            noise=cfg.noise,
            seed=cfg.seed,
            tasks=cfg.tasks,
            progress=bar.update,
        )
    bar.close()
    return store


def summary(store: EpisodeStore) -> str:
    """Human-readable facts about a collected store (returns by noise level / history)."""
    ret = store.episode_returns
    lines = [
        f"{store.metadata.get('env_id')} / {store.metadata.get('policy')}: "
        f"{store.num_episodes} episodes, {store.num_steps} steps, return mean {ret.mean():.2f} "
        f"min {ret.min():.2f} max {ret.max():.2f}"
    ]
    if "episode_in_history" in store.episode_extras:
        mean, _ = learning_curve(store)
        k = max(1, len(mean) // 10)
        lines.append(
            f"learning curve (mean over histories): first {k} episodes {mean[:k].mean():.2f}, "
            f"last {k} episodes {mean[-k:].mean():.2f}"
        )
    elif "policy_noise" in store.episode_extras:
        noise = store.episode_extras["policy_noise"]
        for level in np.unique(noise):
            sel = ret[noise == level]
            lines.append(
                f"noise {level:g}: return {sel.mean():.2f} +- {sel.std():.2f} ({len(sel)} episodes)"
            )
    if store.metadata.get("eval_curve"):
        pts = ", ".join(f"{s}: {r:.1f}" for s, r in store.metadata["eval_curve"])
        lines.append(f"deterministic eval (env steps: return): {pts}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Entry point of ``rl-ring collect``."""
    cfg = tyro.cli(CollectConfig, args=argv, prog="rl-ring collect", description=__doc__)
    try:  # refuse an occupied --out before collecting anything
        check_dataset_target(output_path(cfg.format, cfg.out, cfg.env, cfg.policy), cfg.format,
                             overwrite=cfg.overwrite)
    except OSError as err:
        print(f"rl-ring collect: {err}", file=sys.stderr)
        return 2
    try:
        store = run(cfg)
    except (ValueError, KeyError, RuntimeError, FileNotFoundError) as err:
        print(f"rl-ring collect: {err}", file=sys.stderr)
        return 2
    store.metadata["collect_args"] = jsonable(asdict(cfg))
    try:
        path = write(store, cfg.format, cfg.out, dataset_id=cfg.dataset_id,
                     overwrite=cfg.overwrite)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"rl-ring collect: {err}", file=sys.stderr)
        return 2
    print(summary(store))
    print(f"wrote {cfg.format} to {path}")
    return 0


