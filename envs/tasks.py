"""Fixed train / held-out task splits shared by every in-context task family.

A split is a seeded permutation of all task ids: the first ``test_fraction`` of the
permutation is held out, the rest is for training. The seed is a constant of the task
family, so every machine and every run sees the same split; both lists are returned sorted
so they read well in logs and configs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "test", "all")


def fixed_split(
    task_ids: Sequence[int], split: str, *, test_fraction: float, seed: int
) -> list[int]:
    """Returns the sorted task ids of ``split`` ("train", "test" or "all").

    Args:
        task_ids: every task id of the family, in a fixed order.
        split: "train" (kept for training), "test" (held out) or "all".
        test_fraction: fraction of the ids held out, rounded to the nearest count (at least 1).
        seed: seed of the permutation; a constant of the task family.

    Raises:
        ValueError: ``split`` is not one of :data:`SPLITS`.
    """
    if split not in SPLITS:
        raise ValueError(f"task split must be one of {SPLITS}, got {split!r}")
    ids = np.asarray(list(task_ids), dtype=np.int64)
    if split == "all":
        return sorted(int(i) for i in ids)
    n_test = max(1, int(round(test_fraction * len(ids))))
    perm = np.random.default_rng(seed).permutation(len(ids))
    chosen = perm[:n_test] if split == "test" else perm[n_test:]
    return sorted(int(i) for i in ids[chosen])
