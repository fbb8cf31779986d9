"""The training loop: sharded steps, metrics, NaN stop, checkpoints, automatic resume.

``run(recipe, cfg)`` trains any model/loss/sampler bundle; ``rl_ring.train.train(cfg)``
builds the recipe for an agent and a dataset and calls it.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rl_ring import sharding
from rl_ring.io import OutputExistsError, write_json
from rl_ring.train.checkpoint import CKPT_SUBDIR, Checkpointer, warm_start_params
from rl_ring.train.config import RESUME_MUST_MATCH, TrainConfig, config_diff, to_dict
from rl_ring.train.loader import MeshLoader, pad_multiple
from rl_ring.train.metrics import MetricsWriter, Progress
from rl_ring.train.optim import make_optimizer
from rl_ring.train.recipe import Recipe
from rl_ring.train.state import PyTree, TrainState, build_state
from rl_ring.train.step import jit_step, make_step_fn

EvalFn = Callable[[nnx.Module, int], dict[str, Any]]
CONFIG_FILE = "config.json"


class NonFiniteError(FloatingPointError):
    """Training stopped because a metric or the parameters became NaN or infinite."""

    def __init__(self, message: str, *, step: int, metric: str, last_checkpoint: int | None):
        super().__init__(message)
        self.step = step
        self.metric = metric
        self.last_checkpoint = last_checkpoint


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped the run after a step; a checkpoint of that step was saved.

    Attributes:
        step: the step the run stopped at (its checkpoint's step; 0 or the resumed step when
            no step had finished, and then nothing new was saved).
        signal: the signal's number.
        saved: whether a checkpoint of ``step`` is in ``directory``.
        directory: the checkpoint directory.
    """

    def __init__(self, message: str, *, step: int, signum: int, saved: bool, directory: Path):
        super().__init__(message)
        self.step, self.signal, self.saved, self.directory = step, signum, saved, directory


class _StopSignals:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps; a second signal
    stops at once (KeyboardInterrupt). Only in the main thread (signals are delivered
    there); elsewhere a no-op."""

    def __init__(self):
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        print(f"\nrl_ring: {signal.Signals(signum).name} received: finishing the current "
              "step and saving a checkpoint (send it again to stop at once)", file=sys.stderr,
              flush=True)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


@dataclass
class TrainResult:
    """What a finished run returns.

    Attributes:
        workdir: the run's work directory.
        step: the step the run ended at (== cfg.steps).
        start_step: the step it started from (> 0 when resumed).
        state: the final train state (sharded device arrays).
        model: the final model (its variables are the final state's arrays).
        losses: ``[step - start_step]`` float64, the loss of every step this call ran.
        history: the metric rows this call wrote to ``metrics.jsonl``.
        compile_s: seconds of the first step (compilation included).
        tokens_per_s: tokens per second over this call's steps after the first.
    """

    workdir: Path
    step: int
    start_step: int
    state: TrainState
    model: nnx.Module
    losses: np.ndarray
    history: list[dict[str, Any]] = field(default_factory=list)
    compile_s: float = 0.0
    tokens_per_s: float = 0.0

    @property
    def params(self) -> PyTree:
        return self.state.params


def make_run_mesh(cfg: TrainConfig):
    """The mesh of ``cfg`` over the first ``cfg.devices`` devices (all when 0)."""
    devices = jax.devices()
    if cfg.devices:
        if cfg.devices > len(devices):
            raise ValueError(
                f"TrainConfig.devices={cfg.devices} but only {len(devices)} devices are "
                f"available; {sharding.device_hint(cfg.devices)}"
            )
        devices = devices[: cfg.devices]
    return sharding.make_mesh(cfg.mesh or None, devices=devices)


def _first_non_finite(metrics: dict[str, float]) -> str | None:
    # The loss first: a NaN loss is the cause, a NaN gradient norm its consequence.
    for name in ("loss", "grad_norm", *sorted(metrics)):
        if name in metrics and not np.isfinite(metrics[name]):
            return name
    return None


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _write_config(workdir: Path, cfg_dict: dict[str, Any], meta: dict[str, Any]) -> None:
    write_json({"config": cfg_dict, **meta}, workdir / CONFIG_FILE)


def check_workdir(workdir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuses a work directory whose files a run would overwrite or mix with its own.

    A new or empty directory, or a training run's own directory resumed, is fine; anything
    else needs ``overwrite`` (see :class:`TrainConfig`).

    Raises:
        OutputExistsError: as above, naming the directory and what is in it.
    """
    if not workdir.exists() or overwrite:
        return
    entries = sorted(p.name for p in workdir.iterdir())
    if not entries:
        return
    is_run = (workdir / CONFIG_FILE).is_file() or (workdir / CKPT_SUBDIR).is_dir()
    if is_run and resume:
        return
    shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    why = ("holds an earlier run that resume=False (--no-resume) would overwrite" if is_run
           else "is not a training run's work directory")
    raise OutputExistsError(
        f"{workdir}: {why} (it holds {shown}); choose a new --workdir, or pass --overwrite "
        "to train there anyway (other files are kept)"
    )


def run(recipe: Recipe, cfg: TrainConfig, *, eval_fn: EvalFn | None = None) -> TrainResult:
    """Trains ``recipe`` for ``cfg.steps`` steps, resuming from ``cfg.workdir`` if possible.

    Every configuration error (mesh, batch split, sequence length, options) is raised before
    the model is built or anything is compiled.

    Raises:
        ValueError: a bad configuration, naming the option.
        NonFiniteError: a loss, gradient norm or parameter became NaN/inf; the checkpoint
            directory keeps only finite states.
    """
    cfg.validate()
    mesh = make_run_mesh(cfg)
    tx, schedule = make_optimizer(cfg.optim, cfg.steps)
    loader = MeshLoader(mesh, cfg.batch_size, recipe.layout)
    share = loader.share
    sampler = recipe.make_sampler(
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        host_id=share.host_id,
        num_hosts=share.num_hosts,
        pad_multiple=pad_multiple(mesh, recipe.layout),
    )
    fresh_sampler_state = sampler.state_dict()
    example = sampler.next_batch()
    loader.check(example)  # sequence/batch mismatches fail here, before any compute

    workdir = Path(cfg.workdir)
    if cfg.init_from and Path(cfg.init_from).absolute() == workdir.absolute():
        raise ValueError(f"init_from={cfg.init_from!r} is this run's own work directory: a run "
                         "continues from its own checkpoints by itself (resume)")
    check_workdir(workdir, resume=cfg.resume, overwrite=cfg.overwrite)
    abstract_state, shardings, parts = build_state(
        recipe.make_model, tx, cfg.seed, mesh, recipe.param_specs, materialize=False
    )
    # A warm start is checked (agent, names, shapes) before the work directory is touched;
    # its parameters are used only if this run does not resume from its own checkpoint.
    warm = (warm_start_params(cfg.init_from, abstract_state.params, agent=cfg.agent)
            if cfg.init_from else None)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_dict = to_dict(cfg)
    lead = jax.process_index() == 0
    ckpt = Checkpointer(workdir, keep=cfg.keep_checkpoints, async_save=cfg.async_checkpoint)
    start = ckpt.latest_step() if cfg.resume else None
    init_meta: dict[str, Any] | None = None
    if start is not None:
        old_meta, _ = ckpt.read_meta(start)
        diff = config_diff(old_meta.get("config", {}), cfg_dict, RESUME_MUST_MATCH)
        if diff:
            ckpt.close()
            raise ValueError(
                f"{ckpt.directory}: cannot resume from step {start}, the configuration differs "
                f"({'; '.join(diff)}); use another workdir or resume=False"
            )
        state, meta, start = ckpt.restore(abstract_state, start)
        sampler.load_state_dict(meta["sampler"])
        init_meta = meta.get("init_from")
        wall_offset = float(meta.get("wall_time", 0.0))
        if lead:
            print(f"rl_ring: resuming from step {start} of {cfg.steps} ({ckpt.directory})",
                  file=sys.stderr, flush=True)
    else:
        start = 0
        state, _, _ = build_state(recipe.make_model, tx, cfg.seed, mesh, recipe.param_specs)
        if warm is not None:
            # The optimiser's moments start at zero whatever the parameters: only these move.
            state = dataclasses.replace(state, params=warm[0])
            init_meta = {"workdir": str(Path(cfg.init_from).absolute()), "step": warm[1]}
            if lead:
                print(f"rl_ring: parameters from step {warm[1]} of {cfg.init_from}",
                      file=sys.stderr, flush=True)
        sampler.load_state_dict(fresh_sampler_state)
        wall_offset = 0.0
    recipe_meta = {
        **recipe.meta,
        # Where the parameters came from, kept in every checkpoint of a warm-started run.
        **({"init_from": init_meta} if init_meta else {}),
        # The global batch's shape, so `rl-ring plan WORKDIR` can compile the same step.
        "batch_shape": {"batch_size": cfg.batch_size, "seq_len": int(example.shape[1]),
                        "feature_dim": int(example.values.shape[2]),
                        "target_dim": int(example.target.shape[2])},
    }
    if lead:
        _write_config(workdir, cfg_dict, recipe_meta)

    step_fn = jit_step(
        make_step_fn(parts, recipe.loss_fn, tx, schedule, mesh=mesh, dtype=cfg.compute_dtype),
        shardings,
        loader.shardings(example),
        mesh,
    )
    tokens_per_batch = cfg.batch_size * example.shape[1]
    # Rows past the restored step were written by the run that was stopped: dropped.
    writer = MetricsWriter(workdir, tensorboard=cfg.tensorboard, enabled=lead, resume_step=start)
    progress = Progress(cfg.steps, start, enabled=cfg.progress and lead)
    losses: list[float] = []
    history: list[dict[str, Any]] = []
    pending: list[tuple[int, dict[str, jax.Array]]] = []
    t_run = time.perf_counter()
    clock = {"mark": t_run, "steady_from": None}

    def wall() -> float:
        return wall_offset + time.perf_counter() - t_run

    def stop(step: int, metric: str, value: float) -> None:
        ckpt.wait()
        kept = ckpt.latest_step()
        where = (f"the last good checkpoint is step {kept} in {ckpt.directory}" if kept is not None
                 else "no checkpoint was saved before it")
        raise NonFiniteError(
            f"training stopped at step {step}: {metric} is {value} (not finite); {where}",
            step=step, metric=metric, last_checkpoint=kept,
        )

    def flush(step: int) -> None:
        """Fetches pending metrics, checks them, and writes one row for ``step``."""
        if not pending:
            return
        fetched = jax.device_get([m for _, m in pending])
        fetched = [{k: float(v) for k, v in m.items()} for m in fetched]
        now = time.perf_counter()
        tok_s = tokens_per_batch * len(pending) / max(now - clock["mark"], 1e-9)
        for (s, _), m in zip(pending, fetched, strict=True):
            bad = _first_non_finite(m)
            if bad is not None:
                writer.write(s, {**m, "wall_time": wall()})
                stop(s, bad, m[bad])
            losses.append(m["loss"])
        row = {**fetched[-1], "tokens_per_s": tok_s, "wall_time": wall()}
        writer.write(step, row)
        history.append({"step": step, **row})
        progress.update(len(pending), row["loss"], tok_s)
        pending.clear()
        clock["mark"] = now

    saved = {"step": start}

    def save(step: int, sampler_state: dict[str, Any]) -> None:
        if not bool(_all_finite(state.params)):
            stop(step, "params", float("nan"))
        meta = {**recipe_meta, "step": step, "config": cfg_dict,
                "sampler": sampler_state, "wall_time": wall()}
        ckpt.save(step, state, meta)
        saved["step"] = step

    def interrupted(step: int, signum: int) -> TrainingInterrupted:
        name = signal.Signals(signum).name
        if step == start:
            return TrainingInterrupted(
                f"{name}: stopped before step {start + 1} finished; nothing new to save "
                f"in {workdir}", step=step, signum=signum, saved=False, directory=ckpt.directory)
        return TrainingInterrupted(
            f"{name}: stopped after step {step} of {cfg.steps}; saved a checkpoint of step "
            f"{step} in {ckpt.directory}. Resume with the same command (same --workdir)",
            step=step, signum=signum, saved=True, directory=ckpt.directory)

    step = start
    sampler_state: dict[str, Any] = {}
    signals = _StopSignals()
    try:
        signals.__enter__()
        batch_np = sampler.next_batch()
        while step < cfg.steps:
            if signals.received is not None:
                if step > start and saved["step"] != step:
                    flush(step)
                    save(step, sampler_state)  # the state right after this step's batch
                raise interrupted(step, signals.received)
            save_now = (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps
            eval_now = cfg.eval_every > 0 and (step + 1) % cfg.eval_every == 0
            # The sampler state to save is the one right after drawing this step's batch.
            sampler_state = sampler.state_dict()
            state, metrics = step_fn(state, loader.place(batch_np))
            step += 1
            pending.append((step, metrics))
            if step == start + 1:
                # The first step compiles: log it apart so tokens/s measures steady state.
                flush(step)
                clock["steady_from"] = clock["mark"]
            if step < cfg.steps:
                batch_np = sampler.next_batch()  # overlaps with the step running on device
            if step % cfg.log_every == 0 or save_now or eval_now:
                flush(step)
            if save_now:
                save(step, sampler_state)
            if eval_now and eval_fn is not None:
                results = eval_fn(parts.merge(state.params, state.rest), step)
                writer.write(step, results, prefix="eval/")
                history.append({"step": step, **{f"eval/{k}": v for k, v in results.items()}})
        flush(step)
    finally:
        signals.__exit__()
        # Also on a crash or interrupt: pending saves finish (or stay invisible), files close.
        ckpt.close()
        writer.close()
        progress.close()
    steady_s = clock["mark"] - clock["steady_from"] if clock["steady_from"] else 0.0
    steady_steps = step - start - 1
    return TrainResult(
        workdir=workdir,
        step=step,
        start_step=start,
        state=state,
        model=parts.merge(state.params, state.rest),
        losses=np.asarray(losses, np.float64),
        history=history,
        compile_s=history[0]["wall_time"] - wall_offset if history else 0.0,
        tokens_per_s=tokens_per_batch * steady_steps / steady_s if steady_s > 0 else 0.0,
    )
