"""XLand-100B / XLand-Trivial-20B learning histories: the HDF5 layout, its writer, its samplers.

Layout (the published datasets' and the one :func:`write_xland` writes): one HDF5 file, one
group per task named ``"0"``, ``"1"``, ... with attributes ``benchmark-id`` (str),
``env-id`` (str) and ``ruleset-id`` (int), and five datasets of ``H`` learning histories of
``S`` steps each:

=================  ==================  ========  =========================================
dataset            shape               dtype     meaning of ``[h, t]``
=================  ==================  ========  =========================================
``states``         ``[H, S, 5, 5]``    uint8     the agent's 5x5 view, each cell
                                                 ``tile * NUM_COLORS + color``
``actions``        ``[H, S]``          uint8     the action taken in that state
``rewards``        ``[H, S]``          float16   the reward received for it
``dones``          ``[H, S]``          bool      the episode ended after this step
``expert_actions`` ``[H, S]``          uint8     the expert's action in that state (DPT)
=================  ==================  ========  =========================================

gzip-compressed (level 6) in ``(1, 4096)`` chunks (``(1, 4096, 5, 5)`` for ``states``): the
dtypes and chunks of ``collection/`` in the dunnolab/xland-minigrid-datasets repository
(``rewards`` float16, ``dones`` bool, actions uint8). A history is one row ``h`` of a group:
consecutive episodes of one learner on one task, episode boundaries given by ``dones``.

Reading never loads a whole task or history: :class:`XLandDataset` opens the file with a
bounded h5py chunk cache and reads hyperslabs ``ds[h, a:b]``;
:class:`XLandHistorySampler` turns them into the Algorithm Distillation TokenBatches of
:class:`~rl_ring.data.samplers.HistorySampler`, :class:`XLandDPTWindowSampler` into the
Decision-Pretrained-Transformer TokenBatches of :class:`~rl_ring.data.samplers.DPTSampler`
(``context="window"``) and :class:`XLandDPTSampler` into DPT items (one query each).
:meth:`XLandDataset.to_store` gives an :class:`~rl_ring.data.store.EpisodeStore` view of a
small file (``rl_ring.data.load``).

Observations are decoded from the 5x5 cells (``divmod(cell, NUM_COLORS)`` = tile, color) as

- ``"onehot"`` (default): per cell a one-hot tile (13) then a one-hot color (12), cells in
  row-major order: 625 features; a linear embedding of it is the sum of a per-cell tile and
  color embedding, which is what the published baselines learn;
- ``"index"``: per cell ``(tile, color)`` as two numbers: 50 features.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from rl_ring.data.batch import TokenBatch
from rl_ring.data.checks import DatasetError
from rl_ring.data.normalize import Normalization
from rl_ring.data.samplers.base import Sampler, StepPlan, check_positive
from rl_ring.data.samplers.dpt import DPTPlan, DPTSamplerConfig, assemble_dpt, draw_windows
from rl_ring.data.samplers.histories import HistoryConfig
from rl_ring.data.store import EpisodeStore
from rl_ring.data.tokens import ad_layout, dpt_layout
from rl_ring.io import atomic_output

# xminigrid.core.constants (0.9.3); tests check them against xminigrid itself.
NUM_TILES = 13
NUM_COLORS = 12
NUM_ACTIONS = 6
VIEW = 5
CHUNK_STEPS = 4096
KEYS = ("states", "actions", "rewards", "dones", "expert_actions")
ATTRS = ("benchmark-id", "env-id", "ruleset-id")
# The published dtypes (what the writer writes).
DTYPES = {"states": np.uint8, "actions": np.uint8, "rewards": np.float16, "dones": np.bool_,
          "expert_actions": np.uint8}
# The dtype kinds the reader accepts (numpy kind letters).
_KINDS = {"states": "u", "actions": "iu", "rewards": "f", "dones": "biu", "expert_actions": "iu"}
OBS_ENCODINGS = ("onehot", "index")
_MAX_CELL = NUM_TILES * NUM_COLORS  # cells are < 156


def decode_states(states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(tile, color)`` of each cell: ``divmod(states, NUM_COLORS)``."""
    return np.divmod(np.asarray(states), NUM_COLORS)


def _lut(encoding: str) -> np.ndarray:
    """``[256, features per cell]`` float32: the encoding of every byte value of a cell."""
    cell = np.arange(256)
    tile, color = np.divmod(cell, NUM_COLORS)
    if encoding == "index":
        return np.stack([tile, color], 1).astype(np.float32)
    out = np.zeros((256, NUM_TILES + NUM_COLORS), np.float32)
    ok = cell < _MAX_CELL
    out[cell[ok], tile[ok]] = 1.0
    out[cell[ok], NUM_TILES + color[ok]] = 1.0
    return out


_LUTS = {e: _lut(e) for e in OBS_ENCODINGS}


def obs_dim(encoding: str = "onehot") -> int:
    """Observation features of an encoding: 625 (``"onehot"``) or 50 (``"index"``)."""
    if encoding not in OBS_ENCODINGS:
        raise ValueError(f"obs_encoding must be one of {OBS_ENCODINGS}, got {encoding!r}")
    return VIEW * VIEW * _LUTS[encoding].shape[1]


def encode_states(states: np.ndarray, encoding: str = "onehot") -> np.ndarray:
    """``[..., 5, 5]`` uint8 cells as ``[..., obs_dim(encoding)]`` float32 observations."""
    states = np.asarray(states)
    if states.shape[-2:] != (VIEW, VIEW):
        raise ValueError(f"states have shape {states.shape}, expected [..., {VIEW}, {VIEW}]")
    if states.size and int(states.max()) >= _MAX_CELL:
        raise ValueError(f"a state cell holds {int(states.max())}; cells are tile * "
                         f"{NUM_COLORS} + color < {_MAX_CELL}")
    obs_dim(encoding)
    lut = _LUTS[encoding]
    flat = states.astype(np.uint8, copy=False).reshape(*states.shape[:-2], VIEW * VIEW)
    return lut[flat].reshape(*states.shape[:-2], -1)


# ---------------------------------------------------------------------------- writer
@dataclass
class XLandGroup:
    """One task's learning histories (one group of the file).

    Attributes:
        benchmark_id, env_id, ruleset_id: the task (group attributes).
        states: ``[H, S, 5, 5]`` uint8 cells ``tile * NUM_COLORS + color``.
        actions, rewards, expert_actions: ``[H, S]``.
        dones: ``[H, S]`` bool, the episode ended after the step.
    """

    benchmark_id: str
    env_id: str
    ruleset_id: int
    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    expert_actions: np.ndarray


def _checked_arrays(arrays: dict[str, Any], where: str) -> dict[str, np.ndarray]:
    """The arrays in the published dtypes; ValueError naming ``where`` and the key."""
    out: dict[str, np.ndarray] = {}
    states = np.asarray(arrays["states"])
    if states.ndim != 4 or states.shape[2:] != (VIEW, VIEW):
        raise ValueError(f"{where}: states has shape {states.shape}, expected [H, S, 5, 5]")
    hs = states.shape[:2]
    for key in KEYS:
        arr = np.asarray(arrays[key])
        want = (*hs, VIEW, VIEW) if key == "states" else hs
        if arr.shape != want:
            raise ValueError(f"{where}: {key} has shape {arr.shape}, expected {want} like states")
        if key == "rewards":
            if arr.dtype.kind not in "fiub":
                raise ValueError(f"{where}: rewards dtype {arr.dtype} is not numeric")
            if arr.size and not np.isfinite(arr).all():
                raise ValueError(f"{where}: rewards hold NaN or inf")
            out[key] = arr.astype(np.float16)
            continue
        if key == "dones":
            flags = arr.dtype.kind == "b" or (
                arr.dtype.kind in "iuf" and not ((arr != 0) & (arr != 1)).any())
            if not flags:
                raise ValueError(f"{where}: dones must be bool (or 0/1), got {arr.dtype}")
            out[key] = arr.astype(bool)
            continue
        if arr.dtype.kind not in "iu":
            raise ValueError(f"{where}: {key} dtype {arr.dtype} is not an integer type")
        hi = _MAX_CELL if key == "states" else 256
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= hi):
            raise ValueError(f"{where}: {key} values span [{arr.min()}, {arr.max()}], expected "
                             f"[0, {hi})")
        out[key] = arr.astype(np.uint8)
    return out


class XLandGroupWriter:
    """Appends steps to one group created by :meth:`XLandWriter.create_group` (all of its
    histories at once, ``[H, n]`` steps per call, as a vectorised collector produces them)."""

    def __init__(self, writer: XLandWriter, name: str, num_histories: int, num_steps: int):
        self._writer = writer
        self.name = name
        self.num_histories = num_histories
        self.num_steps = num_steps
        self.filled = 0

    def append(self, *, states, actions, rewards, dones, expert_actions) -> None:
        """Writes the next ``n`` steps of every history (arrays ``[H, n, ...]``)."""
        where = f"{self._writer.path} [{self.name}]"
        arrs = _checked_arrays(dict(states=states, actions=actions, rewards=rewards,
                                    dones=dones, expert_actions=expert_actions), where)
        h, n = arrs["actions"].shape
        if h != self.num_histories:
            raise ValueError(f"{where}: append got {h} histories, the group has "
                             f"{self.num_histories}")
        if self.filled + n > self.num_steps:
            raise ValueError(f"{where}: append of {n} steps overflows the group's "
                             f"{self.num_steps} steps ({self.filled} written)")
        g = self._writer._file[self.name]
        for key in KEYS:
            g[key][:, self.filled : self.filled + n] = arrs[key]
        self.filled += n

    @property
    def complete(self) -> bool:
        return self.filled == self.num_steps


class XLandWriter:
    """Writes an XLand-layout file group by group (atomically: a temporary file beside
    ``path``, renamed into place when the ``with`` block ends without an error).

    ::

        with XLandWriter("histories.hdf5") as w:
            w.add(XLandGroup(...))                       # a whole group at once, or
            g = w.create_group("trivial", "XLand-MiniGrid-R1-9x9", 3, histories, steps)
            g.append(states=..., actions=..., ...)       # [H, n] steps at a time

    Groups are numbered ``"0"``, ``"1"``, ... in the order they are added. A group created
    with :meth:`create_group` must be filled to its ``steps`` before the block ends, else
    nothing is written (a truncated file is never published).
    """

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False,
                 compression_opts: int = 6):
        self.path = Path(path)
        self.overwrite = overwrite
        self.compression_opts = int(compression_opts)
        self._stack: contextlib.ExitStack | None = None
        self._file: h5py.File | None = None
        self._groups: list[XLandGroupWriter] = []

    def __enter__(self) -> XLandWriter:
        stack = contextlib.ExitStack()
        tmp = stack.enter_context(atomic_output(self.path, directory=False,
                                                overwrite=self.overwrite,
                                                what="an XLand dataset"))
        try:
            self._file = h5py.File(tmp, "w")
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._stack is None or self._file is None:
            raise RuntimeError("XLandWriter: __exit__ without __enter__")
        stack, self._stack = self._stack, None
        try:
            self._file.close()
            if exc is None:
                short = [g for g in self._groups if not g.complete]
                if short:
                    g = short[0]
                    raise ValueError(
                        f"{self.path} [{g.name}]: the group was created with {g.num_steps} "
                        f"steps but only {g.filled} were appended; nothing was written")
        except BaseException as err:
            stack.__exit__(type(err), err, err.__traceback__)  # removes the temporary
            raise
        return bool(stack.__exit__(exc_type, exc, tb))  # publishes, or removes on error

    @property
    def num_groups(self) -> int:
        return len(self._groups)

    def create_group(self, benchmark_id: str, env_id: str, ruleset_id: int,
                     num_histories: int, num_steps: int) -> XLandGroupWriter:
        """A new group of ``num_histories`` histories of ``num_steps`` steps, to fill with
        :meth:`XLandGroupWriter.append`."""
        if self._file is None:
            raise RuntimeError("XLandWriter: use it in a `with` block")
        check_positive("num_histories", num_histories)
        check_positive("num_steps", num_steps)
        name = str(len(self._groups))
        g = self._file.create_group(name)
        g.attrs["benchmark-id"] = str(benchmark_id)
        g.attrs["env-id"] = str(env_id)
        g.attrs["ruleset-id"] = int(ruleset_id)
        chunk = min(CHUNK_STEPS, num_steps)
        for key in KEYS:
            shape = (num_histories, num_steps, VIEW, VIEW) if key == "states" else (
                num_histories, num_steps)
            chunks = (1, chunk, VIEW, VIEW) if key == "states" else (1, chunk)
            g.create_dataset(key, shape=shape, dtype=DTYPES[key], chunks=chunks,
                             compression="gzip", compression_opts=self.compression_opts)
        gw = XLandGroupWriter(self, name, num_histories, num_steps)
        self._groups.append(gw)
        return gw

    def add(self, group: XLandGroup) -> str:
        """Writes a whole group; returns its name."""
        where = f"{self.path} [group {len(self._groups)}]"
        arrs = _checked_arrays({k: getattr(group, k) for k in KEYS}, where)
        h, s = arrs["actions"].shape
        gw = self.create_group(group.benchmark_id, group.env_id, group.ruleset_id, h, s)
        gw.append(**arrs)
        return gw.name


def write_xland(path: str | os.PathLike, groups: Iterable[XLandGroup], *,
                overwrite: bool = False) -> Path:
    """Writes ``groups`` as an XLand-layout HDF5 file (atomically); an existing file is
    replaced only with ``overwrite``. Returns ``path``."""
    path = Path(path)
    with XLandWriter(path, overwrite=overwrite) as w:
        for g in groups:
            w.add(g)
        if w.num_groups == 0:
            raise ValueError(f"write_xland: no groups to write to {path}")
    return path


# ---------------------------------------------------------------------------- reader
@dataclass(frozen=True)
class XLandGroupInfo:
    """One group's attributes and shape (read without touching its data)."""

    name: str
    benchmark_id: str
    env_id: str
    ruleset_id: int
    num_histories: int
    num_steps: int
    dtypes: tuple[tuple[str, str], ...] = ()
    chunks: tuple[tuple[str, tuple[int, ...] | None], ...] = ()


def is_xland_file(path: str | os.PathLike) -> bool:
    """Whether an HDF5 file looks like the XLand layout (a group ``"0"`` holding
    ``states``); opens only the file's metadata."""
    try:
        with h5py.File(path, "r") as f:
            g = f.get("0")
            return isinstance(g, h5py.Group) and "states" in g
    except OSError:
        return False


def _attr(value) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return _attr(value.item())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _read_info(f: h5py.File, path: Path) -> list[XLandGroupInfo]:
    """Validates the layout (names, attributes, shapes, dtypes) and returns every group's
    info, in numeric order; raises DatasetError naming the file, group and key."""
    names = list(f.keys())
    if not names:
        raise DatasetError(path, "holds no groups; expected task groups '0', '1', ...")
    for name in names:
        if not name.isdigit():
            raise DatasetError(path, f"group name {name!r} is not a task number; expected "
                               "groups named '0', '1', ...", name)
        if not isinstance(f[name], h5py.Group):
            raise DatasetError(path, "is a dataset, expected a task group", name)
    infos = []
    for name in sorted(names, key=int):
        g = f[name]
        attrs = {}
        for a in ATTRS:
            if a not in g.attrs:
                raise DatasetError(path, f"missing attribute {a!r} (found "
                                   f"{sorted(g.attrs.keys())})", f"{name}.attrs[{a}]")
            attrs[a] = _attr(g.attrs[a])
        rid = attrs["ruleset-id"]
        if isinstance(rid, bool) or not isinstance(rid, int | np.integer):
            raise DatasetError(path, f"ruleset-id is {rid!r}, expected an integer",
                               f"{name}.attrs[ruleset-id]")
        hs = None
        dtypes, chunks = [], []
        for key in KEYS:
            if key not in g or not isinstance(g[key], h5py.Dataset):
                raise DatasetError(path, f"missing dataset (found {sorted(g.keys())})",
                                   f"{name}/{key}")
            ds = g[key]
            if ds.dtype.kind not in _KINDS[key]:
                raise DatasetError(path, f"dtype {ds.dtype}, expected "
                                   f"{np.dtype(DTYPES[key]).name}", f"{name}/{key}")
            if key == "states":
                if ds.ndim != 4 or ds.shape[2:] != (VIEW, VIEW):
                    raise DatasetError(path, f"shape {ds.shape}, expected [histories, steps, "
                                       f"{VIEW}, {VIEW}]", f"{name}/{key}")
                hs = ds.shape[:2]
            elif ds.shape != hs:
                raise DatasetError(path, f"shape {ds.shape}, expected {hs} like states "
                                   "(truncated or mismatched group)", f"{name}/{key}")
            dtypes.append((key, ds.dtype.name))
            chunks.append((key, ds.chunks))
        assert hs is not None
        if hs[0] == 0 or hs[1] == 0:
            raise DatasetError(path, f"holds no steps (shape {hs})", f"{name}/states")
        infos.append(XLandGroupInfo(name, str(attrs["benchmark-id"]), str(attrs["env-id"]),
                                    int(rid), int(hs[0]), int(hs[1]), tuple(dtypes),
                                    tuple(chunks)))
    return infos


class XLandDataset:
    """An XLand-layout file, opened for reading hyperslabs (see the module docstring).

    Only the metadata is read when opening: every group's attributes, shapes and dtypes are
    validated. Data is read per request, ``ds[h, a:b]``, through h5py's chunk cache of
    ``cache_mib`` MiB per open dataset (1 MiB holds ten 4096-step ``states`` chunks; a
    4096-step window touches at most three); at most ``open_groups`` groups' datasets are
    kept open (least recently used closed first), so the caches never hold more than
    ``open_groups * 5 * cache_mib`` MiB, however many tasks the file has. The file is
    reopened in a forked process.

    Attributes:
        path: the file.
        groups: :class:`XLandGroupInfo` of every group, in numeric order.
        hist_group, hist_row, hist_steps: ``[num_histories]`` group index, row and steps of
            every history (histories numbered group by group).
    """

    def __init__(self, path: str | os.PathLike, *, cache_mib: float = 1.0,
                 open_groups: int = 16):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such file")
        self.cache_bytes = int(cache_mib * (1 << 20))
        self.open_groups = int(open_groups)
        self._pid = -1
        self._file: h5py.File | None = None
        self._open: OrderedDict[int, dict[str, h5py.Dataset]] = OrderedDict()
        try:
            f = self._handle()
            self.groups = _read_info(f, self.path)
        except OSError as err:
            self.close()
            raise DatasetError(self.path, f"cannot read as HDF5 (corrupt or truncated?): "
                               f"{err}") from None
        except BaseException:
            self.close()
            raise
        h = np.array([g.num_histories for g in self.groups], np.int64)
        self.hist_group = np.repeat(np.arange(len(self.groups)), h)
        self.hist_row = np.concatenate([np.arange(n) for n in h]).astype(np.int64)
        self.hist_steps = np.repeat([g.num_steps for g in self.groups], h).astype(np.int64)

    # ------------------------------------------------------------------ file handles
    def _handle(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._open.clear()
            self._file = h5py.File(self.path, "r", rdcc_nbytes=self.cache_bytes,
                                   rdcc_nslots=10007)
            self._pid = os.getpid()
        return self._file

    def _datasets(self, group: int) -> dict[str, h5py.Dataset]:
        f = self._handle()
        got = self._open.get(group)
        if got is None:
            g = f[self.groups[group].name]
            got = {k: g[k] for k in KEYS}
            self._open[group] = got
            while len(self._open) > self.open_groups:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(group)
        return got

    def close(self) -> None:
        self._open.clear()
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __enter__(self) -> XLandDataset:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_file=None, _pid=-1, _open=OrderedDict())
        return state

    # ------------------------------------------------------------------ facts
    @property
    def num_groups(self) -> int:
        return len(self.groups)

    @property
    def num_histories(self) -> int:
        return len(self.hist_group)

    @property
    def num_steps(self) -> int:
        return int(self.hist_steps.sum())

    def env_ids(self) -> list[str]:
        return sorted({g.env_id for g in self.groups})

    def data_spec(self, obs_encoding: str = "onehot") -> dict[str, Any]:
        """The model-shaping facts, as ``agents.base.DataSpec.to_dict`` writes them (its
        ``coerce`` accepts this dict)."""
        return {"format": "rl_ring.DataSpec", "obs_dim": obs_dim(obs_encoding),
                "act_dim": NUM_ACTIONS, "discrete_actions": True}

    # ------------------------------------------------------------------ reading
    def read(self, history: int, start: int, stop: int,
             keys: Iterable[str] = KEYS) -> dict[str, np.ndarray]:
        """Steps ``start:stop`` of history ``history`` (numbered over the whole file), the
        raw arrays of ``keys``: ``states [n, 5, 5]``, the others ``[n]``."""
        g, row, steps = self._locate(history)
        if not 0 <= start <= stop <= steps:
            raise IndexError(f"{self.path}: steps {start}:{stop} out of range for history "
                             f"{history} of {steps} steps")
        ds = self._datasets(g)
        out = {}
        for k in keys:
            try:
                out[k] = ds[k][row, start:stop]
            except (OSError, ValueError) as err:
                raise DatasetError(self.path, f"read of history row {row}, steps {start}:"
                                   f"{stop} failed (corrupt file?): {err}",
                                   f"{self.groups[g].name}/{k}") from None
        return out

    def _locate(self, history: int) -> tuple[int, int, int]:
        if not 0 <= history < self.num_histories:
            raise IndexError(f"{self.path}: history {history} out of range "
                             f"[0, {self.num_histories})")
        return (int(self.hist_group[history]), int(self.hist_row[history]),
                int(self.hist_steps[history]))

    def episode_start_before(self, history: int, pos: int) -> int:
        """The first step of the episode that step ``pos`` of ``history`` belongs to (reads
        ``dones`` backwards, one chunk at a time)."""
        hi = pos
        while hi > 0:
            lo = max(0, hi - CHUNK_STEPS)
            d = self.read(history, lo, hi, ("dones",))["dones"]
            hit = np.flatnonzero(d)
            if hit.size:
                return lo + int(hit[-1]) + 1
            hi = lo
        return 0

    def history_dones(self, history: int) -> np.ndarray:
        """``dones`` of one whole history ``[S]`` bool (1 byte per step)."""
        return self.read(history, 0, int(self.hist_steps[history]), ("dones",))["dones"]

    def episode_counts(self, histories: Iterable[int] | None = None) -> np.ndarray:
        """Episodes of each history (default all; a trailing unfinished episode counts),
        reading only ``dones``."""
        hs = range(self.num_histories) if histories is None else list(histories)
        out = np.zeros(len(hs), np.int64)
        for j, i in enumerate(hs):
            d = self.history_dones(int(i)).astype(bool)
            out[j] = int(d.sum()) + int(not d[-1])
        return out

    def to_store(self, obs_encoding: str = "onehot", *,
                 max_bytes: int = 4 << 30) -> EpisodeStore:
        """The whole file as an EpisodeStore (for small files): one episode per run of a
        history ending at a done (a history's unfinished last episode is kept and flagged
        ``truncated``), ``terminals = dones`` (the layout does not tell terminations from
        time limits), ``extras["expert_actions"]``, episode extras ``history_id`` (over the
        file), ``episode_in_history``, ``task_id`` (group), ``ruleset_id`` and ``truncated``.

        Raises:
            DatasetError: the observations would take more than ``max_bytes``; sample such
                files with :class:`XLandHistorySampler` instead.
        """
        od = obs_dim(obs_encoding)
        need = self.num_steps * (od * 4 + 24)
        if need > max_bytes:
            raise DatasetError(self.path, f"an EpisodeStore of its {self.num_steps} steps would "
                               f"take {need / (1 << 30):.1f} GiB (> max_bytes); sample it with "
                               "rl_ring.data.xland.XLandHistorySampler, which reads windows "
                               "from the file")
        obs, act, rew, done, expert, starts = [], [], [], [], [], [0]
        hist, order, task, ruleset, trunc = [], [], [], [], []
        for i in range(self.num_histories):
            d = self.read(i, 0, int(self.hist_steps[i]))
            dn = d["dones"].astype(bool)
            obs.append(encode_states(d["states"], obs_encoding))
            act.append(d["actions"].astype(np.int64))
            rew.append(d["rewards"].astype(np.float32))
            done.append(dn)
            expert.append(d["expert_actions"].astype(np.int64))
            ends = np.flatnonzero(dn) + 1
            if not dn[-1]:
                ends = np.append(ends, len(dn))
            starts.extend((starts[-1] + ends).tolist())
            n = len(ends)
            hist += [i] * n
            order += list(range(n))
            task += [int(self.hist_group[i])] * n
            ruleset += [self.groups[int(self.hist_group[i])].ruleset_id] * n
            trunc += [False] * (n - 1) + [not dn[-1]]
        terminals = np.concatenate(done)
        g0 = self.groups[0]
        return EpisodeStore(
            observations=np.concatenate(obs), actions=np.concatenate(act),
            rewards=np.concatenate(rew), terminals=terminals,
            timeouts=np.zeros_like(terminals), episode_starts=np.asarray(starts, np.int64),
            extras={"expert_actions": np.concatenate(expert)},
            episode_extras={"history_id": np.asarray(hist, np.int64),
                            "episode_in_history": np.asarray(order, np.int64),
                            "task_id": np.asarray(task, np.int64),
                            "ruleset_id": np.asarray(ruleset, np.int64),
                            "truncated": np.asarray(trunc, bool)},
            metadata={"source_format": "xland", "source": str(self.path),
                      "env_id": g0.env_id if len(self.env_ids()) == 1 else self.env_ids(),
                      "benchmark_id": g0.benchmark_id, "obs_encoding": obs_encoding,
                      "action_space": {"type": "discrete", "n": NUM_ACTIONS},
                      "notes": ["XLand layout: dones marks both terminations and time limits; "
                                "stored as terminals"]})

    def info_lines(self, *, count_episodes: bool = True, max_histories: int = 256
                   ) -> list[str]:
        """What ``rl-ring data info`` prints for this file. Episodes are counted in every
        history up to ``max_histories`` histories; beyond, in ``max_histories`` evenly
        spaced ones and extrapolated by steps (marked "estimated"), since counting all of
        a 100B-step file's ``dones`` takes hours."""
        lines = [f"path: {self.path}", "format: xland",
                 f"groups (tasks): {self.num_groups}",
                 f"histories: {self.num_histories}",
                 f"steps: {self.num_steps}",
                 "steps per history: " + _span(self.hist_steps),
                 f"env ids: {', '.join(self.env_ids())}",
                 f"benchmark ids: {', '.join(sorted({g.benchmark_id for g in self.groups}))}",
                 "ruleset ids: " + _span(np.array([g.ruleset_id for g in self.groups]))]
        g0 = self.groups[0]
        lines.append("dtypes: " + ", ".join(f"{k} {v}" for k, v in g0.dtypes))
        lines.append("chunks: " + ", ".join(f"{k} {v}" for k, v in g0.chunks))
        if count_episodes and self.num_histories <= max_histories:
            eps = self.episode_counts()
            lines.append(f"episodes: {int(eps.sum())} (per history: {_span(eps)})")
        elif count_episodes:
            pick = np.unique(np.linspace(0, self.num_histories - 1, max_histories).astype(int))
            eps = self.episode_counts(pick)
            total = eps.sum() * self.num_steps / self.hist_steps[pick].sum()
            lines.append(f"episodes: ~{total:.4g} (estimated from {len(pick)} of "
                         f"{self.num_histories} histories; per history: {_span(eps)})")
        return lines


def _span(x: np.ndarray) -> str:
    x = np.asarray(x)
    return f"min {int(x.min())}  median {float(np.median(x)):g}  max {int(x.max())}"


# ---------------------------------------------------------------------------- AD windows
class _Spec:
    """What the Sampler base class asks of its store."""

    def __init__(self, data: XLandDataset, encoding: str):
        self.obs_dim = obs_dim(encoding)
        self.act_dim = NUM_ACTIONS
        self.discrete_actions = True
        self.num_episodes = data.num_histories
        self.num_steps = data.num_steps


class _Buffer:
    """The steps read for one batch, indexable like an EpisodeStore's arrays."""

    def __init__(self, states, actions, rewards, encoding):
        self.states = states
        self.actions = actions
        self.rewards = rewards
        self.encoding = encoding
        self.observations = self

    def __getitem__(self, idx):  # observations[idx]: decoded on the fly
        return encode_states(self.states[idx], self.encoding)


class _FileSampler:
    """What the two file-streaming samplers share: they assemble in ``batch_at`` (after
    reading the plan's steps from the file), and their state names the file's layout."""

    def assemble(self, plan):
        raise NotImplementedError(f"{type(self).__name__} assembles in batch_at (it reads "
                                  "the plan's steps from the file first)")

    def state_dict(self, step: int | None = None) -> dict[str, Any]:
        state = super().state_dict(step)
        state["store"] = {"format": "xland", "histories": self.data.num_histories,
                          "steps": self.data.num_steps, "obs_encoding": self.obs_encoding}
        return state


class XLandHistorySampler(_FileSampler, Sampler):
    """Algorithm Distillation windows read straight from an XLand file.

    The interface and the TokenBatches are those of
    :class:`~rl_ring.data.samplers.HistorySampler` (``HistoryConfig``, ``norm``,
    ``host_id``, ``num_hosts``; ``next_batch``, ``prefetch``, ``state_dict``): each row is
    ``window_steps`` consecutive steps of one history (a row of a group), crossing episode
    boundaries; its STEP token holds the decoded observation, the previous action and reward
    of the history (none before its first step) and a new-episode flag (the step follows a
    ``done``, or is the history's first); timesteps count steps since the episode began
    (read back through ``dones`` before the window). Window starts are uniform over every
    start that leaves a full window inside a history, drawn exactly as HistorySampler draws
    them, so on :meth:`XLandDataset.to_store` of the same file both give identical batches.
    ``history_key`` / ``order_key`` are unused (a history is a row of the file) and only
    ``align="step"`` is supported (episode starts are unknown without reading every done).

    Args:
        data: an :class:`XLandDataset` or the path of a file.
        config: the window and stream options.
        norm: token scaling; default the identity (one-hot / index features, rewards in
            [0, 1] as XLand gives them).
        obs_encoding: ``"onehot"`` (625 features) or ``"index"`` (50); see the module.
    """

    name = "xland_history"

    def __init__(self, data: XLandDataset | str | os.PathLike, config: HistoryConfig | None = None,
                 *, norm: Normalization | None = None, host_id: int = 0, num_hosts: int = 1,
                 obs_encoding: str = "onehot"):
        cfg = config or HistoryConfig()
        self.data = data if isinstance(data, XLandDataset) else XLandDataset(data)
        check_positive("window_steps", cfg.window_steps)
        if cfg.align != "step":
            raise ValueError(f"XLandHistorySampler: align={cfg.align!r} is not supported, only "
                             "'step' (episode starts would need every done of the file)")
        self.obs_encoding = obs_encoding
        od = obs_dim(obs_encoding)
        w = cfg.window_steps
        steps = self.data.hist_steps
        long_enough = np.flatnonzero(steps >= w)
        if long_enough.size == 0:
            raise ValueError(f"window_steps={w} is longer than every learning history of "
                             f"{self.data.path} (the longest has {int(steps.max())} steps)")
        self._hists = long_enough
        self._cum = np.cumsum(steps[long_enough] - w + 1)
        norm = norm or Normalization.identity(od)
        layout = ad_layout(od, NUM_ACTIONS, True, norm, new_episode_flag=cfg.new_episode_flag)
        super().__init__(_Spec(self.data, obs_encoding), cfg, layout, raw_steps=w,
                         host_id=host_id, num_hosts=num_hosts)

    @property
    def num_histories(self) -> int:
        return self.data.num_histories

    def _draw(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        # The same draw as HistorySampler with align="step" (history = file history,
        # start = step within it).
        b, w = self.batch_size, self.config.window_steps
        u = rng.integers(0, int(self._cum[-1]), size=b)
        j = np.searchsorted(self._cum, u, side="right")
        first = self._cum[j] - (self.data.hist_steps[self._hists[j]] - w + 1)
        return {"history": self._hists[j], "start": u - first}

    def windows(self, specs: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
        """The raw steps of the given rows, ``[R, w + 1, ...]``: slot 0 is the step before
        the window (zeros when the window starts its history), plus ``timestep0`` ``[R]``,
        the within-episode step of each window's first step."""
        w = self.config.window_steps
        r = len(rows)
        out = {"states": np.zeros((r, w + 1, VIEW, VIEW), np.uint8),
               "actions": np.zeros((r, w + 1), np.int64),
               "rewards": np.zeros((r, w + 1), np.float32),
               "dones": np.zeros((r, w + 1), bool),
               "expert_actions": np.zeros((r, w + 1), np.int64),
               "timestep0": np.zeros(r, np.int64)}
        for i, row in enumerate(rows):
            h, s = int(specs["history"][row]), int(specs["start"][row])
            lo = max(s - 1, 0)
            d = self.data.read(h, lo, s + w)
            off = w + 1 - (s + w - lo)
            for k in KEYS:
                out[k][i, off:] = d[k]
            if s > 0 and not out["dones"][i, 0]:
                out["timestep0"][i] = s - self.data.episode_start_before(h, s)
        return out

    def read_rows(self, specs: dict[str, np.ndarray], rows: np.ndarray
                  ) -> tuple[_Buffer, StepPlan]:
        """The batch's steps read from the file and the plan indexing them."""
        w = self.config.window_steps
        win = self.windows(specs, rows)
        r = len(rows)
        start = specs["start"][rows]
        buf = _Buffer(win["states"].reshape(r * (w + 1), VIEW, VIEW),
                      win["actions"].reshape(-1), win["rewards"].reshape(-1), self.obs_encoding)
        base = (np.arange(r) * (w + 1))[:, None]
        idx = base + 1 + np.arange(w)[None]
        prev = idx - 1
        prev[:, 0] = np.where(start > 0, prev[:, 0], -1)
        new_ep = win["dones"][:, :w].copy()  # done of the step before each window step
        new_ep[:, 0] |= start == 0
        t = np.zeros((r, w), np.int64)
        for i in range(r):  # steps since the episode began
            cut = np.flatnonzero(new_ep[i])
            seg = np.searchsorted(cut, np.arange(w), side="right") - 1
            at = cut[np.maximum(seg, 0)] if cut.size else np.zeros(w, np.int64)
            t0 = np.where(seg >= 0, at, -int(win["timestep0"][i]))
            t[i] = np.arange(w) - t0
        plan = StepPlan(row_steps=np.full(r, w), idx=idx.reshape(-1),
                        timesteps=t.reshape(-1).astype(np.int32),
                        segment=np.ones(r * w, np.int32), loss=np.ones(r * w, bool),
                        prev_idx=prev.reshape(-1),
                        new_episode=new_ep.reshape(-1).astype(np.float32))
        return buf, plan

    def _plan(self, specs, rows) -> StepPlan:
        return self.read_rows(specs, rows)[1]

    def batch_at(self, step: int):
        return self.batch_for(self.specs_at(step))

    def batch_for(self, specs: dict[str, np.ndarray], rows: np.ndarray | None = None):
        """The TokenBatch of given row specs (``history``, ``start``; default rows: this
        host's)."""
        buf, plan = self.read_rows(specs, self.host_rows if rows is None else rows)
        view = copy.copy(self)  # the base assembly reads view.store: this batch's steps
        view.store = buf
        return Sampler.assemble(view, plan)



# ---------------------------------------------------------------------------- DPT items
@dataclass(frozen=True)
class XLandDPTConfig:
    """Options of the DPT item sampler."""

    context_steps: int = 4096
    """Transitions of in-context data per item."""
    context: str = "random"
    """"random": transitions at random steps of one history (the published DPT data);
    "window": consecutive steps."""
    batch_size: int = 8
    seed: int = 0


class XLandDPTSampler:
    """Decision-Pretrained-Transformer items read from an XLand file.

    Item ``i`` of batch ``step`` (drawn from ``default_rng([seed, step])``): a task (group)
    uniformly, a context history and a query history of that task, ``context_steps``
    transitions of the context history (sorted random steps ``t`` in ``[0, S-1)``, or one
    window), each ``(obs_t, action_t, reward_t, obs_{t+1}, done_t)``, and a query step of
    the query history: its observation and its ``expert_actions`` label. The reads touch
    only the chunks holding the drawn steps.

    :meth:`batch_at` returns numpy arrays: ``context_obs``/``context_next_obs`` ``[B, C,
    obs_dim]`` float32, ``context_actions`` ``[B, C]`` int64, ``context_rewards`` ``[B, C]``
    float32, ``context_dones`` ``[B, C]`` bool, ``query_obs`` ``[B, obs_dim]``, ``label``
    ``[B]`` int64, and the draw (``group``, ``context_history``, ``query_history``,
    ``query_step``, ``context_index`` ``[B, C]``).
    """

    def __init__(self, data: XLandDataset | str | os.PathLike,
                 config: XLandDPTConfig | None = None, *, obs_encoding: str = "onehot",
                 host_id: int = 0, num_hosts: int = 1):
        self.config = cfg = config or XLandDPTConfig()
        self.data = data if isinstance(data, XLandDataset) else XLandDataset(data)
        check_positive("context_steps", cfg.context_steps)
        check_positive("batch_size", cfg.batch_size)
        if cfg.context not in ("random", "window"):
            raise ValueError(f"context must be 'random' or 'window', got {cfg.context!r}")
        if cfg.batch_size % num_hosts or not 0 <= host_id < num_hosts:
            raise ValueError(f"batch_size={cfg.batch_size} must split over num_hosts="
                             f"{num_hosts} and host_id={host_id} be in range")
        obs_dim(obs_encoding)
        self.obs_encoding = obs_encoding
        need = cfg.context_steps + 1
        short = [g.name for g in self.data.groups if g.num_steps < need]
        if short:
            raise ValueError(f"{self.data.path}: group {short[0]} has fewer than "
                             f"context_steps + 1 = {need} steps")
        self.rows = np.arange(host_id * (cfg.batch_size // num_hosts),
                              (host_id + 1) * (cfg.batch_size // num_hosts))
        self._first = np.concatenate([[0], np.cumsum([g.num_histories for g in
                                                      self.data.groups])[:-1]])
        self.step = 0

    def specs_at(self, step: int) -> dict[str, np.ndarray]:
        cfg, data = self.config, self.data
        rng = np.random.default_rng([cfg.seed, int(step)])
        b, c = cfg.batch_size, cfg.context_steps
        g = rng.integers(0, data.num_groups, size=b)
        nh = np.array([data.groups[i].num_histories for i in g])
        ns = np.array([data.groups[i].num_steps for i in g])
        ctx_h = self._first[g] + rng.integers(0, nh)
        qry_h = self._first[g] + rng.integers(0, nh)
        qry_t = rng.integers(0, ns)
        if cfg.context == "random":
            idx = np.sort(np.floor(rng.random((b, c)) * (ns - 1)[:, None]).astype(np.int64), 1)
        else:
            s0 = rng.integers(0, ns - c)
            idx = s0[:, None] + np.arange(c)[None]
        return {"group": g, "context_history": ctx_h, "query_history": qry_h,
                "query_step": qry_t, "context_index": idx}

    def _gather(self, h: int, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Steps ``idx`` (sorted) and ``idx + 1`` of history ``h``, read chunk by chunk."""
        want = np.unique(np.concatenate([idx, idx + 1]))
        parts: dict[str, list[np.ndarray]] = {k: [] for k in KEYS}
        chunk = want // CHUNK_STEPS
        cuts = np.flatnonzero(np.diff(chunk)) + 1
        for run in np.split(want, cuts):
            d = self.data.read(h, int(run[0]), int(run[-1]) + 1)
            for k in KEYS:
                parts[k].append(d[k][run - run[0]])
        got = {k: np.concatenate(v) for k, v in parts.items()}
        pos = np.searchsorted(want, idx)
        return {k: v[pos] for k, v in got.items()} | {"next_states": got["states"][pos + 1]}

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        sp = self.specs_at(step)
        enc = self.obs_encoding
        cols: dict[str, list] = {k: [] for k in ("context_obs", "context_next_obs",
                                                  "context_actions", "context_rewards",
                                                  "context_dones", "query_obs", "label")}
        for r in self.rows:
            c = self._gather(int(sp["context_history"][r]), sp["context_index"][r])
            t = int(sp["query_step"][r])
            q = self.data.read(int(sp["query_history"][r]), t, t + 1,
                               ("states", "expert_actions"))
            cols["context_obs"].append(encode_states(c["states"], enc))
            cols["context_next_obs"].append(encode_states(c["next_states"], enc))
            cols["context_actions"].append(c["actions"].astype(np.int64))
            cols["context_rewards"].append(c["rewards"].astype(np.float32))
            cols["context_dones"].append(c["dones"].astype(bool))
            cols["query_obs"].append(encode_states(q["states"][0], enc))
            cols["label"].append(int(q["expert_actions"][0]))
        out = {k: np.stack(v) if k != "label" else np.asarray(v, np.int64)
               for k, v in cols.items()}
        out.update({k: v[self.rows] for k, v in sp.items()})
        return out

    def next_batch(self) -> dict[str, np.ndarray]:
        out = self.batch_at(self.step)
        self.step += 1
        return out


# XLand histories as DPT streams: (group_key, order_key) -> a stream is one history, or the
# histories of one task (file group) in file order, exactly as on the EpisodeStore view.
_DPT_STREAMS = {("history_id", ""): "history", ("history_id", "episode_in_history"): "history",
                ("task_id", ""): "task"}


class XLandDPTWindowSampler(_FileSampler, Sampler):
    """Decision-Pretrained-Transformer TokenBatches streamed from an XLand file.

    The interface and the batches are those of :class:`~rl_ring.data.samplers.DPTSampler`
    with ``context="window"`` (``DPTSamplerConfig``, ``norm``, ``host_id``, ``num_hosts``;
    ``next_batch``, ``prefetch``, ``state_dict``): a row is ``context_steps`` consecutive
    steps of one stream, crossing episode boundaries; step ``j`` is a TRANSITION token (the
    stream's previous step ``(s, a, r, s', ended)``, zero before the stream's first step; the
    next state hidden and ``ended`` 1 where the step ended its episode: a ``done`` or the
    history's last step) and a STATE token, the query, labelled with its ``expert_actions``.
    Streams are drawn, and windows inside them, exactly as DPTSampler draws them, so on
    :meth:`XLandDataset.to_store` of the same file (with the same ``norm``) both give
    identical batches; but a batch reads only the chunks its windows touch (the steps
    ``start - 1 .. start + context_steps - 1`` of its streams), never a whole history.

    A stream (``group_key`` / ``order_key``, named as on the store view) is one learning
    history (``"history_id"``, with ``order_key`` ``""`` or ``"episode_in_history"``: the
    same order) or the histories of one task (``"task_id"``, ``order_key=""``: file order,
    a window may cross from one history into the next). ``label_key`` must be
    ``"expert_actions"``, the file's only per-step label (or DPT's default
    ``"optimal_actions"``, read as the same: the file's expert acts optimally, so ``rl-ring
    train --agent dpt --data FILE.hdf5`` needs no option); ``context="shuffle"`` is not
    supported (its i.i.d. draws touch every chunk of a group).

    Args:
        data: an :class:`XLandDataset` or the path of a file.
        config: the in-context dataset and stream options.
        norm: token scaling; default the identity (as :class:`XLandHistorySampler`).
        obs_encoding: ``"onehot"`` (625 features) or ``"index"`` (50); see the module.
    """

    name = "xland_dpt"

    def __init__(self, data: XLandDataset | str | os.PathLike,
                 config: DPTSamplerConfig | None = None, *, norm: Normalization | None = None,
                 host_id: int = 0, num_hosts: int = 1, obs_encoding: str = "onehot"):
        cfg = config or DPTSamplerConfig(group_key="history_id", label_key="expert_actions")
        self.data = data if isinstance(data, XLandDataset) else XLandDataset(data)
        where = f"XLandDPTWindowSampler ({self.data.path})"
        check_positive("context_steps", cfg.context_steps)
        if cfg.context != "window":
            raise ValueError(f"{where}: context={cfg.context!r} is not supported, only "
                             "'window' (a 'shuffle'd draw reads every chunk of a group)")
        stream = _DPT_STREAMS.get((cfg.group_key, cfg.order_key))
        if stream is None:
            raise ValueError(f"{where}: group_key={cfg.group_key!r} with order_key="
                             f"{cfg.order_key!r} is not a stream of the file; expected one of "
                             f"{sorted(_DPT_STREAMS)} (group_key, order_key)")
        if cfg.label_key not in ("expert_actions", "optimal_actions"):
            raise ValueError(f"{where}: label_key={cfg.label_key!r}, but the file labels each "
                             "step with 'expert_actions' (set label_key='expert_actions')")
        self.obs_encoding = obs_encoding
        od = obs_dim(obs_encoding)
        d = self.data
        if stream == "history":
            self.stream_first = np.arange(d.num_histories, dtype=np.int64)
            self.group_steps = d.hist_steps.copy()
        else:
            counts = np.array([g.num_histories for g in d.groups], np.int64)
            self.stream_first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
            self.group_steps = counts * np.array([g.num_steps for g in d.groups], np.int64)
        # Histories of a stream all have hist_steps[stream_first] steps (one file group).
        self.history_steps = d.hist_steps[self.stream_first]
        k = cfg.context_steps
        self._groups = np.flatnonzero(self.group_steps >= k)
        if self._groups.size == 0:
            raise ValueError(f"{where}: context_steps={k} is longer than every stream (by "
                             f"{cfg.group_key!r}; the longest has {int(self.group_steps.max())}"
                             " steps)")
        norm = norm or Normalization.identity(od)
        layout = dpt_layout(od, NUM_ACTIONS, True, norm)
        super().__init__(_Spec(d, obs_encoding), cfg, layout, raw_steps=k, host_id=host_id,
                         num_hosts=num_hosts)

    @property
    def num_groups(self) -> int:
        return len(self.group_steps)

    def _draw(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return draw_windows(rng, self._groups, self.group_steps, self.batch_size,
                            self.config.context_steps)

    def read_rows(self, specs: dict[str, np.ndarray], rows: np.ndarray
                  ) -> tuple[dict[str, np.ndarray], DPTPlan]:
        """The steps of the given rows read from the file, ``[R * (k + 1)]`` per key (row
        ``i``'s slot 0 is the stream step before its window, zero when there is none), with
        ``is_last`` and ``timestep`` per slot, and the plan indexing them."""
        k = self.config.context_steps
        r = len(rows)
        buf = {"states": np.zeros((r, k + 1, VIEW, VIEW), np.uint8),
               "actions": np.zeros((r, k + 1), np.int64),
               "rewards": np.zeros((r, k + 1), np.float32),
               "expert_actions": np.zeros((r, k + 1), np.int64),
               "is_last": np.zeros((r, k + 1), bool),
               "timestep": np.zeros((r, k + 1), np.int64)}
        for i, row in enumerate(rows):
            g, s = int(specs["group"][row]), int(specs["start"][row])
            n_hist = int(self.history_steps[g])
            pos = np.arange(max(s - 1, 0), s + k)  # stream positions read
            hist = self.stream_first[g] + pos // n_hist
            step = pos % n_hist
            off = k + 1 - len(pos)
            cuts = np.flatnonzero(np.diff(hist)) + 1
            for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(pos)], strict=True):
                got = self.data.read(int(hist[a]), int(step[a]), int(step[b - 1]) + 1)
                for key in ("states", "actions", "rewards", "expert_actions"):
                    buf[key][i, off + a : off + b] = got[key]
                buf["is_last"][i, off + a : off + b] = got["dones"].astype(bool) | (
                    step[a:b] == n_hist - 1)
            # Steps since the episode began: a query begins one when the slot before it
            # ended one (or it starts the stream); else it continues the episode running at
            # the window's first step.
            new = buf["is_last"][i, :k].copy()
            new[0] |= s == 0
            j = np.arange(k)
            last_new = np.maximum.accumulate(np.where(new, j, -1))
            t0 = 0
            if not new[0]:
                h0, t = int(hist[1]), int(step[1])  # the window's first step (slot 1)
                t0 = t - self.data.episode_start_before(h0, t)
            buf["timestep"][i, 1:] = np.where(last_new >= 0, j - last_new, j + t0)
        base = (np.arange(r) * (k + 1))[:, None]
        query = base + 1 + np.arange(k)[None]
        prev = query - 1
        prev[:, 0] = np.where(specs["start"][rows] > 0, prev[:, 0], -1)
        flat = {key: v.reshape(r * (k + 1), *v.shape[2:]) for key, v in buf.items()}
        return flat, DPTPlan(query=query, prev=prev)

    def _plan(self, specs, rows) -> DPTPlan:
        return self.read_rows(specs, rows)[1]

    def batch_at(self, step: int) -> TokenBatch:
        return self.batch_for(self.specs_at(step))

    def batch_for(self, specs: dict[str, np.ndarray], rows: np.ndarray | None = None
                  ) -> TokenBatch:
        """The TokenBatch of given row specs (``group``: the stream, ``start``: the window's
        first step in it; default rows: this host's)."""
        buf, plan = self.read_rows(specs, self.host_rows if rows is None else rows)
        return assemble_dpt(self.layout, self.seq_len, plan,
                            observations=_Buffer(buf["states"], None, None, self.obs_encoding),
                            actions=buf["actions"], rewards=buf["rewards"],
                            labels=buf["expert_actions"], timestep=buf["timestep"],
                            is_last=buf["is_last"])

