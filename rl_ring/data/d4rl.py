"""D4RL HDF5 datasets: one file of flat per-step arrays, read directly with h5py.

Layout: ``observations`` (N, obs), ``actions`` (N, act) or (N,) integers for discrete actions,
``rewards`` (N,), ``terminals`` (N,), ``timeouts`` (N,), optional ``next_observations``,
``infos/*`` per-step arrays and ``metadata/*`` (scalars, strings, policy weights). An episode
ends at a row whose ``terminals`` or ``timeouts`` is set; a trailing run with neither is kept
as a final episode flagged ``episode_extras["truncated"]``. Old v0 files have no
``timeouts``: episodes then split at terminals only (recorded in the metadata notes).

rl_ring's writer adds ``metadata/rl_ring`` (a JSON manifest) and
``metadata/rl_ring_episode_starts`` / ``metadata/rl_ring_episode_extras/*`` so that episode
boundaries that no flag marks, per-episode extras and the store's metadata survive a round
trip; other D4RL readers ignore them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from rl_ring.data.checks import (
    DatasetError,
    as_flags,
    check_kind,
    check_rows,
    first_nonfinite,
    portable_metadata,
    record_skipped,
)
from rl_ring.data.store import EpisodeStore
from rl_ring.io import atomic_output, jsonable

_MANIFEST = "metadata/rl_ring"
_STARTS = "metadata/rl_ring_episode_starts"
_EP_EXTRAS = "metadata/rl_ring_episode_extras"
_CORE = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")
# Metadata arrays above this many elements (policy weights) are summarised, not copied.
_MAX_META_ELEMENTS = 64


def read_d4rl(path: str | os.PathLike, *, skip_bad: bool = False) -> EpisodeStore:
    """Reads a D4RL-format HDF5 file into an :class:`EpisodeStore`.

    Args:
        path: the ``.hdf5`` file.
        skip_bad: drop episodes holding NaN/inf (instead of raising) and record the count in
            ``metadata["skipped"]``. Structural faults (missing keys, wrong shapes) always raise.

    Raises:
        DatasetError: unreadable file, missing key, mismatched lengths, wrong dtype, bad flag
            values, or (without ``skip_bad``) non-finite values; the message names the key.
    """
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise DatasetError(path, f"cannot open as HDF5 (corrupt or truncated?): {err}") from None
    try:
        with f:
            raw, meta, manifest, starts_saved, ep_saved = _read_raw(f, path)
    except OSError as err:
        raise DatasetError(path, f"read failed (corrupt or truncated file?): {err}") from None

    n = len(raw["rewards"])
    notes: list[str] = []
    terminals = raw.pop("terminals")
    if "timeouts" in raw:
        timeouts = raw.pop("timeouts")
    else:
        timeouts = np.zeros(n, dtype=bool)
        notes.append("no 'timeouts' key (old D4RL v0 file): episodes split at terminals only")
    ends = np.flatnonzero(terminals | timeouts) + 1
    starts = np.unique(np.concatenate([[0], ends, [n]])).astype(np.int64)
    if n == 0:
        raise DatasetError(path, "holds no steps", "rewards")
    if starts_saved is not None:
        starts = _check_saved_starts(starts_saved, ends, n, path)
    num_eps = len(starts) - 1
    last = starts[1:] - 1
    truncated = ~(terminals[last] | timeouts[last])
    if truncated[:-1].any():
        notes.append("episodes with neither terminal nor timeout at their end (boundaries saved)")
    elif truncated[-1]:
        notes.append("last episode ends with neither terminal nor timeout: flagged truncated")

    # NaN/inf: name the key, or drop the whole episode that holds the bad row.
    skipped: list[str] = []
    keep = np.ones(num_eps, dtype=bool)
    for key, arr in raw.items():
        bad_rows = _nonfinite_rows(arr)
        if bad_rows.size == 0:
            continue
        if not skip_bad:
            raise DatasetError(path, f"non-finite value (NaN or inf) at row {bad_rows[0]}", key)
        for ep in np.unique(np.searchsorted(starts, bad_rows, side="right") - 1):
            if keep[ep]:
                skipped.append(f"episode {ep}: non-finite {key}")
            keep[ep] = False
    if not keep.any():
        raise DatasetError(path, "every episode holds non-finite values")

    ep_extras = {"truncated": truncated}
    ep_extras.update(ep_saved)
    for k, v in ep_extras.items():
        if len(v) != num_eps:
            raise DatasetError(path, f"has {len(v)} rows, expected {num_eps} episodes", k)
    arrays = {"terminals": terminals, "timeouts": timeouts, **raw}
    if not keep.all():
        lengths = np.diff(starts)
        rows = np.repeat(keep, lengths)
        arrays = {k: v[rows] for k, v in arrays.items()}
        starts = np.concatenate([[0], np.cumsum(lengths[keep])]).astype(np.int64)
        ep_extras = {k: v[keep] for k, v in ep_extras.items()}

    metadata: dict[str, Any] = dict(manifest.get("metadata", {}))
    metadata.update(source_format="d4rl", source=str(path), d4rl_metadata=meta)
    if notes:
        metadata["notes"] = notes
    extras_names = manifest.get("extras", {})
    core = {k: arrays.pop(k) for k in _CORE[:5]}
    extras = {extras_names.get(k, k): v for k, v in arrays.items()}
    store = EpisodeStore(
        observations=core["observations"].astype(np.float32, copy=False),
        actions=core["actions"],
        rewards=core["rewards"].astype(np.float32, copy=False),
        terminals=core["terminals"],
        timeouts=core["timeouts"],
        episode_starts=starts,
        extras=extras,
        episode_extras=ep_extras,
        metadata=metadata,
    )
    record_skipped(store.metadata, path, skipped)
    return store


def _read_raw(f: h5py.File, path: Path):
    """Reads and type-checks every array; returns (per-step arrays, metadata, manifest, ...)."""
    for key in ("observations", "actions", "rewards", "terminals"):
        if key not in f:
            raise DatasetError(path, f"missing required key (found {sorted(f.keys())})", key)
    raw: dict[str, np.ndarray] = {}
    rewards = _dataset(f, "rewards", path)
    if rewards.ndim == 2 and rewards.shape[1] == 1:
        rewards = rewards[:, 0]
    check_kind(rewards, "fiu", path, "rewards")
    if rewards.ndim != 1:
        raise DatasetError(path, f"has shape {rewards.shape}, expected (N,)", "rewards")
    n = len(rewards)
    raw["rewards"] = rewards
    obs = _dataset(f, "observations", path)
    check_kind(obs, "fiub", path, "observations")
    check_rows(obs, n, path, "observations", like="rewards")
    raw["observations"] = obs
    act = _dataset(f, "actions", path)
    check_rows(act, n, path, "actions", ndim=(1, 2), like="rewards")
    if act.dtype.kind in "iu":
        if act.ndim != 1:
            raise DatasetError(
                path, f"integer actions must be (N,) discrete indices, got {act.shape}", "actions"
            )
        act = act.astype(np.int64)
    else:
        check_kind(act, "f", path, "actions")
        act = act.astype(np.float32, copy=False).reshape(n, -1)
    raw["actions"] = act
    for key in ("terminals", "timeouts"):
        if key in f:
            flags = as_flags(_dataset(f, key, path), path, key)
            check_rows(flags, n, path, key, like="rewards")
            raw[key] = flags
    if "next_observations" in f:
        nxt = _dataset(f, "next_observations", path)
        check_kind(nxt, "fiub", path, "next_observations")
        if nxt.shape != obs.shape:
            raise DatasetError(
                path, f"has shape {nxt.shape}, expected {obs.shape} like observations",
                "next_observations",
            )
        raw["next_observations"] = nxt.astype(np.float32, copy=False)

    manifest: dict[str, Any] = {}
    if _MANIFEST in f:
        try:
            manifest = json.loads(_decode(f[_MANIFEST][()]))
        except (json.JSONDecodeError, TypeError) as err:
            raise DatasetError(path, f"corrupt rl_ring manifest ({err})", _MANIFEST) from None
    starts_saved = _dataset(f, _STARTS, path) if _STARTS in f else None
    ep_saved: dict[str, np.ndarray] = {}
    if _EP_EXTRAS in f:
        names = manifest.get("episode_extras", {})
        for name in _walk(f[_EP_EXTRAS], _EP_EXTRAS):
            ep_saved[names.get(name, name[len(_EP_EXTRAS) + 1 :])] = _dataset(f, name, path)

    meta: dict[str, Any] = {}
    for key, value in f.attrs.items():
        meta[f"attrs/{key}"] = _json_safe(value)
    for name in _walk(f, ""):
        if name in _CORE:
            continue
        if name.startswith("metadata/"):
            if name == _MANIFEST or name == _STARTS or name.startswith(_EP_EXTRAS + "/"):
                continue
            meta[name[len("metadata/") :]] = _json_safe(_dataset(f, name, path))
            continue
        arr = _dataset(f, name, path)
        if arr.ndim == 0 or arr.shape[0] != n:
            if name.startswith("infos/"):
                raise DatasetError(
                    path, f"has shape {arr.shape}, expected {n} rows like 'rewards'", name
                )
            meta[name] = _json_safe(arr)  # a stray non-per-step array: keep as metadata
            continue
        if arr.dtype.kind not in "fiub":
            raise DatasetError(path, f"dtype {arr.dtype} is not numeric", name)
        raw[name] = arr
    return raw, meta, manifest, starts_saved, ep_saved


def _walk(group: h5py.Group, prefix: str):
    """Yields the full name of every dataset below ``group``, in sorted order."""
    for key in sorted(group.keys()):
        item = group[key]
        name = f"{prefix}/{key}" if prefix else key
        if isinstance(item, h5py.Group):
            yield from _walk(item, name)
        else:
            yield name


def _dataset(f: h5py.File, key: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(f[key][()])
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise DatasetError(path, f"cannot read ({err})", key) from None


def _nonfinite_rows(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind != "f" or first_nonfinite(arr) is None:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1))


def _check_saved_starts(saved: np.ndarray, ends: np.ndarray, n: int, path: Path) -> np.ndarray:
    starts = np.asarray(saved, dtype=np.int64)
    ok = (
        starts.ndim == 1
        and len(starts) >= 2
        and starts[0] == 0
        and starts[-1] == n
        and np.all(np.diff(starts) > 0)
        and np.isin(ends, starts).all()
    )
    if not ok:
        raise DatasetError(
            path, "episode starts are inconsistent with the terminals/timeouts flags", _STARTS
        )
    return starts


def _decode(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.dtype.kind in "SO" and value.ndim == 0:
        return _decode(value.item())
    return str(value)


def _json_safe(value) -> Any:
    """Converts an HDF5 value to JSON: strings, numbers, small lists; big arrays summarised."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (str, bool, int, float)):
        return value
    arr = np.asarray(value)
    if arr.dtype.kind in "SO":
        if arr.ndim == 0:
            return _json_safe(arr.item())
        return [_json_safe(v) for v in arr.reshape(-1)[:_MAX_META_ELEMENTS]]
    if arr.dtype.kind == "U":
        return arr.tolist()
    if arr.dtype.kind not in "fiub":
        return {"dtype": str(arr.dtype), "shape": list(arr.shape)}
    if arr.size > _MAX_META_ELEMENTS:
        return {"dtype": str(arr.dtype), "shape": list(arr.shape), "summarised": True}
    out = arr.tolist()
    if isinstance(out, float) and not np.isfinite(out):
        return str(out)
    return out


# ---------------------------------------------------------------------------- writer
def write_d4rl(store: EpisodeStore, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Writes ``store`` as a D4RL-format HDF5 file (atomically: temporary file, then rename).

    An existing file at ``path`` is replaced only with ``overwrite``.

    ``observations``/``actions``/``rewards`` go out as float32 (discrete actions as int64),
    flags as bool, ``extras["next_observations"]`` as ``next_observations``, other per-step
    extras under ``infos/`` (their names kept in the manifest), ``metadata["d4rl_metadata"]``
    back under ``metadata/``.
    """
    path = Path(path)
    manifest: dict[str, Any] = {
        "writer": "rl_ring",
        "metadata": {
            k: v for k, v in portable_metadata(store.metadata).items() if k != "d4rl_metadata"
        },
        "extras": {},
        "episode_extras": {},
    }
    with atomic_output(path, directory=False, overwrite=overwrite,
                       what="a D4RL dataset") as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("observations", data=np.asarray(store.observations, np.float32))
            act = np.asarray(store.actions)
            f.create_dataset(
                "actions", data=act.astype(np.int64 if store.discrete_actions else np.float32)
            )
            f.create_dataset("rewards", data=np.asarray(store.rewards, np.float32))
            f.create_dataset("terminals", data=np.asarray(store.terminals, bool))
            f.create_dataset("timeouts", data=np.asarray(store.timeouts, bool))
            for key, arr in store.extras.items():
                if key == "next_observations":
                    name = key
                    arr = np.asarray(arr, np.float32)
                elif key.startswith("infos/"):
                    name = key
                else:
                    name = f"infos/{key}"
                if name in f:
                    raise ValueError(f"write_d4rl: extras {key!r} collides with {name!r} in {path}")
                f.create_dataset(name, data=np.asarray(arr))
                if name != key:
                    manifest["extras"][name] = key
            for key, value in store.metadata.get("d4rl_metadata", {}).items():
                _write_meta(f, key, value)
            f.create_dataset(_STARTS, data=np.asarray(store.episode_starts, np.int64))
            for i, (key, arr) in enumerate(store.episode_extras.items()):
                name = f"{_EP_EXTRAS}/{i}"
                f.create_dataset(name, data=np.asarray(arr))
                manifest["episode_extras"][name] = key
            f[_MANIFEST] = json.dumps(jsonable(manifest))
    return path


def _write_meta(f: h5py.File, key: str, value) -> None:
    if isinstance(value, dict):  # a summarised array: its contents were never loaded
        return
    if key.startswith("attrs/"):
        f.attrs[key[len("attrs/") :]] = value
        return
    name = key if key.startswith(("infos/", "metadata/")) else f"metadata/{key}"
    if name in f:
        return
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        f.create_dataset(name, data=np.array(value, dtype=h5py.string_dtype()))
    else:
        f[name] = value
