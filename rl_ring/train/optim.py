"""The optimiser: AdamW with linear warmup, cosine decay and global-norm gradient clipping."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax


@dataclass(frozen=True)
class OptimConfig:
    """AdamW hyper-parameters and the learning-rate schedule."""

    lr: float = 3e-4
    """Peak learning rate, reached at the end of the warmup."""
    warmup_steps: int = 100
    """Steps of linear warmup from 0 to the peak learning rate."""
    min_lr_ratio: float = 0.1
    """Final learning rate of the cosine decay, as a fraction of the peak."""
    decay_steps: int | None = None
    """Steps over which the cosine decays (default: the run's total steps)."""
    weight_decay: float = 1e-4
    """AdamW decoupled weight decay, applied to matrices only (not biases, norms, scalars)."""
    b1: float = 0.9
    """Adam first-moment decay."""
    b2: float = 0.99
    """Adam second-moment decay."""
    eps: float = 1e-8
    """Adam denominator epsilon."""
    grad_clip: float = 1.0
    """Clip gradients to this global L2 norm (0 turns clipping off)."""

    def validate(self) -> None:
        """Raises ValueError naming the first out-of-range option."""
        checks = [
            ("lr", self.lr > 0, "> 0"),
            ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
            ("min_lr_ratio", 0.0 <= self.min_lr_ratio <= 1.0, "in [0, 1]"),
            ("decay_steps", self.decay_steps is None or self.decay_steps > 0, "> 0 or None"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("b1", 0.0 <= self.b1 < 1.0, "in [0, 1)"),
            ("b2", 0.0 <= self.b2 < 1.0, "in [0, 1)"),
            ("grad_clip", self.grad_clip >= 0, ">= 0"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"optim.{name}={getattr(self, name)!r}: expected {expected}")


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup to ``cfg.lr`` then cosine decay to ``cfg.lr * cfg.min_lr_ratio``."""
    decay = cfg.decay_steps if cfg.decay_steps is not None else max(total_steps, 1)
    warmup = min(cfg.warmup_steps, decay)
    # optax counts the decay length including the warmup; keep at least one decay step so the
    # schedule is defined when warmup covers the whole run.
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.lr,
        warmup_steps=warmup,
        decay_steps=max(decay, warmup + 1),
        end_value=cfg.lr * cfg.min_lr_ratio,
    )


def _decay_mask(params):
    # Weight decay on matrices only: decaying biases, norm scales or scalar gates pulls them
    # towards zero for no regularisation benefit.
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(
    cfg: OptimConfig, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimiser and its schedule (the schedule is also logged as ``lr``)."""
    cfg.validate()
    schedule = make_schedule(cfg, total_steps)
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(
        optax.adamw(
            schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
            mask=_decay_mask,
        )
    )
    return optax.chain(*parts), schedule
