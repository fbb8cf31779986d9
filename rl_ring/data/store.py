"""EpisodeStore: the one in-memory format every reader produces and every sampler consumes.

Episodes are stored back to back in flat per-step arrays; ``episode_starts`` holds the
``num_episodes + 1`` offsets, so episode ``i`` is rows ``episode_starts[i]:episode_starts[i+1]``.
Row ``t`` of an episode is one transition: the agent saw ``observations[t]``, took
``actions[t]``, received ``rewards[t]``; ``terminals[t]`` / ``timeouts[t]`` say whether the
episode ended after that step by termination or by time limit.

Saved to a directory of ``.npy`` files plus ``store.json``; loaded with memory-mapping, so a
dataset larger than RAM is not read whole.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rl_ring.io import atomic_output, jsonable

STORE_FORMAT = "rl_ring.EpisodeStore"
STORE_VERSION = 1
_CORE = ("observations", "actions", "rewards", "terminals", "timeouts")


@dataclass
class EpisodeStore:
    """Episodes as flat numpy arrays with episode boundaries.

    Attributes:
        observations: ``[N, *obs_shape]`` float32.
        actions: ``[N, act_dim]`` float32 for continuous actions, ``[N]`` int64 for discrete.
        rewards: ``[N]`` float32.
        terminals: ``[N]`` bool, the episode terminated after this step.
        timeouts: ``[N]`` bool, the episode was cut by a time limit after this step.
        episode_starts: ``[E + 1]`` int64 offsets, starting at 0 and ending at N.
        extras: per-step arrays ``[N, ...]`` (e.g. ``physics``, ``next_observations``,
            ``infos/qpos``).
        episode_extras: per-episode arrays ``[E, ...]`` (e.g. ``task_id``, ``history_id``,
            ``truncated``: the episode ended with neither terminal nor timeout).
        metadata: JSON-serialisable facts (``env_id``, ``source_format``, ``action_space``
            as ``{"type": "discrete", "n": 5}`` or ``{"type": "box", "low": [...],
            "high": [...]}``, ``observation_space`` likewise, the reader's notes).
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    episode_starts: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    episode_extras: dict[str, np.ndarray] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_episodes(
        cls,
        episodes: list[dict[str, np.ndarray]],
        *,
        episode_extras: dict[str, np.ndarray | list] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> EpisodeStore:
        """Builds a store from a list of per-episode dicts.

        Each dict holds ``observations``, ``actions``, ``rewards`` and optionally
        ``terminals`` / ``timeouts`` (default: all False) and any per-step extras, all with the
        same leading length. Every episode must carry the same keys.
        """
        if not episodes:
            raise ValueError("from_episodes: got no episodes")
        keys = set(episodes[0])
        for i, ep in enumerate(episodes):
            if set(ep) != keys:
                raise ValueError(
                    f"from_episodes: episode {i} has keys {sorted(ep)}, "
                    f"episode 0 has {sorted(keys)}"
                )
        lengths = [len(ep["rewards"]) for ep in episodes]
        starts = np.zeros(len(episodes) + 1, dtype=np.int64)
        starts[1:] = np.cumsum(lengths)

        def cat(key, default_dtype=None):
            if key in keys:
                return np.concatenate([np.asarray(ep[key]) for ep in episodes], axis=0)
            return np.zeros(int(starts[-1]), dtype=default_dtype)

        extras = {k: cat(k) for k in sorted(keys - set(_CORE))}
        ep_extras = {k: np.asarray(v) for k, v in (episode_extras or {}).items()}
        return cls(
            observations=cat("observations").astype(np.float32, copy=False),
            actions=_as_actions(cat("actions")),
            rewards=cat("rewards").astype(np.float32, copy=False).reshape(-1),
            terminals=cat("terminals", bool).astype(bool, copy=False).reshape(-1),
            timeouts=cat("timeouts", bool).astype(bool, copy=False).reshape(-1),
            episode_starts=starts,
            extras=extras,
            episode_extras=ep_extras,
            metadata=dict(metadata or {}),
        )

    # ------------------------------------------------------------------ views
    @property
    def num_episodes(self) -> int:
        return len(self.episode_starts) - 1

    @property
    def num_steps(self) -> int:
        return int(self.episode_starts[-1])

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self.episode_starts)

    @property
    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of each episode, ``[E]`` float64."""
        csum = np.concatenate([[0.0], np.cumsum(self.rewards, dtype=np.float64)])
        return csum[self.episode_starts[1:]] - csum[self.episode_starts[:-1]]

    @property
    def discrete_actions(self) -> bool:
        return self.actions.ndim == 1

    @property
    def obs_dim(self) -> int:
        return int(np.prod(self.observations.shape[1:]))

    @property
    def act_dim(self) -> int:
        """Action vector size, or the number of discrete actions."""
        if self.discrete_actions:
            space = self.metadata.get("action_space", {})
            if "n" in space:
                return int(space["n"])
            return int(self.actions.max()) + 1 if len(self.actions) else 0
        return int(self.actions.shape[1])

    def episode(self, i: int) -> dict[str, np.ndarray]:
        """Per-step arrays of episode ``i`` (views, not copies)."""
        if not -self.num_episodes <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range for a store of {self.num_episodes}")
        i %= self.num_episodes
        s, e = int(self.episode_starts[i]), int(self.episode_starts[i + 1])
        out = {k: getattr(self, k)[s:e] for k in _CORE}
        out.update({k: v[s:e] for k, v in self.extras.items()})
        return out

    def select(self, indices: np.ndarray | list[int]) -> EpisodeStore:
        """A new store holding the given episodes, in the given order (copies)."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            raise ValueError("select: no episodes selected")
        eps = [self.episode(int(i)) for i in idx]
        return EpisodeStore.from_episodes(
            eps,
            episode_extras={k: v[idx] for k, v in self.episode_extras.items()},
            metadata=self.metadata,
        )

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Checks shapes and boundaries; raises ValueError naming the array."""
        starts = np.asarray(self.episode_starts)
        if starts.ndim != 1 or len(starts) < 1 or starts[0] != 0:
            raise ValueError(
                f"EpisodeStore: episode_starts must be 1-D starting at 0, got {starts[:5]}"
            )
        if len(starts) > 1 and np.any(np.diff(starts) < 0):
            raise ValueError("EpisodeStore: episode_starts must be non-decreasing")
        n = int(starts[-1])
        for name in _CORE:
            arr = getattr(self, name)
            if len(arr) != n:
                raise ValueError(
                    f"EpisodeStore: {name} has {len(arr)} rows but episode_starts ends at {n}"
                )
        for name, arr in self.extras.items():
            if len(arr) != n:
                raise ValueError(
                    f"EpisodeStore: extras[{name!r}] has {len(arr)} rows, expected {n}"
                )
        e = len(starts) - 1
        for name, arr in self.episode_extras.items():
            if len(arr) != e:
                raise ValueError(
                    f"EpisodeStore: episode_extras[{name!r}] has {len(arr)} rows, "
                    f"expected {e} episodes"
                )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Writes the store to directory ``path`` atomically (temporary dir, then rename).

        ``path`` must be new or empty unless ``overwrite``; then only the files of the store
        already there (its ``store.json`` and the arrays it lists) are replaced, other files
        are kept.
        """
        path = Path(path)
        with atomic_output(path, directory=True, overwrite=overwrite, owned=store_files,
                           what="an EpisodeStore") as tmp:
            arrays: dict[str, str] = {}

            def put(key: str, arr: np.ndarray) -> None:
                fname = key.replace("/", "__") + ".npy"
                np.save(tmp / fname, np.ascontiguousarray(arr), allow_pickle=False)
                arrays[key] = fname

            for name in (*_CORE, "episode_starts"):
                put(name, getattr(self, name))
            for k, v in self.extras.items():
                put(f"extras/{k}", v)
            for k, v in self.episode_extras.items():
                put(f"episode_extras/{k}", v)
            manifest = {
                "format": STORE_FORMAT,
                "version": STORE_VERSION,
                "num_episodes": self.num_episodes,
                "num_steps": self.num_steps,
                "arrays": arrays,
                "metadata": self.metadata,
            }
            (tmp / "store.json").write_text(json.dumps(jsonable(manifest), indent=1))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, mmap: bool = True) -> EpisodeStore:
        """Loads a store saved by :meth:`save`; arrays are memory-mapped unless ``mmap=False``."""
        path = Path(path)
        manifest_path = path / "store.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{path}: not an EpisodeStore directory (no store.json)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{manifest_path}: corrupt manifest ({err})") from None
        if manifest.get("format") != STORE_FORMAT:
            raise ValueError(
                f"{manifest_path}: format is {manifest.get('format')!r}, expected {STORE_FORMAT!r}"
            )
        mode = "r" if mmap else None
        fields: dict[str, Any] = {"extras": {}, "episode_extras": {}}
        for key, fname in manifest["arrays"].items():
            fpath = path / fname
            try:
                arr = np.load(fpath, mmap_mode=mode, allow_pickle=False)
            except (OSError, ValueError) as err:
                raise ValueError(f"{fpath}: cannot read array {key!r} ({err})") from None
            if key.startswith("extras/"):
                fields["extras"][key[len("extras/") :]] = arr
            elif key.startswith("episode_extras/"):
                fields["episode_extras"][key[len("episode_extras/") :]] = arr
            else:
                fields[key] = arr
        missing = [k for k in (*_CORE, "episode_starts") if k not in fields]
        if missing:
            raise ValueError(f"{manifest_path}: missing arrays {missing}")
        fields["episode_starts"] = np.asarray(fields["episode_starts"])
        return cls(metadata=manifest.get("metadata", {}), **fields)

    def __repr__(self) -> str:
        return (
            f"EpisodeStore(episodes={self.num_episodes}, steps={self.num_steps}, "
            f"obs={tuple(self.observations.shape[1:])}, actions="
            f"{'discrete' if self.discrete_actions else tuple(self.actions.shape[1:])}, "
            f"extras={sorted(self.extras)}, episode_extras={sorted(self.episode_extras)})"
        )


def _as_actions(a: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):
        return a.astype(np.int64, copy=False).reshape(len(a))
    return a.astype(np.float32, copy=False).reshape(len(a), -1)


def store_files(path: str | os.PathLike) -> list[str]:
    """The files an EpisodeStore directory consists of: ``store.json`` and the arrays it
    lists (none when the directory holds no readable store)."""
    manifest = Path(path) / "store.json"
    try:
        arrays = json.loads(manifest.read_text()).get("arrays", {})
    except (OSError, ValueError, AttributeError):
        return []
    return ["store.json", *(str(f) for f in arrays.values() if isinstance(f, str))]


def returns_to_go(rewards: np.ndarray, discount: float = 1.0) -> np.ndarray:
    """Return-to-go of one episode: ``rtg[t] = sum_{u >= t} discount**(u-t) * rewards[u]``."""
    r = np.asarray(rewards, dtype=np.float64)
    if discount == 1.0:
        return np.cumsum(r[::-1])[::-1].copy()
    out = np.empty_like(r)
    acc = 0.0
    for t in range(len(r) - 1, -1, -1):
        acc = r[t] + discount * acc
        out[t] = acc
    return out


def _rss_bytes() -> dict[str, int]:
    """Resident memory of this process in bytes: ``total``, ``anon`` (heap) and ``file``
    (mapped file pages, which the kernel can drop and re-read); zeros where ``/proc`` is
    unavailable."""
    out = {"total": 0, "anon": 0, "file": 0}
    names = {"VmRSS": "total", "RssAnon": "anon", "RssFile": "file"}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in names:
                    out[names[key]] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def memory_probe(
    path: str | os.PathLike, *, batch: int = 64, window: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Resident memory of a memory-mapped store against the same store loaded into RAM.

    Loads the store at ``path`` memory-mapped and copies ``batch`` random windows of
    ``window`` rows (observations, actions, rewards) as a sampler would; then loads it fully
    into memory. Each of the two is measured in a fresh Python process (resident-memory
    growth, MiB), so that neither sees pages this process, or the other measurement, freed
    and its allocator kept; ``*_file_mib`` is the part made of mapped file pages
    (reclaimable page cache), the rest is heap. The kernel maps file pages in blocks (up to
    2 MiB here), so touching a window makes more than the window's bytes resident.

    Returns:
        ``store_mib`` (bytes of all arrays), ``mmap_load_mib``, ``mmap_touch_mib`` (growth
        after touching the batch, on top of the load) and its ``mmap_touch_file_mib`` part,
        ``batch_mib`` (bytes copied), and ``ram_load_mib`` (growth when loaded with
        ``mmap=False``).

    Raises:
        RuntimeError: a measuring process failed (its error output quoted).
    """
    args = {"path": str(path), "batch": batch, "window": window, "seed": seed}
    return {**_in_child("mmap", args), **_in_child("ram", args)}


def _in_child(stage: str, args: dict[str, Any]) -> dict[str, float]:
    """:func:`_probe_stage` run in a fresh interpreter; its JSON result."""
    import subprocess
    import sys

    code = ("import json, sys; from rl_ring.data.store import _probe_stage; "
            f"print(json.dumps(_probe_stage({stage!r}, **json.loads(sys.argv[1]))))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run([sys.executable, "-c", code, json.dumps(args)], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"memory_probe of {args['path']}: the {stage} measurement failed "
                           f"(exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _probe_stage(stage: str, *, path: str, batch: int, window: int, seed: int
                 ) -> dict[str, float]:
    """One measurement of :func:`memory_probe` in this process: ``"mmap"`` (load mapped,
    touch a batch) or ``"ram"`` (a plain load)."""
    mib = 1 << 20
    r0 = _rss_bytes()
    if stage == "ram":
        ram = EpisodeStore.load(path, mmap=False)
        grown = (_rss_bytes()["total"] - r0["total"]) / mib
        del ram
        return {"ram_load_mib": grown}
    store = EpisodeStore.load(path, mmap=True)
    r1 = _rss_bytes()
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, max(1, store.num_steps - window), size=batch)
    copied = 0
    for s in starts:
        for arr in (store.observations, store.actions, store.rewards):
            copied += np.array(arr[s : s + window]).nbytes
    r2 = _rss_bytes()
    total = sum(getattr(store, k).nbytes for k in _CORE)
    total += sum(v.nbytes for v in store.extras.values())
    return {
        "store_mib": total / mib,
        "mmap_load_mib": (r1["total"] - r0["total"]) / mib,
        "mmap_touch_mib": (r2["total"] - r1["total"]) / mib,
        "mmap_touch_file_mib": (r2["file"] - r1["file"]) / mib,
        "batch_mib": copied / mib,
    }
