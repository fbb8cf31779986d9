"""ExoRL datasets: a ``buffer/`` directory of per-episode ``.npz`` files.

File names are ``<timestamp>_<index>_<length>.npz``; episodes are ordered by index (not by
name). Each file holds ``observation`` (L+1, obs), ``action`` (L+1, act), ``reward``
(L+1, 1), ``discount`` (L+1, 1) and ``physics`` (L+1, nphys); row 0 is the reset (its action,
reward and discount are placeholders: zeros, 0 and 1), rows 1..L the steps. In the
:class:`EpisodeStore` row ``t`` is step ``t + 1`` of the file::

    observations = observation[:-1]     extras["next_observations"] = observation[1:]
    actions      = action[1:]           rewards = reward[1:, 0]
    extras["physics"] = physics[:-1]    extras["next_physics"] = physics[1:]
    extras["discount"] = discount[1:, 0]

so the reward of row ``t`` is a function of ``next_physics[t]`` (and ``actions[t]``), which
is what the relabeller passed in as ``relabel=`` (``envs.relabel``) uses to label any task of
the domain. Episodes end by the time limit (``timeouts[-1] = True``) unless the discount
drops to 0 (a termination).
Unknown per-step keys are kept as extras (a row 0 that is not the placeholder - zeros, or a
discount of 1 - goes to ``episode_extras["exorl_first/<key>"]``);
keys named ``episode.<name>`` hold per-episode extras. The writer rebuilds the files
exactly from these, so ExoRL file -> store -> file round-trips bit for bit.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rl_ring.data.checks import (
    DatasetError,
    check_finite,
    check_kind,
    portable_metadata,
    record_skipped,
)
from rl_ring.data.store import EpisodeStore
from rl_ring.io import atomic_file, atomic_output

log = logging.getLogger(__name__)
_SIDECAR = ".rl_ring.json"  # metadata our writer saves beside the episodes

_NAME = re.compile(r"^(?P<ts>.*)_(?P<idx>\d+)_(?P<len>\d+)\.npz$")
_REQUIRED = ("observation", "action", "reward", "discount")
_FIRST = "exorl_first/"  # episode_extras prefix for a non-default reset row
_EPISODE = "episode."  # npz key prefix for per-episode extras
_PLACEHOLDER = {"action": 0.0, "reward": 0.0, "discount": 1.0}


def buffer_path(path: str | os.PathLike) -> Path:
    """The directory holding the ``.npz`` files: ``path`` itself or ``path/buffer``."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such ExoRL directory")
    if not any(p.glob("*.npz")) and (p / "buffer").is_dir():
        return p / "buffer"
    return p


def episode_files(buffer_dir: str | os.PathLike) -> list[tuple[int, int, Path]]:
    """``(index, length, path)`` of every episode file, ordered by episode index.

    Raises:
        DatasetError: no ``.npz`` files, a name not of the form ``<ts>_<idx>_<len>.npz``, or
            two files with the same index.
    """
    d = Path(buffer_dir)
    out, seen = [], {}
    for f in d.glob("*.npz"):
        m = _NAME.match(f.name)
        if m is None:
            raise DatasetError(f, "file name is not <timestamp>_<index>_<length>.npz")
        idx = int(m["idx"])
        if idx in seen:
            raise DatasetError(f, f"episode index {idx} also used by {seen[idx].name}")
        seen[idx] = f
        out.append((idx, int(m["len"]), f))
    if not out:
        raise DatasetError(d, "holds no .npz episode files")
    return sorted(out)


class Relabel(Protocol):
    """Computes a task's rewards from saved physics states (``envs.relabel.RELABELLER``)."""

    version: int
    """Part of the relabel cache key: a new version recomputes cached rewards."""

    def __call__(self, task: str, next_physics: np.ndarray, actions: np.ndarray | None,
                 episode_starts: np.ndarray, *, workers: int | None,
                 use_actions: bool) -> np.ndarray:
        """``[N]`` float32 rewards of ``task`` for ``next_physics [N, state_size]``."""
        ...

    def obs_size(self, task: str) -> int:
        """Width of ``task``'s flat observation."""
        ...


def read_exorl(
    buffer_dir: str | os.PathLike,
    task: str | None = None,
    *,
    relabel: Relabel | None = None,
    skip_bad: bool = False,
    workers: int | None = None,
    use_actions: bool = True,
    cache: bool = True,
) -> EpisodeStore:
    """Reads an ExoRL buffer directory into an :class:`EpisodeStore`.

    Args:
        buffer_dir: the ``buffer/`` directory (or the directory above it).
        task: relabel rewards for this task (e.g. ``"walker_run"``) with ``relabel``; None
            keeps the stored rewards.
        relabel: the relabeller that ``task`` needs, ``envs.relabel.RELABELLER`` (or call
            ``envs.load_dataset(path, task=...)``, which passes it).
        skip_bad: skip unreadable / inconsistent / non-finite episode files instead of
            raising; their count goes to ``metadata["skipped"]``.
        workers: processes for relabelling (see :func:`envs.relabel.relabel`).
        use_actions: relabel with each step's control set (the live reward); False leaves
            the control at zero like ExoRL's own relabelling.
        cache: keep relabelled rewards in ``<buffer_dir>/../.rl_ring_cache/`` (keyed by a hash
            of the file list) and reuse them.

    Raises:
        DatasetError: a bad file (naming it and the key), unless ``skip_bad``.
        ValueError: ``task`` without ``relabel``.
    """
    if task is not None and relabel is None:
        raise ValueError(
            f"read_exorl(task={task!r}) needs the relabeller that computes {task}'s rewards: "
            "pass relabel=envs.relabel.RELABELLER, or call envs.load_dataset(path, task=...)"
        )
    bdir = buffer_path(buffer_dir)
    files = episode_files(bdir)
    total = sum(length for _, length, _ in files)
    skipped: list[str] = []
    good: list[Path] = []
    buf: _Buffers | None = None
    for _, length, f in files:
        try:
            ep = _read_episode(f, length)
            if buf is None:
                buf = _Buffers(ep, total, f)
            buf.append(ep, f)
        except DatasetError as err:
            if not skip_bad:
                raise
            skipped.append(str(err))
            continue
        good.append(f)
    if buf is None or buf.num_episodes == 0:
        raise DatasetError(bdir, f"no readable episode files ({len(skipped)} skipped)")
    store = buf.build(bdir)
    saved = bdir / _SIDECAR  # metadata our writer saved (action space, env id, ...)
    if saved.is_file():
        try:
            meta = json.loads(saved.read_text()).get("metadata", {})
        except (json.JSONDecodeError, AttributeError) as err:
            raise DatasetError(saved, f"corrupt metadata ({err})") from None
        store.metadata = {**meta, **store.metadata}
    record_skipped(store.metadata, bdir, skipped)
    if task is not None:
        rewards = _relabelled(store, task, relabel, bdir, good, workers, use_actions, cache)
        store.rewards = rewards
        store.metadata["reward_task"] = task
        store.metadata["relabel_use_actions"] = use_actions
    return store


def _read_episode(f: Path, length: int) -> dict[str, np.ndarray]:
    try:
        with np.load(f, allow_pickle=False) as z:
            ep = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise DatasetError(f, f"cannot read npz (corrupt or truncated?): {err}") from None
    for key in _REQUIRED:
        if key not in ep:
            raise DatasetError(f, f"missing required key (found {sorted(ep)})", key)
    rows = length + 1
    for key, arr in ep.items():
        if key.startswith(_EPISODE):
            continue
        if key in (*_REQUIRED, "physics") and (arr.ndim == 0 or arr.shape[0] != rows):
            raise DatasetError(
                f, f"has shape {arr.shape}; the file name says {length} steps = {rows} rows", key
            )
    for key in ("reward", "discount"):
        arr = ep[key]
        if arr.ndim == 2 and arr.shape[1] == 1:
            ep[key] = arr = arr[:, 0]
        if arr.ndim != 1:
            raise DatasetError(f, f"has shape {arr.shape}, expected ({rows}, 1)", key)
        check_kind(arr, "f", f, key)
    check_kind(ep["observation"], "f", f, "observation")
    act = ep["action"]
    if act.dtype.kind in "iu":
        if act.ndim != 1:
            raise DatasetError(f, f"integer actions must be ({rows},), got {act.shape}", "action")
    else:
        check_kind(act, "f", f, "action")
        if act.ndim != 2:
            raise DatasetError(f, f"has shape {act.shape}, expected ({rows}, act_dim)", "action")
    if "physics" in ep:
        check_kind(ep["physics"], "f", f, "physics")
    for key, arr in ep.items():
        if arr.dtype.kind not in "fiub":
            raise DatasetError(f, f"dtype {arr.dtype} is not numeric", key)
        check_finite(arr if arr.ndim else arr.reshape(1), f, key)
    return ep


class _Buffers:
    """Preallocated per-step arrays filled one episode file at a time (no 2x peak memory)."""

    def __init__(self, ep: dict[str, np.ndarray], total: int, first_file: Path):
        self.step_keys = sorted(
            k for k, v in ep.items() if not k.startswith(_EPISODE) and v.ndim and
            v.shape[0] == len(ep["reward"])
        )
        self.episode_keys = sorted(k for k in ep if k not in self.step_keys)
        # per-step keys: the shape of one row; per-episode keys: the whole shape
        self.shapes = {
            k: (v.shape[1:] if k in self.step_keys else v.shape, v.dtype) for k, v in ep.items()
        }
        self.first_file = first_file

        def alloc(key, dtype=None):
            shape, dt = self.shapes[key]
            return np.empty((total, *shape), dtype=dtype or dt)

        self.steps = {k: alloc(k) for k in self.step_keys}
        self.obs0 = alloc("observation")  # observation[:-1]; steps holds observation[1:]
        self.phys0 = alloc("physics") if "physics" in ep else None
        self.first: dict[str, list[np.ndarray]] = {k: [] for k in self.step_keys}
        self.per_episode: dict[str, list[np.ndarray]] = {k: [] for k in self.episode_keys}
        self.starts = [0]

    @property
    def num_episodes(self) -> int:
        return len(self.starts) - 1

    def append(self, ep: dict[str, np.ndarray], f: Path) -> None:
        if sorted(ep) != sorted(self.shapes):
            raise DatasetError(
                f, f"has keys {sorted(ep)}, but {self.first_file.name} has {sorted(self.shapes)}"
            )
        for k, arr in ep.items():
            want, dtype = self.shapes[k]
            tail = arr.shape[1:] if k in self.step_keys else arr.shape
            if tail != want or arr.dtype.kind != dtype.kind:
                raise DatasetError(
                    f, f"has shape {arr.shape} {arr.dtype}; {self.first_file.name} has rows of "
                    f"{want} {dtype}", k,
                )
        s = self.starts[-1]
        e = s + len(ep["reward"]) - 1
        for k in self.step_keys:
            self.steps[k][s:e] = ep[k][1:]
            self.first[k].append(ep[k][0])
        self.obs0[s:e] = ep["observation"][:-1]
        if self.phys0 is not None:
            self.phys0[s:e] = ep["physics"][:-1]
        for k in self.episode_keys:
            self.per_episode[k].append(ep[k])
        self.starts.append(e)

    def build(self, source: Path) -> EpisodeStore:
        n = self.starts[-1]
        steps = {k: v[:n] for k, v in self.steps.items()}
        starts = np.asarray(self.starts, dtype=np.int64)
        first = {k: np.stack(v) for k, v in self.first.items()}
        ep_extras: dict[str, np.ndarray] = {
            k[len(_EPISODE) :] if k.startswith(_EPISODE) else k: np.stack(v)
            for k, v in self.per_episode.items()
        }
        # Reset-row placeholders are kept only where some file deviates from the defaults.
        for k, arr in first.items():
            if k in ("observation", "physics"):
                continue
            if np.any(arr != _PLACEHOLDER.get(k, 0)):
                ep_extras[_FIRST + k] = arr
        discount = steps.pop("discount").astype(np.float32, copy=False)
        terminals = discount == 0
        truncated = np.asarray(ep_extras.get("truncated", np.zeros(len(starts) - 1, bool)), bool)
        ep_extras["truncated"] = truncated
        last = starts[1:] - 1
        timeouts = np.zeros(n, dtype=bool)
        timeouts[last] = ~terminals[last] & ~truncated
        extras = {
            "next_observations": steps.pop("observation").astype(np.float32, copy=False),
            "discount": discount,
        }
        if self.phys0 is not None:
            extras["physics"] = self.phys0[:n]
            extras["next_physics"] = steps.pop("physics")
        actions = steps.pop("action")
        rewards = steps.pop("reward").astype(np.float32, copy=False)
        extras.update(steps)
        return EpisodeStore(
            observations=self.obs0[:n].astype(np.float32, copy=False),
            actions=actions.astype(np.int64) if actions.dtype.kind in "iu" else
            actions.astype(np.float32, copy=False),
            rewards=rewards,
            terminals=terminals,
            timeouts=timeouts,
            episode_starts=starts,
            extras=extras,
            episode_extras=ep_extras,
            metadata={"source_format": "exorl", "source": str(source), "reward_task": None},
        )


# ---------------------------------------------------------------------------- relabelling
def _relabelled(store, task, relabel: Relabel, bdir: Path, files, workers, use_actions,
                cache) -> np.ndarray:
    if "next_physics" not in store.extras:
        raise DatasetError(bdir, f"relabelling to {task!r} needs the 'physics' key", "physics")
    key = {
        "version": relabel.version,
        "task": task,
        "use_actions": use_actions,
        "files": [(f.name, f.stat().st_size) for f in files],
    }
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
    mode = "" if use_actions else "-noctrl"
    cache_file = bdir.parent / ".rl_ring_cache" / f"{task}{mode}-{digest}.npy"
    if cache and cache_file.is_file():
        try:
            cached = np.load(cache_file, allow_pickle=False)
            if cached.shape == (store.num_steps,) and cached.dtype == np.float32:
                store.metadata["relabel_cache"] = str(cache_file)
                return cached
        except (OSError, ValueError):
            pass  # a broken cache is recomputed and overwritten
    _check_domain(store, task, relabel.obs_size(task), bdir)
    try:
        rewards = relabel(
            task, store.extras["next_physics"], store.actions if use_actions else None,
            store.episode_starts, workers=workers, use_actions=use_actions,
        )
    except ValueError as err:  # states or actions that do not fit the task's model
        raise DatasetError(bdir, str(err), "physics") from None
    if cache:
        try:
            with atomic_file(cache_file) as tmp, open(tmp, "wb") as fh:
                np.save(fh, rewards, allow_pickle=False)
            store.metadata["relabel_cache"] = str(cache_file)
        except OSError as err:
            msg = f"{cache_file}: could not cache relabelled rewards ({err})"
            log.warning(msg)
            warnings.warn(msg, stacklevel=3)
    return rewards


def _check_domain(store: EpisodeStore, task: str, expected: int, bdir: Path) -> None:
    """Warns when the observations are not as wide as ``task``'s (a dataset of another domain).

    Walker and cheetah states have the same size, so the physics shape alone cannot tell them
    apart; their observations (24 and 17 wide) can.
    """
    if store.obs_dim != expected:
        msg = (f"{bdir}: observations are {store.obs_dim} wide but {task}'s are {expected}: "
               "is this dataset of another domain?")
        log.warning(msg)
        warnings.warn(msg, stacklevel=4)


# ---------------------------------------------------------------------------- writer
def exorl_files(buffer_dir: str | os.PathLike) -> list[str]:
    """The files an ExoRL buffer directory consists of: its episodes (``*.npz``) and
    rl_ring's ``.rl_ring.json``; anything else in the directory is not part of it."""
    d = Path(buffer_dir)
    return sorted(f.name for f in d.iterdir()
                  if f.is_file() and (f.suffix == ".npz" or f.name == _SIDECAR))


def write_exorl(store: EpisodeStore, buffer_dir: str | os.PathLike, *,
                overwrite: bool = False) -> Path:
    """Writes one ``<timestamp>_<index>_<length>.npz`` file per episode (atomically).

    ``buffer_dir`` must be new or empty unless ``overwrite``; then only the episode files
    (and rl_ring's sidecar) of the old buffer are replaced, other files are kept.

    Needs ``extras["next_observations"]`` (the observation after the last step is part of
    the file). ``physics``/``next_physics`` become the ``physics`` key; ``discount`` comes
    from ``extras["discount"]`` or ``1 - terminals``; other per-step extras become keys of
    their own, per-episode extras ``episode.<name>`` keys.

    Raises:
        ValueError: a store that the format cannot hold (no next observations, or
            observations that do not chain within an episode).
    """
    if "next_observations" not in store.extras:
        raise ValueError(
            "write_exorl: the store has no extras['next_observations']; an ExoRL file holds "
            "the observation after the last step"
        )
    stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
    out = Path(buffer_dir)
    # "truncated" all False is the default and is left out, so files from ExoRL itself come
    # back unchanged; if any episode is truncated every file carries the key.
    truncated = np.asarray(store.episode_extras.get("truncated", False))
    with_truncated = bool(truncated.any())
    with atomic_output(out, directory=True, overwrite=overwrite, owned=exorl_files,
                       what="an ExoRL buffer") as tmp:
        for i in range(store.num_episodes):
            arrays = _episode_arrays(store, i, with_truncated)
            length = int(store.episode_lengths[i])
            np.savez_compressed(tmp / f"{stamp}_{i}_{length}.npz", **arrays)
        meta = portable_metadata(store.metadata)
        (tmp / _SIDECAR).write_text(json.dumps({"metadata": meta}, default=str))
    return out


def _episode_arrays(store: EpisodeStore, i: int, with_truncated: bool) -> dict[str, np.ndarray]:
    ep = store.episode(i)
    ee = {k: np.asarray(v[i]) for k, v in store.episode_extras.items()}

    def first(key: str, like: np.ndarray) -> np.ndarray:
        if _FIRST + key in ee:
            return ee[_FIRST + key].astype(like.dtype).reshape(like.shape[1:])
        return np.full(like.shape[1:], _PLACEHOLDER.get(key, 0), dtype=like.dtype)

    def chain(name: str, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        if len(before) > 1 and not np.array_equal(before[1:], after[:-1]):
            raise ValueError(
                f"write_exorl: episode {i}: {name}[t+1] != next_{name}[t]; an ExoRL file holds "
                "one sequence of them"
            )
        return np.concatenate([before[:1], after])

    obs = chain("observations", ep["observations"], ep["next_observations"].astype(np.float32))
    act = np.asarray(ep["actions"])
    act = act.astype(np.int64) if store.discrete_actions else act.astype(np.float32)
    rew = np.asarray(ep["rewards"], np.float32)
    if "discount" in ep:
        disc = np.asarray(ep["discount"], np.float32)
    else:
        disc = (~np.asarray(ep["terminals"], bool)).astype(np.float32)
    arrays: dict[str, Any] = {
        "observation": obs,
        "action": np.concatenate([first("action", act)[None], act]),
        "reward": np.concatenate([first("reward", rew)[None], rew])[:, None],
        "discount": np.concatenate([first("discount", disc)[None], disc])[:, None],
    }
    skip = {"next_observations", "discount"}
    if "physics" in ep and "next_physics" in ep:
        arrays["physics"] = chain("physics", np.asarray(ep["physics"]),
                                  np.asarray(ep["next_physics"]))
        skip |= {"physics", "next_physics"}
    for key in store.extras:
        if key in skip:
            continue
        arr = np.asarray(ep[key])
        arrays[key] = np.concatenate([first(key, arr)[None], arr])
    for key, value in ee.items():
        if key.startswith(_FIRST):
            continue
        if key == "truncated" and not with_truncated:
            continue
        arrays[_EPISODE + key] = value
    return arrays
