"""Algorithm Distillation on Dark Room / Key-to-Door: run options and the experiment grid.

One :class:`ADRun` is collect -> train -> evaluate. The named experiments of
:data:`EXPERIMENTS` each ask one question and vary one thing of the main run
(:func:`main_run`); every run trains a 4-layer, 64-wide transformer for a few minutes on two
CPU cores with ring attention over 8 fake devices. See docs/reproductions.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

EPISODE_STEPS = {"darkroom": 20, "keydoor": 50}
"""Longest episode of each env (a Key-to-Door episode ends early at the door)."""


@dataclass(frozen=True)
class HistorySpec:
    """The learning histories AD distils, collected on training tasks."""

    learner: Literal["qlearning", "noisy_oracle", "posterior"] = "posterior"
    """Source: tabular Q-learning, the noisy oracle (noise distillation) or posterior sampling."""
    episodes_per_history: int = 20
    """Episodes of each history."""
    histories: int = 256
    """Number of histories; history h runs on training task h mod num_tasks."""
    num_tasks: int = 0
    """Training tasks used: 0 = all of the split, k = the first k of a fixed shuffle of it."""
    noise_start: float = 0.0
    """Random-action probability in a history's first episode (noisy oracle, posterior)."""
    noise_end: float = 0.0
    """Random-action probability after the decay (noisy oracle, posterior)."""
    noise_decay: float = 0.5
    """Fraction of a history over which that probability decays linearly."""
    q_eps_decay: float = 0.5
    """Q-learning: fraction of a history over which epsilon decays from 1 to 0.05."""
    seed: int = 0
    """Seed of the collection."""


@dataclass(frozen=True)
class ADRun:
    """One run: collect histories -> train AD -> evaluate in context."""

    name: str = "main"
    """Run name (directory under the work dir, key in the results)."""
    env: Literal["darkroom", "keydoor"] = "darkroom"
    """Task family."""
    history: HistorySpec = field(default_factory=HistorySpec)
    """The source and its histories."""
    window_episodes: int = 10
    """Context length in (longest) episodes: training windows and the evaluation context."""
    align: Literal["step", "episode"] = "step"
    """Training windows start at any step or only at episode starts."""
    width: int = 64
    """Transformer width."""
    depth: int = 4
    """Transformer layers."""
    heads: int = 4
    """Attention heads."""
    dropout: float = 0.1
    """Dropout on embeddings and residual branches."""
    steps: int = 1000
    """Optimiser steps."""
    batch_size: int = 16
    """Windows per batch."""
    lr: float = 1e-3
    """Peak learning rate (AdamW, linear warmup, cosine decay to a tenth)."""
    warmup_steps: int = 100
    """Warmup steps."""
    mesh: str = "seq=8"
    """Training mesh: seq=8 runs ring attention over 8 (fake CPU) devices."""
    train_seed: int = 0
    """Seed of initialisation, batch sampling and dropout."""
    eval_episodes: int = 40
    """In-context episodes per evaluation row (one context across all of them)."""
    eval_rows: int = 16
    """Evaluation rows side by side (one task each)."""
    eval_test_seeds: int = 5
    """Evaluation seeds on held-out tasks (seed j takes the split's tasks j*rows...)."""
    eval_train_seeds: int = 4
    """Evaluation seeds on training tasks (0 = skip)."""
    greedy: bool = False
    """Act with the argmax action (True) or sample from the predicted distribution (False).
    Measured (experiment ``decoding``, the same trained model): greedy 31% of optimal on
    held-out goals in episodes 20-40, sampled 75%; argmax repeats a failed search episode
    after episode, sampling keeps exploring as the source did."""
    eval_every: int = 0
    """Also evaluate on held-out tasks every N training steps (0 = only at the end)."""
    loss_batches: int = 8
    """Batches of the loss measured on held-out-task and training-task histories."""

    @property
    def window_steps(self) -> int:
        return self.window_episodes * EPISODE_STEPS[self.env]

    def replace(self, **changes) -> ADRun:
        return dataclasses.replace(self, **changes)


def main_run(env: str = "darkroom") -> ADRun:
    """The main configuration (the README's numbers)."""
    return ADRun(name="main", env=env)


def tiny_run(env: str = "darkroom") -> ADRun:
    """Seconds on CPU (tests): 8 short histories, a 1-layer 32-wide model, 3 episodes."""
    return ADRun(
        name="tiny", env=env,
        history=HistorySpec(episodes_per_history=4, histories=8, num_tasks=4),
        window_episodes=2, width=32, depth=1, heads=2, steps=60, batch_size=8, lr=3e-3,
        warmup_steps=5, eval_episodes=3, eval_rows=4, eval_test_seeds=2, eval_train_seeds=1,
        loss_batches=1,
    )


@dataclass(frozen=True)
class Experiment:
    """One controlled experiment: a question and the runs that answer it."""

    name: str
    """Key of the experiment."""
    question: str
    """What it measures."""
    runs: tuple[ADRun, ...]
    """The variants (each differs from the main run in the one thing studied)."""


def _variants(name: str, base: ADRun, **options) -> tuple[ADRun, ...]:
    key, values = next(iter(options.items()))
    out = []
    for v in values:
        if key.startswith("history."):
            hist = dataclasses.replace(base.history, **{key.split(".", 1)[1]: v})
            out.append(base.replace(name=f"{name}-{v}", history=hist))
        else:
            out.append(base.replace(name=f"{name}-{v}", **{key: v}))
    return tuple(out)


def experiments(env: str = "darkroom") -> dict[str, Experiment]:
    """The controlled experiments (each ~5 minutes per run on 2 busy cores)."""
    base = main_run(env)
    q = HistorySpec(learner="qlearning", episodes_per_history=100, histories=64)
    oracle = HistorySpec(learner="noisy_oracle", noise_start=1.0, noise_end=0.0,
                         noise_decay=0.5)
    sources = (
        base.replace(name="source-qlearning", history=q),
        base.replace(name="source-qlearning-fast", history=dataclasses.replace(
            q, episodes_per_history=40, histories=160, q_eps_decay=0.25)),
        base.replace(name="source-noisy_oracle", history=oracle),
        base.replace(name="source-posterior", history=base.history),
    )
    return {
        "sources": Experiment(
            "sources",
            "Which source's learning histories let AD learn in context on held-out goals? "
            "(tabular Q-learning as in public reimplementations, the noisy oracle of noise "
            "distillation, posterior sampling over the goal cell)",
            sources,
        ),
        "goals": Experiment(
            "goals",
            "Does held-out return grow with the number of distinct training goals "
            "(the same number of histories spread over 4, 16 or 64 goals)?",
            _variants("goals", base, **{"history.num_tasks": (4, 16, 64)}),
        ),
        "context": Experiment(
            "context",
            "How many episodes must the context span (training windows and evaluation "
            "context alike)?",
            _variants("context", base, window_episodes=(1, 2, 4, 10)),
        ),
        "noise": Experiment(
            "noise",
            "Does random-action noise in the histories help or hurt (posterior sampling with "
            "a constant random-action probability)?",
            tuple(
                base.replace(name=f"noise-{p}", history=dataclasses.replace(
                    base.history, noise_start=p, noise_end=p))
                for p in (0.0, 0.1, 0.3)
            ),
        ),
        "decoding": Experiment(
            "decoding",
            "Greedy (argmax) actions or actions sampled from the model's distribution?",
            _variants("decoding", base, greedy=(True, False)),
        ),
        "steps": Experiment(
            "steps",
            "How does held-out return change with training steps (memorisation sets in?)",
            (base.replace(name="steps", steps=2000, eval_every=250),),
        ),
    }


__all__ = ["ADRun", "EPISODE_STEPS", "Experiment", "HistorySpec", "experiments", "main_run",
           "tiny_run"]
