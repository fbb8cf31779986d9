"""Minari datasets (HDF5 storage), read and written without importing ``minari``.

A dataset with id ``[namespace/][env/]name-vN`` lives in ``<root>/<id>/data/``:
``metadata.json`` (``dataset_id``, ``total_episodes``, ``total_steps``, ``data_format``,
``observation_space`` / ``action_space`` as JSON strings, ``minari_version``, optional
``env_spec`` ...) and ``main_data.hdf5`` with one group ``episode_<i>`` per episode (attrs
``id``, ``total_steps``, optional ``seed``) holding ``observations`` (T+1 rows),
``actions``, ``rewards``, ``terminations``, ``truncations`` (T rows each) and an optional
``infos`` group (T+1 rows: the reset's info, then one per step).

Mapping: ``observations = observations[:-1]``, ``extras["next_observations"] =
observations[1:]``, ``terminals = terminations``, ``timeouts = truncations``,
``extras["infos/<key>"] = infos[<key>][1:]``. Dict observation spaces are flattened by
concatenating their (recursively flattened) entries in the order of the dataset's
``observation_space`` (gymnasium's order, the one ``gymnasium.spaces.flatten`` uses);
Tuple, Text and image-encoded observations raise a clear error.

The writer stores our extras and per-episode extras in ``infos`` and in ``rl_ring/<key>``
episode attributes, and keeps their names and the store metadata in
``metadata.json["rl_ring"]``; ``minari.load_dataset`` ignores both. An episode that ends with
neither flag (a D4RL file's trailing run) is written with ``truncations[-1] = True``, as
Minari's own collector marks every episode end; ``metadata.json["rl_ring"]["truncated_ends"]``
lists those episodes so that this reader gives the store back unchanged. A store without
``extras["next_observations"]`` is written with its last observation repeated as the final
one (``"final_observation": "repeated"``).
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
    check_finite,
    check_kind,
    check_rows,
    portable_metadata,
    record_skipped,
)
from rl_ring.data.store import EpisodeStore
from rl_ring.io import atomic_output, jsonable

MINARI_VERSION = "0.5.4"  # the format version our writer produces
_EP_ATTR = "rl_ring/"


def data_dir(dataset_dir: str | os.PathLike) -> Path:
    """``dataset_dir/data`` (or ``dataset_dir`` itself) holding metadata.json + main_data.hdf5."""
    p = Path(dataset_dir)
    for d in (p / "data", p):
        if (d / "metadata.json").is_file() and (d / "main_data.hdf5").is_file():
            return d
    raise DatasetError(p, "not a Minari dataset: no data/metadata.json + data/main_data.hdf5")


def read_minari(dataset_dir: str | os.PathLike, *, skip_bad: bool = False) -> EpisodeStore:
    """Reads a local Minari dataset directory into an :class:`EpisodeStore`.

    Args:
        dataset_dir: ``<root>/<dataset_id>`` (or its ``data`` subdirectory).
        skip_bad: skip episodes that are malformed or hold NaN/inf (count in
            ``metadata["skipped"]``) instead of raising.

    Raises:
        DatasetError: unreadable metadata or HDF5 file, an unsupported space or storage
            format, or a bad episode (naming the group and key) unless ``skip_bad``.
    """
    ddir = data_dir(dataset_dir)
    meta_path = ddir / "metadata.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(meta_path, f"corrupt metadata ({err})") from None
    fmt = meta.get("data_format", "hdf5")
    if fmt != "hdf5":
        raise DatasetError(meta_path, f"data_format {fmt!r} is not supported (only 'hdf5')")
    obs_space = _space(meta, "observation_space", meta_path)
    act_space = _space(meta, "action_space", meta_path)
    _check_action_space(act_space, meta_path)
    total = meta.get("total_episodes")
    if not isinstance(total, int) or total < 0:
        raise DatasetError(meta_path, f"total_episodes is {total!r}, expected an int >= 0")
    ours = meta.get("rl_ring", {})
    names = ours.get("extras", {})
    ep_names = ours.get("episode_extras", {})
    no_final_obs = ours.get("final_observation") == "repeated"
    marked_ends = set(ours.get("truncated_ends", []))  # flags the writer added (see above)

    h5_path = ddir / "main_data.hdf5"
    try:
        f = h5py.File(h5_path, "r")
    except OSError as err:
        raise DatasetError(h5_path, f"cannot open as HDF5 (corrupt or truncated?): {err}") from None
    episodes, ep_extras, skipped = [], [], []
    with f:
        for i in range(total):
            group = f"episode_{i}"
            try:
                ep, extra = _read_episode(f, group, h5_path, obs_space, act_space, ep_names)
            except DatasetError as err:
                if not skip_bad:
                    raise
                skipped.append(str(err))
                continue
            except OSError as err:
                if not skip_bad:
                    raise DatasetError(h5_path, f"read failed: {err}", group) from None
                skipped.append(f"{group}: {err}")
                continue
            if no_final_obs:
                ep.pop("next_observations")
            if i in marked_ends:
                ep["timeouts"] = ep["timeouts"].copy()
                ep["timeouts"][-1] = False
            episodes.append({names.get(k, k): v for k, v in ep.items()})
            ep_extras.append(extra)
    if not episodes:
        raise DatasetError(h5_path, f"no readable episodes ({len(skipped)} skipped)")
    keys = set(ep_extras[0])
    for i, extra in enumerate(ep_extras):
        if set(extra) != keys:
            raise DatasetError(
                h5_path, f"episode attributes differ: {sorted(extra)} vs {sorted(keys)}",
                f"episode_{i}",
            )
    metadata: dict[str, Any] = dict(ours.get("metadata", {}))
    metadata.update(
        source_format="minari",
        source=str(ddir),
        dataset_id=meta.get("dataset_id"),
        minari_version=meta.get("minari_version"),
        observation_space=_store_space(obs_space),
        action_space=_store_space(act_space),
        minari_metadata={k: v for k, v in meta.items() if k != "rl_ring"},
    )
    try:
        store = EpisodeStore.from_episodes(
            episodes,
            episode_extras={k: np.stack([e[k] for e in ep_extras]) for k in keys},
            metadata=metadata,
        )
    except ValueError as err:  # episodes with different infos keys or shapes
        raise DatasetError(h5_path, f"episodes disagree: {err}") from None
    last = store.episode_starts[1:] - 1
    store.episode_extras["truncated"] = ~(store.terminals[last] | store.timeouts[last])
    record_skipped(store.metadata, h5_path, skipped)
    return store


def _space(meta: dict, key: str, path: Path) -> dict:
    raw = meta.get(key)
    if raw is None:
        raise DatasetError(
            path, "missing (datasets that only name an env_spec are not supported)", key
        )
    try:
        return json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise DatasetError(path, f"not a serialised space ({err})", key) from None


def _check_action_space(space: dict, path: Path) -> None:
    if space.get("type") not in ("Box", "Discrete"):
        raise DatasetError(
            path, f"action space type {space.get('type')!r} is not supported (Box or Discrete)",
            "action_space",
        )


def _store_space(space: dict) -> dict:
    """A Minari space as EpisodeStore metadata (``{"type": "box"|"discrete", ...}``)."""
    if space.get("type") == "Discrete":
        return {"type": "discrete", "n": int(space["n"]), "start": int(space.get("start", 0))}
    if space.get("type") == "Box":
        return {"type": "box", "low": space.get("low"), "high": space.get("high"),
                "shape": space.get("shape")}
    return {"type": str(space.get("type")).lower(), "minari": space}


def _flatten_obs(node, space: dict, path: Path, where: str) -> np.ndarray:
    """Observation arrays ``[T+1, ...]`` of a (possibly Dict) space as ``[T+1, dim]``."""
    kind = space.get("type")
    if kind == "Dict":
        if not isinstance(node, h5py.Group):
            raise DatasetError(path, "Dict observation space but a dataset on disk", where)
        parts = []
        for key, sub in space["subspaces"].items():
            if key not in node:
                raise DatasetError(path, f"missing Dict observation entry {key!r}", where)
            parts.append(_flatten_obs(node[key], sub, path, f"{where}/{key}"))
        lengths = {len(p) for p in parts}
        if len(lengths) != 1:
            raise DatasetError(path, f"Dict observation entries have lengths {lengths}", where)
        return np.concatenate(parts, axis=1)
    if kind not in ("Box", "Discrete", "MultiBinary", "MultiDiscrete"):
        raise DatasetError(path, f"observation space {kind!r} is not supported", where)
    if not isinstance(node, h5py.Dataset):
        raise DatasetError(path, "expected a dataset", where)
    arr = np.asarray(node[()])
    if arr.dtype.kind not in "fiub":
        raise DatasetError(path, f"dtype {arr.dtype} is not numeric (encoded images?)", where)
    return arr.reshape(len(arr), -1) if arr.ndim != 1 else arr.reshape(-1, 1)


def _read_episode(f, group, path, obs_space, act_space, ep_names):
    if group not in f:
        raise DatasetError(path, "missing episode group", group)
    g = f[group]
    for key in ("observations", "actions", "rewards", "terminations", "truncations"):
        if key not in g:
            raise DatasetError(path, f"missing key (found {sorted(g.keys())})", f"{group}/{key}")
    rewards = np.asarray(g["rewards"][()])
    check_kind(rewards, "fiu", path, f"{group}/rewards")
    if rewards.ndim != 1:
        raise DatasetError(path, f"has shape {rewards.shape}, expected (T,)", f"{group}/rewards")
    t = len(rewards)
    steps = g.attrs.get("total_steps")
    if steps is not None and int(steps) != t:
        raise DatasetError(path, f"attribute total_steps={int(steps)} but {t} rewards", group)
    obs = _flatten_obs(g["observations"], obs_space, path, f"{group}/observations")
    check_rows(obs, t + 1, path, f"{group}/observations")
    act = np.asarray(g["actions"][()])
    if act_space["type"] == "Discrete":
        check_kind(act, "iu", path, f"{group}/actions")
        act = act.reshape(-1).astype(np.int64)
    else:
        check_kind(act, "f", path, f"{group}/actions")
        act = act.reshape(len(act), -1)
    check_rows(act, t, path, f"{group}/actions")
    ep = {
        "observations": obs[:-1],
        "next_observations": obs[1:].astype(np.float32),
        "actions": act,
        "rewards": rewards,
        "terminals": as_flags(np.asarray(g["terminations"][()]), path, f"{group}/terminations"),
        "timeouts": as_flags(np.asarray(g["truncations"][()]), path, f"{group}/truncations"),
    }
    for key in ("terminals", "timeouts"):
        check_rows(ep[key], t, path, f"{group}/{key}")
    if "infos" in g:
        for name, arr in _walk_infos(g["infos"], "infos"):
            where = f"{group}/{name}"
            if arr.dtype.kind not in "fiub":
                continue  # strings and objects carry no training signal; Minari allows them
            if arr.ndim == 0 or len(arr) not in (t, t + 1):
                raise DatasetError(path, f"has shape {arr.shape}, expected {t + 1} rows", where)
            ep[name] = arr[1:] if len(arr) == t + 1 else arr
    for key, arr in ep.items():
        check_finite(np.asarray(arr), path, f"{group}/{key}")
    extra = {}
    for attr, value in g.attrs.items():
        if attr.startswith(_EP_ATTR):
            extra[ep_names.get(attr, attr[len(_EP_ATTR) :])] = np.asarray(value)
    return ep, extra


def _walk_infos(group: h5py.Group, prefix: str):
    for key in sorted(group.keys()):
        item = group[key]
        name = f"{prefix}/{key}"
        if isinstance(item, h5py.Group):
            yield from _walk_infos(item, name)
        else:
            yield name, np.asarray(item[()])


# ---------------------------------------------------------------------------- writer
def minari_files(dataset_dir: str | os.PathLike) -> list[str]:
    """The files a Minari dataset directory consists of (those present); anything else in
    the directory is not part of it."""
    d = Path(dataset_dir)
    return [f for f in ("data/main_data.hdf5", "data/metadata.json") if (d / f).is_file()]


def write_minari(
    store: EpisodeStore,
    dataset_dir: str | os.PathLike,
    dataset_id: str | None = None,
    *,
    algorithm_name: str | None = None,
    author: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes ``store`` as a Minari (HDF5) dataset directory, atomically.

    ``dataset_dir`` must be new or empty unless ``overwrite``; then only the dataset's
    ``data/main_data.hdf5`` and ``data/metadata.json`` are replaced, other files are kept.

    Args:
        store: the episodes.
        dataset_dir: ``<root>/<dataset_id>``; ``data/`` is created inside. With
            ``MINARI_DATASETS_PATH=<root>``, ``minari.load_dataset(dataset_id)`` reads it.
        dataset_id: ``[namespace/][env/]name-vN``; default: the directory's name (with
            ``-v0`` added when it has no version).
        algorithm_name: recorded in the metadata.
        author: recorded in the metadata.
        overwrite: allow replacing an existing dataset in ``dataset_dir``.
    """
    out = Path(dataset_dir)
    if dataset_id is None:
        dataset_id = out.name if "-v" in out.name else f"{out.name}-v0"
    obs_shape = tuple(store.observations.shape[1:])
    obs_space = _minari_space(store.metadata.get("observation_space"), obs_shape, False, store)
    act_space = _minari_space(
        store.metadata.get("action_space"), tuple(store.actions.shape[1:]),
        store.discrete_actions, store,
    )
    ours: dict[str, Any] = {
        "writer": "rl_ring",
        "metadata": {
            k: v for k, v in portable_metadata(store.metadata).items()
            if k not in ("minari_metadata", "observation_space", "action_space")
        },
        "extras": {},
        "episode_extras": {},
    }
    has_next = "next_observations" in store.extras
    if not has_next:
        ours["final_observation"] = "repeated"
    for key in store.extras:
        if key != "next_observations":
            name = key if key.startswith("infos/") else f"infos/{key}"
            if name != key:
                ours["extras"][name] = key
    for key in store.episode_extras:
        ours["episode_extras"][_EP_ATTR + key] = key
    last = store.episode_starts[1:] - 1
    # Minari episodes always end terminated or truncated: an end with neither is written
    # truncated, and listed so that read_minari restores the store's flags.
    unflagged = ~(np.asarray(store.terminals[last]) | np.asarray(store.timeouts[last]))
    ours["truncated_ends"] = [int(i) for i in np.flatnonzero(unflagged)]
    with atomic_output(out, directory=True, overwrite=overwrite, owned=minari_files,
                       what="a Minari dataset") as tmp:
        ddir = tmp / "data"
        ddir.mkdir()
        with h5py.File(ddir / "main_data.hdf5", "w", track_order=True) as f:
            for i in range(store.num_episodes):
                _write_episode(f, store, i, has_next)
        metadata = {
            "total_episodes": store.num_episodes,
            "total_steps": store.num_steps,
            "data_format": "hdf5",
            "jpeg_encoding": False,
            "observation_space": json.dumps(obs_space),
            "action_space": json.dumps(act_space),
            "dataset_id": dataset_id,
            "minari_version": MINARI_VERSION,
            "dataset_size": round((ddir / "main_data.hdf5").stat().st_size / 1e6, 1),
            "rl_ring": ours,
        }
        if algorithm_name is not None:
            metadata["algorithm_name"] = algorithm_name
        if author is not None:
            metadata["author"] = [author]
        env_spec = store.metadata.get("minari_metadata", {}).get("env_spec")
        if isinstance(env_spec, str):
            metadata["env_spec"] = env_spec
        (ddir / "metadata.json").write_text(json.dumps(jsonable(metadata)))
    return out


def _minari_space(space: dict | None, shape: tuple, discrete: bool, store) -> dict:
    if discrete:
        n = int(space["n"]) if space and "n" in space else store.act_dim
        start = int(space.get("start", 0)) if space else 0
        return {"type": "Discrete", "dtype": "int64", "start": start, "n": n}
    low, high = -np.inf, np.inf
    if space and space.get("type") == "box" and space.get("low") is not None:
        lo, hi = np.asarray(space["low"], float), np.asarray(space["high"], float)
        if lo.size in (1, int(np.prod(shape))):
            low, high = lo, hi
    low = np.broadcast_to(np.asarray(low, np.float32), shape)
    high = np.broadcast_to(np.asarray(high, np.float32), shape)
    return {"type": "Box", "dtype": "float32", "shape": list(shape),
            "low": low.tolist(), "high": high.tolist()}


def _write_episode(f: h5py.File, store: EpisodeStore, i: int, has_next: bool) -> None:
    ep = store.episode(i)
    g = f.create_group(f"episode_{i}")
    t = len(ep["rewards"])
    g.attrs["id"] = i
    g.attrs["total_steps"] = t
    obs = np.asarray(ep["observations"], np.float32)
    final = np.asarray(ep["next_observations"][-1:], np.float32) if has_next else obs[-1:]
    if has_next and t > 1 and not np.array_equal(obs[1:], ep["next_observations"][:-1]):
        raise ValueError(
            f"write_minari: episode {i}: observations[t+1] != next_observations[t]; a Minari "
            "episode holds one sequence of observations"
        )
    g.create_dataset("observations", data=np.concatenate([obs, final]))
    act = np.asarray(ep["actions"])
    g.create_dataset("actions", data=act.astype(np.int64 if act.ndim == 1 else np.float32))
    g.create_dataset("rewards", data=np.asarray(ep["rewards"], np.float32))
    g.create_dataset("terminations", data=np.asarray(ep["terminals"], bool))
    truncations = np.array(ep["timeouts"], bool)
    if t and not (truncations[-1] or bool(np.asarray(ep["terminals"])[-1])):
        truncations[-1] = True  # Minari's collector never ends an episode unflagged
    g.create_dataset("truncations", data=truncations)
    for key, arr in ep.items():
        if key in ("observations", "actions", "rewards", "terminals", "timeouts",
                   "next_observations"):
            continue
        arr = np.asarray(arr)
        name = key if key.startswith("infos/") else f"infos/{key}"
        # row 0 is the reset's info, which the store does not keep: zeros
        g.create_dataset(name, data=np.concatenate([np.zeros_like(arr[:1]), arr]))
    for key, values in store.episode_extras.items():
        g.attrs[_EP_ATTR + key] = np.asarray(values[i])
