"""Token layouts: how one environment step becomes a few tokens of ``(kind, values)``.

A :class:`TokenLayout` is the single place where observations, actions, rewards,
returns-to-go and completion flags are turned into token payloads. The samplers call
:meth:`TokenLayout.encode_steps` on whole batches of steps; evaluation calls
:meth:`TokenLayout.encode_token` one token at a time as an episode unfolds. Both go
through the same per-kind encoders, with the same :class:`Normalization`, so a model sees
identical tokens in training and at evaluation.

Payload of each kind (columns from 0; the rest of the ``feature_dim`` row is zero):

    RTG     [rtg / return_scale]
    STATE   (obs - obs_mean) / obs_std
    ACTION  one-hot(action) (discrete) or the action vector (continuous)
    REWARD  [reward / reward_scale, d]  (d, the completion flag, only when there is no DONE)
    DONE    [d]
    STEP    [(obs - mean) / std, prev action (one-hot or vector), prev reward / reward_scale,
             new-episode flag (optional), (prev_obs - mean) / std (optional; zero when
             has_prev is 0)]
    TRANSITION  [(prev_obs - mean) / std, prev action, prev reward / reward_scale,
             (prev_next_obs - mean) / std (zero when prev_ended), prev_ended], all zero when
             has_prev is 0 (no transition before the stream's first step)

The action of step ``t`` is predicted at the layout's *predict token* (STATE, or STEP for
Algorithm Distillation). Kinds that may depend on the action (ACTION, REWARD, DONE) must
come after it in the step and RTG before it, so a causal model never sees the answer.
TRANSITION (the Decision-Pretrained Transformer's in-context data) holds a transition seen
*before* the step's state, so it precedes STATE too. The
model must then use a plain causal mask (``tokens_per_step=1`` in ``rl_ring.attention``),
not the block-causal one, since the ACTION token sits in the same step as STATE.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from rl_ring.data.batch import Kind
from rl_ring.data.normalize import Normalization

LAYOUT_FORMAT = "rl_ring.TokenLayout"

# The fields each kind reads (keyword arguments of encode_token / encode_steps).
_NEEDS: dict[Kind, tuple[str, ...]] = {
    Kind.RTG: ("rtg",),
    Kind.STATE: ("obs",),
    Kind.ACTION: ("action",),
    Kind.REWARD: ("reward",),  # + "done" when the flag rides on the reward token
    Kind.DONE: ("done",),
    Kind.STEP: ("obs", "prev_action", "prev_reward"),  # + "new_episode" when flagged
    Kind.TRANSITION: ("prev_obs", "prev_action", "prev_reward", "prev_next_obs", "prev_ended",
                      "has_prev"),
}


@dataclass(frozen=True, eq=False)
class TokenLayout:
    """The tokens of one environment step and how their payloads are computed.

    Attributes:
        kinds: token kinds of one step, in order (e.g. RTG, STATE, ACTION, REWARD).
        obs_dim: flattened observation size.
        act_dim: action vector size, or the number of discrete actions.
        discrete_actions: actions are integer ids (one-hot inputs, ``target_ids`` targets).
        norm: observation / return / reward scaling applied to every payload.
        new_episode_flag: STEP tokens carry a feature that is 1 on an episode's first step.
        step_prev_obs: STEP tokens also carry the previous step's observation (zero before a
            stream's first step), so that a whole transition sits in one token: where an
            episode ends on arriving at a cell (Key-to-Door's door), the cell it left and the
            move it made (the next token's previous action) name that cell in one token.
    """

    kinds: tuple[Kind, ...]
    obs_dim: int
    act_dim: int
    discrete_actions: bool
    norm: Normalization
    new_episode_flag: bool = True
    step_prev_obs: bool = False

    def __post_init__(self) -> None:
        kinds = tuple(Kind(k) for k in self.kinds)
        object.__setattr__(self, "kinds", kinds)
        if not kinds:
            raise ValueError("TokenLayout: kinds is empty")
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"TokenLayout: kinds {_names(kinds)} repeat a kind")
        if Kind.STEP in kinds and len(kinds) != 1:
            raise ValueError(f"TokenLayout: STEP is a layout of its own, got kinds {_names(kinds)}")
        if self.step_prev_obs and Kind.STEP not in kinds:
            raise ValueError(f"TokenLayout: step_prev_obs adds a feature to STEP tokens; kinds "
                             f"{_names(kinds)} have none")
        if Kind.STEP not in kinds:
            if Kind.STATE not in kinds:
                raise ValueError(
                    f"TokenLayout: kinds {_names(kinds)} have no STATE to predict from"
                )
            i = kinds.index(Kind.STATE)
            before = (Kind.RTG, Kind.TRANSITION)
            early = [k for k in kinds[:i] if k not in before]
            late = [k for k in kinds[i + 1 :] if k in before]
            if early or late:
                raise ValueError(
                    f"TokenLayout: kinds {_names(kinds)}: only RTG and TRANSITION may precede "
                    "STATE and ACTION/REWARD/DONE must follow it (they depend on the predicted "
                    "action)"
                )
        if self.obs_dim < 1 or self.act_dim < 1:
            raise ValueError(
                f"TokenLayout: obs_dim={self.obs_dim} and act_dim={self.act_dim} must be >= 1"
            )
        if self.norm.obs_dim != self.obs_dim:
            raise ValueError(
                f"TokenLayout: norm has obs_dim {self.norm.obs_dim}, layout has {self.obs_dim}"
            )

    # ------------------------------------------------------------------ shape facts
    @property
    def tokens_per_step(self) -> int:
        return len(self.kinds)

    @property
    def predict_kind(self) -> Kind:
        """The kind of the token at which the step's action is predicted."""
        return Kind.STEP if Kind.STEP in self.kinds else Kind.STATE

    @property
    def predict_index(self) -> int:
        """Index of the predict token within a step."""
        return self.kinds.index(self.predict_kind)

    @property
    def completion(self) -> str:
        """Where the completion flag d goes: "done_token", "reward_feature" or "none"."""
        if Kind.DONE in self.kinds:
            return "done_token"
        if Kind.REWARD in self.kinds:
            return "reward_feature"
        return "none"

    def width(self, kind: Kind) -> int:
        """Number of payload features a token of ``kind`` uses (columns ``0:width``)."""
        kind = Kind(kind)
        if kind == Kind.RTG or kind == Kind.DONE:
            return 1
        if kind == Kind.STATE:
            return self.obs_dim
        if kind == Kind.ACTION:
            return self.act_dim
        if kind == Kind.REWARD:
            return 2 if self.completion == "reward_feature" else 1
        if kind == Kind.TRANSITION:
            return 2 * self.obs_dim + self.act_dim + 2
        return (self.obs_dim + self.act_dim + 1 + int(self.new_episode_flag)
                + self.obs_dim * int(self.step_prev_obs))

    @property
    def widths(self) -> dict[Kind, int]:
        return {k: self.width(k) for k in self.kinds}

    def token_features(self) -> tuple[tuple[str, int], ...]:
        """``((kind name, width), ...)`` of this layout's kinds: a model's per-kind input widths."""
        return tuple((k.name, self.width(k)) for k in self.kinds)

    @functools.cached_property
    def feature_dim(self) -> int:
        """Width of ``values``: the widest kind of the layout."""
        return max(self.widths.values())

    def step_kinds(self, num_steps: int) -> np.ndarray:
        """``[num_steps * tokens_per_step]`` int32 kinds of consecutive steps."""
        return np.tile(np.asarray(self.kinds, np.int32), num_steps)

    def required_fields(self) -> tuple[str, ...]:
        """The keyword arguments :meth:`encode_steps` needs for this layout."""
        out: list[str] = []
        for k in self.kinds:
            out += self._needs(k)
        return tuple(dict.fromkeys(out))

    def _needs(self, kind: Kind) -> tuple[str, ...]:
        needs = _NEEDS[kind]
        if kind == Kind.REWARD and self.completion == "reward_feature":
            needs = (*needs, "done")
        if kind == Kind.STEP and self.new_episode_flag:
            needs = (*needs, "new_episode")
        if kind == Kind.STEP and self.step_prev_obs:
            needs = (*needs, "prev_obs", "has_prev")
        return needs

    # ------------------------------------------------------------------ encoders
    def encode_token(self, kind: Kind, **fields: Any) -> np.ndarray:
        """Payload of one token kind for a batch of steps (what evaluation calls online).

        Args:
            kind: the token kind; it must be one of the layout's kinds.
            **fields: raw (unnormalised) inputs the kind needs, each with the same leading
                axes ``[...]``: ``obs [..., obs_dim]``, ``action [...]`` (int ids) or
                ``[..., act_dim]``, ``reward [...]``, ``rtg [...]`` (unscaled return-to-go),
                ``done [...]`` (completion flag), ``prev_action`` like ``action`` (id -1 or a
                zero vector when there is none), ``prev_reward [...]``, ``new_episode [...]``.

        Returns:
            ``[..., feature_dim]`` float32.
        """
        kind = Kind(kind)
        if kind not in self.kinds:
            raise ValueError(f"TokenLayout: kind {kind.name} is not in layout {_names(self.kinds)}")
        lead = self._lead_shape(kind, fields)
        out = np.zeros((*lead, self.feature_dim), np.float32)
        self._fill(kind, out, fields)
        return out

    def encode_steps(self, out: np.ndarray | None = None, **fields: Any) -> np.ndarray:
        """Payloads of every token of a batch of steps.

        Args:
            out: optional ``[..., tokens_per_step, feature_dim]`` float32 array (it may be a
                strided view) to write into; it must be zero beforehand, since only each
                kind's own columns are written.
            **fields: as for :meth:`encode_token`, all the fields of
                :meth:`required_fields` (others are ignored).

        Returns:
            ``[..., tokens_per_step, feature_dim]`` float32 (``out`` when given); reshape to
            ``[... * tokens_per_step, feature_dim]`` for a token sequence.
        """
        lead = self._lead_shape(self.kinds[0], fields)
        shape = (*lead, self.tokens_per_step, self.feature_dim)
        if out is None:
            out = np.zeros(shape, np.float32)
        elif out.shape != shape or out.dtype != np.float32:
            raise ValueError(
                f"TokenLayout: out is {out.dtype}{list(out.shape)}, expected float32{list(shape)}"
            )
        for i, kind in enumerate(self.kinds):
            self._fill(kind, out[..., i, :], fields)
        return out

    def encode_episode(self, **fields: Any) -> tuple[np.ndarray, np.ndarray]:
        """Tokens of a run of ``S`` consecutive steps: ``(kind [S*k], values [S*k, F])``."""
        values = self.encode_steps(**fields)
        num_steps = values.shape[0]
        return self.step_kinds(num_steps), values.reshape(-1, self.feature_dim)

    def _lead_shape(self, kind: Kind, fields: dict[str, Any]) -> tuple[int, ...]:
        for name in self._needs(kind):
            if fields.get(name) is None:
                raise ValueError(
                    f"TokenLayout: a {kind.name} token needs {name!r} "
                    f"(needs {list(self._needs(kind))})"
                )
        first = self._needs(kind)[0]
        shape = np.shape(fields[first])
        if first.endswith("obs") or (first.endswith("action") and not self.discrete_actions):
            shape = shape[:-1]
        return tuple(shape)

    def _fill(self, kind: Kind, out: np.ndarray, f: dict[str, Any]) -> None:
        """Writes the payload of ``kind`` into ``out [..., feature_dim]`` (zeros beforehand)."""
        for name in self._needs(kind):
            if f.get(name) is None:
                raise ValueError(f"TokenLayout: a {kind.name} token needs {name!r}")
        norm = self.norm
        if kind == Kind.RTG:
            out[..., 0] = np.asarray(f["rtg"], np.float64) / norm.return_scale
        elif kind == Kind.STATE:
            self._fill_obs(out[..., : self.obs_dim], f["obs"])
        elif kind == Kind.ACTION:
            self._fill_action(out[..., : self.act_dim], f["action"], "action")
        elif kind == Kind.REWARD:
            out[..., 0] = np.asarray(f["reward"], np.float64) / norm.reward_scale
            if self.completion == "reward_feature":
                out[..., 1] = f["done"]
        elif kind == Kind.DONE:
            out[..., 0] = f["done"]
        elif kind == Kind.TRANSITION:
            o, a = self.obs_dim, self.act_dim
            self._fill_obs(out[..., :o], f["prev_obs"])
            self._fill_action(out[..., o : o + a], f["prev_action"], "prev_action")
            out[..., o + a] = np.asarray(f["prev_reward"], np.float64) / norm.reward_scale
            self._fill_obs(out[..., o + a + 1 : 2 * o + a + 1], f["prev_next_obs"])
            ended = np.asarray(f["prev_ended"], np.float32)
            # An episode's last next state is not what follows it in a stream: hidden.
            out[..., o + a + 1 : 2 * o + a + 1] *= (1.0 - ended)[..., None]
            out[..., 2 * o + a + 1] = ended
            out *= np.asarray(f["has_prev"], np.float32)[..., None]
        else:  # STEP
            o, a = self.obs_dim, self.act_dim
            self._fill_obs(out[..., :o], f["obs"])
            self._fill_action(out[..., o : o + a], f["prev_action"], "prev_action")
            out[..., o + a] = np.asarray(f["prev_reward"], np.float64) / norm.reward_scale
            if self.new_episode_flag:
                out[..., o + a + 1] = f["new_episode"]
            if self.step_prev_obs:
                lo = o + a + 1 + int(self.new_episode_flag)
                self._fill_obs(out[..., lo : lo + o], f["prev_obs"])
                out[..., lo : lo + o] *= np.asarray(f["has_prev"], np.float32)[..., None]

    def _fill_obs(self, out: np.ndarray, obs: Any) -> None:
        obs = np.asarray(obs)
        if obs.shape[-1:] != (self.obs_dim,) or obs.shape[:-1] != out.shape[:-1]:
            raise ValueError(
                f"TokenLayout: obs has shape {obs.shape}, "
                f"expected {(*out.shape[:-1], self.obs_dim)}"
            )
        # Two in-place passes into the output slice: no temporary of the token batch's size.
        np.subtract(obs, self.norm.obs_mean, out=out, casting="unsafe")
        np.multiply(out, self.norm._inv_std, out=out)

    def _fill_action(self, out: np.ndarray, action: Any, name: str) -> None:
        action = np.asarray(action)
        if self.discrete_actions:
            if action.shape != out.shape[:-1]:
                raise ValueError(
                    f"TokenLayout: {name} has shape {action.shape}, expected {out.shape[:-1]} ids"
                )
            if action.size and (action.max() >= self.act_dim or action.min() < -1):
                raise ValueError(
                    f"TokenLayout: {name} ids span [{action.min()}, {action.max()}], expected "
                    f"[0, {self.act_dim}) (or -1 for 'no previous action')"
                )
            # Set single ones in the (zeroed) output; id -1 (no previous action) sets none.
            if action.ndim == 0:
                if action >= 0:
                    out[action] = 1.0
                return
            hit = np.nonzero(action >= 0)
            out[(*hit, action[hit])] = 1.0
        else:
            if action.shape != out.shape:
                raise ValueError(
                    f"TokenLayout: {name} has shape {action.shape}, expected {out.shape}"
                )
            out[...] = action

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": LAYOUT_FORMAT,
            "kinds": [k.name for k in self.kinds],
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "discrete_actions": self.discrete_actions,
            "new_episode_flag": self.new_episode_flag,
            "step_prev_obs": self.step_prev_obs,
            "norm": self.norm.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenLayout:
        if d.get("format") != LAYOUT_FORMAT:
            raise ValueError(
                f"TokenLayout.from_dict: format is {d.get('format')!r}, expected {LAYOUT_FORMAT!r}"
            )
        try:
            kinds = tuple(Kind[name] for name in d["kinds"])
        except KeyError as err:
            raise ValueError(f"TokenLayout.from_dict: unknown kind or missing key {err}") from None
        return cls(
            kinds=kinds,
            obs_dim=int(d["obs_dim"]),
            act_dim=int(d["act_dim"]),
            discrete_actions=bool(d["discrete_actions"]),
            norm=Normalization.from_dict(d["norm"]),
            new_episode_flag=bool(d.get("new_episode_flag", True)),
            step_prev_obs=bool(d.get("step_prev_obs", False)),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TokenLayout):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self.to_dict()))

    def __repr__(self) -> str:
        return (
            f"TokenLayout({'/'.join(_names(self.kinds))}, obs_dim={self.obs_dim}, "
            f"act_dim={self.act_dim}{' discrete' if self.discrete_actions else ''}, "
            f"feature_dim={self.feature_dim})"
        )


# ---------------------------------------------------------------------- standard layouts
def at_layout(
    obs_dim: int,
    act_dim: int,
    discrete_actions: bool,
    norm: Normalization,
    *,
    reward_token: bool = True,
    done_token: bool = False,
) -> TokenLayout:
    """Agentic Transformer: RTG, STATE, ACTION[, REWARD][, DONE] per step.

    The default (reward token, no done token) is the paper's four tokens with the
    completion flag as the reward token's second feature.
    """
    kinds = [Kind.RTG, Kind.STATE, Kind.ACTION]
    if reward_token:
        kinds.append(Kind.REWARD)
    if done_token:
        kinds.append(Kind.DONE)
    return TokenLayout(tuple(kinds), obs_dim, act_dim, discrete_actions, norm)


def dt_layout(
    obs_dim: int, act_dim: int, discrete_actions: bool, norm: Normalization
) -> TokenLayout:
    """Decision Transformer: RTG, STATE, ACTION per step."""
    return TokenLayout(
        (Kind.RTG, Kind.STATE, Kind.ACTION), obs_dim, act_dim, discrete_actions, norm
    )


def bc_layout(
    obs_dim: int,
    act_dim: int,
    discrete_actions: bool,
    norm: Normalization,
    *,
    state_only: bool = False,
) -> TokenLayout:
    """Behaviour cloning: STATE, ACTION per step (or STATE only)."""
    kinds = (Kind.STATE,) if state_only else (Kind.STATE, Kind.ACTION)
    return TokenLayout(kinds, obs_dim, act_dim, discrete_actions, norm)


def ad_layout(
    obs_dim: int,
    act_dim: int,
    discrete_actions: bool,
    norm: Normalization,
    *,
    new_episode_flag: bool = True,
    step_prev_obs: bool = False,
) -> TokenLayout:
    """Algorithm Distillation: one STEP token (obs, prev action, prev reward[, new episode]
    [, prev obs])."""
    return TokenLayout(
        (Kind.STEP,), obs_dim, act_dim, discrete_actions, norm,
        new_episode_flag=new_episode_flag, step_prev_obs=step_prev_obs,
    )


def dpt_layout(
    obs_dim: int, act_dim: int, discrete_actions: bool, norm: Normalization
) -> TokenLayout:
    """Decision-Pretrained Transformer: TRANSITION (the transition seen before the step),
    STATE (the query state, whose optimal action is predicted) per step."""
    return TokenLayout((Kind.TRANSITION, Kind.STATE), obs_dim, act_dim, discrete_actions, norm)


def _names(kinds) -> list[str]:
    return [Kind(k).name for k in kinds]
