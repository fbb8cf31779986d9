"""Normalisation statistics: observation mean/std, return scale and reward scale.

Computed once from an :class:`~rl_ring.data.store.EpisodeStore`, saved with checkpoints as
JSON and applied by the token layout both when sampling training batches and when
evaluation builds tokens online, so the model sees the same scaling in both places.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rl_ring.data.store import EpisodeStore
from rl_ring.io import atomic_file

NORM_FORMAT = "rl_ring.Normalization"
# Features whose standard deviation is below this are left unscaled (constant features).
_MIN_STD = 1e-6
# Rows per chunk when reducing a (possibly memory-mapped) store: bounded memory.
_CHUNK_ROWS = 1 << 16


@dataclass(frozen=True, eq=False)
class Normalization:
    """How raw observations, returns and rewards are scaled into token values.

    Attributes:
        obs_mean: ``[obs_dim]`` float32 mean subtracted from flattened observations.
        obs_std: ``[obs_dim]`` float32 divisor of centred observations (never below 1e-6).
        return_scale: returns-to-go are divided by this (positive).
        reward_scale: per-step rewards are divided by this (positive).
    """

    obs_mean: np.ndarray
    obs_std: np.ndarray
    return_scale: float = 1.0
    reward_scale: float = 1.0

    def __post_init__(self) -> None:
        mean = np.asarray(self.obs_mean, dtype=np.float32).reshape(-1)
        std = np.asarray(self.obs_std, dtype=np.float32).reshape(-1)
        if mean.shape != std.shape:
            raise ValueError(
                f"Normalization: obs_mean has shape {mean.shape}, obs_std has {std.shape}"
            )
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
            raise ValueError("Normalization: obs_mean must be finite and obs_std finite and > 0")
        for name in ("return_scale", "reward_scale"):
            value = float(getattr(self, name))
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"Normalization: {name} must be finite and > 0, got {value}")
            object.__setattr__(self, name, value)
        mean.setflags(write=False)
        std.setflags(write=False)
        object.__setattr__(self, "obs_mean", mean)
        object.__setattr__(self, "obs_std", std)
        # Multiplying by a stored reciprocal is cheaper than dividing per token.
        object.__setattr__(self, "_inv_std", (1.0 / std).astype(np.float32))

    @property
    def obs_dim(self) -> int:
        return int(self.obs_mean.shape[0])

    # ------------------------------------------------------------------ construction
    @classmethod
    def identity(cls, obs_dim: int) -> Normalization:
        """No scaling at all: mean 0, std 1, both scales 1."""
        return cls(np.zeros(obs_dim, np.float32), np.ones(obs_dim, np.float32))

    @classmethod
    def from_store(
        cls,
        store: EpisodeStore,
        *,
        normalize_obs: bool = True,
        return_scale: float | None = None,
        reward_scale: float | None = None,
    ) -> Normalization:
        """Statistics of a store, computed in bounded memory (chunks of a memory map).

        Args:
            store: the episodes.
            normalize_obs: compute observation mean/std (False: mean 0, std 1).
            return_scale: fixed return scale; default the largest absolute episode return
                (so returns-to-go of the data lie in [-1, 1]), or 1 when every return is 0.
            reward_scale: fixed reward scale; default the largest absolute per-step reward,
                or 1 when every reward is 0.
        """
        obs_dim = store.obs_dim
        if normalize_obs and store.num_steps > 0:
            mean, std = _mean_std(store.observations, obs_dim)
        else:
            mean, std = np.zeros(obs_dim), np.ones(obs_dim)
        if return_scale is None:
            returns = store.episode_returns
            peak = float(np.max(np.abs(returns))) if returns.size else 0.0
            return_scale = peak if peak > 0 else 1.0
        if reward_scale is None:
            peak = _max_abs(store.rewards)
            reward_scale = peak if peak > 0 else 1.0
        return cls(mean, std, return_scale=return_scale, reward_scale=reward_scale)

    # ------------------------------------------------------------------ application
    def normalize_obs(self, obs: np.ndarray) -> np.ndarray:
        """``(obs - mean) / std`` over flattened observations.

        Args:
            obs: ``[..., obs_dim]`` raw observations (flatten image-like observations first).

        Returns:
            ``[..., obs_dim]`` float32.
        """
        obs = np.asarray(obs, dtype=np.float32)
        if obs.ndim == 0 or obs.shape[-1] != self.obs_dim:
            raise ValueError(
                f"Normalization: observations have shape {obs.shape}, "
                f"expected [..., {self.obs_dim}]"
            )
        return (obs - self.obs_mean) * self._inv_std

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": NORM_FORMAT,
            "obs_mean": self.obs_mean.tolist(),
            "obs_std": self.obs_std.tolist(),
            "return_scale": self.return_scale,
            "reward_scale": self.reward_scale,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalization:
        if d.get("format") != NORM_FORMAT:
            raise ValueError(
                f"Normalization.from_dict: format is {d.get('format')!r}, expected {NORM_FORMAT!r}"
            )
        missing = [k for k in ("obs_mean", "obs_std", "return_scale", "reward_scale") if k not in d]
        if missing:
            raise ValueError(f"Normalization.from_dict: missing keys {missing}")
        return cls(
            np.asarray(d["obs_mean"], np.float32),
            np.asarray(d["obs_std"], np.float32),
            return_scale=d["return_scale"],
            reward_scale=d["reward_scale"],
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Normalization:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike) -> Path:
        """Writes JSON to ``path`` atomically (temporary file in the same folder, then rename)."""
        path = Path(path)
        with atomic_file(path) as tmp:
            tmp.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Normalization:
        path = Path(path)
        try:
            return cls.from_json(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not a JSON normalisation file ({err})") from None
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Normalization):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __repr__(self) -> str:
        return (
            f"Normalization(obs_dim={self.obs_dim}, return_scale={self.return_scale:g}, "
            f"reward_scale={self.reward_scale:g})"
        )


def _mean_std(observations: np.ndarray, obs_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std in float64, one chunk at a time (Chan et al. merge)."""
    n_total = 0
    mean = np.zeros(obs_dim, np.float64)
    m2 = np.zeros(obs_dim, np.float64)
    for lo in range(0, len(observations), _CHUNK_ROWS):
        chunk = np.asarray(observations[lo : lo + _CHUNK_ROWS], dtype=np.float64)
        chunk = chunk.reshape(len(chunk), obs_dim)
        n = len(chunk)
        c_mean = chunk.mean(axis=0)
        c_m2 = ((chunk - c_mean) ** 2).sum(axis=0)
        delta = c_mean - mean
        total = n_total + n
        mean = mean + delta * (n / total)
        m2 = m2 + c_m2 + delta**2 * (n_total * n / total)
        n_total = total
    std = np.sqrt(m2 / max(n_total, 1))
    std = np.where(std < _MIN_STD, 1.0, std)
    return mean, std


def _max_abs(x: np.ndarray) -> float:
    peak = 0.0
    for lo in range(0, len(x), _CHUNK_ROWS):
        chunk = np.asarray(x[lo : lo + _CHUNK_ROWS])
        if chunk.size:
            peak = max(peak, float(np.max(np.abs(chunk))))
    return peak
