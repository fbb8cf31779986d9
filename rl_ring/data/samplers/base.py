"""What every sampler shares: seeded draws per batch, host shards, assembly into a TokenBatch.

A sampler's batch number ``step`` is a pure function of ``(seed, step)``: the *global*
batch's row specifications (which episodes, which windows) are drawn from
``np.random.default_rng([seed, step])``, which is cheap, and each host then materialises
only its own contiguous slice of rows, which is the expensive part. So

- the same seed gives the same stream of batches, on any machine;
- hosts ``0..num_hosts-1`` receive disjoint row slices whose concatenation, in host order,
  is exactly the batch a single-host sampler produces for the same global batch size;
- the sampler's state is one integer (the next ``step``), so a resumed run continues the
  same stream, even with a different number of hosts.

Rows are drawn independently, with replacement across rows and batches (no epochs).
"""

from __future__ import annotations

import dataclasses
import functools
import queue
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from rl_ring.data.batch import TokenBatch, pad_to_multiple
from rl_ring.data.store import EpisodeStore, returns_to_go
from rl_ring.data.tokens import TokenLayout
from rl_ring.io import jsonable

STATE_FORMAT = "rl_ring.SamplerState"


@dataclass
class StepPlan:
    """The steps of the rows one host materialises, flattened row after row.

    Attributes:
        row_steps: ``[R]`` number of steps in each row (the rest of the row is padding).
        idx: ``[S]`` store row of each step.
        timesteps: ``[S]`` environment step within the episode.
        segment: ``[S]`` segment id (1-based) of each step within its row.
        loss: ``[S]`` bool, the step's action is a training target, or float32 weights
            (0: not a target).
        rtg: ``[S]`` float64 raw return-to-go token input, or None when the layout has none.
        done: ``[S]`` float32 completion flag, or None.
        prev_idx: ``[S]`` store row of the previous step of the stream (-1: none), or None.
        new_episode: ``[S]`` bool, first step of an episode, or None.
    """

    row_steps: np.ndarray
    idx: np.ndarray
    timesteps: np.ndarray
    segment: np.ndarray
    loss: np.ndarray
    rtg: np.ndarray | None = None
    done: np.ndarray | None = None
    prev_idx: np.ndarray | None = None
    new_episode: np.ndarray | None = None


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for each pair, without a Python loop."""
    starts = np.asarray(starts, np.int64)
    lengths = np.asarray(lengths, np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    # Each run starts at its own offset; subtract the run's first flat index.
    first = np.cumsum(lengths) - lengths
    return np.arange(total, dtype=np.int64) + np.repeat(starts - first, lengths)


def episode_returns_to_go(store: EpisodeStore) -> np.ndarray:
    """Undiscounted return-to-go of every store row, ``[N]`` float64, via :func:`returns_to_go`."""
    out = np.empty(store.num_steps, np.float64)
    starts = store.episode_starts
    for e in range(store.num_episodes):
        s, t = int(starts[e]), int(starts[e + 1])
        if t > s:
            out[s:t] = returns_to_go(store.rewards[s:t])
    return out


def check_positive(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


class Sampler:
    """Base class: subclasses define ``_draw`` (global row specs) and ``_plan`` (host rows).

    Attributes:
        store: the episodes.
        config: the sampler's frozen config dataclass.
        layout: the token layout batches are encoded with.
        seq_len: tokens per row (a multiple of ``pad_multiple``).
        batch_size: rows of the global batch.
        rows_per_host: rows this host materialises.
        step: number of the next batch :meth:`next_batch` returns.
        target_actions: per store row, the action that row's target is (None: the logged
            action); set by a subclass that trains on labels other than the actions taken.
    """

    name = "sampler"
    target_actions: np.ndarray | None = None

    def __init__(
        self,
        store: EpisodeStore,
        config: Any,
        layout: TokenLayout,
        *,
        raw_steps: int,
        host_id: int = 0,
        num_hosts: int = 1,
    ) -> None:
        check_positive("batch_size", config.batch_size)
        check_positive("pad_multiple", config.pad_multiple)
        check_positive("num_hosts", num_hosts)
        if not isinstance(host_id, int | np.integer) or not 0 <= host_id < num_hosts:
            raise ValueError(f"host_id must be in [0, num_hosts={num_hosts}), got {host_id!r}")
        if config.batch_size % num_hosts:
            raise ValueError(
                f"batch_size={config.batch_size} is not divisible by num_hosts={num_hosts}: "
                "every host must draw the same number of rows"
            )
        if layout.obs_dim != store.obs_dim or layout.act_dim != store.act_dim:
            raise ValueError(
                f"{self.name}: layout has obs_dim={layout.obs_dim}, act_dim={layout.act_dim}; "
                f"the store has {store.obs_dim}, {store.act_dim}"
            )
        if layout.discrete_actions != store.discrete_actions:
            raise ValueError(
                f"{self.name}: layout discrete_actions={layout.discrete_actions} but the store's "
                f"actions are {'discrete' if store.discrete_actions else 'continuous'}"
            )
        self.store = store
        self.config = config
        self.layout = layout
        self.host_id = int(host_id)
        self.num_hosts = int(num_hosts)
        self.batch_size = int(config.batch_size)
        self.rows_per_host = self.batch_size // self.num_hosts
        self.seed = int(config.seed)
        self.seq_len = pad_to_multiple(raw_steps * layout.tokens_per_step, config.pad_multiple)
        self.step = 0

    @property
    def norm(self):
        return self.layout.norm

    @property
    def host_rows(self) -> np.ndarray:
        """Global row numbers this host materialises."""
        lo = self.host_id * self.rows_per_host
        return np.arange(lo, lo + self.rows_per_host)

    # ------------------------------------------------------------------ to override
    def _draw(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Specs of every row of the global batch (arrays with leading axis batch_size)."""
        raise NotImplementedError

    def _plan(self, specs: dict[str, np.ndarray], rows: np.ndarray) -> StepPlan:
        """The steps of the given global rows."""
        raise NotImplementedError

    # ------------------------------------------------------------------ batches
    def specs_at(self, step: int) -> dict[str, np.ndarray]:
        """Row specs of global batch number ``step`` (same on every host)."""
        return self._draw(np.random.default_rng([self.seed, int(step)]))

    def plan_at(self, step: int) -> StepPlan:
        return self._plan(self.specs_at(step), self.host_rows)

    def batch_at(self, step: int) -> TokenBatch:
        """This host's rows of global batch number ``step`` (does not move the stream)."""
        return self.assemble(self.plan_at(step))

    def batch_of(self, specs: dict[str, np.ndarray]) -> TokenBatch:
        """The batch of the windows ``specs`` names, every row (specs as :meth:`specs_at`
        returns them, e.g. ``history`` and absolute stream ``start`` for the history
        samplers): to score a model on chosen windows instead of drawn ones."""
        rows = np.arange(len(next(iter(specs.values()))))
        return self.assemble(self._plan(specs, rows))

    def next_batch(self) -> TokenBatch:
        batch = self.batch_at(self.step)
        self.step += 1
        return batch

    def __iter__(self):
        return self

    def __next__(self) -> TokenBatch:
        return self.next_batch()

    def prefetch(self, depth: int = 2) -> Prefetcher:
        """An iterator computing the next ``depth`` batches in a background thread."""
        return Prefetcher(self, depth)

    # ------------------------------------------------------------------ state
    def state_dict(self, step: int | None = None) -> dict[str, Any]:
        """JSON-serialisable position in the stream (plus what must match on resume)."""
        return {
            "format": STATE_FORMAT,
            "sampler": self.name,
            "step": int(self.step if step is None else step),
            "config": jsonable(dataclasses.asdict(self.config)),
            "store": {"num_episodes": self.store.num_episodes, "num_steps": self.store.num_steps},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues the stream saved by :meth:`state_dict` (on any number of hosts)."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"load_state_dict: format is {state.get('format')!r}, expected {STATE_FORMAT!r}"
            )
        mine = self.state_dict()
        saved = dict(state)
        if isinstance(saved.get("config"), dict):
            # An option added after the state was saved, left at its default, is the stream
            # the state describes.
            defaults = {f.name: f.default for f in dataclasses.fields(self.config)
                        if f.default is not dataclasses.MISSING}
            added = {k: v for k, v in mine["config"].items()
                     if k not in saved["config"] and k in defaults
                     and jsonable(defaults[k]) == v}
            saved["config"] = {**saved["config"], **added}
        for key in ("sampler", "config", "store"):
            if saved.get(key) != mine[key]:
                raise ValueError(
                    f"load_state_dict: saved {key} {saved.get(key)!r} differs from this sampler's "
                    f"{mine[key]!r}; resuming would give a different stream"
                )
        step = state.get("step")
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"load_state_dict: step must be an integer >= 0, got {step!r}")
        self.step = step

    # ------------------------------------------------------------------ assembly
    def assemble(self, plan: StepPlan) -> TokenBatch:
        """Gathers the planned steps from the store and lays them out as a TokenBatch.

        Steps are first placed on a ``[rows, steps]`` grid (row ``r`` holds its steps from
        slot 0); every per-token output is then written through a ``[rows, steps, k, ...]``
        view of its ``[rows, seq_len, ...]`` array, so token payloads are computed in place,
        with no per-row copies.
        """
        layout, store = self.layout, self.store
        k, t_len, feat = layout.tokens_per_step, self.seq_len, layout.feature_dim
        row_steps = np.asarray(plan.row_steps, np.int64)
        rows, s_grid = len(row_steps), int(row_steps.max(initial=0))
        if s_grid * k > t_len:
            raise AssertionError(f"{self.name}: a row of {s_grid * k} tokens exceeds {t_len}")
        row_of = np.repeat(np.arange(rows), row_steps)
        slot = np.arange(len(plan.idx)) - np.repeat(np.cumsum(row_steps) - row_steps, row_steps)
        step_valid = np.zeros((rows, s_grid), bool)
        step_valid[row_of, slot] = True
        full = bool(step_valid.all())

        def grid(x: np.ndarray, fill=0) -> np.ndarray:
            if full:
                return np.asarray(x).reshape(rows, s_grid)
            g = np.full((rows, s_grid), fill, dtype=np.asarray(x).dtype)
            g[row_of, slot] = x
            return g

        idx = grid(plan.idx)  # padding slots read row 0 and are zeroed below
        need = set(layout.required_fields())
        actions = store.actions[idx]
        fields: dict[str, Any] = {"action": actions}
        for name in ("rtg", "done", "new_episode"):
            if name in need:
                fields[name] = grid(getattr(plan, name))
        if "obs" in need:
            obs = np.asarray(store.observations[idx.reshape(-1)], np.float32)
            fields["obs"] = obs.reshape(rows, s_grid, -1)
        if "reward" in need:
            fields["reward"] = store.rewards[idx]
        if "prev_action" in need:
            prev = grid(plan.prev_idx, -1)
            has_prev = prev >= 0
            prev_action = store.actions[prev]
            if layout.discrete_actions:
                prev_action = np.where(has_prev, prev_action, -1)
            else:
                prev_action = prev_action * has_prev[..., None]
            fields["prev_action"] = prev_action
            fields["prev_reward"] = np.where(has_prev, store.rewards[prev], 0.0)
            if "prev_obs" in need:  # row 0 where there is none; has_prev zeroes it
                prev_obs = np.asarray(store.observations[np.maximum(prev, 0).reshape(-1)],
                                      np.float32)
                fields["prev_obs"] = prev_obs.reshape(rows, s_grid, -1)
                fields["has_prev"] = has_prev.astype(np.float32)

        def view(arr: np.ndarray) -> np.ndarray:
            """``[rows, s_grid, k, ...]`` view of the first ``s_grid * k`` tokens of a row."""
            return arr[:, : s_grid * k].reshape(rows, s_grid, k, *arr.shape[2:])

        values = np.zeros((rows, t_len, feat), np.float32)
        layout.encode_steps(out=view(values), **fields)
        loss = grid(plan.loss).astype(np.float32) * step_valid
        pi = layout.predict_index
        kind = np.zeros((rows, t_len), np.int32)
        view(kind)[...] = np.asarray(layout.kinds, np.int32)
        timesteps = np.zeros((rows, t_len), np.int32)
        view(timesteps)[...] = grid(plan.timesteps)[..., None]
        segment_ids = np.zeros((rows, t_len), np.int32)
        view(segment_ids)[...] = grid(plan.segment)[..., None]
        loss_mask = np.zeros((rows, t_len), np.float32)
        view(loss_mask)[..., pi] = loss
        targets = actions if self.target_actions is None else self.target_actions[idx]
        target_ids = np.zeros((rows, t_len), np.int32)
        if layout.discrete_actions:
            target = np.zeros((rows, t_len, 0), np.float32)
            view(target_ids)[..., pi] = np.where(loss > 0, targets, 0)
        else:
            target = np.zeros((rows, t_len, layout.act_dim), np.float32)
            view(target)[..., pi, :] = np.where(loss[..., None] > 0, targets, 0.0)
        valid = np.zeros((rows, t_len), bool)
        view(valid)[...] = step_valid[..., None]
        if not full:
            pad = ~step_valid
            for arr in (values, kind, timesteps, segment_ids):
                view(arr)[pad] = 0
        positions = np.tile(np.arange(t_len, dtype=np.int32), (rows, 1))
        return TokenBatch(
            kind=kind,
            values=values,
            positions=positions,
            timesteps=timesteps,
            segment_ids=segment_ids,
            valid=valid,
            target=target,
            target_ids=target_ids,
            loss_mask=loss_mask,
            tokens_per_step=k,
            discrete_actions=layout.discrete_actions,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.layout!r}, batch={self.rows_per_host}x{self.seq_len}, "
            f"host {self.host_id}/{self.num_hosts}, step={self.step})"
        )


class Prefetcher:
    """Iterates a sampler's batches, computing the next ``depth`` in a background thread.

    Its :meth:`state_dict` is the sampler's state at the next batch *to be returned*, not
    the next one computed, so saving it in a checkpoint loses nothing in flight.
    """

    def __init__(self, sampler: Sampler, depth: int = 2) -> None:
        check_positive("depth", depth)
        self.sampler = sampler
        self.step = sampler.step
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(sampler.step,), daemon=True)
        self._thread.start()

    def _work(self, step: int) -> None:
        while not self._stop.is_set():
            try:
                item: Any = self.sampler.batch_at(step)
            except BaseException as err:  # handed to the consumer, who re-raises it
                item = err
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return
            step += 1

    def __iter__(self):
        return self

    def __next__(self) -> TokenBatch:
        if self._stop.is_set():
            raise StopIteration
        item = self._queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        self.step += 1
        self.sampler.step = self.step
        return item

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict(self.step)

    def close(self) -> None:
        """Stops the worker thread (batches already computed are dropped)."""
        self._stop.set()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()




def sampler_factory(sampler_cls: type, config_cls: type, options: dict[str, Any],
                    store: EpisodeStore, *, norm: Any = None):
    """``make_sampler(batch_size=, seed=, host_id=0, num_hosts=1, pad_multiple=1)``: builds
    ``sampler_cls(store, config_cls(**options, <stream>), norm=norm, ...)`` when the training
    loop knows the stream (a Recipe's ``make_sampler``)."""
    return functools.partial(_build_sampler, sampler_cls, config_cls, dict(options), store, norm)


def _build_sampler(sampler_cls, config_cls, options, store, norm, *, batch_size: int, seed: int,
                   host_id: int = 0, num_hosts: int = 1, pad_multiple: int = 1):
    cfg = config_cls(**options, batch_size=batch_size, seed=seed, pad_multiple=pad_multiple)
    return sampler_cls(store, cfg, norm=norm, host_id=host_id, num_hosts=num_hosts)


#: Why a store lacks the optimal-action labels, by default (the DPT agent's).
DPT_LABELS_HINT = ("the Decision-Pretrained Transformer trains on optimal-action labels, which "
                   "`rl-ring collect` records for envs that know them (bandit, darkroom, "
                   "darkroom-hard, keydoor)")


def label_array(store: EpisodeStore, key: str = "optimal_actions",
                hint: str = DPT_LABELS_HINT) -> np.ndarray:
    """Per-step action labels ``store.extras[key]``, checked against the store's actions:
    ``[N]`` int64 ids in ``[0, act_dim)`` (discrete) or ``[N, act_dim]`` float32.

    Args:
        store: the dataset.
        key: the per-step extra (DPT: ``optimal_actions``; AD's ``label_key``).
        hint: what the error for a missing extra says about where such labels come from.

    Raises:
        ValueError: no such extra (with ``hint``), or a wrong shape or range.
    """
    if key not in store.extras:
        raise ValueError(f"the store has no extras[{key!r}]: {hint}; the store's extras are "
                         f"{sorted(store.extras)}")
    labels = np.asarray(store.extras[key])
    n = store.num_steps
    if store.discrete_actions:
        if labels.shape != (n,) or labels.dtype.kind not in "iu":
            raise ValueError(f"extras[{key!r}] is {labels.dtype}{list(labels.shape)}, expected "
                             f"[{n}] integer action ids")
        if n and (labels.min() < 0 or labels.max() >= store.act_dim):
            raise ValueError(f"extras[{key!r}] spans [{labels.min()}, {labels.max()}], expected "
                             f"action ids in [0, {store.act_dim})")
        return labels.astype(np.int64)
    if labels.shape != (n, store.act_dim):
        raise ValueError(f"extras[{key!r}] has shape {list(labels.shape)}, expected "
                         f"[{n}, {store.act_dim}] like the actions")
    return labels.astype(np.float32)
