"""Named training-step shapes: the paper's Agentic Transformer, D4RL's Decision Transformer.

A :class:`StepShape` says what one training step computes (model, batch, sequence, mesh,
compute dtype); ``rl-ring plan`` compiles it, and ``rl-ring train --preset NAME`` starts an
agent from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from rl_ring.models import ModelConfig, default_token_features
from rl_ring.train.config import TrainConfig
from rl_ring.train.optim import OptimConfig

# Token kinds of each agent's default layout.
AGENT_KINDS = {
    "at": ("RTG", "STATE", "ACTION", "REWARD"),
    "dt": ("RTG", "STATE", "ACTION"),
    "bc": ("STATE", "ACTION"),
    "ad": ("STEP",),
}


def kind_features(agent: str, obs_dim: int, act_dim: int) -> tuple[tuple[str, int], ...]:
    """``ModelConfig.token_features`` for ``agent``'s default token layout."""
    widths = dict(default_token_features(obs_dim, act_dim))
    return tuple((k, widths[k]) for k in AGENT_KINDS[agent])


@dataclass(frozen=True)
class StepShape:
    """One training step's shape: model, batch, sequence, mesh."""

    name: str
    """Preset name."""
    agent: str
    """Agent whose token layout the sequence follows."""
    model: ModelConfig
    """The trajectory transformer."""
    batch_size: int
    """Global batch in sequences."""
    steps_per_sequence: int
    """Environment steps in one sequence (all trajectories of a chain together)."""
    tokens_per_step: int
    """Tokens per environment step in the agent's layout."""
    mesh: str
    """Default mesh spec."""
    compute_dtype: str = "float32"
    """Forward/backward compute dtype (parameters stay float32)."""
    description: str = ""
    """Where the numbers come from."""
    agent_options: tuple[tuple[str, Any], ...] = ()
    """Options of the agent's Config besides the model (e.g. chain length)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser settings of a training run from this preset."""
    steps: int = 1000
    """Training steps of a run from this preset."""
    target_dim: int | None = None
    """Width of ``TokenBatch.target`` (default: the model's action size)."""

    @property
    def seq_len(self) -> int:
        return self.steps_per_sequence * self.tokens_per_step

    @property
    def feature_dim(self) -> int:
        """Width of ``TokenBatch.values``: the widest token kind the model embeds."""
        return max(self.model.kind_features.values())

    def replace(self, **changes) -> StepShape:
        return dataclasses.replace(self, **changes)


# The paper's in-context RL model: 350M parameters. Width 1024 with 16 heads and 28 layers
# gives 353.8M (24 layers would give 303M). Walker observations (24) and actions (6);
# 128 trajectories x 1000 steps x 4 tokens (return-to-go, state, action, reward) = 512,000
# tokens per sequence, ring attention with the zigzag layout for causal balance.
PAPER_AT_EXORL = StepShape(
    name="paper-at-exorl",
    agent="at",
    model=ModelConfig(
        obs_dim=24, act_dim=6, token_features=kind_features("at", 24, 6),
        width=1024, depth=28, num_heads=16, ffn_mult=4, ffn_chunk=1000,
        dropout=0.1, max_timestep=1000, attn_impl="ring", attn_layout="zigzag",
        attn_options=(("q_chunk", 1000), ("k_chunk", 1000)), remat="full", dtype="bfloat16",
    ),
    batch_size=1,
    steps_per_sequence=128 * 1000,
    tokens_per_step=4,
    mesh="seq=64",
    compute_dtype="bfloat16",
    description="Agentic Transformer, ExoRL, 350M parameters, 128 trajectories x 1000 steps x "
    "4 tokens = 512K-token context (Ring Attention paper, in-context RL table)",
    agent_options=(("num_trajectories", 128), ("max_steps", 1000)),
)

# The Decision Transformer paper's D4RL configuration: 3 layers, 1 head, width 128,
# dropout 0.1, K = 20 steps of (return-to-go, state, action), batch 64; HalfCheetah /
# Walker2d shapes (17-dim observations, 6-dim actions).
D4RL_DT = StepShape(
    name="d4rl-dt",
    agent="dt",
    model=ModelConfig(
        obs_dim=17, act_dim=6, token_features=kind_features("dt", 17, 6),
        width=128, depth=3, num_heads=1, dropout=0.1, max_timestep=1000,
        attn_impl="reference", squash_actions=True, use_rope=False,
    ),
    batch_size=64,
    steps_per_sequence=20,
    tokens_per_step=3,
    mesh="data=1",
    description="Decision Transformer on D4RL locomotion: 3 layers, 1 head, width 128, K=20",
    agent_options=(("context_steps", 20),),
    # The DT paper's optimisation: lr 1e-4, 10k warmup steps, clip 0.25, weight decay 1e-4.
    optim=OptimConfig(lr=1e-4, warmup_steps=10_000, grad_clip=0.25, weight_decay=1e-4,
                      min_lr_ratio=1.0),
    steps=100_000,
)

# Small shapes for tests and CPU smoke runs.
TINY_AT = StepShape(
    name="tiny-at",
    agent="at",
    model=ModelConfig.tiny(
        obs_dim=4, act_dim=2, token_features=kind_features("at", 4, 2), attn_impl="ring",
        attn_options=(("q_chunk", 64), ("k_chunk", 64)),
    ),
    batch_size=2,
    steps_per_sequence=64,
    tokens_per_step=4,
    mesh="seq=8",
    description="a tiny AT-shaped step for tests",
    agent_options=(("num_trajectories", 4), ("max_steps", 16)),
)

# A 4-layer, 128-wide model: the benchmark's context-length probe.
BENCH_4x128 = StepShape(
    name="bench-4x128",
    agent="at",
    model=ModelConfig(
        obs_dim=17, act_dim=6, token_features=kind_features("at", 17, 6),
        width=128, depth=4, num_heads=4, ffn_chunk=512, dropout=0.0,
        max_timestep=1000, attn_impl="ring", remat="full",
    ),
    batch_size=1,
    steps_per_sequence=4096,
    tokens_per_step=4,
    mesh="seq=8",
    description="4 layers x 128 wide, the benchmark's longest-context probe",
    agent_options=(("num_trajectories", 4), ("max_steps", 1024)),
)

SHAPES: dict[str, StepShape] = {
    s.name: s for s in (PAPER_AT_EXORL, D4RL_DT, TINY_AT, BENCH_4x128)
}


def get_shape(name: str) -> StepShape:
    """The named step shape; ValueError listing the known names otherwise."""
    if name not in SHAPES:
        raise ValueError(f"unknown preset {name!r}; known presets: {sorted(SHAPES)}")
    return SHAPES[name]


def train_preset(name: str, agent: str | None = None) -> TrainConfig:
    """A TrainConfig (agent options included) for the named preset.

    Raises:
        ValueError: an unknown preset, or one made for another agent than ``agent``.
    """
    import agents

    shape = get_shape(name)
    if agent is not None and agent != shape.agent:
        raise ValueError(f"preset {name!r} is for agent {shape.agent!r}, not {agent!r}")
    module = agents.get(shape.agent)
    agent_cfg = module.Config(model=shape.model, **dict(shape.agent_options))
    return TrainConfig(
        agent=shape.agent, preset=name, mesh=shape.mesh, batch_size=shape.batch_size,
        compute_dtype=shape.compute_dtype, optim=shape.optim, steps=shape.steps,
        agent_config=agent_cfg,
    )
