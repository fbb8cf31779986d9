"""ExoRL's Jaco reach tasks on ``dm_control.manipulation`` (composer).

A Kinova Jaco arm with its three-finger hand stands on the standard manipulation arena
(arm base offset (0, 0.4, 0)). At the start of an episode the hand's grasp is set to a
random closure and the tool centre point (TCP) is placed, pointing down, uniformly in the
box (-0.2, -0.2, 0.02)-(0.2, 0.2, 0.4). The target is a fixed site of radius 0.05 at
(+-0.09, +-0.09, 0.001), one per task:

    reach_top_left (-0.09, 0.09)   reach_top_right (0.09, 0.09)
    reach_bottom_left (-0.09, -0.09)   reach_bottom_right (0.09, -0.09)

Reward: ``tolerance(|tcp - target|, bounds=(0, 0.05), margin=0.05)`` (Gaussian sigmoid,
0.1 at the margin); it depends on the arm's joint positions only, so relabelling a saved
physics state reproduces it exactly. The control step is 0.04 s and an episode lasts 10 s
(250 steps). Observations are the composer's feature observables (arm and hand
proprioception) in the environment's order; ExoRL flattens them by concatenation.
"""

from __future__ import annotations

import numpy as np
from dm_control import composer
from dm_control.composer import initializers
from dm_control.composer.variation import distributions
from dm_control.manipulation.shared import (
    arenas,
    cameras,
    constants,
    observations,
    robots,
    workspaces,
)
from dm_control.utils import rewards

TIME_LIMIT = 10.0
TARGET_RADIUS = 0.05
_TARGET_Z = 0.001
TARGETS: dict[str, tuple[float, float, float]] = {
    "reach_top_left": (-0.09, 0.09, _TARGET_Z),
    "reach_top_right": (0.09, 0.09, _TARGET_Z),
    "reach_bottom_left": (-0.09, -0.09, _TARGET_Z),
    "reach_bottom_right": (0.09, -0.09, _TARGET_Z),
}
TASKS = tuple(TARGETS)
# Where the TCP may start (and the box the target positions lie in).
TCP_BOX = workspaces.BoundingBox(lower=(-0.2, -0.2, 0.02), upper=(0.2, 0.2, 0.4))


class JacoReach(composer.Task):
    """Bring the Jaco hand's tool centre point to a fixed target site."""

    def __init__(
        self,
        task: str,
        obs_settings=observations.PERFECT_FEATURES,
        tcp_box: workspaces.BoundingBox = TCP_BOX,
    ):
        """Builds the task.

        Args:
            task: one of :data:`TASKS`.
            obs_settings: feature observations (default) or vision settings.
            tcp_box: where the TCP may start; ExoRL's box by default (tests narrow it to
                start near the target).
        """
        if task not in TARGETS:
            raise KeyError(f"jaco: unknown task {task!r}; known tasks: {list(TASKS)}")
        self._target_pos = np.array(TARGETS[task])
        self._arena = arenas.Standard()
        self._arm = robots.make_arm(obs_settings=obs_settings)
        self._hand = robots.make_hand(obs_settings=obs_settings)
        self._arm.attach(self._hand)
        self._arena.attach_offset(self._arm, offset=robots.ARM_OFFSET)
        self.control_timestep = constants.CONTROL_TIMESTEP
        self._tcp_initializer = initializers.ToolCenterPointInitializer(
            self._hand,
            self._arm,
            position=distributions.Uniform(*tcp_box),
            quaternion=workspaces.DOWN_QUATERNION,
        )
        # Camera observables exist (disabled for feature observations), as in ExoRL.
        self._task_observables = cameras.add_camera_observables(
            self._arena, obs_settings, cameras.FRONT_CLOSE
        )
        self._target = workspaces.add_target_site(
            body=self._arena.mjcf_model.worldbody,
            radius=TARGET_RADIUS,
            visible=True,
            rgba=constants.RED,
            name="target_site",
        )
        workspaces.add_bbox_site(
            body=self.root_entity.mjcf_model.worldbody,
            lower=tcp_box.lower,
            upper=tcp_box.upper,
            rgba=constants.GREEN,
            name="tcp_spawn_area",
        )
        self._tcp_site_id: dict[int, int] = {}

    @property
    def root_entity(self):
        return self._arena

    @property
    def arm(self):
        return self._arm

    @property
    def hand(self):
        return self._hand

    @property
    def task_observables(self):
        return self._task_observables

    @property
    def target(self) -> np.ndarray:
        return self._target_pos.copy()

    def initialize_episode(self, physics, random_state) -> None:
        self._hand.set_grasp(physics, close_factors=random_state.uniform())
        self._tcp_initializer(physics, random_state)
        physics.bind(self._target).pos = self._target_pos

    def tcp_position(self, physics) -> np.ndarray:
        """World position of the hand's tool centre point (needs an up-to-date forward pass)."""
        # Binding is slow; cache the site's index per compiled model.
        key = id(physics.model.ptr)
        if key not in self._tcp_site_id:
            self._tcp_site_id[key] = int(physics.bind(self._hand.tool_center_point).element_id)
        return physics.data.site_xpos[self._tcp_site_id[key]]

    def get_reward(self, physics) -> float:
        distance = np.linalg.norm(self.tcp_position(physics) - self._target_pos)
        return float(
            rewards.tolerance(distance, bounds=(0, TARGET_RADIUS), margin=TARGET_RADIUS)
        )


def make(
    task: str,
    *,
    seed: int | np.random.RandomState | None = None,
    time_limit: float = TIME_LIMIT,
    tcp_box: workspaces.BoundingBox = TCP_BOX,
) -> composer.Environment:
    """A composer environment for Jaco task ``task`` (e.g. ``"reach_top_left"``)."""
    return composer.Environment(
        JacoReach(task, tcp_box=tcp_box), time_limit=time_limit, random_state=seed
    )
