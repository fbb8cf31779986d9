"""dm_control tasks as Gymnasium envs, with observations in ExoRL's flat layout.

ExoRL (and the dm_control ``flat_observation`` option it uses) flattens an observation by
concatenating the values of dm_control's observation dict *in the order dm_control returns
them*, each raveled (scalars become one entry), as float32. :class:`DMCEnv` does the same,
so a policy trained on ExoRL data runs here unchanged; ``observation_layout`` names the
slices. Image observations (uint8, e.g. a camera observable of a composer task) are left out,
as ExoRL leaves them out of its state observations.

By default episodes use action repeat 1 and dm_control's own time limit (1000 steps for the
suite tasks ExoRL uses). ``action_repeat=k`` holds each action for ``k`` control steps and
reports the reward and discount of the last one: exactly what dm_control gives for a
control timestep ``k`` times longer (its reward is a function of the state reached and the
control), so per-step rewards stay in [0, 1] and ExoRL relabelling from the saved physics
states reproduces them. ``time_limit`` (seconds of simulated time, dm_control's unit)
shortens episodes. A time limit gives ``truncated``; an episode dm_control ends with
discount 0 gives ``terminated``. ``info["physics"]`` is ``physics.get_state()`` after the
step (after reset for ``reset()``), ``info["discount"]`` is dm_control's discount: together
they are what the ExoRL format stores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dm_env
import gymnasium as gym
import numpy as np
from gymnasium import spaces


def flatten_observation(observation: dict[str, Any]) -> np.ndarray:
    """ExoRL's flat observation: the dict's values in order, raveled, concatenated, float32."""
    parts = [
        np.asarray(v, dtype=np.float64).reshape(-1)
        for v in observation.values()
        if not _is_image(v)
    ]
    return np.concatenate(parts).astype(np.float32)


def _is_image(value: Any) -> bool:
    return np.asarray(value).dtype == np.uint8


def dmc_step_limit(dm: Any) -> int | None:
    """Episode length in control steps: suite envs count steps, composer envs count seconds."""
    limit = getattr(dm, "_step_limit", None)
    if limit is None and getattr(dm, "_time_limit", None) is not None:
        limit = round(dm._time_limit / dm.control_timestep(), 6)
    return int(np.ceil(limit)) if limit is not None and np.isfinite(limit) else None


class DMCEnv(gym.Env):
    """A dm_control environment behind the Gymnasium API.

    Args:
        load: builds the dm_control environment from a seed (an int or None); called once.
        env_id: registry id, for error messages and ``spec``.
        seed: seed of the task's random state; also the seed of the first ``reset()``.
        render_mode: None or "rgb_array" (rendered with ``physics.render``).
        render_size: ``(height, width)`` of rendered frames.
        camera_id: camera used for rendering.
        action_repeat: control steps each action is held for (see the module docstring).
        time_limit: episode length in seconds of simulated time (None: dm_control's own);
            it can only shorten the task's own limit.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        load: Callable[[int | None], dm_env.Environment],
        *,
        env_id: str,
        seed: int | None = None,
        render_mode: str | None = None,
        render_size: tuple[int, int] = (240, 320),
        camera_id: int = 0,
        action_repeat: int = 1,
        time_limit: float | None = None,
    ) -> None:
        if isinstance(action_repeat, bool) or not isinstance(action_repeat, int | np.integer) \
                or action_repeat < 1:
            raise ValueError(f"{env_id}: action_repeat must be an integer >= 1, got "
                             f"{action_repeat!r}")
        if time_limit is not None and not (np.isfinite(time_limit) and time_limit > 0):
            raise ValueError(f"{env_id}: time_limit must be a positive number of seconds, got "
                             f"{time_limit!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"{env_id}: render_mode must be one of {self.metadata['render_modes']} or None, "
                f"got {render_mode!r}"
            )
        self.env_id = env_id
        self._env = load(seed)
        self._pending_seed = seed
        self.render_mode = render_mode
        self.render_size = tuple(render_size)
        self.camera_id = camera_id

        obs_spec = self._env.observation_spec()
        self.observation_layout: dict[str, tuple[int, int]] = {}
        offset = 0
        for key, spec in obs_spec.items():
            if np.dtype(spec.dtype) == np.uint8:
                continue
            size = int(np.prod(spec.shape, dtype=np.int64))
            self.observation_layout[key] = (offset, offset + size)
            offset += size
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(offset,), dtype=np.float32)
        act = self._env.action_spec()
        if len(act.shape) != 1:
            raise ValueError(f"{env_id}: expected a 1-D action spec, got shape {act.shape}")
        low = np.broadcast_to(getattr(act, "minimum", -np.inf), act.shape).astype(np.float32)
        high = np.broadcast_to(getattr(act, "maximum", np.inf), act.shape).astype(np.float32)
        self.action_space = spaces.Box(low, high, dtype=np.float32)
        self._action_shape = act.shape
        self._needs_reset = True
        self.action_repeat = int(action_repeat)
        # Simulated seconds per agent step: dm_control's control timestep x action repeat.
        self.control_timestep = float(self._env.control_timestep()) * self.action_repeat
        inner = dmc_step_limit(self._env)
        limits = [] if inner is None else [int(np.ceil(inner / self.action_repeat))]
        if time_limit is not None:
            # Tolerance: 4 s / 0.08 s must give 50 steps, not 51, despite rounding.
            limits.append(max(1, int(np.ceil(time_limit / self.control_timestep - 1e-6))))
        # Agent steps per episode (None: no time limit).
        self.step_limit: int | None = min(limits) if limits else None
        self._steps = 0

    # ------------------------------------------------------------------ dm_control access
    @property
    def dm_env(self) -> dm_env.Environment:
        """The wrapped dm_control environment."""
        return self._env

    @property
    def physics(self):
        """The MuJoCo physics of the wrapped environment."""
        return self._env.physics

    def physics_state(self) -> np.ndarray:
        """``physics.get_state()`` now (a copy): after ``reset()`` it is the reset state."""
        return np.array(self._env.physics.get_state(), dtype=np.float64)

    def observation_from_physics(self, state: np.ndarray) -> np.ndarray:
        """Sets the physics to ``state`` and returns the flat observation the task reports there.

        This changes the current physics state; reset afterwards before stepping on.
        """
        task = getattr(self._env, "task", None)
        if task is None or not hasattr(task, "get_observation"):
            raise NotImplementedError(
                f"{self.env_id}: observation_from_physics needs a dm_control suite-style task"
            )
        physics = self._env.physics
        with physics.reset_context():
            physics.set_state(np.asarray(state, dtype=np.float64))
        return flatten_observation(task.get_observation(physics))

    def _reseed(self, seed: int) -> None:
        task = getattr(self._env, "task", None)
        random = getattr(task, "random", None)
        if isinstance(random, np.random.RandomState):
            random.seed(seed)
            return
        random_state = getattr(self._env, "random_state", None)
        if isinstance(random_state, np.random.RandomState):
            random_state.seed(seed)
            return
        raise RuntimeError(f"{self.env_id}: cannot find the task's random state to seed")

    # ------------------------------------------------------------------ Gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if options:
            raise ValueError(f"{self.env_id}: reset takes no options, got {sorted(options)}")
        if seed is None and self._pending_seed is not None:
            seed = self._pending_seed
        self._pending_seed = None
        super().reset(seed=seed)
        if seed is not None:
            self._reseed(int(seed))
        ts = self._env.reset()
        self._needs_reset = False
        self._steps = 0
        return flatten_observation(ts.observation), {
            "physics": self.physics_state(),
            "discount": 1.0,
        }

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._needs_reset:
            raise RuntimeError(f"{self.env_id}: step() called before reset() or after the end")
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self._action_shape:
            raise ValueError(
                f"{self.env_id}: action must have shape {self._action_shape}, got {a.shape}"
            )
        for _ in range(self.action_repeat):
            ts = self._env.step(a)
            if ts.last():
                break
        self._steps += 1
        discount = 1.0 if ts.discount is None else float(ts.discount)
        terminated = bool(ts.last() and discount == 0.0)
        out_of_time = self.step_limit is not None and self._steps >= self.step_limit
        truncated = bool((ts.last() or out_of_time) and not terminated)
        self._needs_reset = terminated or truncated
        info = {"physics": self.physics_state(), "discount": discount}
        reward = 0.0 if ts.reward is None else float(ts.reward)
        return flatten_observation(ts.observation), reward, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        h, w = self.render_size
        return np.asarray(self._env.physics.render(height=h, width=w, camera_id=self.camera_id))

    def close(self) -> None:
        close = getattr(self._env, "close", None)
        if close is not None:
            close()
