"""Library entry points: ``train(cfg)`` for an agent and a dataset, ``load_checkpoint``.

``train`` resolves the agent and its options, loads the dataset, builds the
:class:`~rl_ring.train.recipe.Recipe` and runs the loop. Every configuration error is
raised before the dataset is sampled into a model, before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple

from rl_ring import sharding
from rl_ring.train.checkpoint import Checkpointer
from rl_ring.train.config import TrainConfig, from_dict
from rl_ring.train.loop import EvalFn, TrainResult, run
from rl_ring.train.recipe import Recipe, rule_specs

ATTENTION_CHOICES = ("auto", "reference", "blockwise", "ring")


def agent_module(name: str):
    """The agent module ``agents.get(name)``; ValueError listing the known agents."""
    import agents

    return agents.get(name)


def preset_agent_config(agent: str, preset: str) -> Any:
    """The agent's options for a preset: ``default``, ``tiny`` or a named step shape."""
    from rl_ring.train.presets import SHAPES, train_preset

    module = agent_module(agent)
    if preset == "default":
        return module.Config()
    if preset == "tiny":
        return module.Config.tiny()
    if preset in SHAPES:
        return train_preset(preset, agent).agent_config
    raise ValueError(
        f"unknown preset {preset!r} for agent {agent!r}; choose default, tiny or one of "
        f"{sorted(SHAPES)}"
    )


def _seq_devices(cfg: TrainConfig) -> int:
    if cfg.mesh:
        return sharding.parse_mesh_spec(cfg.mesh).seq
    import jax

    return cfg.devices or len(jax.devices())


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the agent's options filled in and the attention choice applied.

    ``attention="auto"`` uses ring attention when the mesh's seq axis has more than one
    device and the agent's own choice otherwise; ``layout`` overrides the agent's token
    layout when given.

    Raises:
        ValueError: unknown agent or preset, options of another agent, a bad choice.
    """
    from agents import base

    cfg.validate()
    module = agent_module(cfg.agent)
    agent_cfg = cfg.agent_config
    if agent_cfg is None:
        agent_cfg = preset_agent_config(cfg.agent, cfg.preset)
    base.check_agent_config(agent_cfg, module.Config)
    if cfg.attention not in ATTENTION_CHOICES:
        raise ValueError(f"TrainConfig.attention={cfg.attention!r}: expected one of "
                         f"{ATTENTION_CHOICES}")
    model = agent_cfg.model
    changes: dict[str, Any] = {}
    if cfg.attention == "auto":
        if _seq_devices(cfg) > 1:
            changes["attn_impl"] = "ring"
    else:
        changes["attn_impl"] = cfg.attention
    if cfg.layout:
        changes["attn_layout"] = cfg.layout
    if cfg.compute_dtype != "float32":
        changes["dtype"] = cfg.compute_dtype
    if changes:
        agent_cfg = dataclasses.replace(agent_cfg, model=model.replace(**changes))
    return cfg.replace(agent_config=agent_cfg)


def agent_recipe(cfg: TrainConfig, store) -> Recipe:
    """The recipe training ``cfg.agent`` (options resolved) on an EpisodeStore."""
    from agents import base

    module = agent_module(cfg.agent)
    agent_cfg = cfg.agent_config
    spec = base.DataSpec.from_store(store)
    # The normalisation the sampler encodes with, computed once and saved with checkpoints.
    norm = module.make_layout(agent_cfg, store).norm

    def make_model(rngs):
        return module.make_model(agent_cfg, spec, rngs=rngs)

    def make_sampler(**kw):
        return module.make_sampler(store, agent_cfg, norm=norm, **kw)

    meta = {
        "agent": cfg.agent,
        "env": cfg.env,
        "data": cfg.data,
        "data_spec": spec.to_dict(),
        "normalization": norm.to_dict(),
    }
    return Recipe(
        make_model=make_model,
        loss_fn=module.loss_fn,
        make_sampler=make_sampler,
        layout=agent_cfg.model.attn_layout,
        param_specs=rule_specs,
        meta=meta,
    )


def load_dataset(path: str):
    """An EpisodeStore from any path ``rl_ring.data.load`` understands.

    Raises:
        FileNotFoundError: the path does not exist (named in the message).
    """
    if not path:
        raise ValueError("TrainConfig.data is empty: pass --data PATH (a dataset file or dir)")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--data {path}: no such file or directory")
    from rl_ring.data import load

    return load(path)


def train(cfg: TrainConfig, *, eval_fn: EvalFn | None = None, store=None) -> TrainResult:
    """Trains ``cfg.agent`` on ``cfg.data`` (or on ``store`` when given); resumes if possible.

    Args:
        cfg: the run configuration (``agent_config=None`` takes the agent's preset).
        eval_fn: called as ``eval_fn(model, step) -> dict`` every ``cfg.eval_every`` steps.
        store: an EpisodeStore to train on instead of loading ``cfg.data``.

    Returns:
        The :class:`~rl_ring.train.loop.TrainResult`.
    """
    cfg = resolve_config(cfg)
    if store is None:
        store = load_dataset(cfg.data)
    return run(agent_recipe(cfg, store), cfg, eval_fn=eval_fn)


class LoadedCheckpoint(NamedTuple):
    """What :func:`load_checkpoint` returns (a tuple: ``model, config, norm, step = ...``)."""

    model: Any
    """The trajectory transformer with the checkpoint's parameters, on one device."""
    config: TrainConfig
    """The run's configuration (agent options resolved)."""
    norm: Any
    """The :class:`~rl_ring.data.normalize.Normalization` the data was encoded with."""
    step: int
    """The checkpoint's step."""


def load_checkpoint(
    workdir: str | os.PathLike, step: int | None = None, *, attn_impl: str | None = None
) -> LoadedCheckpoint:
    """Loads a trained model for evaluation.

    Args:
        workdir: the run's work directory.
        step: the checkpoint step (default: the latest).
        attn_impl: rebuild the model with this attention implementation (default: as
            trained; the parameters do not depend on it). ``"blockwise"`` suits one device.

    Returns:
        ``(model, config, norm, step)``; the data spec and the rest of the checkpoint's JSON
        are in ``checkpoint_meta(workdir, step)``.

    Raises:
        FileNotFoundError: no checkpoint (for ``step``) in ``workdir``.
    """
    import jax
    import optax

    from agents import base
    from rl_ring.data.normalize import Normalization
    from rl_ring.train.state import init_fn

    ckpt = Checkpointer(workdir, read_only=True)
    meta, step = ckpt.read_meta(step)
    config = config_from_meta(meta)
    module = agent_module(config.agent)
    agent_cfg = config.agent_config
    if attn_impl is not None:
        agent_cfg = dataclasses.replace(agent_cfg, model=agent_cfg.model.replace(
            attn_impl=attn_impl))
    spec = base.DataSpec.from_dict(meta["data_spec"])
    init, parts = init_fn(lambda r: module.make_model(agent_cfg, spec, rngs=r),
                          optax.identity(), 0)
    abstract = jax.eval_shape(init)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                          {"params": abstract.params, "rest": abstract.rest})
    model_vars, step = ckpt.restore_model(target, step)
    ckpt.close()
    model = parts["parts"].merge(model_vars["params"], model_vars["rest"])
    return LoadedCheckpoint(model, config, Normalization.from_dict(meta["normalization"]), step)


def checkpoint_meta(workdir: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
    """The JSON saved with a checkpoint (config, agent, data spec, normalisation, sampler)."""
    ckpt = Checkpointer(workdir, read_only=True)
    meta, _ = ckpt.read_meta(step)
    ckpt.close()
    return meta


def config_from_meta(meta: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of a checkpoint's JSON, the agent's options as its Config class."""
    raw = dict(meta["config"])
    agent_raw = raw.pop("agent_config", None)
    cfg = from_dict(TrainConfig, raw, where="checkpoint config")
    if agent_raw is not None:
        module = agent_module(cfg.agent)
        cfg = cfg.replace(agent_config=from_dict(module.Config, agent_raw,
                                                 where="checkpoint config.agent_config"))
    return cfg


def shape_from_workdir(workdir: str | os.PathLike):
    """The :class:`~rl_ring.train.presets.StepShape` of a run's training step (for plan)."""
    from flax import nnx

    from agents import base
    from rl_ring.train.presets import StepShape

    meta = checkpoint_meta(workdir)
    cfg = config_from_meta(meta)
    if "batch_shape" not in meta:
        raise ValueError(f"{workdir}: the checkpoint does not record its batch shape")
    spec = base.DataSpec.from_dict(meta["data_spec"])
    module = agent_module(cfg.agent)
    model = nnx.eval_shape(
        lambda: module.make_model(cfg.agent_config, spec, rngs=nnx.Rngs(0))).cfg
    return StepShape(
        name=str(workdir), agent=cfg.agent, model=model,
        batch_size=meta["batch_shape"]["batch_size"],
        steps_per_sequence=meta["batch_shape"]["seq_len"], tokens_per_step=1,
        mesh=cfg.mesh or (f"seq={cfg.devices}" if cfg.devices else "seq=1"),
        compute_dtype=cfg.compute_dtype, description=f"the run in {workdir}",
        target_dim=meta["batch_shape"]["target_dim"],
    )


def saved_config(workdir: str | os.PathLike) -> TrainConfig:
    """The TrainConfig of the latest checkpoint in ``workdir``."""
    return config_from_meta(checkpoint_meta(workdir))


__all__ = [
    "LoadedCheckpoint",
    "agent_recipe",
    "checkpoint_meta",
    "config_from_meta",
    "load_checkpoint",
    "resolve_config",
    "saved_config",
    "train",
]
