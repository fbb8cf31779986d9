"""Scripted controllers: behaviour policies of known quality, with a noise knob.

Each controller maps one observation (the env's flat float32 vector) to an action. With
``noise = sigma`` it adds Gaussian noise of standard deviation ``sigma`` to every action
component, then clips to the action bounds, which gives datasets from expert
(``sigma = 0``) to poor (``sigma >= 1``) quality.

* ``dmc:cartpole-swingup`` / ``dmc:cartpole-balance``: energy pumping (push the cart so the
  pole's mechanical energy approaches that of the upright pole, while a spring-damper term
  keeps the cart near the centre), switching to an LQR balance controller when the pole is
  within ~25 degrees of upright. The LQR gain comes from a finite-difference linearisation of
  the MuJoCo model at the upright state and a discrete Riccati iteration.
* ``dmc:pendulum-swingup``: energy pumping with the limited torque, LQR near the top.
* ``dmc:point_mass-easy``: a PD controller to the target at the origin.
* ``darkroom`` / ``darkroom-hard`` / ``keydoor``: an oracle that knows the task and walks a
  shortest path (needs ``task=``); noise is the probability of a uniformly random action.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from envs import darkroom, keydoor
from envs import gridworld as gw

Controller = Callable[[np.ndarray], np.ndarray]


# ---------------------------------------------------------------------- linear control
def linearise(physics, nu: int, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """``x' = A x + B u`` around ``qpos = qvel = 0, ctrl = 0`` by central differences.

    The state is ``[qpos, qvel]``; one control step is one ``physics.step()``. Finite
    differences of the step itself work for every integrator (MuJoCo's analytic
    ``mjd_transitionFD`` rejects RK4, which cartpole uses).
    """
    nq, nv = physics.model.nq, physics.model.nv

    def step(x: np.ndarray, u: np.ndarray) -> np.ndarray:
        with physics.reset_context():
            physics.data.qpos[:] = x[:nq]
            physics.data.qvel[:] = x[nq:]
        physics.data.ctrl[:] = u
        physics.step()
        return np.concatenate([physics.data.qpos, physics.data.qvel]).copy()

    x0, u0 = np.zeros(nq + nv), np.zeros(nu)
    a = np.zeros((nq + nv, nq + nv))
    b = np.zeros((nq + nv, nu))
    for i in range(nq + nv):
        d = np.zeros(nq + nv)
        d[i] = eps
        a[:, i] = (step(x0 + d, u0) - step(x0 - d, u0)) / (2 * eps)
    for i in range(nu):
        d = np.zeros(nu)
        d[i] = eps
        b[:, i] = (step(x0, u0 + d) - step(x0, u0 - d)) / (2 * eps)
    return a, b


def dlqr(a: np.ndarray, b: np.ndarray, q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Infinite-horizon discrete LQR gain ``K`` (``u = -K x``) by Riccati iteration."""
    p = q.copy()
    for _ in range(10_000):
        k = np.linalg.solve(r + b.T @ p @ b, b.T @ p @ a)
        p_next = q + a.T @ p @ (a - b @ k)
        if np.allclose(p_next, p, rtol=1e-10, atol=1e-10):
            p = p_next
            break
        p = p_next
    return np.linalg.solve(r + b.T @ p @ b, b.T @ p @ a)


@functools.cache
def _upright_gain(domain: str) -> np.ndarray:
    from dm_control import suite

    task = {"cartpole": "balance", "pendulum": "swingup"}[domain]
    env = suite.load(domain, task, task_kwargs={"random": 0})
    a, b = linearise(env.physics, nu=1)
    q = np.diag([1.0, 10.0, 1.0, 1.0]) if domain == "cartpole" else np.diag([10.0, 1.0])
    return dlqr(a, b, q, np.eye(1))


# ---------------------------------------------------------------------- controllers
# Cartpole pole: a 1 m uniform rod of 0.1 kg on the cart (dm_control's cartpole.xml).
_POLE_MASS, _POLE_COM, _POLE_INERTIA, _G = 0.1, 0.5, 0.1 / 3.0, 9.81
# Pendulum: a 1 kg point mass 0.5 m from the hinge (pendulum.xml).
_PEND_MASS, _PEND_LEN = 1.0, 0.5


def cartpole_controller(obs: np.ndarray) -> np.ndarray:
    """Cartpole swing-up and balance; obs = (x, cos th, sin th, x_dot, th_dot), th=0 upright."""
    x, c, s, xd, thd = (float(v) for v in obs[:5])
    theta = np.arctan2(s, c)
    if c > 0.9:
        u = -_upright_gain("cartpole") @ np.array([x, theta, xd, thd])
        return np.clip(u, -1.0, 1.0)
    # Energy relative to the pole at rest upright; pushing the cart along -E * th_dot * cos th
    # pumps energy in until E reaches 0, the spring-damper term keeps the cart centred.
    energy = 0.5 * _POLE_INERTIA * thd**2 + _POLE_MASS * _G * _POLE_COM * (c - 1.0)
    u = 10.0 * energy * thd * c - 1.0 * x - 1.0 * xd
    return np.clip(np.array([u]), -1.0, 1.0)


def pendulum_controller(obs: np.ndarray) -> np.ndarray:
    """Pendulum swing-up; obs = (cos th, sin th, th_dot), th = 0 upright."""
    c, s, thd = (float(v) for v in obs[:3])
    if c > 0.9:
        u = -_upright_gain("pendulum") @ np.array([np.arctan2(s, c), thd])
        return np.clip(u, -1.0, 1.0)
    inertia = _PEND_MASS * _PEND_LEN**2
    energy = 0.5 * inertia * thd**2 + _PEND_MASS * _G * _PEND_LEN * (c - 1.0)
    # At rest at the bottom th_dot = 0 gives no push; start the swing with full torque.
    u = -1.0 * energy * thd if abs(thd) > 1e-3 else 1.0
    return np.clip(np.array([u]), -1.0, 1.0)


def point_mass_controller(obs: np.ndarray) -> np.ndarray:
    """Point mass to the target at the origin; obs = (x, y, x_dot, y_dot)."""
    pos, vel = np.asarray(obs[:2], np.float64), np.asarray(obs[2:4], np.float64)
    return np.clip(-20.0 * pos - 5.0 * vel, -1.0, 1.0)


def grid_oracle(env_id: str, task: int) -> Callable[[np.ndarray], int]:
    """Shortest-path policy for a Dark Room goal or a Key-to-Door (key, door) task."""
    if env_id in ("darkroom", "darkroom-hard"):
        size = 17 if env_id == "darkroom-hard" else 9
        goal = gw.cell_xy(task, size)
        if task not in set(darkroom.goal_ids(size)):
            raise ValueError(f"{env_id}: {task} is not a goal id")

        def to_goal(obs: np.ndarray) -> int:
            return _step_towards((int(obs[0]), int(obs[1])), goal)

        return to_goal
    if env_id == "keydoor":
        key, door = keydoor.key_door(task)

        def key_then_door(obs: np.ndarray) -> int:
            pos = (int(obs[0]), int(obs[1]))
            return _step_towards(pos, door if obs[2] > 0.5 else key)

        return key_then_door
    raise ValueError(f"grid_oracle: no oracle for {env_id!r} (darkroom, darkroom-hard, keydoor)")


def _step_towards(pos: tuple[int, int], target: tuple[int, int]) -> int:
    """Grid action moving one step closer to ``target`` (x first), no-op on it."""
    return gw.step_towards(pos, target)


CONTROLLERS: dict[str, Controller] = {
    "dmc:cartpole-swingup": cartpole_controller,
    "dmc:cartpole-balance": cartpole_controller,
    "dmc:pendulum-swingup": pendulum_controller,
    "dmc:point_mass-easy": point_mass_controller,
}
ORACLES = ("darkroom", "darkroom-hard", "keydoor")


def scripted_envs() -> list[str]:
    """Env ids that have a scripted policy."""
    return [*CONTROLLERS, *ORACLES]


class NoisyPolicy:
    """A controller plus seeded action noise: ``policy(obs) -> action``.

    Continuous actions get Gaussian noise of std ``noise`` and are clipped to
    ``[low, high]``; discrete actions are replaced by a uniform one with probability
    ``noise``.
    """

    def __init__(
        self,
        controller: Callable[[np.ndarray], np.ndarray | int],
        *,
        noise: float,
        seed: int | None,
        low: np.ndarray | None = None,
        high: np.ndarray | None = None,
        num_actions: int | None = None,
    ) -> None:
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        if num_actions is not None and noise > 1:
            raise ValueError(f"noise of a discrete policy is a probability, got {noise}")
        self.controller = controller
        self.noise = float(noise)
        self.low, self.high, self.num_actions = low, high, num_actions
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        """Restarts the noise stream (collectors reseed per episode for reproducibility)."""
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: np.ndarray):
        action = self.controller(np.asarray(obs))
        if self.num_actions is not None:
            if self.noise > 0 and self.rng.random() < self.noise:
                return int(self.rng.integers(self.num_actions))
            return int(action)
        a = np.asarray(action, dtype=np.float64)
        if self.noise > 0:
            a = a + self.noise * self.rng.standard_normal(a.shape)
        return np.clip(a, self.low, self.high).astype(np.float32)


def make_policy(
    name: str,
    *,
    action_space=None,
    noise: float = 0.0,
    seed: int | None = None,
    task: int | None = None,
) -> NoisyPolicy:
    """A scripted policy ``obs -> action`` for env ``name`` (see :func:`scripted_envs`).

    Args:
        name: env id ("dmc:cartpole-swingup", "darkroom", ...); dm_control id options
            (``:ar8:t4``) are ignored.
        action_space: the env's action space; defaults to ``[-1, 1]`` boxes / 5 grid actions.
        noise: Gaussian action-noise std (continuous) or random-action probability (grid).
        seed: seed of the noise stream.
        task: the task of an oracle (grid envs only).

    Raises:
        ValueError: no scripted policy for ``name``, or a missing / superfluous task.
    """
    # A dm_control id with options (dmc:cartpole-swingup:ar8:t4) runs its base task's controller.
    from envs.registry import base_id

    name = base_id(name) if isinstance(name, str) else name
    if name in CONTROLLERS:
        if task is not None:
            raise ValueError(f"scripted policy for {name} takes no task, got {task!r}")
        if action_space is None:
            dim = {"dmc:point_mass-easy": 2}.get(name, 1)
            low, high = -np.ones(dim), np.ones(dim)
        else:
            low, high = np.asarray(action_space.low), np.asarray(action_space.high)
        return NoisyPolicy(CONTROLLERS[name], noise=noise, seed=seed, low=low, high=high)
    if name in ORACLES:
        if task is None:
            raise ValueError(f"scripted policy for {name} is an oracle: pass task=<task id>")
        n = gw.NUM_ACTIONS if action_space is None else int(action_space.n)
        return NoisyPolicy(grid_oracle(name, int(task)), noise=noise, seed=seed, num_actions=n)
    raise ValueError(
        f"no scripted policy for {name!r}; scripted policies exist for {', '.join(scripted_envs())}"
    )
