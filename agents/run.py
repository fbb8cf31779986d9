"""Training runs of an agent: ``train(cfg)``, and a run's checkpoints read back as a model.

``train`` resolves the agent and its options, loads the dataset, turns the agent into the
:class:`~rl_ring.train.recipe.Recipe` that ``rl_ring.train.run`` trains (the loop never
learns which agent it runs). Every configuration error is raised before the dataset is
sampled into a model, before anything is compiled. ``load_checkpoint`` rebuilds the agent's
model from a checkpoint's JSON and restores its variables.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple

from agents import base, presets, registry
from rl_ring.data.normalize import Normalization
from rl_ring.models import model_factory
from rl_ring.train.checkpoint import checkpoint_meta, restore_model
from rl_ring.train.config import TrainConfig, from_dict, run_model_config
from rl_ring.train.loop import EvalFn, TrainResult, run
from rl_ring.train.plan import StepShape
from rl_ring.train.recipe import Recipe, rule_specs


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the agent named in lower case, its options filled in (from
    ``cfg.preset`` when None) and the run's attention choice applied to its model.

    Raises:
        ValueError: unknown agent or preset, or a bad choice.
        TypeError: options of another agent.
    """
    cfg.validate()
    module = registry.get(cfg.agent)
    agent_cfg = cfg.agent_config
    if agent_cfg is None:
        agent_cfg = presets.agent_config(module.NAME, cfg.preset)
    base.check_agent_config(agent_cfg, module.Config)
    agent_cfg = dataclasses.replace(agent_cfg, model=run_model_config(cfg, agent_cfg.model))
    return cfg.replace(agent=module.NAME, agent_config=agent_cfg)


def recipe(cfg: TrainConfig, store) -> Recipe:
    """The recipe training ``cfg.agent`` (options resolved) on an EpisodeStore."""
    module = registry.get(cfg.agent)
    agent_cfg = cfg.agent_config
    spec = base.DataSpec.from_store(store)
    # The normalisation the sampler encodes with, computed once and saved with checkpoints.
    norm = module.make_layout(agent_cfg, store).norm

    # Everything the loop calls is a library function with the agent's choices bound in:
    # the run reads top-down (agents -> train -> models / data), never back up into agents.
    make_model = model_factory(module.resolved_model(agent_cfg, spec))
    make_sampler = module.sampler_factory(store, agent_cfg, norm=norm)

    meta = {
        "agent": module.NAME,
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


def xland_recipe(cfg: TrainConfig, data) -> Recipe:
    """The recipe training AD or DPT on an XLand-100B-layout file (an ``XLandDataset``),
    its rows read straight from the file, never the whole file in memory (one-hot
    observations, identity normalisation): AD's windows by
    :class:`~rl_ring.data.xland.XLandHistorySampler`, DPT's labelled in-context windows
    (``context="window"``, ``label_key="expert_actions"``) by
    :class:`~rl_ring.data.xland.XLandDPTWindowSampler`.

    Raises:
        ValueError: an agent other than AD or DPT (the others load the file as an
            EpisodeStore), or DPT options the file cannot stream (named by the sampler).
    """
    from rl_ring.data.samplers import DPTSamplerConfig, HistoryConfig
    from rl_ring.data.samplers.base import sampler_factory
    from rl_ring.data.xland import XLandDPTWindowSampler, XLandHistorySampler

    module = registry.get(cfg.agent)
    streams = {"ad": (XLandHistorySampler, HistoryConfig),
               "dpt": (XLandDPTWindowSampler, DPTSamplerConfig)}
    if module.NAME not in streams:
        raise ValueError(f"--data {cfg.data}: streaming from an XLand file trains 'ad' or 'dpt' "
                         f"only, got agent {cfg.agent!r}")
    sampler_cls, config_cls = streams[module.NAME]
    agent_cfg = cfg.agent_config
    spec = base.DataSpec.coerce(data.data_spec())
    norm = Normalization.identity(spec.obs_dim)
    options = {f.name: getattr(agent_cfg, f.name) for f in dataclasses.fields(config_cls)
               if f.name not in ("batch_size", "seed", "pad_multiple")}
    make_sampler = sampler_factory(sampler_cls, config_cls, options, data, norm=norm)
    make_sampler(batch_size=1, seed=0)  # options the file cannot stream fail here, not later
    meta = {"agent": module.NAME, "env": cfg.env, "data": cfg.data,
            "data_spec": spec.to_dict(), "normalization": norm.to_dict()}
    return Recipe(
        make_model=model_factory(module.resolved_model(agent_cfg, spec)),
        loss_fn=module.loss_fn,
        make_sampler=make_sampler,
        layout=agent_cfg.model.attn_layout,
        param_specs=rule_specs,
        meta=meta,
    )


def _xland_data(cfg: TrainConfig):
    """An ``XLandDataset`` when AD or DPT trains on an XLand-layout file, else None."""
    if registry.get(cfg.agent).NAME not in ("ad", "dpt") or not cfg.data or not os.path.isfile(
            cfg.data):
        return None
    from rl_ring.data.xland import XLandDataset, is_xland_file

    return XLandDataset(cfg.data) if is_xland_file(cfg.data) else None


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

    AD and DPT on an XLand-100B-layout file stream their windows from the file
    (:func:`xland_recipe`); every other agent and format loads an EpisodeStore.

    Args:
        cfg: the run configuration (``agent_config=None`` takes the agent's preset).
        eval_fn: called as ``eval_fn(model, step) -> dict`` every ``cfg.eval_every`` steps.
        store: an EpisodeStore to train on instead of loading ``cfg.data``.

    Returns:
        The :class:`~rl_ring.train.loop.TrainResult`.
    """
    cfg = resolve_config(cfg)
    if store is None:
        xland = _xland_data(cfg)  # AD / DPT on an XLand file: streamed from the file
        if xland is not None:
            return run(xland_recipe(cfg, xland), cfg, eval_fn=eval_fn)
        store = load_dataset(cfg.data)
    return run(recipe(cfg, store), cfg, eval_fn=eval_fn)


class LoadedCheckpoint(NamedTuple):
    """What :func:`load_checkpoint` returns (a tuple: ``model, config, norm, step = ...``)."""

    model: Any
    """The trajectory transformer with the checkpoint's parameters, on one device."""
    config: TrainConfig
    """The run's configuration (agent options resolved)."""
    norm: Normalization
    """The normalisation the data was encoded with."""
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
    meta = checkpoint_meta(workdir, step)
    config = config_from_meta(meta)
    module = registry.get(config.agent)
    agent_cfg = config.agent_config
    if attn_impl is not None:
        agent_cfg = dataclasses.replace(agent_cfg, model=agent_cfg.model.replace(
            attn_impl=attn_impl))
    spec = base.DataSpec.from_dict(meta["data_spec"])
    model, step = restore_model(
        workdir, lambda rngs: module.make_model(agent_cfg, spec, rngs=rngs), meta["step"])
    return LoadedCheckpoint(model, config, Normalization.from_dict(meta["normalization"]), step)


def config_from_meta(meta: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of a checkpoint's JSON, the agent's options as its Config class."""
    raw = dict(meta["config"])
    agent_raw = raw.pop("agent_config", None)
    cfg = from_dict(TrainConfig, raw, where="checkpoint config")
    if agent_raw is not None:
        module = registry.get(cfg.agent)
        cfg = cfg.replace(agent_config=from_dict(module.Config, agent_raw,
                                                 where="checkpoint config.agent_config"))
    return cfg


def saved_config(workdir: str | os.PathLike) -> TrainConfig:
    """The TrainConfig of the latest checkpoint in ``workdir``."""
    return config_from_meta(checkpoint_meta(workdir))


def shape_from_workdir(workdir: str | os.PathLike) -> StepShape:
    """The :class:`~rl_ring.train.plan.StepShape` of a run's training step (for plan)."""
    from flax import nnx

    meta = checkpoint_meta(workdir)
    cfg = config_from_meta(meta)
    if "batch_shape" not in meta:
        raise ValueError(f"{workdir}: the checkpoint does not record its batch shape")
    spec = base.DataSpec.from_dict(meta["data_spec"])
    module = registry.get(cfg.agent)
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


__all__ = [
    "LoadedCheckpoint",
    "checkpoint_meta",
    "config_from_meta",
    "load_checkpoint",
    "load_dataset",
    "recipe",
    "resolve_config",
    "saved_config",
    "shape_from_workdir",
    "train",
    "xland_recipe",
]
