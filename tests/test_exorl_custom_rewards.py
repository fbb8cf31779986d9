"""ExoRL's custom domains (point-mass maze, Jaco reach): the relabelled rewards at planted
physics states equal ExoRL's reward definitions, computed by hand.

ExoRL (``custom_dmc_tasks/point_mass_maze.py``, ``custom_dmc_tasks/jaco.py``) pays
``tolerance(distance, bounds=(0, r), margin=r)`` with dm_control's default Gaussian sigmoid
(value 0.1 at the margin), i.e. 1 for ``d <= r`` and ``0.1 ** ((d - r) / r) ** 2`` beyond.
The maze multiplies it by ``small_control = (4 + mean_i(1 - u_i ** 2)) / 5`` (the quadratic
tolerance of the control with margin 1 and value 0 at the margin). Targets, as ExoRL lists
them (top = +y, left = -x):

    maze  r = 0.015   (+-0.15, +-0.15, 0.01)      jaco  r = 0.05   (+-0.09, +-0.09, 0.001)

The expected numbers below are written from these facts, not from the project's task objects.
"""

import numpy as np
import pytest

from envs.registry import load_dmc
from envs.relabel import relabel

CORNERS = {  # task: (x, y) of the target, top = +y, left = -x
    "reach_top_left": (-1, 1),
    "reach_top_right": (1, 1),
    "reach_bottom_left": (-1, -1),
    "reach_bottom_right": (1, -1),
}
MAZE_R, MAZE_XY, MAZE_Z = 0.015, 0.15, 0.01
JACO_R, JACO_XY, JACO_Z = 0.05, 0.09, 0.001


def _near(d: float, r: float) -> float:
    """dm_control ``tolerance(d, bounds=(0, r), margin=r)``, Gaussian, 0.1 at the margin."""
    return 1.0 if d <= r else 0.1 ** (((d - r) / r) ** 2)


def _maze_target(task):
    sx, sy = CORNERS[task]
    return np.array([sx * MAZE_XY, sy * MAZE_XY, MAZE_Z])


def _maze_state(env, xy):
    """The physics state with the mass at ``xy`` (at rest); checks where the mass really is."""
    physics = env.physics
    with physics.reset_context():
        physics.data.qpos[:] = xy
        physics.data.qvel[:] = 0.0
    np.testing.assert_allclose(
        physics.named.data.geom_xpos["pointmass"], [xy[0], xy[1], MAZE_Z], atol=1e-12
    )
    return physics.get_state().copy()


def test_point_mass_maze_rewards_at_planted_states_match_exorl():
    env = load_dmc("point_mass_maze", "reach_top_left", seed=0)
    env.reset()
    tl = _maze_target("reach_top_left")[:2]
    # (mass position, action, reward of reach_top_left by hand)
    planted = [
        (tl, (0.0, 0.0), 1.0),  # on the target, no control cost
        (tl, (0.5, -1.0), (4 + (0.75 + 0.0) / 2) / 5),  # 0.875: the control cost alone
        (tl + [MAZE_R, 0.0], (0.0, 0.0), 1.0),  # on the tolerance boundary: still 1
        (tl + [0.0, -1.5 * MAZE_R], (0.0, 0.0), 0.1**0.25),  # half a margin outside
        (tl + [0.018, 0.024], (0.0, 0.0), 0.1),  # |d| = 0.03: at the margin, 0.1
        (tl + [0.018, 0.024], (0.5, -1.0), 0.1 * 0.875),
        (tl + [0.0, 3 * MAZE_R], (0.0, 0.0), 1e-4),  # two margins out: 0.1 ** 4
    ]
    # The mass at the centre of each corner room, no control.
    planted += [(_maze_target(t)[:2], (0.0, 0.0), None) for t in CORNERS]
    states = np.stack([_maze_state(env, np.asarray(xy, float)) for xy, _, _ in planted])
    actions = np.array([a for _, a, _ in planted], np.float32)

    top_left = relabel("point_mass_maze_reach_top_left", states, actions, workers=1)
    np.testing.assert_allclose(
        top_left[:7], [want for *_, want in planted[:7]], rtol=1e-6, atol=1e-9
    )
    for task in CORNERS:
        got = relabel(f"point_mass_maze_{task}", states, actions, workers=1)
        want = []
        for xy, a, _ in planted:
            d = np.linalg.norm(np.array([xy[0], xy[1], MAZE_Z]) - _maze_target(task))
            want.append(_near(d, MAZE_R) * (4 + np.mean(1 - np.square(a))) / 5)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9, err_msg=task)
        # Only its own room pays: 1 there, 0 in the three others (0.3 or more away).
        np.testing.assert_allclose(
            got[7:], [float(t == task) for t in CORNERS], atol=1e-9, err_msg=task
        )
    # ExoRL's own relabelling leaves the control at zero: no control cost.
    exorl_way = relabel("point_mass_maze_reach_top_left", states, actions, workers=1,
                        use_actions=False)  # fmt: skip
    np.testing.assert_allclose(exorl_way[[1, 5]], [1.0, 0.1], rtol=1e-6)


def _jaco_state(task, xyz):
    """A Jaco physics state with the tool centre point at ``xyz`` (placed by inverse
    kinematics, pointing down) and where the TCP really is."""
    from dm_control.manipulation.shared import workspaces

    from envs import jaco

    env = jaco.make(task, seed=0, tcp_box=workspaces.BoundingBox(lower=xyz, upper=xyz))
    env.reset()
    tcp = env.physics.bind(env.task.hand.tool_center_point).xpos.copy()
    np.testing.assert_allclose(tcp, xyz, atol=1e-6)
    return env.physics.get_state().copy(), tcp, env


@pytest.mark.parametrize("task", list(CORNERS))
def test_jaco_reach_rewards_at_planted_states_match_exorl(task):
    sx, sy = CORNERS[task]
    x, y = sx * JACO_XY, sy * JACO_XY
    # TCP straight above the target at heights giving |d| = 0.039 (inside), 0.05 (the
    # boundary), 0.075 (half a margin out) and 0.1 (at the margin).
    heights = (0.04, 0.051, 0.076, 0.101)
    want_own = (1.0, 1.0, 0.1**0.25, 0.1)
    planted = [_jaco_state(task, (x, y, z)) for z in heights]
    states = np.stack([s for s, _, _ in planted])
    actions = np.zeros((len(states), 9), np.float32)  # the reward has no control cost
    got = relabel(f"jaco_{task}", states, actions, workers=1)
    np.testing.assert_allclose(got, want_own, rtol=1e-5)
    # The live task object of the environment the state was planted in agrees.
    _, _, env = planted[0]
    assert env.task.get_reward(env.physics) == pytest.approx(1.0)
    # Every other corner's task, at these states, by hand from the TCP position.
    for other, (ox, oy) in CORNERS.items():
        target = np.array([ox * JACO_XY, oy * JACO_XY, JACO_Z])
        want = [_near(float(np.linalg.norm(tcp - target)), JACO_R) for _, tcp, _ in planted]
        got = relabel(f"jaco_{other}", states, actions, workers=1)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12, err_msg=other)
        if other != task:
            assert got.max() < 1e-6  # a neighbouring corner is >= 0.18 away


@pytest.mark.parametrize("task", list(CORNERS))
def test_registry_maze_env_pays_exorl_rewards_live(task):
    """``envs.make("dmc:point_mass_maze-...")`` (what ``test_exorl_custom_domains`` runs):
    each live reward equals ExoRL's formula from the observed position and the action. The
    mass is planted at 0 to 3 tolerance widths from the target before each step, so the
    steps cover the inside, the boundary and the Gaussian tail."""
    import envs

    env = envs.make(f"dmc:point_mass_maze-{task}", seed=0)
    env.reset(seed=0)
    target = _maze_target(task)
    physics = env.unwrapped.physics
    rng = np.random.default_rng(0)
    got, want = [], []
    for dist in np.linspace(0.0, 3 * MAZE_R, 13):
        angle = rng.uniform(0, 2 * np.pi)
        with physics.reset_context():
            physics.data.qpos[:] = target[:2] + dist * np.array([np.cos(angle), np.sin(angle)])
            physics.data.qvel[:] = 0.0
        a = rng.uniform(-1, 1, 2).astype(np.float32)
        obs, reward, *_ = env.step(a)
        d = np.linalg.norm(np.array([obs[0], obs[1], MAZE_Z]) - target)
        got.append(reward)
        want.append(_near(d, MAZE_R) * (4 + np.mean(1 - np.square(a.astype(float)))) / 5)
    env.close()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert max(got) > 0.8 and 0 < min(got) < 0.01, (min(got), max(got))  # all regimes


@pytest.mark.parametrize("task", ["reach_top_left", "reach_bottom_right"])
def test_registry_jaco_env_pays_exorl_rewards_live(task):
    """``envs.make("dmc:jaco-...")``: each live reward equals ExoRL's formula from the
    observed pinch site (the tool centre point) and the task's target, here in the Gaussian
    tail (the hand starts anywhere in ExoRL's 0.4 x 0.4 x 0.38 box)."""
    import envs

    sx, sy = CORNERS[task]
    target = np.array([sx * JACO_XY, sy * JACO_XY, JACO_Z])
    env = envs.make(f"dmc:jaco-{task}", seed=0)
    env.reset(seed=0)
    lo, hi = env.unwrapped.observation_layout["jaco_arm/jaco_hand/pinch_site_pos"]
    got, want = [], []
    for _ in range(20):
        obs, reward, *_ = env.step(env.action_space.sample())
        got.append(reward)
        want.append(_near(float(np.linalg.norm(obs[lo:hi].astype(float) - target)), JACO_R))
    env.close()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=0)
    assert min(got) > 0  # in the tail but not underflowed: real numbers are compared
