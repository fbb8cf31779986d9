"""The checks and bookkeeping every dataset reader shares.

Every reader raises :class:`DatasetError` naming the file and the key when data is corrupt,
truncated, missing, mis-shaped, mis-typed or not finite, so a user can find the bad bytes.
Readers that can drop a bad episode and go on take ``skip_bad=True``; they then record how
many episodes were skipped in ``store.metadata["skipped"]`` (:func:`record_skipped`) and log a
warning. Format detection and ``load`` live in :mod:`rl_ring.data.formats`.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A dataset file is unreadable or breaks its format.

    Attributes:
        path: the offending file or directory.
        key: the array / group inside it, when one is to blame.
    """

    def __init__(self, path: str | os.PathLike, message: str, key: str | None = None):
        self.path = str(path)
        self.key = key
        where = f"{self.path} [{key}]" if key is not None else self.path
        super().__init__(f"{where}: {message}")


def check_kind(arr: np.ndarray, kinds: str, path, key: str) -> None:
    """Raises unless ``arr.dtype.kind`` is one of ``kinds`` (numpy kind letters: f i u b)."""
    if arr.dtype.kind not in kinds:
        names = {"f": "float", "i": "int", "u": "uint", "b": "bool"}
        want = "/".join(names.get(k, k) for k in kinds)
        raise DatasetError(path, f"dtype {arr.dtype} is not {want}", key)


def check_rows(
    arr: np.ndarray, rows: int, path, key: str, ndim: tuple[int, ...] | None = None,
    like: str | None = None,
):
    """Raises unless ``arr`` has ``rows`` rows (and one of the allowed ``ndim``)."""
    if arr.ndim == 0 or arr.shape[0] != rows:
        ref = f" like {like!r}" if like else ""
        raise DatasetError(path, f"has shape {arr.shape}, expected {rows} rows{ref}", key)
    if ndim is not None and arr.ndim not in ndim:
        raise DatasetError(path, f"has shape {arr.shape}, expected {ndim} dimensions", key)


def first_nonfinite(arr: np.ndarray) -> int | None:
    """Index of the first row holding NaN or inf (None if all finite or not float)."""
    if arr.dtype.kind != "f" or arr.size == 0:
        return None
    bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
    hits = np.flatnonzero(bad)
    return int(hits[0]) if hits.size else None


def check_finite(arr: np.ndarray, path, key: str) -> None:
    """Raises naming the first row with NaN/inf."""
    row = first_nonfinite(arr)
    if row is not None:
        raise DatasetError(path, f"non-finite value (NaN or inf) at row {row}", key)


def as_flags(arr: np.ndarray, path, key: str) -> np.ndarray:
    """Reads a done-flag array: bool, or integers/floats that are exactly 0 or 1."""
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DatasetError(path, f"has shape {arr.shape}, expected (N,)", key)
    if arr.dtype.kind == "b":
        return arr.astype(bool, copy=False)
    if arr.dtype.kind in "iuf":
        ok = (arr == 0) | (arr == 1)
        if not ok.all():
            row = int(np.flatnonzero(~ok)[0])
            raise DatasetError(path, f"flag value {arr[row].item()!r} at row {row} is not 0/1", key)
        return arr.astype(bool)
    raise DatasetError(path, f"dtype {arr.dtype} is not bool", key)


def record_skipped(metadata: dict[str, Any], source, skipped: list[str]) -> None:
    """Stores how many episodes were skipped (and why) and logs a warning."""
    metadata["skipped"] = len(skipped)
    if skipped:
        metadata["skipped_reasons"] = skipped[:100]
        msg = f"{source}: skipped {len(skipped)} bad episode(s); first: {skipped[0]}"
        log.warning(msg)
        warnings.warn(msg, stacklevel=3)


# Keys a reader sets about the file it read; a writer does not carry them to a new file.
READER_KEYS = ("source", "source_format", "notes", "skipped", "skipped_reasons")


def portable_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """The store metadata worth writing into another file (reader notes dropped)."""
    return {k: v for k, v in metadata.items() if k not in READER_KEYS}
