"""Normalised scores: the one function every report calls.

D4RL's convention: ``score = 100 * (R - ref_min) / (ref_max - ref_min)`` where ``ref_min`` is
the return of a random policy and ``ref_max`` that of an expert, both fixed per environment
by D4RL (all datasets of one environment share them). The constants below are the published
D4RL reference values; environments whose constants we cannot state exactly are left out.

dm_control / ExoRL convention: scores are raw undiscounted episode returns. Every suite task
pays a reward in ``[0, 1]`` per step over 1000 steps, so returns lie in ``[0, 1000]``; there is
no reference min/max, and :func:`has_reference` is False for those tasks. The in-context RL
table of the Ring Attention paper reports values above 100 (cheetah run 181.34), so they are
not percentages of the 1000 maximum; we could not establish from public sources how that
table was scaled, so rl_ring reports raw returns for dm_control tasks and does not rescale.
"""

from __future__ import annotations

import re

import numpy as np

# canonical key -> (ref_min, ref_max): the D4RL reference returns.
REFERENCE_SCORES: dict[str, tuple[float, float]] = {
    # Gym-MuJoCo locomotion (all dataset versions v0/v1/v2 share these)
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
    # AntMaze: sparse success reward, one per episode at most
    "antmaze": (0.0, 1.0),
    # Franka kitchen: four subtasks
    "kitchen": (0.0, 4.0),
    # Adroit (human / cloned / expert, v0 and v1)
    "pen": (96.262799, 3076.8331017826877),
    "hammer": (-274.856578, 12794.134825156867),
    "relocate": (-6.425911, 4233.877797728884),
    "door": (-56.512833, 2880.5693087298737),
    # Maze2D: sparse and dense rewards differ, and so does every maze
    "maze2d-open": (0.01, 20.66),
    "maze2d-umaze": (23.85, 161.86),
    "maze2d-medium": (13.13, 277.39),
    "maze2d-large": (6.7, 273.99),
    "maze2d-open-dense": (11.17817, 27.166538620695782),
    "maze2d-umaze-dense": (68.537689, 193.66285642381482),
    "maze2d-medium-dense": (44.264742, 297.4552547777125),
    "maze2d-large-dense": (30.569041, 303.4857382709002),
}

# Gymnasium class-style names (``gym:Hopper-v5``, ``HalfCheetah-v4``) -> canonical key.
_GYM_NAMES = {
    "halfcheetah": "halfcheetah",
    "hopper": "hopper",
    "walker2d": "walker2d",
    "ant": "ant",
}
_PREFIXES = ("gym:", "gymnasium:", "d4rl:", "d4rl/")
_VERSION = re.compile(r"-v\d+$")


def reference_key(name: str) -> str:
    """Maps a dataset or environment name to its key in :data:`REFERENCE_SCORES`.

    Accepts D4RL dataset names (``"hopper-medium-v2"``, ``"maze2d-umaze-dense-v1"``,
    ``"antmaze-large-play-v2"``), bare environment names (``"hopper"``) and Gymnasium ids
    (``"gym:Hopper-v5"``, ``"HalfCheetah-v4"``).

    Raises:
        KeyError: the name matches no environment with D4RL reference scores; the message
            lists the known names.
    """
    key = _reference_key_or_none(name)
    if key is None:
        raise KeyError(
            f"no D4RL reference score for {name!r}; known environments: "
            f"{sorted(REFERENCE_SCORES)} (dm_control/ExoRL tasks have none: report raw returns)"
        )
    return key


def _reference_key_or_none(name: str) -> str | None:
    text = str(name).strip().lower()
    for prefix in _PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix) :]
    text = _VERSION.sub("", text)
    if text in REFERENCE_SCORES:
        return text
    if text in _GYM_NAMES:
        return _GYM_NAMES[text]
    if text.startswith("maze2d-"):
        # maze2d-<maze>[-dense][-v1]: the key is exactly maze + dense flag.
        parts = text.split("-")
        if len(parts) >= 2:
            key = "-".join(parts[:2]) + ("-dense" if "dense" in parts[2:] else "")
            if key in REFERENCE_SCORES:
                return key
        return None
    head = text.split("-")[0]
    if head in REFERENCE_SCORES and not head.startswith("maze2d"):
        return head
    return None


def has_reference(name: str) -> bool:
    """Whether :func:`normalized_score` knows reference returns for ``name``."""
    return _reference_key_or_none(name) is not None


def reference_range(name: str) -> tuple[float, float]:
    """``(ref_min, ref_max)`` of the environment ``name`` (see :func:`reference_key`)."""
    return REFERENCE_SCORES[reference_key(name)]


def normalized_score(name: str, returns):
    """D4RL normalised score ``100 * (R - ref_min) / (ref_max - ref_min)``.

    Args:
        name: dataset or environment name (see :func:`reference_key`).
        returns: one undiscounted episode return or an array of them.

    Returns:
        A float for a scalar input, else a float64 array of the input's shape.

    Raises:
        KeyError: no reference scores for ``name``.
    """
    lo, hi = reference_range(name)
    r = np.asarray(returns, dtype=np.float64)
    out = 100.0 * (r - lo) / (hi - lo)
    return float(out) if out.ndim == 0 else out
