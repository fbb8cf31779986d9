"""Format detection, ``load(path)`` and the data-loss guard of dataset writers.

:func:`detect_format` names the format of a path, :func:`load` reads any of them into an
:class:`~rl_ring.data.store.EpisodeStore` through its reader, and
:func:`check_dataset_target` refuses to write a dataset over data. The checks the readers
share (and :class:`DatasetError`) live in :mod:`rl_ring.data.checks`.
"""

from __future__ import annotations

import os
from pathlib import Path

from rl_ring.data.checks import DatasetError
from rl_ring.data.store import EpisodeStore
from rl_ring.io import check_output_dir, check_output_files

__all__ = ["FORMATS", "DatasetError", "check_dataset_target", "detect_format", "load"]

FORMATS = ("store", "d4rl", "exorl", "minari", "xland")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


# ---------------------------------------------------------------------------- detection
def detect_format(path: str | os.PathLike) -> str:
    """Names the format of ``path``: ``"store"``, ``"d4rl"``, ``"exorl"``, ``"minari"`` or
    ``"xland"``.

    - an EpisodeStore directory holds ``store.json``;
    - an XLand-100B-layout file is one HDF5 file whose group ``"0"`` holds ``states``;
    - a D4RL dataset is any other HDF5 file;
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
            from rl_ring.data.xland import is_xland_file

            return "xland" if is_xland_file(p) else "d4rl"
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
        path: an EpisodeStore directory, a D4RL ``.hdf5`` file, an ExoRL buffer directory, a
            Minari dataset directory or an XLand-100B-layout ``.hdf5`` file.
        format: skip detection and read as this format (one of :data:`FORMATS`).
        **options: passed to the reader: ``skip_bad`` for all file formats, ``task`` /
            ``relabel`` / ``workers`` for ExoRL (``envs.load_dataset(path, task=...)`` passes
            the relabeller), ``mmap`` for EpisodeStore directories, ``obs_encoding`` /
            ``max_bytes`` for XLand files (small ones: large ones are sampled from the file
            with ``rl_ring.data.xland.XLandHistorySampler``).
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
    if fmt == "xland":
        from rl_ring.data.xland import XLandDataset

        with XLandDataset(path) as data:
            return data.to_store(**options)
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
    if fmt in ("d4rl", "xland"):
        check_output_files([path], overwrite=overwrite, what=what)
    else:
        check_output_dir(path, overwrite=overwrite, what=what)
