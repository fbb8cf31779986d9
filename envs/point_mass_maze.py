"""ExoRL's point-mass maze: a planar point mass in a walled square with a cross-shaped wall.

The arena is 0.6 x 0.6 (walls at +-0.3); two wall boxes of half-length 0.18 cross at the
centre and split it into four rooms. The mass (radius 0.01, mass 0.3) moves on two slide
joints limited to +-0.29, driven by two motors (gear 0.1, control in [-1, 1]); the
simulation step is 0.02 s and an episode lasts 20 s, i.e. 1000 control steps.

Tasks ``reach_top_left`` / ``reach_top_right`` / ``reach_bottom_left`` /
``reach_bottom_right`` pay ``near_target * small_control`` with
``near_target = tolerance(|mass - target|, bounds=(0, 0.015), margin=0.015)`` (Gaussian
sigmoid) and ``small_control = (4 + mean(tolerance(control, margin=1, value_at_margin=0,
sigmoid="quadratic"))) / 5``; the targets sit at (+-0.15, +-0.15, 0.01). Observations are
``position`` (2) then ``velocity`` (2).

Differences from ExoRL's definition that we know of: ExoRL draws the start position
(x in [-0.29, -0.15], y in [0.15, 0.29], the top-left room) from NumPy's global random
generator, so its episodes are not reproducible from the task seed; here the same
distribution is drawn from the task's own seeded generator. The geometry and the reward
are the same numbers; since the reward is a function of the mass position and the control
only, relabelling ExoRL's saved states with this task reproduces its rewards exactly.
"""

from __future__ import annotations

import collections

import numpy as np
from dm_control import mujoco
from dm_control.rl import control
from dm_control.suite import base, common
from dm_control.utils import rewards

TIME_LIMIT = 20.0
TARGET_SIZE = 0.015
TARGETS: dict[str, tuple[float, float, float]] = {
    "reach_top_left": (-0.15, 0.15, 0.01),
    "reach_top_right": (0.15, 0.15, 0.01),
    "reach_bottom_left": (-0.15, -0.15, 0.01),
    "reach_bottom_right": (0.15, -0.15, 0.01),
}
TASKS = tuple(TARGETS)

_XML = """
<mujoco model="point mass maze">
  <include file="./common/skybox.xml"/>
  <include file="./common/visual.xml"/>
  <include file="./common/materials.xml"/>
  <option timestep="0.02"/>
  <default>
    <joint type="hinge" axis="0 0 1" limited="true" range="-.29 .29" damping="1"/>
    <motor gear=".1" ctrlrange="-1 1" ctrllimited="true"/>
    <default class="wall">
      <geom type="box" material="site"/>
    </default>
  </default>
  <worldbody>
    <light name="light" pos="0 0 1"/>
    <camera name="fixed" pos="0 0 .75" quat="1 0 0 0"/>
    <geom name="ground" type="plane" pos="0 0 0" size=".3 .3 .1" material="grid"/>
    <geom name="wall_x" type="plane" pos="-.3 0 .02" zaxis="1 0 0" size=".02 .3 .02"
          material="decoration"/>
    <geom name="wall_y" type="plane" pos="0 -.3 .02" zaxis="0 1 0" size=".3 .02 .02"
          material="decoration"/>
    <geom name="wall_neg_x" type="plane" pos=".3 0 .02" zaxis="-1 0 0" size=".02 .3 .02"
          material="decoration"/>
    <geom name="wall_neg_y" type="plane" pos="0 .3 .02" zaxis="0 -1 0" size=".3 .02 .02"
          material="decoration"/>
    <geom name="maze_y" class="wall" pos="0 0 .02" zaxis="0 1 0" size=".18 .02 .02"/>
    <geom name="maze_x" class="wall" pos="0 0 .02" zaxis="1 0 0" size=".02 .18 .02"/>
    <body name="pointmass" pos="0 0 .01">
      <camera name="cam0" pos="0 -0.3 0.3" xyaxes="1 0 0 0 0.7 0.7"/>
      <joint name="root_x" type="slide" pos="0 0 0" axis="1 0 0"/>
      <joint name="root_y" type="slide" pos="0 0 0" axis="0 1 0"/>
      <geom name="pointmass" type="sphere" size=".01" material="self" mass=".3"/>
    </body>
    <geom name="target" pos="{x} {y} {z}" material="target" type="sphere" size=".015"
          contype="0" conaffinity="0"/>
  </worldbody>
  <tendon>
    <fixed name="t1">
      <joint joint="root_x" coef="1"/>
      <joint joint="root_y" coef="0"/>
    </fixed>
    <fixed name="t2">
      <joint joint="root_x" coef="0"/>
      <joint joint="root_y" coef="1"/>
    </fixed>
  </tendon>
  <actuator>
    <motor name="t1" tendon="t1"/>
    <motor name="t2" tendon="t2"/>
  </actuator>
</mujoco>
"""


def model_xml(task: str) -> str:
    """The MJCF model of ``task`` (the target geom sits at the task's goal)."""
    x, y, z = _target(task)
    return _XML.replace("{x}", repr(x)).replace("{y}", repr(y)).replace("{z}", repr(z))


def _target(task: str) -> tuple[float, float, float]:
    if task not in TARGETS:
        raise KeyError(f"point_mass_maze: unknown task {task!r}; known tasks: {list(TASKS)}")
    return TARGETS[task]


class Physics(mujoco.Physics):
    """Point-mass physics with the distance to a target."""

    def mass_to_target_dist(self, target: np.ndarray) -> float:
        return float(np.linalg.norm(np.asarray(target) - self.named.data.geom_xpos["pointmass"]))


class PointMassMaze(base.Task):
    """Reach one corner room's target with a smooth, control-penalised reward."""

    def __init__(self, task: str, random=None):
        self._target = np.array(_target(task))
        super().__init__(random=random)

    @property
    def target(self) -> np.ndarray:
        return self._target.copy()

    def initialize_episode(self, physics: Physics) -> None:
        # Start in the top-left room, drawn from the task's seeded generator.
        physics.data.qpos[0] = self.random.uniform(-0.29, -0.15)
        physics.data.qpos[1] = self.random.uniform(0.15, 0.29)
        super().initialize_episode(physics)

    def get_observation(self, physics: Physics) -> collections.OrderedDict:
        obs = collections.OrderedDict()
        obs["position"] = physics.position()
        obs["velocity"] = physics.velocity()
        return obs

    def get_reward(self, physics: Physics) -> float:
        control_reward = rewards.tolerance(
            physics.control(), margin=1, value_at_margin=0, sigmoid="quadratic"
        ).mean()
        small_control = (control_reward + 4) / 5
        near_target = rewards.tolerance(
            physics.mass_to_target_dist(self._target),
            bounds=(0, TARGET_SIZE),
            margin=TARGET_SIZE,
        )
        return float(near_target * small_control)


def make(
    task: str,
    *,
    seed: int | np.random.RandomState | None = None,
    time_limit: float = TIME_LIMIT,
    environment_kwargs: dict | None = None,
) -> control.Environment:
    """A dm_control environment for ``point_mass_maze`` task ``task`` (e.g. ``"reach_top_left"``).

    Args:
        task: one of :data:`TASKS`.
        seed: seed or RandomState of the start-position draw.
        time_limit: episode length in seconds (20 s = 1000 steps).
        environment_kwargs: extra ``control.Environment`` arguments (e.g.
            ``flat_observation=True``).
    """
    physics = Physics.from_xml_string(model_xml(task), common.ASSETS)
    return control.Environment(
        physics, PointMassMaze(task, random=seed), time_limit=time_limit,
        **(environment_kwargs or {}),
    )
