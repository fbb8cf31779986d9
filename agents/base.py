"""What every agent shares: the data facts a model is built from, the model and loss, the
sampler plumbing, and the online token encoder that evaluation drives step by step.

An agent is a token layout (``rl_ring.data.tokens``), a sampler that lays episodes out in it
(``rl_ring.data.samplers``), the one shared :class:`~rl_ring.models.TrajectoryTransformer`,
the masked action loss, and an ``act`` rule: the action of a step is read from the model's
prediction at the step's *predict token* (STATE, or STEP for Algorithm Distillation).
Agent modules (``at``, ``dt``, ``bc``, ``ad``) only say which layout and sampler options;
:func:`agent_functions` here gives each its ``make_sampler`` and ``make_model``, and
``agents.run`` turns an agent into the training loop's :class:`~rl_ring.train.recipe.Recipe`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rl_ring.data import samplers
from rl_ring.data.batch import Kind
from rl_ring.data.normalize import Normalization
from rl_ring.data.store import EpisodeStore
from rl_ring.data.tokens import TokenLayout
from rl_ring.models import ModelConfig, TrajectoryTransformer, model_action_loss

DATA_SPEC_FORMAT = "rl_ring.DataSpec"


@dataclass(frozen=True)
class EvalDefaults:
    """How the agent is evaluated unless told otherwise; saved with every checkpoint, so
    ``rl-ring eval --checkpoint`` plays the trained agent the way its experiment did."""

    greedy: bool = True
    """Discrete actions: argmax of the model's prediction (True) or a sample from it."""
    slide_steps: int = 1
    """Steps that slide out of a full context at once (0: one episode of the evaluated env)."""
    context_steps: int = 0
    """Steps of context per evaluation row (0: the context the model was trained on)."""


# ---------------------------------------------------------------------------------- data facts
@dataclass(frozen=True)
class DataSpec:
    """The facts about a dataset that a model is shaped by (saved with checkpoints)."""

    obs_dim: int
    """Size of the flattened observation."""
    act_dim: int
    """Size of the action vector, or the number of discrete actions."""
    discrete_actions: bool
    """Actions are integer ids."""
    action_low: tuple[float, ...] = ()
    """Lower bound of the action box (continuous; () when unknown)."""
    action_high: tuple[float, ...] = ()
    """Upper bound of the action box (continuous; () when unknown)."""
    max_episode_len: int = 0
    """Longest episode in the data (0 when unknown)."""
    max_return: float | None = None
    """Best episode return in the data: the default target of return-conditioned agents."""

    @classmethod
    def from_store(cls, store: EpisodeStore) -> DataSpec:
        """Reads the spec from a store: the declared action box, else the observed range."""
        low: tuple[float, ...] = ()
        high: tuple[float, ...] = ()
        if not store.discrete_actions:
            space = store.metadata.get("action_space") or {}
            if space.get("type") == "box" and "low" in space and "high" in space:
                lo = np.broadcast_to(np.asarray(space["low"], np.float64), (store.act_dim,))
                hi = np.broadcast_to(np.asarray(space["high"], np.float64), (store.act_dim,))
            elif store.num_steps:
                lo = np.min(store.actions, axis=0).astype(np.float64)
                hi = np.max(store.actions, axis=0).astype(np.float64)
            else:
                lo = hi = np.zeros(0)
            # An unbounded or degenerate box cannot be squashed into: leave it unknown.
            if lo.size and np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(hi > lo):
                low, high = tuple(float(x) for x in lo), tuple(float(x) for x in hi)
        lengths = store.episode_lengths
        returns = store.episode_returns
        return cls(
            obs_dim=store.obs_dim,
            act_dim=store.act_dim,
            discrete_actions=store.discrete_actions,
            action_low=low,
            action_high=high,
            max_episode_len=int(lengths.max()) if lengths.size else 0,
            max_return=float(returns.max()) if returns.size else None,
        )

    @classmethod
    def coerce(cls, store_or_spec: EpisodeStore | DataSpec | dict) -> DataSpec:
        """A DataSpec from a store, a DataSpec or its :meth:`to_dict` form."""
        if isinstance(store_or_spec, DataSpec):
            return store_or_spec
        if isinstance(store_or_spec, EpisodeStore):
            return cls.from_store(store_or_spec)
        if isinstance(store_or_spec, dict):
            return cls.from_dict(store_or_spec)
        raise TypeError(
            f"expected an EpisodeStore, a DataSpec or a DataSpec dict, got "
            f"{type(store_or_spec).__name__}"
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["action_low"], d["action_high"] = list(self.action_low), list(self.action_high)
        return {"format": DATA_SPEC_FORMAT, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSpec:
        if d.get("format") != DATA_SPEC_FORMAT:
            raise ValueError(
                f"DataSpec.from_dict: format is {d.get('format')!r}, expected {DATA_SPEC_FORMAT!r}"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in ("obs_dim", "act_dim", "discrete_actions") if n not in d)
        if missing:
            raise ValueError(f"DataSpec.from_dict: missing keys {missing}")
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("action_low", "action_high"):
            kw[k] = tuple(float(x) for x in kw.get(k, ()))
        return cls(**kw)


# ---------------------------------------------------------------------------------- model
def paper_model() -> ModelConfig:
    """The AT and DT papers' D4RL model (AT's Table 5 matches DT's): 3 layers, 1 head, width
    128, ReLU, dropout 0.1, actions squashed into the data's box."""
    return ModelConfig(
        width=128, depth=3, num_heads=1, activation="relu", dropout=0.1, max_timestep=1000,
        squash_actions=True,
    )


def model_config(base: ModelConfig, spec: DataSpec, layout: TokenLayout) -> ModelConfig:
    """The agent's model options completed with the data's shapes and the layout's widths.

    Continuous actions are squashed into the data's action box when ``base.squash_actions``
    is set and the box is known; with no known box the squash is to [-1, 1].
    """
    squash = base.squash_actions and not spec.discrete_actions
    return base.replace(
        obs_dim=spec.obs_dim,
        act_dim=spec.act_dim,
        discrete_actions=spec.discrete_actions,
        token_features=layout.token_features(),
        squash_actions=squash,
        action_low=spec.action_low if squash else (),
        action_high=spec.action_high if squash else (),
    )


# Every agent's training loss: the masked action loss (a library function, so that the
# training loop calls down into rl_ring.models, never back up into agents).
loss_fn = model_action_loss


def spec_and_norm(
    data: EpisodeStore | DataSpec, norm: Normalization | None = None
) -> tuple[DataSpec, Normalization]:
    """The data spec of a store (or a spec), and the normalisation to encode with: ``norm``
    when given, else the store's statistics, else the identity."""
    spec = DataSpec.coerce(data)
    if norm is None:
        if isinstance(data, EpisodeStore):
            norm = Normalization.from_store(data)
        else:
            norm = Normalization.identity(spec.obs_dim)
    return spec, norm


class AgentFunctions(NamedTuple):
    """What :func:`agent_functions` builds for an agent module."""

    make_sampler: Any
    make_model: Any
    sampler_factory: Any
    resolved_model: Any


def agent_functions(config_cls: type, sampler_cls: type, sampler_config_cls: type, make_layout):
    """An agent's ``make_sampler`` and ``make_model``, from its Config class, its sampler (and
    the sampler's config class) and its ``make_layout(cfg, spec, norm)``.

    ``make_sampler(store, cfg, *, batch_size, seed, host_id=0, num_hosts=1, pad_multiple=1,
    norm=None)`` is this host's sampler: the agent's sampling options (the fields its Config
    inherits from the sampler's options class) plus the stream's batch size (global; this
    host gets ``batch_size // num_hosts`` rows), seed and padding.

    ``make_model(cfg, data, *, rngs)`` is the trajectory transformer: ``cfg.model`` shaped by
    the data (an EpisodeStore or a DataSpec) and the agent's layout.
    """

    stream = ("batch_size", "seed", "pad_multiple")

    def sampler_factory(store: EpisodeStore, cfg: Any, *, norm: Normalization | None = None):
        check_agent_config(cfg, config_cls)
        options = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(sampler_config_cls)
                   if f.name not in stream}
        return samplers.sampler_factory(sampler_cls, sampler_config_cls, options, store,
                                        norm=norm)

    def make_sampler(store: EpisodeStore, cfg: Any, *, batch_size: int, seed: int,
                     host_id: int = 0, num_hosts: int = 1, pad_multiple: int = 1,
                     norm: Normalization | None = None):
        return sampler_factory(store, cfg, norm=norm)(
            batch_size=batch_size, seed=seed, host_id=host_id, num_hosts=num_hosts,
            pad_multiple=pad_multiple)

    def resolved_model(cfg: Any, data: EpisodeStore | DataSpec) -> ModelConfig:
        check_agent_config(cfg, config_cls)
        spec = DataSpec.coerce(data)
        # The normalisation does not shape the model.
        return model_config(cfg.model, spec, make_layout(cfg, spec,
                                                         Normalization.identity(spec.obs_dim)))

    def make_model(cfg: Any, data: EpisodeStore | DataSpec, *, rngs: nnx.Rngs):
        return TrajectoryTransformer(resolved_model(cfg, data), rngs=rngs)

    sampler_factory.__doc__ = (f"``make_sampler(**stream)`` building this agent's "
                               f"{sampler_cls.__name__} (a Recipe's sampler factory).")
    make_sampler.__doc__ = f"This host's {sampler_cls.__name__} (see agent_functions)."
    resolved_model.__doc__ = "The model config shaped by the dataset and the agent's layout."
    make_model.__doc__ = "The trajectory transformer for this agent and dataset."
    return AgentFunctions(make_sampler, make_model, sampler_factory, resolved_model)


# ---------------------------------------------------------------------------------- acting
def check_temperature(temperature: float) -> None:
    """Raises ValueError unless the sampling temperature is a finite number > 0."""
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")


def action_from_prediction(
    pred: np.ndarray | jax.Array,
    spec: DataSpec,
    *,
    greedy: bool = True,
    rng: np.random.Generator | None = None,
    temperature: float = 1.0,
) -> np.ndarray:
    """The environment action from the prediction at a predict token.

    Continuous: the predicted mean, clipped to the action box when it is known. Discrete:
    the argmax of the logits (``greedy``) or a sample from the softmax of
    ``logits / temperature`` (below 1 sharper, above 1 flatter than the model's).

    Args:
        pred: ``[N, act_dim]`` predictions of N rows.
        spec: the data spec (action kind and box).
        greedy: discrete only: argmax instead of sampling.
        rng: discrete sampling only.
        temperature: discrete sampling only; > 0.

    Returns:
        ``[N]`` int64 ids or ``[N, act_dim]`` float32 actions.
    """
    pred = np.asarray(pred, np.float64)
    if spec.discrete_actions:
        if greedy:
            return np.argmax(pred, axis=-1).astype(np.int64)
        if rng is None:
            raise ValueError("sampling discrete actions (greedy=False) needs an rng")
        check_temperature(temperature)
        logits = pred / temperature
        logits = logits - logits.max(axis=-1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=-1, keepdims=True)
        u = rng.random((p.shape[0], 1))
        return np.minimum((np.cumsum(p, axis=-1) < u).sum(axis=-1), spec.act_dim - 1).astype(
            np.int64
        )
    out = pred
    if spec.action_low and spec.action_high:
        out = np.clip(out, spec.action_low, spec.action_high)
    return out.astype(np.float32)


@dataclass
class TokenChunk:
    """Tokens to append to N rows' contexts: ``kind [N, k]``, ``values [N, k, F]``,
    ``timesteps [N, k]``."""

    kind: np.ndarray
    values: np.ndarray
    timesteps: np.ndarray

    @property
    def num_tokens(self) -> int:
        return int(self.kind.shape[1])


class OnlineEncoder:
    """Builds N evaluation rows' tokens as an episode unfolds, exactly as the sampler does.

    Each environment step is split at the layout's predict token: :meth:`before_action`
    gives the tokens up to and including it (e.g. RTG, STATE), whose last prediction is the
    action; :meth:`after_action` gives the rest (e.g. ACTION, REWARD) once the outcome is
    known. Per row it tracks the return-to-go (reset to ``target_return`` at each trial, then
    reduced by each reward, as the chain/DT samplers relabel), the previous action and
    reward (carried across episodes, as in an AD learning history), the new-episode flag
    and the timestep, and for TRANSITION tokens the previous observation and whether its
    episode ended there (the transition's next state is the observation of the step that
    follows it, or hidden when its episode ended). The completion flag of a step is 1 when
    the episode ended there with a return of at least the target (AT's "reached the
    target").

    All methods take ``[N, ...]`` arrays and an ``[N]`` bool mask; rows outside the mask are
    left untouched.
    """

    def __init__(self, layout: TokenLayout, num_envs: int, *, target_return: float | None = None):
        needs_rtg = Kind.RTG in layout.kinds
        if needs_rtg and target_return is None:
            raise ValueError(
                f"layout {layout!r} has return-to-go tokens: a target_return is required"
            )
        self.layout = layout
        self.num_envs = int(num_envs)
        self.target_return = None if target_return is None else float(target_return)
        cut = layout.predict_index + 1
        self.before_kinds = layout.kinds[:cut]
        self.after_kinds = layout.kinds[cut:]
        n = self.num_envs
        self.rtg = np.zeros(n, np.float64)
        self.episode_return = np.zeros(n, np.float64)
        self.timestep = np.zeros(n, np.int64)
        self.new_episode = np.ones(n, np.float32)
        if layout.discrete_actions:
            self.prev_action: np.ndarray = np.full(n, -1, np.int64)
        else:
            self.prev_action = np.zeros((n, layout.act_dim), np.float32)
        self.prev_reward = np.zeros(n, np.float64)
        self.prev_obs = np.zeros((n, layout.obs_dim), np.float32)
        self.prev_ended = np.zeros(n, np.float32)
        self.has_prev = np.zeros(n, np.float32)
        self._obs: np.ndarray | None = None

    @property
    def tokens_per_step(self) -> int:
        return self.layout.tokens_per_step

    def begin_trial(self, mask: np.ndarray) -> None:
        """Rows in ``mask`` start a new episode (their earlier context stays)."""
        mask = np.asarray(mask, bool)
        self.rtg[mask] = 0.0 if self.target_return is None else self.target_return
        self.episode_return[mask] = 0.0
        self.timestep[mask] = 0
        self.new_episode[mask] = 1.0

    def before_action(self, obs: np.ndarray, mask: np.ndarray) -> TokenChunk:
        """Tokens of the current step up to the predict token, for observations ``obs``."""
        # A copy: callers reuse their observation buffer (``run_seed`` writes the next
        # step's observations into it before ``after_action``), and this step's observation
        # becomes the next token's previous observation.
        obs = np.array(obs, np.float32).reshape(self.num_envs, -1)
        self._obs = obs
        fields = dict(
            obs=obs,
            rtg=self.rtg,
            prev_action=self.prev_action,
            prev_reward=self.prev_reward,
            new_episode=self.new_episode,
            prev_obs=self.prev_obs,
            prev_next_obs=obs,
            prev_ended=self.prev_ended,
            has_prev=self.has_prev,
        )
        return self._chunk(self.before_kinds, fields)

    def after_action(
        self, action: np.ndarray, reward: np.ndarray, ended: np.ndarray, mask: np.ndarray
    ) -> TokenChunk:
        """Tokens after the predict token for the step just taken, then advances the rows.

        Args:
            action: ``[N]`` ids or ``[N, act_dim]`` actions taken.
            reward: ``[N]`` rewards received.
            ended: ``[N]`` bool, the episode ended with this step (terminated or truncated).
            mask: ``[N]`` bool rows that took a step.
        """
        mask = np.asarray(mask, bool)
        reward = np.asarray(reward, np.float64).reshape(self.num_envs)
        ended = np.asarray(ended, bool).reshape(self.num_envs)
        action = np.asarray(action)
        final_return = self.episode_return + reward
        target = np.inf if self.target_return is None else self.target_return
        done = (ended & (final_return >= target)).astype(np.float32)
        fields = dict(obs=self._obs, action=action, reward=reward, done=done)
        chunk = self._chunk(self.after_kinds, fields)
        # Advance only the rows that stepped.
        self.episode_return[mask] = final_return[mask]
        self.rtg[mask] -= reward[mask]
        self.timestep[mask] += 1
        self.new_episode[mask] = 0.0
        self.prev_action[mask] = action[mask]
        self.prev_reward[mask] = reward[mask]
        self.prev_obs[mask] = self._obs[mask]
        self.prev_ended[mask] = ended[mask]
        self.has_prev[mask] = 1.0
        return chunk

    def _chunk(self, kinds: tuple[Kind, ...], fields: dict[str, Any]) -> TokenChunk:
        n, feat = self.num_envs, self.layout.feature_dim
        values = np.zeros((n, len(kinds), feat), np.float32)
        for i, kind in enumerate(kinds):
            values[:, i] = self.layout.encode_token(kind, **fields)
        kind_arr = np.broadcast_to(np.asarray(kinds, np.int32), (n, len(kinds))).copy()
        timesteps = np.repeat(self.timestep[:, None], len(kinds), axis=1).astype(np.int32)
        return TokenChunk(kind=kind_arr, values=values, timesteps=timesteps)


# ---------------------------------------------------------------------------------- helpers
def check_agent_config(cfg: Any, cls: type) -> None:
    if not isinstance(cfg, cls):
        raise TypeError(f"expected a {cls.__name__}, got {type(cfg).__name__}")


def predict_mask(tokens: dict[str, Any], layout: TokenLayout) -> jnp.ndarray:
    """``[B, T]`` True at the layout's predict tokens (where actions are read)."""
    return jnp.asarray(tokens["kind"]) == int(layout.predict_kind)
