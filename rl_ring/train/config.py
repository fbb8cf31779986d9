"""The training run's configuration, and JSON round trips of frozen dataclass configs."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from rl_ring.train.optim import OptimConfig

A = TypeVar("A")


@dataclass(frozen=True)
class TrainConfig(Generic[A]):
    """One training run: data, agent, mesh, optimiser, schedule of logs/checkpoints/evals."""

    agent: str = "at"
    """Agent to train: at, dt, bc or ad."""
    data: str = ""
    """Dataset path: anything rl_ring.data.load understands (EpisodeStore dir, D4RL .hdf5, ...)."""
    env: str = ""
    """Environment id the agent is evaluated in (stored with checkpoints for evaluation)."""
    workdir: str = "runs/train"
    """Work directory: checkpoints, metrics.jsonl, TensorBoard events; a run resumes from it."""
    preset: str = "default"
    """Agent preset the agent options start from (default, tiny, or a named preset)."""
    mesh: str = ""
    """Device mesh, e.g. 'seq=8' or 'data=2,seq=4' (data, fsdp, seq, tensor); '' = all on seq."""
    devices: int = 0
    """Use the first N devices (0 = all); the mesh must have exactly this many."""
    steps: int = 1000
    """Total optimiser steps of the run (a resumed run continues up to this)."""
    batch_size: int = 8
    """Global batch size in sequences (over all processes)."""
    seed: int = 0
    """Seed of parameter init, data sampling and dropout."""
    compute_dtype: str = "float32"
    """Forward/backward compute dtype: float32 or bfloat16 (parameters stay float32)."""
    attention: str = "auto"
    """Attention: auto (ring when the seq axis has >1 device, else the agent's, its dense
    reference promoted to blockwise), reference, blockwise, ring, allgather or ulysses (the
    context-parallel strategies of docs/attention.md; the dispatcher's per-call ``auto``
    rule is ``attn_impl="auto"`` in the model config)."""
    layout: str = ""
    """Token layout on the seq axis: contiguous, zigzag or striped ('' = the agent's)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """AdamW, schedule and clipping."""
    log_every: int = 10
    """Write metrics (and check the loss is finite) every N steps."""
    ckpt_every: int = 500
    """Save a checkpoint every N steps (and at the end)."""
    keep_checkpoints: int = 3
    """Number of most recent checkpoints kept."""
    eval_every: int = 0
    """Call the evaluation hook every N steps (0 = never)."""
    eval_hook: str = ""
    """'package.module:function' building the evaluation hook from this config ('' = none)."""
    async_checkpoint: bool = True
    """Write checkpoints in a background thread while training continues."""
    resume: bool = True
    """Resume from the latest checkpoint in the work directory if there is one."""
    overwrite: bool = False
    """Allow a work directory that holds other files (they are kept), or, with resume=False,
    an earlier run's checkpoints and metrics (they are replaced). Without it such a work
    directory is refused; a run's own work directory is always resumed."""
    progress: bool = True
    """Show a progress bar."""
    tensorboard: bool = True
    """Write TensorBoard event files under <workdir>/tb."""
    init_from: str = ""
    """Work directory of a finished run of the same agent whose latest checkpoint's
    parameters this run starts from (fine-tuning, curricula; '' = a fresh initialisation).
    The optimiser, step count, data order and other variables start fresh; every parameter
    must have the same shape. Read once, at step 0: a resumed run continues from its own
    checkpoint."""
    agent_config: A | None = None
    """The agent's own options (None: the agent's preset)."""

    def validate(self) -> None:
        """Checks the run options (not the agent's); ValueError naming the option."""
        positive = ("steps", "batch_size", "log_every", "ckpt_every", "keep_checkpoints")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: expected >= 1")
        for name in ("eval_every", "devices"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: expected >= 0")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(
                f"TrainConfig.compute_dtype={self.compute_dtype!r}: expected float32 or bfloat16"
            )
        if not self.workdir:
            raise ValueError("TrainConfig.workdir is empty: a work directory is required")
        self.optim.validate()

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


ATTENTION_CHOICES = ("auto", "reference", "blockwise", "ring", "allgather", "ulysses")


def run_model_config(cfg: TrainConfig, model: Any) -> Any:
    """The agent's ``ModelConfig`` with the run's attention, layout and compute dtype applied.

    ``attention="auto"`` uses ring attention when the mesh's seq axis has more than one
    device and the model's own choice otherwise, except that the dense ``"reference"`` (the
    oracle, and every model config's default) becomes ``"blockwise"``: the same exact
    attention without the ``[T, T]`` score matrices, 2x faster per training step at 320
    tokens and 12x at 1,280 on this CPU (``rl-ring bench train_dense``). An explicit
    ``attention="reference"`` still trains on the oracle. ``layout`` overrides the token
    layout when given.

    Raises:
        ValueError: an unknown attention choice.
    """
    if cfg.attention not in ATTENTION_CHOICES:
        raise ValueError(f"TrainConfig.attention={cfg.attention!r}: expected one of "
                         f"{ATTENTION_CHOICES}")
    changes: dict[str, Any] = {}
    if cfg.attention == "auto":
        if _seq_devices(cfg) > 1:
            changes["attn_impl"] = "ring"
        elif model.attn_impl == "reference":
            changes["attn_impl"] = "blockwise"
    else:
        changes["attn_impl"] = cfg.attention
    if cfg.layout:
        changes["attn_layout"] = cfg.layout
    if cfg.compute_dtype != "float32":
        changes["dtype"] = cfg.compute_dtype
    return model.replace(**changes) if changes else model


def _seq_devices(cfg: TrainConfig) -> int:
    from rl_ring import sharding

    if cfg.mesh:
        return sharding.parse_mesh_spec(cfg.mesh).seq
    import jax

    return cfg.devices or len(jax.devices())


# Options whose change between a checkpoint and a resumed run would silently mix two runs.
RESUME_MUST_MATCH = ("agent", "agent_config", "batch_size", "seed", "compute_dtype", "optim")


def to_dict(cfg: Any) -> Any:
    """A JSON-ready copy of a (nested) dataclass config; tuples become lists."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, tuple | list):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {str(k): to_dict(v) for k, v in cfg.items()}
    return cfg


def from_dict(cls: type, data: dict[str, Any], *, where: str = "config") -> Any:
    """Rebuilds dataclass ``cls`` from :func:`to_dict` output (nested dataclasses, tuples).

    Raises:
        ValueError: a key that ``cls`` has no field for, naming it and ``where``.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object for {cls.__name__}, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} for {cls.__name__}")
    kwargs = {k: _coerce(hints.get(k, Any), v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(options[0], value, where) if len(options) == 1 else value
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value, where=where)
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        if args and len(args) == len(value):
            return tuple(_coerce(a, v, where) for a, v in zip(args, value, strict=True))
        return tuple(_tupleize(v) for v in value)
    return value


def _tupleize(v: Any) -> Any:
    return tuple(_tupleize(x) for x in v) if isinstance(v, list) else v


def config_diff(old: dict[str, Any], new: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    """The keys among ``keys`` whose values differ, spelled ``key: old -> new``."""
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
