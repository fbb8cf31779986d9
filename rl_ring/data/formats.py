"""Format detection, ``load(path)``, and the checks every reader shares.

Every reader raises :class:`DatasetError` naming the file and the key when data is corrupt,
truncated, missing, mis-shaped, mis-typed or not finite, so a user can find the bad bytes.
Readers that can drop a bad episode and go on take ``skip_bad=True``; they then record how
many episodes were skipped in ``store.metadata["skipped"]`` and log a warning.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from rl_ring.data.store import EpisodeStore
from rl_ring.io import check_output_dir, check_output_files

log = logging.getLogger(__name__)

FORMATS = ("store", "d4rl", "exorl", "minari")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


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


# ---------------------------------------------------------------------------- checks
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


# ---------------------------------------------------------------------------- detection
def detect_format(path: str | os.PathLike) -> str:
    """Names the format of ``path``: ``"store"``, ``"d4rl"``, ``"exorl"`` or ``"minari"``.

    - an EpisodeStore directory holds ``store.json``;
    - a D4RL dataset is one HDF5 file;
    - an ExoRL dataset is a directory of ``*.npz`` episode files, or a directory with a
      ``buffer/`` subdirectory of them;
    - a Minari dataset directory holds ``data/metadata.json`` and ``data/main_data.hdf5``
      (the ``data`` directory itself is accepted too).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DatasetError: it exists but matches no format.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    if p.is_file():
        with open(p, "rb") as f:
            head = f.read(8)
        if head == _HDF5_SIGNATURE:
            return "d4rl"
        if p.suffix in (".hdf5", ".h5"):
            raise DatasetError(p, "has an .hdf5 name but no HDF5 signature (corrupt file?)")
        raise DatasetError(p, "is a file but not HDF5; expected a D4RL .hdf5 file or a directory")
    if (p / "store.json").is_file():
        return "store"
    if _minari_data_dir(p) is not None:
        return "minari"
    if any(p.glob("*.npz")) or (p / "buffer").is_dir():
        return "exorl"
    raise DatasetError(
        p,
        "matches no dataset format: expected store.json (EpisodeStore), *.npz or buffer/ "
        "(ExoRL), data/metadata.json + data/main_data.hdf5 (Minari), or a D4RL .hdf5 file",
    )


def _minari_data_dir(p: Path) -> Path | None:
    for d in (p / "data", p):
        if (d / "metadata.json").is_file() and (d / "main_data.hdf5").is_file():
            return d
    return None


def load(path: str | os.PathLike, *, format: str | None = None, **options) -> EpisodeStore:
    """Loads any supported dataset into an :class:`EpisodeStore`.

    Args:
        path: an EpisodeStore directory, a D4RL ``.hdf5`` file, an ExoRL buffer directory or a
            Minari dataset directory.
        format: skip detection and read as this format (one of :data:`FORMATS`).
        **options: passed to the reader: ``skip_bad`` for all file formats, ``task`` /
            ``workers`` for ExoRL, ``mmap`` for EpisodeStore directories.
    """
    fmt = format or detect_format(path)
    if fmt == "store":
        return EpisodeStore.load(path, **options)
    if fmt == "d4rl":
        from rl_ring.data.d4rl import read_d4rl

        return read_d4rl(path, **options)
    if fmt == "exorl":
        from rl_ring.data.exorl import read_exorl

        return read_exorl(path, **options)
    if fmt == "minari":
        from rl_ring.data.minari import read_minari

        return read_minari(path, **options)
    raise ValueError(f"load: unknown format {fmt!r}, expected one of {FORMATS}")


# ---------------------------------------------------------------------------- targets
def check_dataset_target(path: str | os.PathLike, fmt: str, *, overwrite: bool) -> None:
    """Refuses, before any work, to write a ``fmt`` dataset where data already is.

    A directory format (store, exorl, minari) needs a new or empty directory, a D4RL file a
    path where no file is, unless ``overwrite`` (see :mod:`rl_ring.io`).

    Raises:
        rl_ring.io.OutputExistsError: the target holds data and ``overwrite`` is False.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}, expected one of {FORMATS}")
    what = f"a {fmt} dataset"
    if fmt == "d4rl":
        check_output_files([path], overwrite=overwrite, what=what)
    else:
        check_output_dir(path, overwrite=overwrite, what=what)


# Keys a reader sets about the file it read; a writer does not carry them to a new file.
READER_KEYS = ("source", "source_format", "notes", "skipped", "skipped_reasons")


def portable_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """The store metadata worth writing into another file (reader notes dropped)."""
    return {k: v for k, v in metadata.items() if k not in READER_KEYS}
