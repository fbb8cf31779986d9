"""Named presets: an agent's ``default`` and ``tiny`` options, and named training-step shapes
(the paper's Agentic Transformer, D4RL's Decision Transformer, small test and benchmark
shapes).

One vocabulary for ``rl-ring train --preset NAME`` and ``rl-ring plan NAME``: :data:`PRESETS`.
A :class:`~rl_ring.train.plan.StepShape` says what one training step computes (model, batch,
sequence, mesh, compute dtype); :func:`train_preset` turns a named one into a TrainConfig and
:func:`step_shape` turns any preset into a StepShape for ``plan``.
"""

from __future__ import annotations

from typing import Any

from agents import base, registry
from rl_ring.models import ModelConfig
from rl_ring.train.config import TrainConfig
from rl_ring.train.optim import OptimConfig
from rl_ring.train.plan import StepShape

AGENT_PRESETS = ("default", "tiny")
"""Presets every agent has: its Config() and Config.tiny()."""


def kind_features(agent: str, obs_dim: int, act_dim: int) -> tuple[tuple[str, int], ...]:
    """``ModelConfig.token_features`` for ``agent``'s default token layout."""
    module = registry.get(agent)
    return module.make_layout(module.Config(), base.DataSpec(obs_dim, act_dim, False)
                              ).token_features()


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
PRESETS: tuple[str, ...] = (*AGENT_PRESETS, *SHAPES)
"""Every preset name, for ``rl-ring train --preset`` and ``rl-ring plan``."""


def _unknown(name: str) -> ValueError:
    return ValueError(f"unknown preset {name!r}; known presets: {list(PRESETS)}")


def get_shape(name: str) -> StepShape:
    """The named step shape; ValueError listing the known names otherwise."""
    if name not in SHAPES:
        raise _unknown(name)
    return SHAPES[name]


def agent_config(agent: str, preset: str) -> Any:
    """The agent's options for a preset: ``default``, ``tiny`` or a named step shape."""
    module = registry.get(agent)
    if preset == "default":
        return module.Config()
    if preset == "tiny":
        return module.Config.tiny()
    return train_preset(preset, agent).agent_config


def train_preset(name: str, agent: str | None = None) -> TrainConfig:
    """A TrainConfig (agent options included) for a preset; a named step shape sets the
    agent, the mesh, the batch, the optimiser and the steps too.

    Raises:
        ValueError: an unknown preset, or one made for another agent than ``agent``.
    """
    if name in AGENT_PRESETS:
        agent = (agent or "at").lower()
        return TrainConfig(agent=agent, preset=name, agent_config=agent_config(agent, name))
    shape = get_shape(name)
    if agent is not None and agent.lower() != shape.agent:
        raise ValueError(f"preset {name!r} is for agent {shape.agent!r}, not {agent!r}")
    agent_cfg = registry.get(shape.agent).Config(model=shape.model, **dict(shape.agent_options))
    return TrainConfig(
        agent=shape.agent, preset=name, mesh=shape.mesh, batch_size=shape.batch_size,
        compute_dtype=shape.compute_dtype, optim=shape.optim, steps=shape.steps,
        agent_config=agent_cfg,
    )


def step_shape(name: str, agent: str = "at", *, obs_dim: int = 17, act_dim: int = 6) -> StepShape:
    """The StepShape of any preset: a named one as is; ``default``/``tiny`` from the agent's
    options with a TrainConfig's default batch on one device, for ``obs_dim``/``act_dim``
    data (D4RL locomotion's by default) and episodes of ``model.max_timestep`` steps."""
    if name not in AGENT_PRESETS:
        return get_shape(name)
    cfg = train_preset(name, agent)
    module = registry.get(cfg.agent)
    agent_cfg = cfg.agent_config
    spec = base.DataSpec(obs_dim, act_dim, False, max_episode_len=agent_cfg.model.max_timestep)
    layout = module.make_layout(agent_cfg, spec)
    return StepShape(
        name=f"{name} ({cfg.agent})", agent=cfg.agent,
        model=base.model_config(agent_cfg.model, spec, layout), batch_size=cfg.batch_size,
        steps_per_sequence=module.context_steps(agent_cfg, spec),
        tokens_per_step=layout.tokens_per_step, mesh="seq=1", compute_dtype=cfg.compute_dtype,
        description=f"agent {cfg.agent}'s {name} options", optim=cfg.optim, steps=cfg.steps,
    )
