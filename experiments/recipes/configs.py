"""Full-scale recipes: the paper's Agentic Transformer on ExoRL, the DT paper's D4RL runs.

A :class:`Recipe` is everything a run needs: the training configuration (agent options and
model included, the same object ``rl-ring train`` builds), the step's shape for
``rl-ring plan``, where the data lives under a data root, and how to evaluate and score it.

* ``at-exorl-<task>``: the Ring Attention paper's in-context RL setting: a 350M-parameter
  trajectory transformer (width 1024, 28 layers, 16 heads), chains of 128 trajectories of up
  to 1000 steps x 4 tokens (return-to-go, state, action, reward) = 512K tokens, ring attention
  with the zigzag layout, bfloat16 compute, on the six tasks of the paper's table.
* ``dt-d4rl-<dataset>``: the Decision Transformer paper's D4RL configuration (3 layers,
  1 head, width 128, ReLU, dropout 0.1, K = 20, batch 64, lr 1e-4 with 10k warmup steps,
  clip 0.25, weight decay 1e-4, 100k steps) on halfcheetah / hopper / walker2d medium,
  medium-replay and medium-expert.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from agents.presets import D4RL_DT, PAPER_AT_EXORL, kind_features, train_preset
from rl_ring.train.config import TrainConfig
from rl_ring.train.plan import StepShape


@dataclass(frozen=True)
class ExoRLTask:
    """One task of the paper's ExoRL table."""

    task: str
    """ExoRL task name (rewards are relabelled for it): walker_run, jaco_reach_top_left, ..."""
    domain: str
    """ExoRL domain directory: ``datasets/<domain>/<algo>/buffer``."""
    env: str
    """Evaluation env id."""
    obs_dim: int
    """Flat observation width."""
    act_dim: int
    """Action width."""
    episode_steps: int
    """Steps per episode (1000 for the suite tasks, 250 for Jaco)."""
    paper: tuple[tuple[str, float], ...]
    """The paper's numbers for this task (its in-context RL table, single runs)."""


def _paper(bc, dt, bpt32, ring128) -> tuple[tuple[str, float], ...]:
    return (("BC-10%", bc), ("DT", dt), ("AT+BPT 32", bpt32), ("AT+Ring 128", ring128))


EXORL_TASKS: dict[str, ExoRLTask] = {
    t.task: t
    for t in (
        ExoRLTask("walker_stand", "walker", "dmc:walker-stand", 24, 6, 1000,
                  _paper(52.91, 34.54, 95.45, 98.23)),
        ExoRLTask("walker_run", "walker", "dmc:walker-run", 24, 6, 1000,
                  _paper(34.81, 49.82, 105.88, 110.45)),
        ExoRLTask("walker_walk", "walker", "dmc:walker-walk", 24, 6, 1000,
                  _paper(13.53, 34.94, 78.56, 78.95)),
        ExoRLTask("cheetah_run", "cheetah", "dmc:cheetah-run", 17, 6, 1000,
                  _paper(34.66, 67.53, 178.75, 181.34)),
        # The paper's "Jaco Reach": ExoRL's jaco reach tasks; top-left is the recipe's default.
        ExoRLTask("jaco_reach_top_left", "jaco", "dmc:jaco-reach_top_left", 42, 9, 250,
                  _paper(23.95, 18.64, 87.56, 89.51)),
        ExoRLTask("cartpole_swingup", "cartpole", "dmc:cartpole-swingup", 5, 1, 1000,
                  _paper(56.82, 67.56, 120.56, 123.45)),
    )
}


@dataclass(frozen=True)
class D4RLDataset:
    """One D4RL locomotion dataset and the DT paper's evaluation settings for it."""

    name: str
    """Dataset name (the file is ``<name>.hdf5``), e.g. hopper-medium-v2."""
    env: str
    """Evaluation env id (Gymnasium v4: the same model and reward as the v3 envs D4RL used)."""
    obs_dim: int
    """Observation width."""
    act_dim: int
    """Action width."""
    target_return: float
    """Return-to-go the DT paper conditions on at evaluation."""
    dt_paper: float
    """DT paper's normalised score."""
    corl: float
    """CORL's DT reimplementation, last checkpoint."""


_D4RL_ENVS = {"halfcheetah": ("gym:HalfCheetah-v4", 17, 6, 6000.0),
              "hopper": ("gym:Hopper-v4", 11, 3, 3600.0),
              "walker2d": ("gym:Walker2d-v4", 17, 6, 5000.0)}
# (DT paper, CORL) normalised scores per dataset (REFERENCE.md section 3).
_D4RL_SCORES = {
    "halfcheetah-medium-v2": (42.6, 42.2), "halfcheetah-medium-replay-v2": (36.6, 38.9),
    "halfcheetah-medium-expert-v2": (86.8, 91.6), "hopper-medium-v2": (67.6, 65.1),
    "hopper-medium-replay-v2": (82.7, 81.8), "hopper-medium-expert-v2": (107.6, 110.4),
    "walker2d-medium-v2": (74.0, 67.6), "walker2d-medium-replay-v2": (66.6, 59.9),
    "walker2d-medium-expert-v2": (108.1, 107.1),
}
D4RL_DATASETS: dict[str, D4RLDataset] = {
    name: D4RLDataset(name, *_D4RL_ENVS[name.split("-")[0]], *scores)
    for name, scores in _D4RL_SCORES.items()
}


@dataclass(frozen=True)
class Recipe:
    """A full-scale run: train, evaluate, score."""

    name: str
    """Recipe name: at-exorl-<task> or dt-d4rl-<dataset>."""
    train: TrainConfig
    """The training run (agent options and model included); data/workdir filled at launch."""
    shape: StepShape
    """The training step's shape (``plan``), with this task's observation/action widths."""
    env: str
    """Evaluation env id."""
    data: str
    """Training data relative to the data root (ExoRL: the relabelled store written by the
    convert stage; D4RL: the .hdf5 file)."""
    source: str = ""
    """ExoRL buffer relative to the data root, converted (relabelled) before training."""
    relabel: str = ""
    """ExoRL task the convert stage relabels rewards for."""
    trials: int = 1
    """Evaluation trials per row (AT: in one context)."""
    eval_envs: int = 10
    """Environment rows per evaluation seed."""
    eval_seeds: int = 10
    """Evaluation seeds."""
    target_return: float | None = None
    """Return to condition on (None: the data's best return)."""
    eval_context_steps: int = 0
    """Steps of context per evaluation row (0: the trained context). AT plays ``trials``
    episodes, so it needs trials x episode length, not the whole 128-trajectory chain: a
    16K-token KV cache instead of a 512K-token one."""
    score_name: str = ""
    """Name of the normalised score ('' for raw returns: dm_control)."""
    hardware: tuple[tuple[str, str], ...] = ()
    """Meshes for named hardware (the launcher's --hardware)."""
    paper: tuple[tuple[str, float], ...] = ()
    """The published numbers this run compares with."""


# Meshes: 'seq' carries the 512K-token chain; with 64+ devices the model also fits without
# fsdp (plans in results/plan_*.txt), 'fsdp' trades optimiser-state memory for traffic.
AT_HARDWARE = (
    ("8gpu", "seq=8"),            # one host, 8 x 80 GB
    ("64gpu", "seq=64"),          # 8 hosts x 8 GPUs
    ("64gpu-fsdp", "fsdp=4,seq=16"),
    ("tpu-v4-64", "seq=64"),      # 64 chips x 32 GB
    ("cpu", "seq=8"),
)
DT_HARDWARE = (("1gpu", "data=1"), ("8gpu", "data=8"), ("cpu", "data=1"))


def exorl_recipe(task: ExoRLTask, algo: str = "proto") -> Recipe:
    """The paper's AT run on one ExoRL task (dataset of exploration algorithm ``algo``)."""
    model = PAPER_AT_EXORL.model.replace(
        obs_dim=task.obs_dim, act_dim=task.act_dim,
        token_features=kind_features("at", task.obs_dim, task.act_dim),
        # The trained model squashes actions into the box (the agents' default).
        squash_actions=True, action_low=(-1.0,) * task.act_dim, action_high=(1.0,) * task.act_dim,
    )
    shape = PAPER_AT_EXORL.replace(
        name=f"at-exorl-{task.task}", model=model, steps_per_sequence=128 * task.episode_steps,
        agent_options=(("num_trajectories", 128), ("max_steps", task.episode_steps)),
    )
    base = train_preset("paper-at-exorl", "at")
    agent_cfg = dataclasses.replace(base.agent_config, max_steps=task.episode_steps,
                                    model=base.agent_config.model.replace(squash_actions=True))
    train = base.replace(env=task.env, agent_config=agent_cfg, steps=100_000, ckpt_every=2000,
                         log_every=50)
    return Recipe(
        name=shape.name, train=train, shape=shape, env=task.env,
        data=f"converted/{task.task}-{algo}", source=f"datasets/{task.domain}/{algo}/buffer",
        relabel=task.task, trials=4, eval_envs=10, eval_seeds=3,
        eval_context_steps=4 * task.episode_steps, hardware=AT_HARDWARE,
        paper=task.paper,
    )


def d4rl_recipe(ds: D4RLDataset) -> Recipe:
    """The DT paper's run on one D4RL dataset."""
    model = D4RL_DT.model.replace(
        obs_dim=ds.obs_dim, act_dim=ds.act_dim,
        token_features=kind_features("dt", ds.obs_dim, ds.act_dim), activation="relu",
        action_low=(-1.0,) * ds.act_dim, action_high=(1.0,) * ds.act_dim,
    )
    shape = D4RL_DT.replace(name=f"dt-d4rl-{ds.name}", model=model)
    base = train_preset("d4rl-dt", "dt")
    agent_cfg = dataclasses.replace(base.agent_config,
                                    model=base.agent_config.model.replace(activation="relu"))
    train = base.replace(env=ds.env, agent_config=agent_cfg, ckpt_every=10_000, log_every=100)
    return Recipe(
        name=shape.name, train=train, shape=shape, env=ds.env, data=f"{ds.name}.hdf5",
        trials=1, eval_envs=10, eval_seeds=10, target_return=ds.target_return,
        score_name=ds.name, hardware=DT_HARDWARE,
        paper=(("DT paper", ds.dt_paper), ("CORL DT", ds.corl)),
    )


RECIPES: dict[str, Recipe] = {
    **{r.name: r for r in (exorl_recipe(t) for t in EXORL_TASKS.values())},
    **{r.name: r for r in (d4rl_recipe(d) for d in D4RL_DATASETS.values())},
}


def get(name: str) -> Recipe:
    """The recipe ``name``; ValueError listing the known ones."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    return RECIPES[name]


def mesh_for(recipe: Recipe, hardware: str) -> str:
    """The recipe's mesh for named hardware; ValueError listing the known names."""
    table = dict(recipe.hardware)
    if hardware not in table:
        raise ValueError(f"{recipe.name}: unknown hardware {hardware!r}; known: {sorted(table)}")
    return table[hardware]
