"""Checkpoints: orbax ``CheckpointManager`` over ``<workdir>/checkpoints``.

Each checkpoint step holds two items:

- ``state``: the train state (parameters, optimiser state, step, training PRNG, other model
  variables) as sharded arrays, restored straight into the mesh layout;
- ``meta``: JSON with the step, the sampler state, the run configuration, the agent's model
  spec and the data normalisation statistics that evaluation needs.

orbax writes a step into a temporary directory and renames it when every item is complete,
so a step directory that exists is a finished checkpoint; a run killed mid-save leaves only
a temporary directory that is ignored (and cleaned up by the next manager).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import optax
import orbax.checkpoint as ocp

from rl_ring.train.state import PyTree, TrainState, init_fn

CKPT_SUBDIR = "checkpoints"


class _QuietReadOnly(logging.Filter):
    """Drops orbax's "Given directory is read only" warning: rl_ring opens checkpoints read
    only on purpose (evaluation, plans), once per load, and the warning said nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Given directory is read only")


logging.getLogger("absl").addFilter(_QuietReadOnly())


def _to_tree(state: TrainState) -> dict[str, Any]:
    # A plain dict on disk keeps checkpoints readable without rl_ring's TrainState class.
    return {
        "step": state.step,
        "params": state.params,
        "rest": state.rest,
        "opt_state": state.opt_state,
        "rng": state.rng,
    }


def _from_tree(tree: dict[str, Any]) -> TrainState:
    return TrainState(**tree)


class Checkpointer:
    """Saves and restores train states under ``<workdir>/checkpoints``.

    Args:
        workdir: the run's work directory.
        keep: how many of the most recent checkpoints to keep.
        async_save: write in a background thread (the device-to-host copy still happens
            before :meth:`save` returns, so the saved state may be donated right after).
        read_only: open an existing directory without creating or deleting anything.
    """

    def __init__(
        self, workdir: str | os.PathLike, *, keep: int = 3, async_save: bool = True,
        read_only: bool = False,
    ):
        if keep < 1:
            raise ValueError(f"keep_checkpoints={keep}: expected >= 1")
        self.directory = Path(workdir).absolute() / CKPT_SUBDIR
        if read_only and not self.directory.is_dir():
            raise FileNotFoundError(f"{workdir}: no checkpoints directory ({self.directory})")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep,
            save_interval_steps=0 if read_only else 1,
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=async_save and not read_only,
            cleanup_tmp_directories=not read_only,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def steps(self) -> list[int]:
        """Steps of the finished checkpoints, ascending."""
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, meta: dict[str, Any]) -> None:
        """Starts saving ``state`` and ``meta`` as checkpoint ``step``."""
        json.dumps(meta)  # fail here, naming nothing half-written, if meta is not JSON
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_to_tree(state)), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )

    def restore(
        self, abstract_state: TrainState, step: int | None = None
    ) -> tuple[TrainState, dict[str, Any], int]:
        """Restores checkpoint ``step`` (default latest) into ``abstract_state``'s shardings.

        Args:
            abstract_state: a TrainState of ``jax.ShapeDtypeStruct`` with shardings.
            step: the step to restore; None for the latest.

        Returns:
            (state, meta, step).
        """
        step = self._resolve(step)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_to_tree(abstract_state)),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return _from_tree(restored.state), dict(restored.meta), step

    def read_meta(self, step: int | None = None) -> tuple[dict[str, Any], int]:
        """The JSON item of checkpoint ``step`` (default latest), and the step."""
        step = self._resolve(step)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
        )
        return dict(restored.meta), step

    def restore_model(self, abstract: dict[str, Any], step: int | None = None) -> tuple[Any, int]:
        """Restores only ``params`` and ``rest`` of checkpoint ``step`` (what evaluation needs).

        Args:
            abstract: ``{"params": ..., "rest": ...}`` of ``jax.ShapeDtypeStruct`` with
                shardings (e.g. one device).
            step: the step (default latest).
        """
        step = self._resolve(step)
        # Partial restore: the optimiser state is never read.
        target = dict(abstract)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=target,
                    restore_args=jax.tree.map(
                        lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding)
                        if a is not None else None,
                        target,
                    ),
                    partial_restore=True,
                )
            ),
        )
        return {k: restored.state[k] for k in abstract}, step

    def param_shapes(self, step: int | None = None) -> dict[str, tuple[tuple[int, ...], str]]:
        """``{path: (shape, dtype)}`` of the parameters saved in checkpoint ``step`` (default
        latest), read from the checkpoint's metadata (no array is loaded)."""
        step = self._resolve(step)
        tree = ocp.PyTreeCheckpointHandler().metadata(self.directory / str(step) / "state")
        return _shapes(getattr(tree, "tree", tree)["params"])

    def _resolve(self, step: int | None) -> int:
        steps = self.steps()
        if not steps:
            raise FileNotFoundError(f"{self.directory}: no finished checkpoint")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise FileNotFoundError(
                f"{self.directory}: no checkpoint for step {step}; have {steps}"
            )
        return step

    def wait(self) -> None:
        """Blocks until every pending save is on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _shapes(tree: PyTree) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{path: (shape, dtype)}`` of a tree of arrays or array metadata."""
    return {jax.tree_util.keystr(path): (tuple(int(d) for d in leaf.shape), str(leaf.dtype))
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def warm_start_params(source: str | os.PathLike, abstract_params: PyTree, *, agent: str
                      ) -> tuple[PyTree, int]:
    """The parameters of ``source``'s latest checkpoint, placed as ``abstract_params`` are
    (``jax.ShapeDtypeStruct`` with shardings): how a run starts from another
    (``TrainConfig.init_from``).

    Returns:
        ``(params, step)``: the parameters and the source checkpoint's step.

    Raises:
        ValueError: ``source`` has no finished checkpoint, was trained for another agent, or
            holds parameters of other names or shapes (the first few named).
    """
    option = f"init_from={str(source)!r}"
    try:
        ckpt = Checkpointer(source, read_only=True)
    except FileNotFoundError as err:
        raise ValueError(f"{option}: not a training run's work directory ({err})") from None
    try:
        try:
            meta, step = ckpt.read_meta()
        except FileNotFoundError as err:
            raise ValueError(f"{option}: {err}") from None
        trained = meta.get("config", {}).get("agent", "")
        if trained.lower() != agent.lower():
            raise ValueError(f"{option}: its run trained agent {trained!r}, this run trains "
                             f"{agent!r}; the parameters only carry over within one agent")
        saved = ckpt.param_shapes(step)
        wanted = _shapes(abstract_params)
        problems = [f"{k}: saved {saved[k][0]} {saved[k][1]}, this model {v[0]} {v[1]}"
                    for k, v in wanted.items() if k in saved and saved[k] != v]
        problems += [f"{k}: not in the checkpoint" for k in wanted if k not in saved]
        problems += [f"{k}: not in this model" for k in saved if k not in wanted]
        if problems:
            more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
            raise ValueError(
                f"{option}: checkpoint step {step}'s parameters do not fit this model "
                f"(another model size or data shape?): {'; '.join(problems[:4])}{more}")
        restored, _ = ckpt.restore_model({"params": abstract_params}, step)
    finally:
        ckpt.close()
    return restored["params"], step


def checkpoint_meta(workdir: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
    """The JSON saved with a checkpoint (config, recipe meta, sampler state), latest by default."""
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        meta, _ = ckpt.read_meta(step)
    finally:
        ckpt.close()
    return meta


def restore_model(workdir: str | os.PathLike, make_model, step: int | None = None):
    """The model ``make_model(rngs)`` builds, with checkpoint ``step``'s variables, on one
    device (the optimiser state is never read).

    Returns:
        ``(model, step)``.

    Raises:
        FileNotFoundError: no checkpoint (for ``step``) in ``workdir``.
    """
    init, parts = init_fn(make_model, optax.identity(), 0)
    abstract = jax.eval_shape(init)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                          {"params": abstract.params, "rest": abstract.rest})
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        model_vars, step = ckpt.restore_model(target, step)
    finally:
        ckpt.close()
    return parts["parts"].merge(model_vars["params"], model_vars["rest"]), step
