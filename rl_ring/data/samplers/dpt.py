"""In-context datasets with optimal-action labels, for the Decision-Pretrained Transformer.

A row is ``context_steps`` steps of one *group* of episodes (one task: the episodes that
share ``episode_extras[group_key]``, ``task_id`` by default; ``history_id`` keeps a learning
history on its own). Step ``j`` is two tokens (:func:`~rl_ring.data.tokens.dpt_layout`):

- TRANSITION: one transition ``(s, a, r, s', ended)`` of the group seen before the query
  (all zero for the first step of a stream: nothing seen yet);
- STATE: the query state, whose *optimal* action ``store.extras[label_key]`` is the target.

The loss is on every query, so one row trains the prediction after every prefix of its
in-context dataset (0, 1, ..., ``context_steps - 1`` transitions), as DPT does.

Where the in-context dataset comes from (``context``):

- ``"window"`` (default): ``context_steps`` consecutive steps of the group's stream (its
  episodes in store order, or ordered by ``episode_extras[order_key]``), crossing episode
  boundaries. Step ``j``'s transition is the stream's previous step and its query the
  step's own state: exactly the context an agent acting online builds from its own
  transitions (``agents.dpt``). A window starting inside a stream still gets the true
  transition before it. Any logged data works: uniformly random pulls, a learner's history.
- ``"shuffle"``: the DPT paper's i.i.d. in-context datasets: ``context_steps - 1``
  transitions drawn without replacement from the group, in random order, and a query state
  drawn uniformly from the group's states at every step, independent of the transitions.

The next state of a transition is ``observations[t + 1]`` within its episode; at the last
step of an episode (terminated, timed out or cut) it is hidden and ``ended`` is 1, since an
agent acting online never sees the state an episode ends in (the environment resets).
Groups with fewer than ``context_steps`` steps are not sampled (an error if none is long
enough).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from rl_ring.data.batch import TokenBatch
from rl_ring.data.normalize import Normalization
from rl_ring.data.samplers.base import (
    Sampler,
    check_choice,
    check_positive,
    label_array,
    ranges,
)
from rl_ring.data.store import EpisodeStore
from rl_ring.data.tokens import TokenLayout, dpt_layout


@dataclass(frozen=True)
class DPTOptions:
    """What a DPT in-context dataset is made of (the DPT agent's sampling options)."""

    context_steps: int = 256
    """Steps per row: query states, each after the transitions before it (2 tokens a step)."""
    context: str = "window"
    """In-context data: a "window" of a group's stream or a "shuffle"d draw from the group."""
    group_key: str = "task_id"
    """Per-episode extra naming the task (group) a row's transitions all come from."""
    order_key: str = ""
    """Per-episode extra ordering a group's episodes ("" = store order)."""
    label_key: str = "optimal_actions"
    """Per-step extra holding the optimal action of each observation (the targets)."""


@dataclass(frozen=True)
class DPTSamplerConfig(DPTOptions):
    """Options of the DPT sampler: the in-context dataset's, then the stream's."""

    batch_size: int = 8
    """Rows of the global batch."""
    pad_multiple: int = 1
    """Row length is padded to a multiple of this (sequence-mesh size x chunking)."""
    seed: int = 0
    """Seed of the batch stream."""


class DPTPlan(NamedTuple):
    """The store rows of this host's steps, ``[rows, context_steps]`` each."""

    query: np.ndarray
    """Store row of each step's query state."""
    prev: np.ndarray
    """Store row of each step's transition, -1 for none."""


def draw_windows(rng: np.random.Generator, groups: np.ndarray, group_steps: np.ndarray,
                 batch_size: int, k: int) -> dict[str, np.ndarray]:
    """The "window" draw of a batch: a group (stream) of ``groups`` (those at least ``k``
    steps long) per row, then a start inside it (``group``, ``start``). Shared by every
    DPT sampler, so equal seeds draw equal windows whatever the data's storage."""
    g = groups[rng.integers(0, len(groups), size=batch_size)]
    return {"group": g, "start": rng.integers(0, group_steps[g] - k + 1)}


class DPTSampler(Sampler):
    """Labelled in-context datasets as TokenBatches (see the module docstring)."""

    name = "dpt"

    def __init__(
        self,
        store: EpisodeStore,
        config: DPTSamplerConfig | None = None,
        *,
        norm: Normalization | None = None,
        host_id: int = 0,
        num_hosts: int = 1,
    ) -> None:
        cfg = config or DPTSamplerConfig()
        check_positive("context_steps", cfg.context_steps)
        check_choice("context", cfg.context, ("window", "shuffle"))
        keys = [cfg.group_key] + ([cfg.order_key] if cfg.order_key else [])
        for key in keys:
            if key not in store.episode_extras:
                raise ValueError(
                    f"DPTSampler: the store has no episode_extras[{key!r}] (group_key="
                    f"{cfg.group_key!r}, order_key={cfg.order_key!r}); its episode extras are "
                    f"{sorted(store.episode_extras)}"
                )
        self.labels = label_array(store, cfg.label_key)
        group = np.asarray(store.episode_extras[cfg.group_key]).reshape(-1)
        order = (np.asarray(store.episode_extras[cfg.order_key]).reshape(-1) if cfg.order_key
                 else np.arange(store.num_episodes))
        eps = np.lexsort((order, group))
        lengths = store.episode_lengths[eps]
        # The streams: store rows of every group, episode after episode.
        self.stream = ranges(store.episode_starts[eps], lengths)
        _, code = np.unique(group[eps], return_inverse=True)
        self.group_steps = np.bincount(code, weights=lengths).astype(np.int64)
        self.group_start = np.concatenate([[0], np.cumsum(self.group_steps)[:-1]]).astype(np.int64)
        k = cfg.context_steps
        self._groups = np.flatnonzero(self.group_steps >= k)
        if self._groups.size == 0:
            raise ValueError(
                f"DPTSampler: context_steps={k} is longer than every group of episodes "
                f"(by {cfg.group_key!r}; the largest has {int(self.group_steps.max(initial=0))} "
                "steps)"
            )
        n = store.num_steps
        ep_first = np.repeat(store.episode_starts[:-1], store.episode_lengths)
        self.timestep = (np.arange(n) - ep_first).astype(np.int32)
        self.is_last = np.zeros(n, bool)
        self.is_last[store.episode_starts[1:][store.episode_lengths > 0] - 1] = True

        norm = norm or Normalization.from_store(store)
        layout = dpt_layout(store.obs_dim, store.act_dim, store.discrete_actions, norm)
        super().__init__(store, cfg, layout, raw_steps=k, host_id=host_id, num_hosts=num_hosts)

    @property
    def num_groups(self) -> int:
        return len(self.group_steps)

    def _draw(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        b, k = self.batch_size, self.config.context_steps
        if self.config.context == "window":
            return draw_windows(rng, self._groups, self.group_steps, b, k)
        g = self._groups[rng.integers(0, len(self._groups), size=b)]
        steps = self.group_steps[g]
        trans = np.stack([rng.choice(int(s), size=k - 1, replace=False) for s in steps])
        query = rng.integers(0, steps[:, None], size=(b, k))
        return {"group": g, "trans": trans.reshape(b, k - 1), "query": query}

    def _plan(self, specs: dict[str, np.ndarray], rows: np.ndarray) -> DPTPlan:
        k = self.config.context_steps
        first = self.group_start[specs["group"][rows]][:, None]
        if self.config.context == "window":
            pos = first + specs["start"][rows][:, None] + np.arange(k)
            prev = np.where(pos > first, self.stream[np.maximum(pos - 1, 0)], -1)
            return DPTPlan(query=self.stream[pos], prev=prev)
        trans = self.stream[first + specs["trans"][rows]]
        prev = np.concatenate([np.full((len(rows), 1), -1), trans], axis=1)
        return DPTPlan(query=self.stream[first + specs["query"][rows]], prev=prev)

    def assemble(self, plan: DPTPlan) -> TokenBatch:
        """The planned steps as a TokenBatch (:func:`assemble_dpt` over the store)."""
        store = self.store
        return assemble_dpt(self.layout, self.seq_len, plan, observations=store.observations,
                            actions=store.actions, rewards=store.rewards, labels=self.labels,
                            timestep=self.timestep, is_last=self.is_last)


def assemble_dpt(layout: TokenLayout, seq_len: int, plan: DPTPlan, *, observations,
                 actions: np.ndarray, rewards: np.ndarray, labels: np.ndarray,
                 timestep: np.ndarray, is_last: np.ndarray) -> TokenBatch:
    """The planned steps as a TokenBatch: per step TRANSITION then STATE, the loss (and the
    optimal action as target) on every STATE.

    The plan's rows index the per-step arrays (``[N, ...]`` each): a store's, or the steps
    an XLand sampler read for one batch. ``observations[idx]`` gives ``[len(idx), obs_dim]``
    (an array or a view decoding on the fly); ``labels`` the optimal actions, ``timestep``
    the step within its episode, ``is_last`` whether the step ends its episode (its next
    state, row ``p + 1``, is then hidden).
    """
    q, prev = np.asarray(plan.query), np.asarray(plan.prev)
    rows, k = q.shape
    t_len, feat, tps = seq_len, layout.feature_dim, layout.tokens_per_step
    n = len(actions)
    has = prev >= 0
    p = np.maximum(prev, 0)
    obs = observations
    if layout.discrete_actions:
        prev_action = np.where(has, actions[p], -1)
    else:
        prev_action = actions[p] * has[..., None]
    fields = dict(
        obs=np.asarray(obs[q.reshape(-1)], np.float32).reshape(rows, k, -1),
        prev_obs=np.asarray(obs[p.reshape(-1)], np.float32).reshape(rows, k, -1),
        prev_action=prev_action,
        prev_reward=np.where(has, rewards[p], 0.0),
        # Row p + 1 is the next state unless p ended its episode (then it is hidden).
        prev_next_obs=np.asarray(obs[np.minimum(p + 1, n - 1).reshape(-1)],
                                 np.float32).reshape(rows, k, -1),
        prev_ended=is_last[p].astype(np.float32),
        has_prev=has.astype(np.float32),
    )

    def view(arr: np.ndarray) -> np.ndarray:
        return arr[:, : k * tps].reshape(rows, k, tps, *arr.shape[2:])

    values = np.zeros((rows, t_len, feat), np.float32)
    layout.encode_steps(out=view(values), **fields)
    kind = np.zeros((rows, t_len), np.int32)
    view(kind)[...] = np.asarray(layout.kinds, np.int32)
    timesteps = np.zeros((rows, t_len), np.int32)
    view(timesteps)[...] = timestep[q][..., None]
    valid = np.zeros((rows, t_len), bool)
    view(valid)[...] = True
    pi = layout.predict_index
    loss_mask = np.zeros((rows, t_len), np.float32)
    view(loss_mask)[..., pi] = 1.0
    target_ids = np.zeros((rows, t_len), np.int32)
    if layout.discrete_actions:
        target = np.zeros((rows, t_len, 0), np.float32)
        view(target_ids)[..., pi] = labels[q]
    else:
        target = np.zeros((rows, t_len, layout.act_dim), np.float32)
        view(target)[..., pi, :] = labels[q]
    return TokenBatch(
        kind=kind,
        values=values,
        positions=np.tile(np.arange(t_len, dtype=np.int32), (rows, 1)),
        timesteps=timesteps,
        segment_ids=valid.astype(np.int32),
        valid=valid,
        target=target,
        target_ids=target_ids,
        loss_mask=loss_mask,
        tokens_per_step=tps,
        discrete_actions=layout.discrete_actions,
    )
