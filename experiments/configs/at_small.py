"""The small-scale AT / DT / BC grid: tasks, agent settings and run options.

Scaled down from the paper's ExoRL setting (1000-step episodes, 128 trajectories, 350M
parameters) so that 30 training runs fit a 2-core CPU: 25-step episodes (action repeat 8 and
a 2-4 s time limit), chains of n = 4, 16 and 64 trajectories (400 to 6,400 tokens), a 2-layer
64-wide transformer and a few hundred optimiser steps. See docs/reproductions.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    """One dm_control task: where its ExoRL-format data comes from and how it is labelled."""

    name: str
    """Short name used in paths and tables."""
    env: str
    """Env id with its action repeat / time limit (the same id collects and evaluates)."""
    relabel: str
    """ExoRL task name ``read_exorl(..., task=...)`` relabels rewards with."""
    noise: tuple[float, ...] = (0.0, 0.3, 0.5, 1.0, 2.0, 5.0)
    """Scripted-controller action-noise levels, used in turn (mixed-quality data)."""
    episodes: int = 480
    """Episodes collected."""


TASKS: dict[str, TaskSpec] = {
    "cartpole": TaskSpec("cartpole", "dmc:cartpole-swingup:ar8:t2", "cartpole_swingup"),
    "point_mass": TaskSpec("point_mass", "dmc:point_mass-easy:ar8:t4", "point_mass_easy"),
}


@dataclass(frozen=True)
class Setting:
    """One column of the results table: an agent and its context."""

    name: str
    """Column name: bc, dt, at4, at16, at64."""
    agent: str
    """Agent (agents.get): bc, dt or at."""
    num_trajectories: int = 0
    """AT: trajectories per chain (n)."""
    mesh: str = "seq=1"
    """Training mesh: 'seq=8' trains with ring attention over 8 devices."""
    layout: str = "contiguous"
    """Token layout on the seq axis (zigzag balances the ring's causal work)."""


SETTINGS: dict[str, Setting] = {
    "bc": Setting("bc", "bc"),
    "dt": Setting("dt", "dt"),
    "at4": Setting("at4", "at", 4),
    "at16": Setting("at16", "at", 16),
    "at64": Setting("at64", "at", 64, mesh="seq=8", layout="zigzag"),
}


@dataclass(frozen=True)
class SmallConfig:
    """The whole grid: data, models, training, evaluation, outputs."""

    tasks: tuple[str, ...] = ("cartpole", "point_mass")
    """Tasks (keys of TASKS)."""
    settings: tuple[str, ...] = ("bc", "dt", "at4", "at16", "at64")
    """Agent settings (keys of SETTINGS), also extra ones like at2 (AT, n=2, one device)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Training seeds (each also seeds data sampling and dropout)."""
    episodes: int = 0
    """Episodes to collect per task (0: the task's default)."""
    data_seed: int = 0
    """Seed of the data collection."""
    width: int = 64
    """Transformer width."""
    depth: int = 2
    """Transformer layers."""
    heads: int = 2
    """Attention heads."""
    dropout: float = 0.1
    """Dropout on embeddings and residual branches."""
    attn_chunk: int = 400
    """Query/key chunk of blockwise and ring attention: 100 steps of 4 tokens, dividing every
    AT row (n x 25 steps x 4 tokens) and the ring's zigzag halves (6,400 / 16); measured
    faster here than the 512 default, which leaves ragged chunks."""
    steps: int = 400
    """Optimiser steps of every run."""
    trajectories_per_batch: int = 64
    """Episodes' worth of action targets per batch, equal for every setting: AT batch =
    this / n chains; BC / DT batch = this x episode length / K windows."""
    context_steps: int = 20
    """K: steps per window of DT and BC."""
    bc_top_percent: float = 10.0
    """BC-x%: the episodes kept."""
    lr: float = 1e-3
    """Peak learning rate (AdamW, linear warmup, cosine decay to a tenth)."""
    warmup_steps: int = 50
    """Warmup steps."""
    trials: int = 64
    """Evaluation trials per row, played one after another in one context. As many as the
    largest n: AT's chains are sorted by return, so the model places its k-th trial at the
    k-th of n trajectories and reaches the best only after about n trials (measured: with 8
    trials AT-16 had climbed from 0.2 to 2.0 on cartpole, below the data's median 6.0)."""
    eval_envs: int = 16
    """Environment rows per evaluation seed."""
    eval_seeds: int = 2
    """Evaluation seeds per trained model (fixed for all settings: paired comparisons)."""
    memory_plan: bool = True
    """Compile every setting's step with dense / blockwise / ring attention and record
    its per-device memory (no training)."""
    workdir: str = "runs/at_small"
    """Datasets, checkpoints, metrics and evaluation reports."""
    out: str = "results/at_small.json"
    """The summary JSON (the plot goes next to it as .png, the memory plot as _memory.png)."""
    progress: bool = False
    """Progress bars of training and evaluation."""
    overwrite: bool = False
    """Replace an --out summary (and its plots) that is already there, and allow a --workdir
    holding files other than an earlier run's (they are kept)."""

    @classmethod
    def tiny(cls, workdir: str, out: str) -> SmallConfig:
        """About a minute: one task, 8-step episodes, three small settings, one seed."""
        return cls(
            tasks=("cartpole",), settings=("bc", "dt", "at2"), seeds=(0,), episodes=12,
            width=16, depth=1, heads=1, steps=30, trajectories_per_batch=4, context_steps=4,
            bc_top_percent=50.0, warmup_steps=5, trials=2, eval_envs=2, eval_seeds=1,
            memory_plan=False, workdir=workdir, out=out,
        )

    def replace(self, **changes) -> SmallConfig:
        return dataclasses.replace(self, **changes)


#: The tiny variant's task: 8 steps of 0.08 s (a swing-up barely starts; enough to test).
TINY_TASKS: dict[str, TaskSpec] = {
    "cartpole": TaskSpec("cartpole", "dmc:cartpole-swingup:ar8:t0.64", "cartpole_swingup",
                         noise=(0.0, 1.0, 5.0)),
}

#: Extra settings usable in --settings (the tiny variant's AT).
EXTRA_SETTINGS: dict[str, Setting] = {"at2": Setting("at2", "at", 2)}


def setting(name: str) -> Setting:
    """The setting ``name``; ValueError listing the known ones."""
    known = {**SETTINGS, **EXTRA_SETTINGS}
    if name not in known:
        raise ValueError(f"unknown setting {name!r}; known settings: {sorted(known)}")
    return known[name]


__all__ = ["EXTRA_SETTINGS", "SETTINGS", "TASKS", "TINY_TASKS", "Setting", "SmallConfig",
           "TaskSpec", "setting"]
