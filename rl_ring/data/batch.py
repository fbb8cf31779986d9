"""TokenBatch: everything a loss needs, as numpy arrays over ``[batch, seq]`` tokens.

Samplers turn episodes into tokens; the model embeds each token by its ``kind`` from its
``values``; the loss is taken where ``loss_mask`` is set, against ``target`` (continuous
actions) or ``target_ids`` (discrete actions). Every per-token field has ``[batch, seq]``
leading axes, so a layout permutation or a sequence sharding applies to all fields alike.

Token kinds (``kind`` field):
    RTG      return-to-go (scalar, scaled by the sampler's return scale)
    STATE    observation vector
    ACTION   action vector (continuous) or one-hot (discrete)
    REWARD   reward, and the completion flag as a second feature
    DONE     completion flag as a separate token (layouts that want it)
    STEP     one token per step holding (observation, previous action, previous reward)
             concatenated: Algorithm Distillation's token
    TRANSITION  one observed transition (state, action, reward, next state, ended):
             the in-context dataset of the Decision-Pretrained Transformer
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import IntEnum

import numpy as np


class Kind(IntEnum):
    RTG = 0
    STATE = 1
    ACTION = 2
    REWARD = 3
    DONE = 4
    STEP = 5
    TRANSITION = 6


NUM_KINDS = len(Kind)

# Fields with [batch, seq, ...] leading axes (permuted and sharded together).
TOKEN_FIELDS = (
    "kind",
    "values",
    "positions",
    "timesteps",
    "segment_ids",
    "valid",
    "target",
    "target_ids",
    "loss_mask",
)


@dataclass
class TokenBatch:
    """A batch of token sequences.

    Attributes:
        kind: ``[B, T]`` int32 token kind (:class:`Kind`); 0 on padding.
        values: ``[B, T, F]`` float32 payload, zero-padded to the widest kind.
        positions: ``[B, T]`` int32 global position of the token in the original
            (contiguous) sequence: ``arange(T)`` before any layout permutation.
        timesteps: ``[B, T]`` int32 environment step of the token within its episode.
        segment_ids: ``[B, T]`` int32; tokens attend only within their segment (packing).
        valid: ``[B, T]`` bool, False on padding.
        target: ``[B, T, A]`` float32 action to predict from this token (continuous).
        target_ids: ``[B, T]`` int32 action to predict (discrete); 0 where unused.
        loss_mask: ``[B, T]`` float32 weight of the prediction at this token (0 = no loss).
        tokens_per_step: tokens per environment step in this layout.
        discrete_actions: whether ``target_ids`` (True) or ``target`` (False) is the target.
    """

    kind: np.ndarray
    values: np.ndarray
    positions: np.ndarray
    timesteps: np.ndarray
    segment_ids: np.ndarray
    valid: np.ndarray
    target: np.ndarray
    target_ids: np.ndarray
    loss_mask: np.ndarray
    tokens_per_step: int = 1
    discrete_actions: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.kind.shape)  # type: ignore[return-value]

    def tokens(self) -> dict[str, np.ndarray]:
        """The per-token fields as a dict (what goes to devices)."""
        return {f: getattr(self, f) for f in TOKEN_FIELDS}

    def replace(self, **changes) -> TokenBatch:
        return dataclasses.replace(self, **changes)

    def map_tokens(self, fn) -> TokenBatch:
        """Applies ``fn(array)`` to every per-token field (e.g. a layout permutation)."""
        return self.replace(**{f: fn(getattr(self, f)) for f in TOKEN_FIELDS})

    def validate(self) -> None:
        """Checks field shapes and dtypes; raises ValueError naming the field."""
        b, t = self.kind.shape
        for f in TOKEN_FIELDS:
            arr = getattr(self, f)
            if arr.shape[:2] != (b, t):
                raise ValueError(f"TokenBatch.{f} has shape {arr.shape}, expected ({b}, {t}, ...)")
        for f in ("values", "target"):
            if getattr(self, f).ndim != 3:
                raise ValueError(f"TokenBatch.{f} must be [B, T, F], got {getattr(self, f).shape}")


def pad_to_multiple(length: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``length``."""
    if multiple < 1:
        raise ValueError(f"pad multiple must be >= 1, got {multiple}")
    return -(-length // multiple) * multiple
