"""Learning-history windows for Algorithm Distillation (AD).

The episodes of one learning history (``episode_extras[history_key]``), ordered by
``episode_extras[order_key]``, form one stream of steps. A row is a window of
``window_steps`` consecutive steps of a stream, crossing episode boundaries freely; it
can span thousands of episodes. Each step is one STEP token holding the observation, the
previous action and previous reward *of the stream* (so the first step of an episode sees
the last action and reward of the episode before it, exactly what an agent evaluated
across consecutive episodes has seen), and, by default, a flag that is 1 on an episode's
first step. Before the first step of a history there is no previous action (all-zero
one-hot or vector) and the previous reward is 0. A window starting inside a stream still
gets the true previous action and reward from before the window.

Window starts (``align``):

- ``"step"`` (default): uniform over every start that leaves a full window inside the
  history, so every step of a long history is trained on with (almost) every amount of
  preceding in-context experience.
- ``"episode"``: only episode starts, so a row always begins with a whole episode, as an
  evaluation run does.

Histories shorter than ``window_steps`` are not sampled (an error if none is long enough).

Loss weights (``weight_key``): a per-episode extra of non-negative weights multiplies the
loss of every step of its episode (the loss is the weighted mean over a batch's targets).
A learning history's phases need not weigh what their lengths say: a source that finds a
grid's goal in 10 of 256 episodes gives the search under 5% of the targets of any window.

Target labels (``label_key``): a per-step extra of actions replaces the logged actions as
the targets, the tokens unchanged. A source that takes a random action now and then records
beside it the action it had chosen (``intended_actions``); trained on those, the model sees
the states the noise led to and learns how its source went on from them, without learning
to take the random actions (noise injected into the demonstrator, as in DART).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rl_ring.data.normalize import Normalization
from rl_ring.data.samplers.base import (
    Sampler,
    StepPlan,
    check_choice,
    check_positive,
    label_array,
    ranges,
)
from rl_ring.data.store import EpisodeStore
from rl_ring.data.tokens import ad_layout


@dataclass(frozen=True)
class HistoryOptions:
    """What a learning-history window is made of (the AD agent's sampling options)."""

    window_steps: int = 1000
    """Steps (= tokens) per window, across episode boundaries."""
    align: str = "step"
    """Window starts at any "step" or only at an "episode" start."""
    new_episode_flag: bool = True
    """STEP tokens carry a feature that is 1 on the first step of an episode."""
    step_prev_obs: bool = False
    """STEP tokens also carry the previous step's observation, so that a transition
    (s, a, r, s') sits in one token (``TokenLayout.step_prev_obs``). Where an episode ends
    on arrival (Key-to-Door's door), the cell arrived at is no token's observation; this
    puts the cell left and the move made into the next episode's first token."""
    history_key: str = "history_id"
    """Per-episode extra naming the learning history an episode belongs to."""
    order_key: str = "episode_in_history"
    """Per-episode extra ordering the episodes within their history."""
    weight_key: str = ""
    """Per-episode extra of loss weights (finite, >= 0) for every step of the episode
    ('' = every target weighs 1)."""
    label_key: str = ""
    """Per-step extra whose actions are the targets ('' = the actions taken). The tokens
    still carry the actions taken: a source whose noise replaced its chosen action is
    imitated in what it chose, in the states its noise led to."""


@dataclass(frozen=True)
class HistoryConfig(HistoryOptions):
    """Options of the learning-history (AD) sampler: the windows', then the stream's."""

    batch_size: int = 8
    """Rows (windows) of the global batch."""
    pad_multiple: int = 1
    """Row length is padded to a multiple of this (sequence-mesh size x chunking)."""
    seed: int = 0
    """Seed of the batch stream."""


class HistorySampler(Sampler):
    """Windows of learning histories as TokenBatches (see the module docstring)."""

    name = "history"

    def __init__(
        self,
        store: EpisodeStore,
        config: HistoryConfig | None = None,
        *,
        norm: Normalization | None = None,
        host_id: int = 0,
        num_hosts: int = 1,
    ) -> None:
        cfg = config or HistoryConfig()
        check_positive("window_steps", cfg.window_steps)
        check_choice("align", cfg.align, ("step", "episode"))
        for key in (cfg.history_key, cfg.order_key):
            if key not in store.episode_extras:
                raise ValueError(
                    f"HistorySampler: the store has no episode_extras[{key!r}]; Algorithm "
                    f"Distillation needs learning histories (history_key={cfg.history_key!r}, "
                    f"order_key={cfg.order_key!r}); the store's episode extras are "
                    f"{sorted(store.episode_extras)}"
                )
        self._step_weight = None
        if cfg.weight_key:
            self._step_weight = step_weights(store, cfg.weight_key)
        if cfg.label_key:
            self.target_actions = label_array(
                store, cfg.label_key,
                hint="label_key names a per-step extra of target actions, such as the "
                     "'intended_actions' the grid sources record beside their noisy actions")
        hist = np.asarray(store.episode_extras[cfg.history_key]).reshape(-1)
        order = np.asarray(store.episode_extras[cfg.order_key]).reshape(-1)
        sorted_eps = np.lexsort((order, hist))
        same = (hist[sorted_eps][1:] == hist[sorted_eps][:-1]) & (
            order[sorted_eps][1:] == order[sorted_eps][:-1]
        )
        if same.any():
            i = sorted_eps[1:][same][0]
            raise ValueError(
                f"HistorySampler: two episodes of history {hist[i].item()!r} have the same "
                f"{cfg.order_key} {order[i].item()!r}"
            )
        lengths = store.episode_lengths[sorted_eps]
        # The stream: store rows of every history, episode after episode.
        self.stream = ranges(store.episode_starts[sorted_eps], lengths)
        self.stream_t = ranges(np.zeros_like(lengths), lengths).astype(np.int32)
        _, hist_code = np.unique(hist[sorted_eps], return_inverse=True)
        steps_per_hist = np.bincount(hist_code, weights=lengths).astype(np.int64)
        self.hist_start = np.concatenate([[0], np.cumsum(steps_per_hist)[:-1]]).astype(np.int64)
        self.hist_steps = steps_per_hist

        w = cfg.window_steps
        long_enough = np.flatnonzero(steps_per_hist >= w)
        if long_enough.size == 0:
            raise ValueError(
                f"window_steps={w} is longer than every learning history (the longest has "
                f"{int(steps_per_hist.max(initial=0))} steps)"
            )
        if cfg.align == "step":
            self._hists = long_enough
            self._cum = np.cumsum(steps_per_hist[long_enough] - w + 1)
            self._pool = None
        else:
            ep_pos = np.concatenate([[0], np.cumsum(lengths)[:-1]])[lengths > 0]
            ep_hist = hist_code[lengths > 0]
            fits = ep_pos - self.hist_start[ep_hist] <= steps_per_hist[ep_hist] - w
            self._pool = ep_pos[fits]
            self._pool_hist = ep_hist[fits]

        norm = norm or Normalization.from_store(store)
        layout = ad_layout(
            store.obs_dim,
            store.act_dim,
            store.discrete_actions,
            norm,
            new_episode_flag=cfg.new_episode_flag,
            step_prev_obs=cfg.step_prev_obs,
        )
        super().__init__(store, cfg, layout, raw_steps=w, host_id=host_id, num_hosts=num_hosts)

    @property
    def num_histories(self) -> int:
        return len(self.hist_steps)

    def _draw(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        b, w = self.batch_size, self.config.window_steps
        if self._pool is None:
            u = rng.integers(0, int(self._cum[-1]), size=b)
            j = np.searchsorted(self._cum, u, side="right")
            first = self._cum[j] - (self.hist_steps[self._hists[j]] - w + 1)
            hist = self._hists[j]
            start = self.hist_start[hist] + (u - first)
        else:
            j = rng.integers(0, len(self._pool), size=b)
            hist, start = self._pool_hist[j], self._pool[j]
        return {"history": hist, "start": start}

    def _plan(self, specs: dict[str, np.ndarray], rows: np.ndarray) -> StepPlan:
        w = self.config.window_steps
        start = specs["start"][rows]
        pos = ranges(start, np.full(len(rows), w))
        first_of_hist = np.repeat(self.hist_start[specs["history"][rows]], w)
        has_prev = pos > first_of_hist
        prev_idx = np.where(has_prev, self.stream[np.maximum(pos - 1, 0)], -1)
        local_t = self.stream_t[pos]
        return StepPlan(
            row_steps=np.full(len(rows), w),
            idx=self.stream[pos],
            timesteps=local_t,
            segment=np.ones(pos.size, np.int32),
            loss=(np.ones(pos.size, bool) if self._step_weight is None
                  else self._step_weight[self.stream[pos]]),
            prev_idx=prev_idx,
            new_episode=(local_t == 0).astype(np.float32),
        )


def step_weights(store: EpisodeStore, key: str) -> np.ndarray:
    """``[steps]`` float32: each store row's weight, its episode's ``episode_extras[key]``.

    Raises:
        ValueError: the extra is missing, not one number per episode, negative or not finite.
    """
    if key not in store.episode_extras:
        raise ValueError(f"HistorySampler: weight_key={key!r} is not an episode extra of the "
                         f"store; its episode extras are {sorted(store.episode_extras)}")
    w = np.asarray(store.episode_extras[key], np.float64)
    if w.shape != (store.num_episodes,):
        raise ValueError(f"HistorySampler: episode_extras[{key!r}] has shape {w.shape}, "
                         f"expected one weight per episode ({store.num_episodes},)")
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"HistorySampler: episode_extras[{key!r}] must be finite and >= 0; "
                         f"episode {i} has {float(w[i])}")
    return np.repeat(w, store.episode_lengths).astype(np.float32)
