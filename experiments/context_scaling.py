"""Context that pays: in-context performance against context length, bandits and grids.

    python -m experiments.context_scaling                      # bandit-hard, 3 training seeds
    python -m experiments.context_scaling --env bandit-gauss   # the Gaussian bandit family
    python -m experiments.context_scaling --env darkroom-hard  # 17x17 Dark Room, first arrival
    python -m experiments.context_scaling --env keydoor        # Key-to-Door
    python -m experiments.context_scaling --tiny --out /tmp/cs --workdir /tmp/cs_runs
    python -m experiments.context_scaling --env darkroom-hard --solved-weight 0.1  # search x10
    python -m experiments.context_scaling --env darkroom-hard --finished-only  # report only

Each configuration (agent x context window) and training seed, all through the library:
learning histories of the sources on training tasks (bandits: Thompson sampling / UCB1,
:func:`envs.learners.bandits.bandit_histories`, 4,096 pulls each; grids: posterior sampling
and the optimistic sweep, :func:`envs.learners.history.collect_histories`, 256 episodes
each) -> the agent trained on windows of ``windows`` episodes (bandits: 256, 1,024, 4,096
one-pull episodes; grids: 16, 64, 256 episodes, i.e. episodes x episode length steps;
``agents.run.train``; windows of ``ring_from`` episodes and more on mesh ``seq=8``, ring
attention over 8 fake CPU devices, shorter ones data-parallel on ``data=8``) -> the
checkpoint played in context on held-out tasks through the KV-cached policy
(``agents.policy.eval_policy_from_checkpoint``; windows shorter than the evaluation slide a
quarter window at a time). Bandits: expected cumulative regret against pulls on 200 held-out
bandits, next to Thompson sampling, UCB1 and random arms. Grids: return against in-context
episode on every held-out goal (``rl_ring.eval.evaluate``), next to the sources' own learning
curves, a random policy and the optimum; the final return is the mean over the last 10% of
the episodes.

Also measured: each configuration's per-device memory of the compiled training step for
dense attention (1 device), blockwise (1 device) and ring (8 devices)
(``rl_ring.train.plan.plan_step``), train wall time and tokens/s, the time per decoded
token at the longest context, and which context lengths would not fit one 16 GiB or 80 GiB
accelerator without the ring at the recipe scale
(:func:`experiments.context_scaling_report.recipe_plan`). Outputs:
``<out>/context_scaling[_<env>].json`` + ``.png``. Checkpoints stay under ``--workdir``
(git-ignored ``runs/``), each one re-playable alone with ``rl-ring eval --checkpoint
<workdir>/<env>/<agent>-w<W>-seed<S>/train --env <env> ...``; finished runs are skipped
when the command runs again.

Agents: :func:`default_agents` lists AD, and DPT as soon as ``agents.dpt`` imports (its
entries in :data:`AGENT_PLANS` build its data and options). Run it as a module: it fakes 8
CPU devices before JAX starts.
"""

from __future__ import annotations

from rl_ring.io import device_env, run_watched, setup_cpu_devices

if __name__ == "__main__":
    setup_cpu_devices(8)  # see rl_ring.io.device_flags for why these flags

import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Literal  # noqa: E402

import numpy as np  # noqa: E402

from envs.learners.history import SHADOWS  # noqa: E402

RESULTS = "context_scaling"
BANDIT_ENVS = ("bandit-hard", "bandit-gauss")
GRID_ENVS = ("darkroom-hard", "keydoor")
ENVS = BANDIT_ENVS + GRID_ENVS
BASELINES = ("thompson", "ucb", "random")
PRIOR_BASELINE = "thompson-prior"
"""Bernoulli families whose means are not uniform on [0, 1) also get Thompson sampling with
the family's own prior (truncated Beta posteriors): posterior sampling, a perfectly trained
DPT's online policy. Reported, not a target (the targets are against Thompson / UCB1)."""
FINAL_FRACTION = 0.1
"""Grids: the final return is the mean over the last 10% of the in-context episodes."""
DPT_SOURCES = ("histories", "random")
"""Grids: what DPT's in-context data are (:attr:`ScalingConfig.dpt_source`)."""
DPT_LABELS = ("x-first", "any-shortest")
"""Grids: DPT's optimal-action labels (:attr:`ScalingConfig.dpt_labels`)."""
SOURCE_LABELS = ("taken", "intended")
"""Grids: AD's targets (:attr:`ScalingConfig.source_labels`)."""
DAGGER_DATA_FIELDS = ("env", "learners", "histories", "history_episodes", "source_noise",
                      "seed")
"""What the sources' histories of a DAgger round's data depend on, which the next round
must share (:func:`dagger_run`)."""
SHADOW_LEARNERS = ("posterior", "optimistic", "noisy_oracle", *SHADOWS)
"""Grids: the sources that can label a DAgger step's rollouts
(:attr:`ScalingConfig.dagger_learners`)."""
RANDOM_EPISODES = 16
"""Grids: episodes per held-out task of the random baseline (stationary: no context)."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class ScalingConfig:
    """One context-scaling experiment on one task family (every window, agent and seed)."""

    env: str = "bandit-hard"
    """Task family (registry id): bandit-hard, bandit-gauss, darkroom-hard or keydoor."""
    windows: tuple[int, ...] = (256, 1024, 4096)
    """Training context windows in episodes (bandits: one-pull episodes, one token each)."""
    ring_from: int = 4096
    """Windows of at least this many episodes train with ring attention on mesh ``seq=8``;
    shorter ones data-parallel on mesh ``data=8`` (whole windows per device, the model's own
    attention). Measured on 2 busy cores: a 1-device mesh runs on one core only (330
    tokens/s at 1,024 pulls, against 600-850 for the 4,096 window on the ring)."""
    learners: tuple[str, ...] = ("thompson",)
    """Sources of the learning histories (bandits: "thompson", "ucb"; grids: "posterior",
    "optimistic"), histories split evenly between them."""
    histories: int = 1000
    """Learning histories, each on a training task (history h on task h of a fixed shuffle)."""
    history_episodes: int = 4096
    """Episodes per learning history (bandits: pulls)."""
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
    eval_tasks: int = 200
    """Held-out tasks played (the first of a fixed shuffle of the test split; 0: all)."""
    eval_episodes: int = 4096
    """In-context episodes per held-out task, all in one context (shorter windows slide)."""
    eval_rows: int = 0
    """Grids: tasks played side by side (0: all at once); successive evaluation seeds take
    the next tasks, so every held-out task is played once."""
    slide_fraction: float = 0.25
    """Fraction of the window that slides out of a full context at once (the KV cache is
    refilled at each slide; 0.25 keeps 3/4 to all of the window in context)."""
    greedy: bool = False
    """Act with the argmax action instead of sampling from the predicted distribution."""
    solved_weight: float = 1.0
    """Grids, AD: loss weight of the training targets after a history's search (the
    episodes after its first with a positive return; search episodes weigh 1). Below 1 the
    search, under 5% of any window's targets on Dark Room hard, weighs more."""
    init_from: str = ""
    """A curriculum step: a run folder of this experiment (``<workdir>/<env>[-...]``) whose
    finished run of the same agent and seed at window ``init_window`` each run starts from
    (its parameters; optimiser and data order fresh); "" trains from scratch."""
    init_window: int = 0
    """The window (episodes) of the ``init_from`` runs; 0 with ``init_from`` unset."""
    init_seed: int = -1
    """A curriculum step: the seed of the ``init_from`` run every seed starts from (-1: each
    seed from its own), so that training seeds of one step measure that step's spread."""
    dpt_source: str = "histories"
    """Grids, DPT: its in-context data. "histories": windows of the sources' learning
    histories (AD's data; the search is under 5% of their steps on Dark Room hard);
    "random": uniformly random actions on the same tasks, as many histories and episodes
    (the DPT paper's Dark Room data: the goal is unseen in most windows). Both are labelled
    with the shortest-path action to the task's goal. Bandits: DPT's data are random pulls."""
    dpt_labels: str = "x-first"
    """Grids, DPT: its labels. "x-first": the env's ``optimal_action`` (along x first, then
    y: one shortest path); "any-shortest": each step's label drawn uniformly among the moves
    that bring the agent closer to its target (``envs.gridworld.random_shortest_actions``),
    so the model learns the uniform distribution over shortest paths. A perfectly trained
    DPT finds 24% of Dark Room hard's held-out goals with the first, 44-51% with the second
    (``experiments.dpt_grid_ideal``)."""
    source_noise: float = 0.0
    """Grids: probability of a uniformly random action at every step of the sources'
    histories (constant over a history; 0: the sources as they are, which never walk into a
    wall, so their histories show no recovery from one)."""
    source_labels: str = "taken"
    """Grids, AD: its targets. "taken": the actions in the histories; "intended": the action
    each source chose before its noise replaced it (``intended_actions``), so the model sees
    the states the noise led to and how the source went on from them, without learning to
    take random actions (needs ``source_noise`` > 0)."""
    step_prev_obs: bool = False
    """AD: each STEP token also carries the previous step's observation
    (``HistoryOptions.step_prev_obs``). Key-to-Door's episode ends on arriving at the door,
    so the door's cell is no token's observation; with this the next episode's first token
    holds the cell the agent left and the move it made. The data are unchanged."""
    dagger_from: str = ""
    """Grids, AD: a run folder of this experiment whose finished AD run at ``dagger_window``
    (seed 0) is played on training tasks, its states labelled by shadow sources
    (:func:`envs.learners.dagger.labelled_rollouts`); those histories join the sources'
    and the targets are the sources' actions (``intended_actions``): one DAgger step.
    "" (default): the sources' histories only."""
    dagger_window: int = 0
    """The window (episodes) of the ``dagger_from`` run; 0 with ``dagger_from`` unset."""
    dagger_histories: int = 1000
    """Histories the ``dagger_from`` model plays, one per training task (the first ones)."""
    dagger_episodes: int = 32
    """Episodes of each of those histories, in one context."""
    dagger_learners: tuple[str, ...] = ()
    """The shadow sources that label the rollouts, history ``h`` by the ``h % n``-th (empty:
    ``learners``, the sources of the data). The model's tokens do not say which shadow
    labels a history, so with several its targets are their mixture."""
    dagger_memory: int = 0
    """Episodes the shadows remember, the current one included (0: the whole history): with
    the model's window, targets a context of that many episodes can explain."""
    dagger_withhold: int = 0
    """Dark Room families: each rollout history's goal is withheld for its first ``W``
    episodes, ``W`` uniform in ``[0, dagger_withhold]`` (its moves onto the goal replaced;
    :func:`envs.learners.dagger.labelled_rollouts`), so the data hold long fruitless searches
    and the shadows' labels after them. 0: never."""
    dagger_withhold_turns: int = 0
    """With ``dagger_withhold``: the goal comes back once the model has been turned away
    from it in this many episodes (0: only after ``W``), so that it does not hover at a cell
    it can never enter."""
    memory_batch: int = 16
    """Batch of the training step compiled for the memory table."""
    memory_windows: tuple[int, ...] | None = None
    """Windows whose training step is compiled for the memory table (None: all, (): none)."""
    memory_attention: tuple[str, ...] = ("dense", "blockwise", "ring")
    """Attentions of the memory table: dense, blockwise (1 device), ring (8 devices)."""
    plan_windows: tuple[int, ...] = ()
    """Longer contexts (episodes) sized at the recipe scale beside ``windows``."""
    seed: int = 0
    """Seed of the data collection and the held-out tasks' evaluation streams."""

    def __post_init__(self) -> None:
        w = self.solved_weight
        if not (math.isfinite(w) and w > 0):
            raise ValueError(f"--solved-weight {w}: expected a finite weight > 0")
        if w != 1 and self.env in BANDIT_ENVS:
            raise ValueError(f"--solved-weight {w}: the search/solved weighting is for the "
                             f"grid families (a bandit history has no first success to "
                             f"mark); {self.env} takes 1")
        if not (math.isfinite(self.lr) and self.lr > 0) or self.warmup_steps < 0:
            raise ValueError(f"--lr {self.lr} --warmup-steps {self.warmup_steps}: expected "
                             f"a finite learning rate > 0 and warmup steps >= 0")
        if self.dpt_source not in DPT_SOURCES:
            raise ValueError(f"--dpt-source {self.dpt_source!r}: expected one of "
                             f"{', '.join(DPT_SOURCES)}")
        if self.dpt_source != "histories" and self.env in BANDIT_ENVS:
            raise ValueError(f"--dpt-source {self.dpt_source}: the choice is for the grid "
                             f"families; on {self.env} DPT's data are random pulls")
        if self.dpt_labels not in DPT_LABELS:
            raise ValueError(f"--dpt-labels {self.dpt_labels!r}: expected one of "
                             f"{', '.join(DPT_LABELS)}")
        if self.dpt_labels != "x-first" and self.env in BANDIT_ENVS:
            raise ValueError(f"--dpt-labels {self.dpt_labels}: the choice is for the grid "
                             f"families; on {self.env} the label is the best arm")
        if self.histories < 1 or self.history_episodes < 1 or self.eval_tasks < 0:
            raise ValueError(f"--histories {self.histories} --history-episodes "
                             f"{self.history_episodes} --eval-tasks {self.eval_tasks}: "
                             f"expected at least 1 history of at least 1 episode and "
                             f"held-out tasks >= 0 (0: all)")
        if not 0.0 <= self.source_noise <= 1.0:
            raise ValueError(f"--source-noise {self.source_noise}: expected a probability "
                             f"in [0, 1]")
        if self.source_noise and self.env in BANDIT_ENVS:
            raise ValueError(f"--source-noise {self.source_noise}: the random actions are "
                             f"for the grid sources; {self.env} takes 0")
        if self.source_labels not in SOURCE_LABELS:
            raise ValueError(f"--source-labels {self.source_labels!r}: expected one of "
                             f"{', '.join(SOURCE_LABELS)}")
        if self.source_labels == "intended" and not self.source_noise:
            raise ValueError("--source-labels intended: without --source-noise every action "
                             "the sources take is the one they intended; give a noise > 0")
        if bool(self.dagger_from) != (self.dagger_window > 0):
            raise ValueError(f"--dagger-from {self.dagger_from!r} --dagger-window "
                             f"{self.dagger_window}: a DAgger step takes both (a run folder "
                             f"and a window > 0 of its runs), a plain run neither")
        if self.dagger_from and self.env in BANDIT_ENVS:
            raise ValueError(f"--dagger-from: the shadow sources label grid states; "
                             f"{self.env} is a bandit family")
        if self.dagger_histories < 1 or self.dagger_episodes < 1:
            raise ValueError(f"--dagger-histories {self.dagger_histories} --dagger-episodes "
                             f"{self.dagger_episodes}: expected >= 1")
        if self.dagger_learners and not self.dagger_from:
            raise ValueError(f"--dagger-learners {' '.join(self.dagger_learners)}: the shadow "
                             f"sources label a DAgger step's rollouts; give --dagger-from")
        if self.dagger_memory < 0 or (self.dagger_memory and not self.dagger_from):
            raise ValueError(f"--dagger-memory {self.dagger_memory}: expected episodes >= 0, "
                             f"and a DAgger step (--dagger-from) whose shadows forget")
        if self.dagger_withhold < 0 or (self.dagger_withhold and not (
                self.dagger_from and self.env.startswith("darkroom"))):
            raise ValueError(f"--dagger-withhold {self.dagger_withhold}: expected episodes "
                             f">= 0, and a DAgger step (--dagger-from) on a Dark Room family "
                             f"(here {self.env}) when > 0")
        if self.dagger_withhold_turns < 0 or (self.dagger_withhold_turns
                                              and not self.dagger_withhold):
            raise ValueError(f"--dagger-withhold-turns {self.dagger_withhold_turns}: expected "
                             f"episodes >= 0, and --dagger-withhold when > 0")
        bad = [x for x in self.dagger_learners if x not in SHADOW_LEARNERS]
        if bad:
            raise ValueError(f"--dagger-learners {' '.join(bad)}: expected grid sources, one "
                             f"or more of {', '.join(SHADOW_LEARNERS)}")
        if bool(self.init_from) != (self.init_window > 0):
            raise ValueError(f"--init-from {self.init_from!r} --init-window "
                             f"{self.init_window}: a curriculum step takes both (a run "
                             f"folder and a window > 0 of its runs), a fresh run neither")
        if self.init_seed < -1 or (self.init_seed >= 0 and not self.init_from):
            raise ValueError(f"--init-seed {self.init_seed}: expected a seed >= 0 of the "
                             f"--init-from runs (or -1: each seed from its own)")

    def replace(self, **changes) -> ScalingConfig:
        return dataclasses.replace(self, **changes)

    @property
    def bandit(self) -> bool:
        return self.env in BANDIT_ENVS

    @property
    def episode_steps(self) -> int:
        """Steps of one (longest) episode: 1 for bandits."""
        return episode_steps(self.env)

    def window_steps(self, window: int) -> int:
        """Steps of a window of ``window`` episodes."""
        return window * self.episode_steps

    def mesh(self, window: int) -> str:
        # A batch that does not split over 8 devices rides the ring too.
        ring = window >= self.ring_from or self.batch_size % 8
        return "seq=8" if ring else "data=8"


def episode_steps(env: str) -> int:
    """The longest episode of a family in steps (the registry's time limit)."""
    check_env(env)
    if env in BANDIT_ENVS:
        return 1
    from envs.evaluation import episode_steps as limit

    return int(limit(env))


def check_env(env: str) -> None:
    if env not in ENVS:
        raise ValueError(f"--env {env!r}: the context-scaling experiment runs on "
                         f"{', '.join(ENVS)}")


def main_config(env: str = "bandit-hard") -> ScalingConfig:
    """The full experiment (see docs/reproductions.md, "Context scaling")."""
    check_env(env)
    if env in BANDIT_ENVS:
        return ScalingConfig(env=env, plan_windows=(16384, 65536, 262144))
    # Grids: sources that search for many episodes. A window holds W x episode-length steps;
    # Dark Room hard's episodes all last 20 steps, so 256-episode histories hold the longest
    # window, while a Key-to-Door episode ends at the door (10.7 steps on average once
    # the source has found key and door), so its histories run 2,048 episodes: longer than the
    # 12,800 steps of the longest window except where centre -> key -> door takes 6 moves
    # or fewer (14% of the tasks; the sampler cuts windows only from histories long enough).
    dark = env == "darkroom-hard"
    return ScalingConfig(
        env=env, windows=(16, 64, 256), ring_from=256, learners=("posterior", "optimistic"),
        histories=460 if dark else 500, history_episodes=256 if dark else 2048,
        eval_tasks=0, eval_episodes=256, eval_rows=0 if dark else 158,
        plan_windows=(1024, 4096, 16384))


def tiny_config(env: str = "bandit-hard") -> ScalingConfig:
    """Seconds on CPU (the tests): a tiny model, few histories and steps; bandits: one
    window, on the ring, and few held-out bandits; grids: two windows (the longer one on the
    ring) and every held-out goal."""
    check_env(env)
    small = dict(env=env, width=32, depth=1, heads=2, dropout=0.0, steps=4, batch_size=8,
                 lr=3e-3, warmup_steps=2, memory_batch=2)
    if env in BANDIT_ENVS:
        return ScalingConfig(**small, windows=(32,), ring_from=32, histories=16,
                             history_episodes=32, eval_tasks=8, eval_episodes=40,
                             memory_windows=(32,), memory_attention=("dense", "ring"),
                             plan_windows=(128,))
    return ScalingConfig(**small, windows=(2, 4), ring_from=4,
                         learners=("posterior", "optimistic"), histories=8,
                         history_episodes=4, eval_tasks=0, eval_episodes=4,
                         memory_windows=(), plan_windows=(16,))


# ---------------------------------------------------------------------- agents
@dataclass(frozen=True)
class AgentPlan:
    """How one agent enters the experiment: its training data and its options."""

    data: Callable[[ScalingConfig, list[int]], Any]
    """``data(cfg, tasks) -> EpisodeStore`` on the training tasks."""
    config: Callable[[ScalingConfig, int], Any]
    """``config(cfg, window) -> the agent's Config`` (``window`` in episodes)."""


def _model(cfg: ScalingConfig):
    from rl_ring.models import ModelConfig

    return ModelConfig(width=cfg.width, depth=cfg.depth, num_heads=cfg.heads,
                       activation="gelu", dropout=cfg.dropout,
                       max_timestep=max(16, cfg.episode_steps))


def _evaluation(cfg: ScalingConfig, window: int):
    """Sampled actions; a quarter of the window (whole episodes) slides out of a full one."""
    from agents.base import EvalDefaults

    slide = max(1, int(window * cfg.slide_fraction)) * cfg.episode_steps
    return EvalDefaults(greedy=cfg.greedy, slide_steps=slide)


def source_histories(cfg: ScalingConfig, learner: str, tasks: list[int], seed: int):
    """One learning history of ``learner`` per entry of ``tasks`` (an EpisodeStore)."""
    if cfg.bandit:
        from envs.learners.bandits import bandit_histories

        return bandit_histories(cfg.env, family(cfg.env), tasks, learner,
                                cfg.history_episodes, seed=seed)
    from envs.learners.grid import NoiseSchedule
    from envs.learners.history import collect_histories

    p = cfg.source_noise
    return collect_histories(cfg.env, learner, tasks=tasks,
                             episodes_per_history=cfg.history_episodes,
                             histories=len(tasks), seed=seed,
                             noise=NoiseSchedule(start=p, end=p) if p else None)


def source_returns(cfg: ScalingConfig, learner: str, tasks: list[int], seed: int) -> np.ndarray:
    """``[tasks, eval_episodes]`` returns of one ``learner`` history per held-out task (the
    sources' own in-context curve, beside a model's evaluation)."""
    store = cfg.replace(history_episodes=cfg.eval_episodes)
    hist = source_histories(store, learner, tasks, seed=seed)
    return hist.episode_returns.reshape(len(tasks), cfg.eval_episodes)


def ad_data(cfg: ScalingConfig, tasks: list[int]):
    """Learning histories of the sources, ``cfg.histories`` split evenly between them; with
    ``cfg.solved_weight`` != 1 the episode extra ``loss_weight``: 1 on search episodes
    (:func:`search_episodes`), ``cfg.solved_weight`` on the episodes after them."""
    stores = []
    if dagger_round(cfg) > 1:  # DAgger aggregates: the earlier round's data, sources included
        from rl_ring.data import EpisodeStore

        stores.append(EpisodeStore.load(Path(cfg.dagger_from) / "data-ad"))
    else:
        per = -(-cfg.histories // len(cfg.learners))
        for i, learner in enumerate(cfg.learners):
            rows = [tasks[h % len(tasks)]
                    for h in range(i * per, min(cfg.histories, (i + 1) * per))]
            stores.append(source_histories(cfg, learner, rows, seed=cfg.seed + 101 * i))
    if cfg.dagger_from:
        stores.append(dagger_rollouts(cfg, tasks))
    store = stores[0] if len(stores) == 1 else concat_stores(stores)
    if cfg.solved_weight != 1:
        x = store.episode_extras
        search = search_episodes(store.episode_returns, x["history_id"],
                                 x["episode_in_history"])
        x["loss_weight"] = np.where(search, 1.0, cfg.solved_weight).astype(np.float32)
    return store


def dagger_round(cfg: ScalingConfig) -> int:
    """0 without a DAgger step; 1 when ``dagger_from`` trained on the sources alone; k + 1
    when it is itself the k-th DAgger round (its name ends ``-dagger<W>`` or
    ``-dagger<W>r<k>``), whose data (sources and every earlier round's rollouts) the next
    round extends."""
    if not cfg.dagger_from:
        return 0
    m = re.search(r"-dagger\d+(?:r(\d+))?", Path(cfg.dagger_from).name)
    return 1 if m is None else int(m.group(1) or 1) + 1


def dagger_run(cfg: ScalingConfig) -> Path:
    """The finished AD run whose model a DAgger step plays (seed 0 at ``dagger_window``).

    Its record must agree with this step: a DAgger round (``-dagger`` in the folder's name)
    exactly when it was trained on DAgger data, whose sources (:data:`DAGGER_DATA_FIELDS`)
    are this configuration's, since the next round extends those data."""
    src = Path(cfg.dagger_from) / run_name("ad", cfg.dagger_window, 0)
    if not (src / "record.json").exists():
        raise ValueError(f"--dagger-from {cfg.dagger_from}: no finished run {src.name} there "
                         f"(record.json) for --dagger-window {cfg.dagger_window}")
    was = record_config(json.loads((src / "record.json").read_text()))
    extends = dagger_round(cfg) > 1
    if bool(was.dagger_from) != extends:
        raise ValueError(f"--dagger-from {cfg.dagger_from}: its run {src.name} was "
                         f"{'a DAgger round' if was.dagger_from else 'trained on the sources'}"
                         f" but the folder's name says "
                         f"{'a DAgger round' if extends else 'otherwise'} "
                         f"(-dagger<W>[r<K>]): a renamed folder?")
    differ = [f"{f} {getattr(was, f)!r} (here {getattr(cfg, f)!r})"
              for f in DAGGER_DATA_FIELDS if getattr(was, f) != getattr(cfg, f)]
    if extends and differ:
        raise ValueError(f"--dagger-from {cfg.dagger_from}: the next round extends its data, "
                         f"collected with other sources: {', '.join(differ)}")
    return src


def dagger_rollouts(cfg: ScalingConfig, tasks: list[int]):
    """The ``dagger_from`` model's histories on the first ``dagger_histories`` training
    tasks, ``dagger_episodes`` episodes each, played as it is evaluated (its checkpoint's
    defaults), every state labelled by a shadow source (the sources in turn)."""
    from agents import eval_policy_from_checkpoint
    from envs import make
    from envs.learners.dagger import labelled_rollouts

    t0 = time.perf_counter()
    src = dagger_run(cfg)
    env = make(cfg.env)
    space = env.action_space
    env.close()
    policy = eval_policy_from_checkpoint(src / "train", action_space=space,
                                         episode_steps=cfg.episode_steps)
    rows = tasks[:cfg.dagger_histories]
    shadows = cfg.dagger_learners or cfg.learners
    store = labelled_rollouts(policy, cfg.env, rows, shadows,
                              episodes=cfg.dagger_episodes,
                              seed=cfg.seed + 31 * dagger_round(cfg),
                              memory=cfg.dagger_memory, withhold=cfg.dagger_withhold,
                              withhold_turns=cfg.dagger_withhold_turns)
    meant = store.extras["intended_actions"] != np.asarray(store.actions)
    log(f"dagger: {src.name} played {len(rows)} histories of {cfg.dagger_episodes} episodes "
        f"({store.num_steps} steps, mean return {store.episode_returns.mean():.3f}; the "
        f"shadows ({'+'.join(shadows)}"
        f"{f', remembering {cfg.dagger_memory} episodes' if cfg.dagger_memory else ''}) "
        f"would have acted otherwise at {meant.mean():.1%} of "
        f"the steps"
        f"{withheld_summary(store) if cfg.dagger_withhold else ''}) in "
        f"{time.perf_counter() - t0:.0f} s")
    return store


def withheld_summary(store) -> str:
    """How the rollouts fared once their goal came back: the share of episodes withheld,
    and of the histories it was withheld from, how many found it in the next episode and
    how many by their end."""
    x = store.episode_extras
    held = np.asarray(x["goal_withheld"], bool)
    hist, ret = np.asarray(x["history_id"]), store.episode_returns
    late = [h for h in np.unique(hist) if held[hist == h].any()]
    first = sum(ret[(hist == h) & ~held][:1].sum() > 0 for h in late)
    ever = sum(ret[(hist == h) & ~held].sum() > 0 for h in late)
    return (f"; goal withheld in {held.mean():.1%} of the episodes; of the {len(late)} "
            f"histories it was withheld from, {first} found it in the next episode and "
            f"{ever} by their end")


def random_grid_data(cfg: ScalingConfig, tasks: list[int]):
    """``cfg.histories`` histories of ``cfg.history_episodes`` episodes of uniformly random
    actions (history h on task h), each step labelled with its shortest-path action."""
    from envs.learners.grid import NoiseSchedule
    from envs.learners.history import collect_histories

    rows = [tasks[h % len(tasks)] for h in range(cfg.histories)]
    return collect_histories(cfg.env, "noisy_oracle", tasks=rows,
                             episodes_per_history=cfg.history_episodes, histories=len(rows),
                             seed=cfg.seed + 7, noise=NoiseSchedule(start=1.0, end=1.0))


def any_shortest_labels(cfg: ScalingConfig, store) -> np.ndarray:
    """``[steps]`` int64 labels of a grid store: at each step a move drawn uniformly among
    those that bring the agent closer to its target (the goal; Key-to-Door: the key, then
    the door), the no-op on it. Seeded by ``cfg.seed``."""
    from envs import make
    from envs.gridworld import random_shortest_actions

    env = make(cfg.env).unwrapped
    try:
        lengths = np.diff(np.asarray(store.episode_starts, np.int64))
        tasks = np.repeat(np.asarray(store.episode_extras["task_id"], np.int64), lengths)
        obs = np.asarray(store.observations)
        target = env.label_targets(tasks, obs)
        pos = np.rint(obs[:, :2]).astype(np.int64)
        return random_shortest_actions(pos, target, np.random.default_rng([cfg.seed, 17]))
    finally:
        env.close()


def concat_stores(stores):
    """Stores of learning histories back to back, history ids made distinct."""
    from rl_ring.data import EpisodeStore

    steps, hist_offset, starts, hist = 0, 0, [], []
    for s in stores:
        starts.append(np.asarray(s.episode_starts[:-1], np.int64) + steps)
        steps += s.num_steps
        hist.append(s.episode_extras["history_id"] + hist_offset)
        hist_offset += int(s.episode_extras["history_id"].max()) + 1
    starts.append(np.asarray([steps], np.int64))
    core = {k: np.concatenate([getattr(s, k) for s in stores]) for k in (
        "observations", "actions", "rewards", "terminals", "timeouts")}
    extras = {k: np.concatenate([s.extras[k] for s in stores]) for k in stores[0].extras
              if all(k in s.extras for s in stores)}
    ep_extras = {k: np.concatenate([s.episode_extras[k] for s in stores])
                 for k in stores[0].episode_extras
                 if k != "history_id" and all(k in s.episode_extras for s in stores)}
    meta = dict(stores[0].metadata, policy="+".join(s.metadata["policy"] for s in stores),
                histories=hist_offset)
    return EpisodeStore(**core, episode_starts=np.concatenate(starts), extras=extras,
                        episode_extras={"history_id": np.concatenate(hist), **ep_extras},
                        metadata=meta)


def search_episodes(returns: np.ndarray, history: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Per episode, whether it belongs to its learning history's search: it comes no later
    (by ``order``) than the history's first episode with a positive return (every episode of
    a history that never has one). ``returns``, ``history``, ``order``: one entry per
    episode, in any order."""
    returns, history = np.asarray(returns), np.asarray(history, np.int64)
    order = np.asarray(order, np.float64)
    _, code = np.unique(history, return_inverse=True)
    first = np.full(code.max(initial=-1) + 1, np.inf)
    hit = returns > 0
    np.minimum.at(first, code[hit], order[hit])
    return order <= first[code]


def weight_suffix(cfg: ScalingConfig) -> str:
    """What a weighted loss adds to the name of its data (other training targets): ""
    unweighted, else ``-solved<W>``."""
    return "" if cfg.solved_weight == 1 else f"-solved{cfg.solved_weight:g}"


def data_suffix(cfg: ScalingConfig, agent: str) -> str:
    """What sets an agent's training data apart in a run folder: AD's loss weights
    (``-solved<W>``), DPT's random source (``-random``)."""
    if agent == "ad":
        return weight_suffix(cfg)
    if agent != "dpt":
        return ""
    return (("-random" if cfg.dpt_source == "random" else "")
            + ("-anyshortest" if cfg.dpt_labels == "any-shortest" else ""))


def config_suffix(cfg: ScalingConfig, base: ScalingConfig) -> str:
    """What the command line's changes to the configured experiment ``base`` add to the names
    of the run folder and the results: ``-steps<N>``, ``-batch<N>``, ``-lr<LR>``,
    ``-warmup<N>``, ``-solved<W>``, ``-dpt<SOURCE>``, ``-anyshortest``, ``-init<W>[s<S>]``,
    ``-hist<N>`` (episodes per history), ``-histories<N>``, ``-eval<N>`` (held-out tasks),
    ``-noise<P>`` (the sources' random actions), ``-intended`` (AD's targets the sources'
    intended actions), ``-prevobs`` (AD's STEP tokens with the previous observation),
    ``-dagger<W>[r<K>]`` (DAgger round K from that window's model) and
    ``-dh<H>x<E>`` (its rollouts, if not as configured) and ``-dl<L>[+<L>]`` (its shadow
    sources, if not the data's) and ``-dm<M>`` (the shadows' memory in episodes) and
    ``-dw<N>[t<M>]`` (goals withheld up to that many episodes [or M turns away]) for each
    that differs ("" as configured).
    Other trainings are other models: their runs live apart, so a reduced or longer run
    never meets the finished runs of another."""
    parts = [f"-steps{cfg.steps}" if cfg.steps != base.steps else "",
             f"-batch{cfg.batch_size}" if cfg.batch_size != base.batch_size else "",
             f"-lr{cfg.lr:g}" if cfg.lr != base.lr else "",
             f"-warmup{cfg.warmup_steps}" if cfg.warmup_steps != base.warmup_steps else "",
             weight_suffix(cfg),
             f"-dpt{cfg.dpt_source}" if cfg.dpt_source != base.dpt_source else "",
             f"-{cfg.dpt_labels.replace('-', '')}" if cfg.dpt_labels != base.dpt_labels
             else "",
             (f"-init{cfg.init_window}" + (f"s{cfg.init_seed}" if cfg.init_seed >= 0 else ""))
             if cfg.init_window != base.init_window else "",
             f"-hist{cfg.history_episodes}" if cfg.history_episodes != base.history_episodes
             else "",
             f"-histories{cfg.histories}" if cfg.histories != base.histories else "",
             f"-eval{cfg.eval_tasks}" if cfg.eval_tasks != base.eval_tasks else "",
             f"-noise{cfg.source_noise:g}" if cfg.source_noise != base.source_noise else "",
             f"-{cfg.source_labels}" if cfg.source_labels != base.source_labels else "",
             "-prevobs" if cfg.step_prev_obs else "",
             (f"-dagger{cfg.dagger_window}" + (f"r{dagger_round(cfg)}" if dagger_round(cfg) > 1
                                                else ""))
             if cfg.dagger_window != base.dagger_window else "",
             f"-dh{cfg.dagger_histories}x{cfg.dagger_episodes}"
             if cfg.dagger_window and (cfg.dagger_histories, cfg.dagger_episodes)
             != (base.dagger_histories, base.dagger_episodes) else "",
             "-dl" + "+".join(cfg.dagger_learners)
             if cfg.dagger_learners and cfg.dagger_learners != cfg.learners else "",
             f"-dm{cfg.dagger_memory}" if cfg.dagger_memory else "",
             (f"-dw{cfg.dagger_withhold}" + (f"t{cfg.dagger_withhold_turns}"
                                             if cfg.dagger_withhold_turns else ""))
             if cfg.dagger_withhold else ""]
    return "".join(parts)


def ad_config(cfg: ScalingConfig, window: int):
    import agents

    weight = {} if cfg.solved_weight == 1 else {"weight_key": "loss_weight"}
    labels = ({"label_key": "intended_actions"}
              if cfg.source_labels == "intended" or cfg.dagger_from else {})
    return agents.get("ad").Config(window_steps=cfg.window_steps(window), align="step",
                                   model=_model(cfg), evaluation=_evaluation(cfg, window),
                                   step_prev_obs=cfg.step_prev_obs, **weight, **labels)


def _dpt_plan() -> AgentPlan:
    """DPT (``agents.dpt``, issue 10 section 1). Bandits: uniform in-context datasets with
    the best-arm labels; grids: the sources' histories with their shortest-path labels, a
    context being a window of one history. Its Config takes the same model and a context of
    the window's steps. The module's own ``context_scaling_plan()`` wins when it defines one."""
    import agents.dpt as dpt

    if hasattr(dpt, "context_scaling_plan"):
        return dpt.context_scaling_plan()

    def data(cfg: ScalingConfig, tasks: list[int]):
        if not cfg.bandit:
            store = ad_data(cfg, tasks) if cfg.dpt_source == "histories" else \
                random_grid_data(cfg, tasks)
            if cfg.dpt_labels == "any-shortest":
                store.extras["optimal_actions"] = any_shortest_labels(cfg, store)
            return store
        from envs.learners.bandits import bandit_histories

        return bandit_histories(cfg.env, family(cfg.env), [tasks[h % len(tasks)] for h in
                                                           range(cfg.histories)],
                                "random", cfg.history_episodes, seed=cfg.seed + 7)

    def config(cfg: ScalingConfig, window: int):
        extra = {} if cfg.bandit else {"group_key": "history_id"}
        return dpt.Config(model=_model(cfg), context_steps=cfg.window_steps(window),
                          evaluation=_evaluation(cfg, window), **extra)

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


# ---------------------------------------------------------------------- tasks
def family(env: str):
    """The :class:`envs.bandit.BanditParams` of a bandit registry id."""
    from envs.bandit import BanditParams
    from envs.registry import IN_CONTEXT

    if env not in BANDIT_ENVS:
        raise ValueError(f"--env {env!r}: not a bandit family ({', '.join(BANDIT_ENVS)})")
    return BanditParams(**IN_CONTEXT[env].kwargs)


def training_tasks(cfg: ScalingConfig) -> list[int]:
    """History h's task is entry h of a fixed shuffle of the training split."""
    from envs.registry import task_split

    tasks = task_split(cfg.env, "train")
    n = min(cfg.histories, len(tasks))
    return np.random.default_rng(4321).permutation(tasks)[:n].tolist()


def heldout_tasks(cfg: ScalingConfig) -> list[int]:
    from envs.registry import task_subset

    return task_subset(cfg.env, "test", cfg.eval_tasks)


def optimal_returns(cfg: ScalingConfig) -> np.ndarray:
    """Each held-out task's optimal return (the registry's)."""
    from envs.registry import optimal_return

    return np.asarray([optimal_return(cfg.env, t) for t in heldout_tasks(cfg)], np.float64)


# ---------------------------------------------------------------------- curves
def curve_points(pulls: int, points: int = 128) -> np.ndarray:
    """The pull counts (1-based) at which cumulative-regret curves are stored."""
    return np.unique(np.linspace(1, pulls, min(points, pulls)).round().astype(np.int64))


def regret_summary(regret: np.ndarray) -> dict[str, Any]:
    """Bandits: expected regret ``[tasks, pulls]`` per pull -> the cumulative regret at the
    last pull (mean, sem over tasks, per task) and its curve against pulls."""
    cum = np.cumsum(regret, axis=1)
    at = curve_points(regret.shape[1])
    final = cum[:, -1]
    per_pull = regret.mean(axis=0)
    p = regret.shape[1]
    return {"final_mean": float(final.mean()), "final_sem": _sem(final),
            "final_per_task": final.tolist(), "curve_x": at.tolist(),
            "curve": cum[:, at - 1].mean(axis=0).tolist(),
            "per_pull_regret": {f"{a}-{b}": float(per_pull[a:b].mean())
                                for a, b in ((0, p // 4), (p // 4, p // 2), (p // 2, p))}}


def return_summary(returns: np.ndarray, optimal: np.ndarray) -> dict[str, Any]:
    """Grids: returns ``[tasks, episodes]`` of in-context episodes -> the mean return per
    episode, and the final return (mean over the last 10% of the episodes: mean, sem over
    tasks, per task) also as a fraction of the tasks' mean optimal return."""
    e = returns.shape[1]
    last = max(1, math.ceil(FINAL_FRACTION * e))
    final = returns[:, e - last:].mean(axis=1)
    best = float(np.mean(optimal))
    return {"final_mean": float(final.mean()), "final_sem": _sem(final),
            "final_per_task": final.tolist(), "final_episodes": [e - last + 1, e],
            "curve_x": list(range(1, e + 1)), "curve": returns.mean(axis=0).tolist(),
            "optimal": best, "final_fraction_of_optimal": float(final.mean()) / best
            if best else None}


def _sem(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0


def report_returns(report: dict[str, Any], tasks: list[int], trials: int) -> np.ndarray:
    """``[tasks, trials]`` returns of an ``rl_ring.eval`` report, each task's first row (in
    seed-then-row order; a last seed's rows wrap around to tasks already played)."""
    first: dict[int, tuple[int, int]] = {}
    for e in report["episodes"]:
        first.setdefault(int(e["task"]), (e["seed"], e["env_index"]))
    missing = [t for t in tasks if t not in first]
    if missing:
        raise ValueError(f"evaluation report: no episodes of held-out tasks {missing[:5]}")
    row = {first[t]: i for i, t in enumerate(tasks)}
    out = np.full((len(tasks), trials), np.nan)
    for e in report["episodes"]:
        i = row.get((e["seed"], e["env_index"]))
        if i is not None and e["return"] is not None:
            out[i, e["trial"]] = e["return"]
    if np.isnan(out).any():
        raise ValueError("evaluation report: unfinished or failed episodes; see its failures")
    return out


# ---------------------------------------------------------------------- baselines
def baselines(cfg: ScalingConfig, workdir: Path) -> dict[str, Any]:
    """Bandits: Thompson sampling, UCB1 and random arms on the held-out bandits. Grids: each
    source's own learning history on every held-out task, and a random policy."""
    if cfg.bandit:
        return bandit_baselines(cfg, family(cfg.env).means_of(heldout_tasks(cfg)),
                                cfg.eval_episodes)
    tasks, optimal = heldout_tasks(cfg), optimal_returns(cfg)
    out = {}
    for i, learner in enumerate(cfg.learners):
        out[learner] = return_summary(source_returns(cfg, learner, tasks, cfg.seed + 1000 + i),
                                      optimal)
    trials = min(cfg.eval_episodes, RANDOM_EPISODES)
    report = grid_evaluate(cfg, None, workdir / "baseline_random", trials)
    out["random"] = return_summary(report_returns(report, tasks, trials), optimal)
    return out


def bandit_baselines(cfg: ScalingConfig, means: np.ndarray, pulls: int) -> dict[str, Any]:
    """Thompson sampling, UCB1 and random arms for ``pulls`` pulls on the bandits ``means``
    ``[B, arms]``: their regret summaries."""
    from envs.learners.bandits import play

    params = family(cfg.env)
    names = BASELINES
    if params.distribution == "bernoulli" and (params.low, params.high) != (0.0, 1.0):
        names += (PRIOR_BASELINE,)
    return {name: regret_summary(play(params, means, name, pulls,
                                      seed=cfg.seed + 1000 + i)["regret"])
            for i, name in enumerate(names)}


def grid_evaluate(cfg: ScalingConfig, policy, out: Path, trials: int) -> dict[str, Any]:
    """``rl_ring.eval.evaluate`` on every held-out task (``policy`` None: random actions)."""
    from envs.evaluation import env_factory
    from rl_ring.eval import EvalConfig, evaluate

    ecfg = EvalConfig(**grid_eval_options(cfg), out=str(out), trials=trials,
                      x_label="in-context episode")
    return evaluate(ecfg, make_env=env_factory(cfg.env), tasks=heldout_tasks(cfg),
                    policy=policy)


def grid_eval_options(cfg: ScalingConfig) -> dict[str, Any]:
    """``EvalConfig`` options every grid evaluation of the experiment shares: all held-out
    tasks, ``eval_rows`` side by side, the evaluation seeds."""
    tasks = heldout_tasks(cfg)
    rows = min(cfg.eval_rows or len(tasks), len(tasks))
    return {"env": cfg.env, "envs": rows, "seeds": -(-len(tasks) // rows),
            "first_seed": cfg.seed + 2000, "task_split": "test", "progress": False,
            "overwrite": True}  # inside this experiment's own work directory


# ---------------------------------------------------------------------- evaluation
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


def evaluate_run(cfg: ScalingConfig, ckpt: str, rdir: Path, window: int) -> dict[str, Any]:
    """The checkpoint played in context on the held-out tasks (KV-cached policy)."""
    from agents.policy import eval_policy_from_checkpoint

    policy = eval_policy_from_checkpoint(ckpt, episode_steps=cfg.episode_steps)
    if cfg.bandit:
        params = family(cfg.env)
        played = play_policy(policy, params, params.means_of(heldout_tasks(cfg)),
                             cfg.eval_episodes, seed=cfg.seed + 2000)
    else:
        t0 = time.perf_counter()
        report = grid_evaluate(cfg, policy, rdir / "eval", cfg.eval_episodes)
        played = return_summary(report_returns(report, heldout_tasks(cfg), cfg.eval_episodes),
                                optimal_returns(cfg))
        played["wall_s"] = time.perf_counter() - t0
        t = report["timing"]
        rows = report["num_envs"]
        # Mean over the whole evaluation (context growing, refills at each slide included).
        step = t["policy_s"] / max(1.0, t["env_steps"] / rows)
        played["decode"] = {"rows": rows, "context_tokens_at_end":
                            min(cfg.window_steps(window), cfg.window_steps(cfg.eval_episodes))
                            * policy.k, "s_per_step": step, "s_per_token": step / rows,
                            "env_steps": t["env_steps"], "note": "mean policy time per step"}
    played["tokens_per_step"] = policy.k
    return played


# ---------------------------------------------------------------------- training
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
        init_from=str(init_run(cfg, agent, seed) / "train") if cfg.init_from else "",
        optim=OptimConfig(lr=cfg.lr, warmup_steps=cfg.warmup_steps),
        log_every=max(1, min(10, cfg.steps // 20)), ckpt_every=min(100, cfg.steps),
        keep_checkpoints=2, progress=False, tensorboard=False)


def init_run(cfg: ScalingConfig, agent: str, seed: int) -> Path:
    """The finished run a curriculum step of ``agent`` / ``seed`` starts from."""
    seed = cfg.init_seed if cfg.init_seed >= 0 else seed
    src = Path(cfg.init_from) / run_name(agent, cfg.init_window, seed)
    if not (src / "record.json").exists():
        raise ValueError(f"--init-from {cfg.init_from}: no finished run {src.name} there "
                         f"(record.json) for --init-window {cfg.init_window}, seed {seed}")
    return src


def train(tcfg, *, watch: bool, stall_s: float = 300.0, restarts: int = 3) -> dict[str, Any]:
    """Trains ``tcfg``; in a child process restarted from its last checkpoint when it stalls
    (``watch``, ``rl_ring.io.run_watched``: for the reason given there,
    XLA:CPU collectives of 8 fake devices on a busy 2-core machine) or in this process."""
    from rl_ring.train.config import to_dict
    from rl_ring.train.metrics import read_metrics

    t0 = time.perf_counter()
    attempt = 0
    if watch:
        job = Path(tcfg.workdir).with_suffix(".job.json")
        job.write_text(json.dumps({"config": to_dict(tcfg)}))
        attempt = run_watched(
            [sys.executable, "-m", "experiments.context_scaling", "--worker", str(job)],
            env={**device_env(8), "JAX_PLATFORMS": "cpu"}, name=tcfg.workdir,
            progress=Path(tcfg.workdir) / "metrics.jsonl", stall_s=stall_s,
            restarts=restarts, log=log)
    else:
        from agents.run import train as train_agent

        train_agent(tcfg)
    return training_summary(read_metrics(tcfg.workdir), wall_s=time.perf_counter() - t0,
                            restarts=attempt)


def training_summary(rows: list[dict[str, Any]], *, wall_s: float,
                     restarts: int | None) -> dict[str, Any]:
    """A training's record from its ``metrics.jsonl`` rows and its measured wall time."""
    steady = [r["tokens_per_s"] for r in rows[1:] if "tokens_per_s" in r]
    return {"wall_s": wall_s, "restarts": restarts,
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


def data_spec(cfg: ScalingConfig):
    """The family's observation size and discrete action count."""
    from agents.base import DataSpec
    from envs.registry import make

    env = make(cfg.env)
    try:
        return DataSpec(obs_dim=int(np.prod(env.observation_space.shape)),
                        act_dim=int(env.action_space.n), discrete_actions=True)
    finally:
        env.close()


def agent_shape(cfg: ScalingConfig, agent: str, window: int):
    """``(resolved model, tokens per step)`` of an agent's configuration on this family."""
    from agents import registry

    module = registry.get(agent)
    spec = data_spec(cfg)
    agent_cfg = AGENT_PLANS[agent]().config(cfg, window)
    return (module.resolved_model(agent_cfg, spec),
            module.make_layout(agent_cfg, spec).tokens_per_step)


def step_memory(cfg: ScalingConfig, agent: str, window: int) -> dict[str, Any]:
    """Per-device bytes of the compiled training step: dense (reference attention, 1 device),
    blockwise (1 device), ring (8 devices, contiguous layout)."""
    from rl_ring.train.plan import StepShape, plan_step

    model, k = agent_shape(cfg, agent, window)
    steps = cfg.window_steps(window)
    out = {}
    for label, impl, mesh in (("dense", "reference", "seq=1"), ("blockwise", "blockwise", "seq=1"),
                              ("ring", "ring", "seq=8")):
        if label not in cfg.memory_attention:
            continue
        shape = StepShape(name=f"{agent}-w{window}-{label}", agent=agent,
                          model=model.replace(attn_impl=impl), batch_size=cfg.memory_batch,
                          steps_per_sequence=steps, tokens_per_step=k, mesh=mesh)
        rep = plan_step(shape)
        out[label] = {"mesh": rep.mesh, "devices": rep.devices, "peak_bytes": rep.peak_bytes,
                      "temp_bytes": rep.temp_bytes, "argument_bytes": rep.argument_bytes,
                      "compile_s": rep.compile_s}
    return {"batch_size": cfg.memory_batch, "tokens_per_sequence": steps * k, **out}


# ---------------------------------------------------------------------- one run
RUN_INDEPENDENT = ("windows", "memory_batch", "memory_windows", "memory_attention",
                   "plan_windows")
"""Config fields that do not change one (agent, window, seed) run: the other windows of the
grid and the report-only tables. A finished run stays valid when only these change, so a
grid can be extended (``--windows``, ``--seeds``) without retraining what it holds."""


def same_run(saved: dict[str, Any], key: dict[str, Any]) -> bool:
    """Whether a finished run's saved key describes the run ``key`` asks for."""
    defaults = dataclasses.asdict(ScalingConfig())
    added = [f for f in key.get("config", {}) if f not in saved.get("config", {})
             and key["config"][f] == defaults.get(f, object())]

    def strip(k: dict[str, Any]) -> dict[str, Any]:
        k = json.loads(json.dumps(k))
        for f in (*RUN_INDEPENDENT, *added):
            k.get("config", {}).pop(f, None)
        return k

    return strip(saved) == strip(key)


def run_key(cfg: ScalingConfig, agent: str, window: int, seed: int) -> dict[str, Any]:
    """What makes one run: the configuration, agent, window and seed (a run started from its
    own seed's run is keyed so whether or not ``init_seed`` names that seed)."""
    if cfg.init_seed == seed:
        cfg = cfg.replace(init_seed=-1)
    return {"config": dataclasses.asdict(cfg), "agent": agent, "window": window, "seed": seed}


def record_config(record: dict[str, Any]) -> ScalingConfig:
    """The configuration a finished run's record was made with (fields a record of an older
    version lacks take their defaults; fields this version no longer has are dropped)."""
    names = {f.name for f in dataclasses.fields(ScalingConfig)}
    return ScalingConfig(**{k: tuple(v) if isinstance(v, list) else v
                            for k, v in record["key"]["config"].items() if k in names})


def finished_record(cfg: ScalingConfig, agent: str, window: int, seed: int,
                    workdir: Path) -> dict[str, Any] | None:
    """The record of the finished run of this configuration in ``workdir``, else None."""
    done = workdir / run_name(agent, window, seed) / "record.json"
    if not done.exists():
        return None
    record = json.loads(done.read_text())
    return record if same_run(record["key"], run_key(cfg, agent, window, seed)) else None


TRAINED_FILE = "trained.json"
"""In a run folder: the training's config and summary, written when its training finished."""


def finished_training(tcfg, rdir: Path) -> dict[str, Any] | None:
    """The summary of ``tcfg``'s training if it finished in ``rdir`` before, else None.

    Finished means: the training folder's saved config is ``tcfg``'s (agent options resolved,
    as the training loop saves it) and a checkpoint of the
    last step is there. An evaluation interrupted after such a training then replays that
    checkpoint instead of training again. The summary is the one saved when the training
    ended (``trained.json``); for a training finished before that file existed it is rebuilt
    from ``metrics.jsonl`` (wall time then from its last row: the training loop's own clock,
    without the process start).
    """
    from agents.run import resolve_config
    from rl_ring.train.checkpoint import CKPT_SUBDIR, Checkpointer
    from rl_ring.train.config import to_dict
    from rl_ring.train.loop import CONFIG_FILE
    from rl_ring.train.metrics import read_metrics

    want = json.loads(json.dumps(to_dict(resolve_config(tcfg))))
    saved = Path(tcfg.workdir) / CONFIG_FILE
    if not saved.exists() or not (Path(tcfg.workdir) / CKPT_SUBDIR).is_dir():
        return None
    if json.loads(saved.read_text()).get("config") != want:
        return None
    if Checkpointer(tcfg.workdir, read_only=True).latest_step() != tcfg.steps:
        return None
    summary = rdir / TRAINED_FILE  # written with this train/ (rdir is cleared before training)
    if summary.exists():
        return json.loads(summary.read_text())["train"]
    rows = read_metrics(tcfg.workdir)
    if not rows or rows[-1].get("step") != tcfg.steps:
        return None
    return {**training_summary(rows, wall_s=float(rows[-1]["wall_time"]), restarts=None),
            "wall_s_from": "metrics.jsonl"}


def run_one(cfg: ScalingConfig, agent: str, window: int, seed: int, workdir: Path, data: str,
            *, watch: bool) -> dict[str, Any]:
    """Train -> play the held-out tasks; the record (also saved in the run's directory)."""
    from agents.run import resolve_config
    from rl_ring.io import write_json
    from rl_ring.train.config import to_dict

    name = run_name(agent, window, seed)
    rdir = workdir / name
    done = rdir / "record.json"
    key = run_key(cfg, agent, window, seed)
    record = finished_record(cfg, agent, window, seed, workdir)
    if record is not None:
        log(f"{name}: finished before, reusing {done}")
        return record
    if done.exists():  # another configuration's finished run: its models are kept
        saved = json.loads(done.read_text())["key"]
        changed = sorted(f for f in {*saved.get("config", {}), *key["config"]}
                         if f not in RUN_INDEPENDENT
                         and saved.get("config", {}).get(f) != key["config"].get(f))
        raise ValueError(f"{rdir}: holds a finished run of another configuration (differing "
                         f"in {', '.join(changed) or 'agent, window or seed'}); it is kept: "
                         f"choose another --workdir for this one")
    tcfg = train_config(cfg, agent, window, seed, data, str(rdir / "train"))
    trained = finished_training(tcfg, rdir)
    if trained is not None:
        log(f"{name}: training finished before ({cfg.steps} steps), evaluating it")
    else:
        if rdir.exists():  # interrupted while training: start afresh
            shutil.rmtree(rdir)
        rdir.mkdir(parents=True)
        trained = train(tcfg, watch=watch)
        write_json({"config": to_dict(resolve_config(tcfg)), "train": trained},
                   rdir / TRAINED_FILE)
        log(f"{name}: {cfg.steps} steps on mesh {tcfg.mesh} in {trained['wall_s']:.0f} s "
            f"({trained['tokens_per_s']:.0f} tokens/s), final loss {trained['final_loss']:.3f}")
    played = evaluate_run(cfg, tcfg.workdir, rdir, window)
    record = {"key": key, "name": name, "agent": agent, "window": window, "seed": seed,
              "tokens_per_sequence": cfg.window_steps(window) * played["tokens_per_step"],
              "mesh": tcfg.mesh, "train": trained, "eval": played}
    write_json(record, done)
    log(f"{name}: final {metric(cfg)['name']} {played['final_mean']:.3f} "
        f"+- {played['final_sem']:.3f} (eval {played['wall_s']:.0f} s)")
    return record


# ---------------------------------------------------------------------- the experiment
def metric(cfg: ScalingConfig) -> dict[str, Any]:
    """What the final number of a configuration is."""
    if cfg.bandit:
        return {"name": "cumulative regret", "at": f"{cfg.eval_episodes} pulls",
                "better": "lower", "x": "pulls (one-pull episodes in context)"}
    last = max(1, math.ceil(FINAL_FRACTION * cfg.eval_episodes))
    return {"name": "return", "at": f"mean over in-context episodes "
            f"{cfg.eval_episodes - last + 1}-{cfg.eval_episodes}", "better": "higher",
            "x": "in-context episode"}


def summarize(cfg: ScalingConfig, records: list[dict[str, Any]], base: dict[str, Any],
              memory: dict[str, Any], recipe: dict[str, Any] | None = None) -> dict[str, Any]:
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
                "agent": agent, "window": w, "window_steps": cfg.window_steps(w),
                "mesh": runs[0]["mesh"],
                "tokens_per_sequence": runs[0].get("tokens_per_sequence", w),
                "attention": "ring" if runs[0]["mesh"] == "seq=8" else "per device",
                "final": {"mean": float(finals.mean()), "std": float(finals.std()),
                          "per_seed": finals.tolist(),
                          "sem_over_tasks": [r["eval"]["final_sem"] for r in runs]},
                "curve_x": runs[0]["eval"]["curve_x"],
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
            if not cfg.bandit:
                entry["final"]["fraction_of_optimal"] = float(
                    finals.mean() / runs[0]["eval"]["optimal"])
            configs.append(entry)
            xs.append(w)
            means.append(entry["final"]["mean"])
            stds.append(entry["final"]["std"])
        headline[agent] = {"windows": xs, "final_mean": means, "final_std": stds}
    longest = max(cfg.windows)
    decode = next((c["decode"] for c in configs if c["window"] == longest and c["decode"]),
                  None)
    out = {"env": cfg.env, "config": dataclasses.asdict(cfg), "metric": metric(cfg),
           "episode_steps": cfg.episode_steps, "eval_episodes": cfg.eval_episodes,
           "eval_tasks": len(heldout_tasks(cfg)), "configs": configs, "headline": headline,
           "baselines": {k: {kk: vv for kk, vv in v.items() if kk != "final_per_task"}
                         for k, v in base.items()},
           "decode_longest": decode, "targets": targets(cfg, records, base)}
    if cfg.bandit:
        out["bandit"] = family(cfg.env).to_dict()
    else:
        out["optimal"] = float(optimal_returns(cfg).mean())
    if recipe is not None:
        out["recipe_scale"] = recipe
    return out


def targets(cfg: ScalingConfig, records: list[dict[str, Any]],
            base: dict[str, Any]) -> dict[str, Any]:
    """Issue 10's targets per agent, longest window against shortest.

    Bandits: the longest window within 1.25x Thompson sampling and below UCB1; the shortest
    worse by more than 3 standard errors (over held-out bandits, pooled over seeds).
    Grids: the longest window's final return above the shortest's by more than the seed
    spread (the two std's over training seeds added: mean +- std bars apart), and at least
    70% of the optimal return."""
    out = {}
    lo, hi = min(cfg.windows), max(cfg.windows)
    for agent in dict.fromkeys(r["agent"] for r in records):
        def runs(w, agent=agent):
            return [r for r in records if r["agent"] == agent and r["window"] == w]

        long, short = runs(hi), runs(lo)
        if not long or not short:
            continue
        out[agent] = (_bandit_targets if cfg.bandit else _grid_targets)(long, short, base)
        out[agent].update(longest_window=hi, shortest_window=lo)
    return out


def _bandit_targets(long_runs, short_runs, base) -> dict[str, Any]:
    ts, ucb = base["thompson"]["final_mean"], base["ucb"]["final_mean"]
    long, short = (np.concatenate([np.asarray(r["eval"]["final_per_task"]) for r in runs])
                   for runs in (long_runs, short_runs))
    diff = float(short.mean() - long.mean())
    se = float(np.sqrt(short.var(ddof=1) / len(short) + long.var(ddof=1) / len(long)))
    return {"longest_over_thompson": float(long.mean() / ts) if ts else None,
            "within_1.25x_thompson": bool(long.mean() <= 1.25 * ts),
            "below_ucb": bool(long.mean() < ucb),
            "shortest_minus_longest": diff, "difference_se": se,
            "shortest_worse_by_3se": bool(diff > 3 * se)}


def _grid_targets(long_runs, short_runs, base) -> dict[str, Any]:
    del base
    long, short = (np.asarray([r["eval"]["final_mean"] for r in runs])
                   for runs in (long_runs, short_runs))
    optimal = long_runs[0]["eval"]["optimal"]
    diff = float(long.mean() - short.mean())
    spread = float(long.std() + short.std())
    frac = float(long.mean() / optimal) if optimal else None
    return {"longest_minus_shortest": diff, "seed_spread": spread,
            "longest_beats_shortest_by_seed_spread": bool(diff > spread),
            "longest_fraction_of_optimal": frac,
            "longest_reaches_70pct_optimal": bool(frac is not None and frac >= 0.7)}


def check_sources(cfg: ScalingConfig, agents_: list[str], seeds: int,
                  finished_only: bool) -> None:
    """Every run a curriculum or DAgger step starts from is there and fits, before any work
    (raises ValueError naming the folder)."""
    if finished_only:
        return
    if cfg.init_from:
        for agent in agents_:
            for s in range(seeds):
                init_run(cfg, agent, s)
    if cfg.dagger_from and "ad" in agents_:
        dagger_run(cfg)


def run(cfg: ScalingConfig, agents_: list[str], seeds: int, workdir: Path, out: Path, *,
        watch: bool, name: str, finished_only: bool = False) -> dict[str, Any]:
    """Every agent x window x seed, the baselines and the memory tables; writes the results."""
    from experiments import context_scaling_report as report
    from rl_ring.io import write_json

    t_start = time.perf_counter()
    tasks = training_tasks(cfg)
    records, memory = [], {}
    for agent in agents_:
        if agent not in AGENT_PLANS:
            raise ValueError(f"agent {agent!r}: known agents are {', '.join(AGENT_PLANS)}")
    recipe = report.recipe_plan(cfg, agents_, agent_shape)
    for agent in agents_:
        plan = AGENT_PLANS[agent]()
        data_dir = workdir / f"data-{agent}{data_suffix(cfg, agent)}"
        if not finished_only and not (data_dir / "store.json").exists():
            t0 = time.perf_counter()
            store = plan.data(cfg, tasks)
            store.save(data_dir, overwrite=True)
            hist = store.episode_extras.get("history_id")
            n_hist = len(np.unique(hist)) if hist is not None else cfg.histories
            log(f"{agent}: {store.num_episodes} episodes ({store.num_steps} steps) in "
                f"{n_hist} histories on {len(tasks)} training tasks "
                f"({time.perf_counter() - t0:.1f} s)")
        for w in cfg.windows:
            if w in (cfg.windows if cfg.memory_windows is None else cfg.memory_windows):
                memory[f"{agent}-w{w}"] = step_memory(cfg, agent, w)
            for s in range(seeds):
                if finished_only:
                    record = finished_record(cfg, agent, w, s, workdir)
                    if record is None:
                        log(f"{run_name(agent, w, s)}: not finished, left out "
                            f"(--finished-only)")
                    else:
                        records.append(record)
                    continue
                records.append(run_one(cfg, agent, w, s, workdir, str(data_dir), watch=watch))
    if not records:
        raise ValueError(f"--finished-only: no finished run of this configuration in "
                         f"{workdir}")
    base = baselines(cfg, workdir)
    summary = summarize(cfg, records, base, memory, recipe)
    summary["wall_s"] = time.perf_counter() - t_start
    summary["workdir"] = str(workdir)
    summary["files"] = {"plot": report.plot(summary, out / f"{name}.png").name}
    write_json(summary, out / f"{name}.json")
    for line in report.table(summary):
        print(line)
    return summary


# ---------------------------------------------------------------------- CLI
@dataclass(frozen=True)
class Args:
    """Options of the context-scaling experiment."""

    env: Literal["bandit-hard", "bandit-gauss", "darkroom-hard", "keydoor"] = "bandit-hard"
    """Task family."""
    seeds: int = 3
    """Training seeds per configuration."""
    agents: tuple[str, ...] = field(default_factory=tuple)
    """Agents to train (default: AD, and DPT when agents.dpt imports)."""
    steps: int = 0
    """Override the optimiser steps (0: as configured); runs other than the configured go
    to <workdir>/<env>-steps<N>, results to <out>/context_scaling_<env>_steps<N>.json."""
    batch_size: int = 0
    """Override the windows per batch (0: as configured); likewise ``-batch<N>``."""
    lr: float = 0.0
    """Override the peak learning rate (0: as configured); likewise ``-lr<LR>``."""
    warmup_steps: int = -1
    """Override the warmup steps (-1: as configured); likewise ``-warmup<N>``."""
    windows: tuple[int, ...] = ()
    """Override the context windows in episodes (default: bandits 256 1024 4096 pulls,
    grids 16 64 256 episodes)."""
    solved_weight: float = 1.0
    """Grids, AD: loss weight of the targets after each history's first success (search
    episodes weigh 1); likewise ``-solved<W>`` (after -steps and -batch)."""
    tiny: bool = False
    """Seconds on CPU: tiny model, two short windows, few tasks (the test runs it)."""
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
    init_from: str = ""
    """A curriculum step: every run starts from the finished run of the same agent and seed
    at --init-window in this run folder (e.g. runs/context_scaling/darkroom-hard); runs go to
    <workdir>/<env>...-init<W>."""
    init_window: int = 0
    """The window (episodes) of the --init-from runs."""
    init_seed: int = -1
    """Every seed starts from the --init-from run of this seed (-1: each from its own), to
    measure one curriculum step's spread over training seeds; the runs go to
    <workdir>/<env>...-init<W>s<S>."""
    dpt_source: Literal["histories", "random"] = "histories"
    """Grids, DPT: windows of the sources' learning histories, or uniformly random actions
    on the same tasks (the DPT paper's data); likewise ``-dptrandom``."""
    dpt_labels: Literal["x-first", "any-shortest"] = "x-first"
    """Grids, DPT: the shortest-path labels, along x first or drawn uniformly among the
    shortest moves at each step; likewise ``-anyshortest``."""
    history_episodes: int = 0
    """Override the episodes per learning history (0: as configured; grids: Dark Room hard
    256, Key-to-Door 2,048); likewise ``-hist<N>``. The sources solve a Key-to-Door pair in
    ~3 episodes, so the shorter the history, the more of it is search."""
    histories: int = 0
    """Override the number of learning histories, one per training task (0: as
    configured); likewise ``-histories<N>``."""
    eval_tasks: int = -1
    """Override the held-out tasks played, the first of the fixed shuffle (-1: as
    configured; 0: all); likewise ``-eval<N>``."""
    source_noise: float = 0.0
    """Grids: the sources take a uniformly random action with this probability at every
    step (0: never, as configured); likewise ``-noise<P>``."""
    source_labels: Literal["taken", "intended"] = "taken"
    """Grids, AD: train on the actions the noisy sources took, or on those they intended
    before their noise (with --source-noise); likewise ``-intended``."""
    step_prev_obs: bool = False
    """AD: each STEP token also carries the previous step's observation (Key-to-Door's door
    cell, which ends the episode on arrival, then sits in one token); likewise
    ``-prevobs``."""
    dagger_from: str = ""
    """Grids, AD: one DAgger step. The finished AD run at --dagger-window (seed 0) in this
    run folder plays --dagger-histories training tasks for --dagger-episodes episodes each,
    shadow sources label every state it reaches, and the new runs train on the sources'
    histories plus those, with the sources' actions as targets; runs go to
    <workdir>/<env>...-dagger<W>. From such a folder, the next round: its data (sources and
    rollouts) plus the new model's rollouts, to <workdir>/<env>...-dagger<W>r2, and so on."""
    dagger_window: int = 0
    """The window (episodes) of the --dagger-from run."""
    dagger_histories: int = 1000
    """Histories the --dagger-from model plays (likewise ``-dh<H>x<E>`` if not 1000 x 32)."""
    dagger_episodes: int = 32
    """Episodes of each of those histories."""
    dagger_learners: tuple[str, ...] = ()
    """The shadow sources labelling a DAgger step's rollouts, in turn (default: the data's
    sources); likewise ``-dl<L>[+<L>]``. One shadow makes the targets a function of the
    tokens; several, a mixture the model cannot tell apart."""
    dagger_memory: int = 0
    """Episodes the shadows remember, the current one included (0: the whole history;
    likewise ``-dm<M>``): the model's window, so that no target rests on what its context
    cannot show."""
    dagger_withhold: int = 0
    """Dark Room: withhold each rollout history's goal for its first W episodes, W uniform
    in [0, N] (likewise ``-dw<N>``): long fruitless searches, labelled by the shadows."""
    dagger_withhold_turns: int = 0
    """With --dagger-withhold: the goal comes back once the model has been turned away from
    it in this many episodes (0: only after W; likewise ``-dw<N>t<M>``)."""
    finished_only: bool = False
    """Train nothing: summarise the runs of the grid that have finished (a configuration
    keeps the seeds it has; an error when none has)."""


def results_name(env: str) -> str:
    return RESULTS + ("" if env == "bandit-hard" else f"_{env.replace('-', '_')}")


def destinations(cfg: ScalingConfig, args: Args) -> tuple[str, Path]:
    """The results' file name (no suffix) and the run folder of ``cfg``. Other steps,
    batches or loss weights train other models: their runs and results live apart
    (:func:`config_suffix`), and the finished runs of each configuration stay."""
    suffix = config_suffix(cfg, tiny_config(args.env) if args.tiny else main_config(args.env))
    folder = (f"tiny-{args.env}" if args.tiny else args.env) + suffix
    return results_name(args.env) + suffix.replace("-", "_"), Path(args.workdir) / folder


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
    if args.lr:
        cfg = cfg.replace(lr=args.lr)
    if args.warmup_steps >= 0:
        cfg = cfg.replace(warmup_steps=args.warmup_steps)
    if args.windows:
        cfg = cfg.replace(windows=tuple(args.windows))
    try:
        data = {"history_episodes": args.history_episodes or None,
                "histories": args.histories or None,
                "eval_tasks": args.eval_tasks if args.eval_tasks >= 0 else None,
                "source_noise": args.source_noise or None}  # None: as configured
        cfg = cfg.replace(**{k: v for k, v in data.items() if v is not None})
        from rl_ring.io import check_results, claim_run_dir

        init = str(Path(args.init_from).absolute()) if args.init_from else ""
        cfg = cfg.replace(solved_weight=args.solved_weight, init_from=init,
                          init_window=args.init_window, init_seed=args.init_seed,
                          dpt_source=args.dpt_source,
                          dpt_labels=args.dpt_labels, source_labels=args.source_labels,
                          dagger_from=(str(Path(args.dagger_from).absolute())
                                       if args.dagger_from else ""),
                          dagger_window=args.dagger_window,
                          dagger_histories=args.dagger_histories,
                          dagger_episodes=args.dagger_episodes,
                          dagger_learners=tuple(args.dagger_learners),
                          dagger_memory=args.dagger_memory,
                          dagger_withhold=args.dagger_withhold,
                          dagger_withhold_turns=args.dagger_withhold_turns,
                          step_prev_obs=args.step_prev_obs)
        name, workdir = destinations(cfg, args)

        path = Path(args.out) / name
        check_results([path.with_suffix(".json"), path.with_suffix(".png")],
                      workdir=args.workdir, overwrite=args.overwrite,
                      what="context_scaling's results")
        agents_ = list(args.agents) or default_agents()
        check_sources(cfg, agents_, args.seeds, args.finished_only)
        claim_run_dir(args.workdir, kind="context_scaling", overwrite=args.overwrite)
        workdir.mkdir(parents=True, exist_ok=True)
        run(cfg, agents_, args.seeds, workdir, Path(args.out),
            watch=args.watch and not args.tiny, name=name, finished_only=args.finished_only)
    except (ValueError, OSError) as err:
        print(f"context_scaling: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
