"""Grid-world source algorithms whose learning histories are short and easy to read.

Two sources for Algorithm Distillation on Dark Room and Key-to-Door, next to the tabular
Q-learner of :mod:`envs.learners.qlearning`:

* :class:`NoisyOracle` ("noise distillation"): the shortest-path oracle of the task, with a
  random action instead of the oracle's with probability ``epsilon``, and ``epsilon`` falling
  from episode to episode (:class:`NoiseSchedule`). It is not a learner: it knows the task,
  and its histories improve only because the injected noise decays.
* :class:`PosteriorSampling`: a Bayesian learner that knows the room's dynamics and that the
  reward sits on one unknown cell (Key-to-Door: an unknown key cell, then an unknown door
  cell), with a uniform prior over the room. It keeps the set of cells its observations
  have not ruled out, walks to one drawn uniformly from that set, and draws again when the
  cell is ruled out; once a reward has shown where the goal is, it walks there in every
  episode. Until it finds the goal its behaviour does not depend on the task at all, and its
  state is a function of what it has seen, so a context holding its history determines
  its next action distribution.
* ``PosteriorSampling(nearest=True)`` ("optimistic"): the same learner, but it walks to the
  nearest cell not ruled out (ties drawn at random), as an optimistic model-based learner
  (R-max with the room's dynamics known) would: a systematic sweep instead of random targets.
* ``PosteriorSampling(aligned=True)`` ("posterior-aligned", "optimistic-aligned"): a
  *shadow* for DAgger labels (:mod:`envs.learners.dagger`), where another policy acts and
  the learner only observes. Its target is its own hidden draw, which the acting policy's
  moves do not reveal, so its labels point at cells no context can tell; the aligned
  learner re-aims after every move that did not bring the agent closer to its target, at a
  cell not ruled out that the move did bring it closer to (drawn as its rule draws: any
  such cell, or the nearest), so its labels continue the walk the context shows. Acting
  alone without noise it never re-aims, and plays as the plain learner does.
* ``PosteriorSampling(memory=M)``: a shadow that remembers only the last ``M`` episodes (the
  current one included): cells it ruled out and goals it found in older episodes are
  forgotten. A model whose context holds ``W`` episodes cannot see what happened before
  them; a shadow with the whole history labels states with knowledge no window shows (a
  goal found 40 episodes ago, cells swept 100 episodes ago), targets the model can only
  average. With ``M = W`` the labels are what a searcher that sees the window would do.

Both follow the learner protocol of :mod:`envs.learners.history` (``act``, ``update``,
``end_episode``, ``epsilon``), and after each ``act`` say in ``intended`` which action they
chose before their noise replaced it (the action itself on a step without noise), which
:func:`envs.learners.history.collect_histories` records as ``intended_actions``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs import gridworld as gw
from envs import keydoor
from envs.darkroom import goal_ids

GRID_ENVS = ("darkroom", "darkroom-hard", "keydoor")
ROOM_SIZES = {"darkroom": 9, "darkroom-hard": 17, "keydoor": 9}


@dataclass(frozen=True)
class NoiseSchedule:
    """Per-episode probability of a uniformly random action within one history."""

    start: float = 1.0
    """Probability in the history's first episode."""
    end: float = 0.0
    """Probability once the decay is over."""
    decay_fraction: float = 0.5
    """Fraction of the history's episodes over which the probability moves linearly."""

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"NoiseSchedule.{name}={value!r}: expected a probability")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ValueError(
                f"NoiseSchedule.decay_fraction={self.decay_fraction!r}: expected in (0, 1]"
            )

    def at(self, episode: int, episodes: int) -> float:
        """The probability in episode ``episode`` of a history of ``episodes`` episodes."""
        horizon = max(1.0, self.decay_fraction * episodes)
        frac = min(1.0, episode / horizon)
        return self.start + frac * (self.end - self.start)


def _check_env(env_id: str, who: str) -> None:
    if env_id not in GRID_ENVS:
        raise ValueError(f"{who}: grid learners support {GRID_ENVS}, got {env_id!r}")


class _Noisy:
    """The shared epsilon-per-episode bookkeeping."""

    def __init__(self, episodes: int, noise: NoiseSchedule, seed: int) -> None:
        if episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {episodes}")
        self.episodes = episodes
        self.noise = noise
        self.episode = 0
        self.rng = np.random.default_rng(seed)
        # The intended move of a noisy step is drawn from its own stream, so recording it
        # leaves the actions (drawn from ``rng``) as they were without it.
        self.label_rng = np.random.default_rng([seed, 1])
        self.intended = -1
        """The action the last :meth:`act` chose before its noise (its action when none)."""

    @property
    def epsilon(self) -> float:
        """Random-action probability of the current episode."""
        return self.noise.at(self.episode, self.episodes)

    def _explore(self) -> bool:
        eps = self.epsilon
        return eps > 0 and self.rng.random() < eps


class NoisyOracle(_Noisy):
    """The task's shortest-path oracle with decaying random-action noise (see module doc).

    Args:
        env_id: "darkroom", "darkroom-hard" or "keydoor".
        task: the task id (goal cell, or key/door pair).
        num_actions: size of the action space (5).
        episodes: length of the history in episodes (sets the noise schedule).
        seed: seed of the noise stream.
        noise: the schedule of the random-action probability.
    """

    def __init__(
        self,
        env_id: str,
        task: int,
        num_actions: int,
        episodes: int,
        seed: int,
        noise: NoiseSchedule | None = None,
    ) -> None:
        _check_env(env_id, "NoisyOracle")
        super().__init__(episodes, noise or NoiseSchedule(), seed)
        self.num_actions = num_actions
        if env_id != "keydoor":
            size = ROOM_SIZES[env_id]
            if int(task) not in set(goal_ids(size)):
                raise ValueError(f"NoisyOracle: {task} is not a {env_id} goal id")
            goal = gw.cell_xy(int(task), size)
            self.targets = (goal, goal)
        else:
            self.targets = keydoor.key_door(int(task))

    def act(self, obs: np.ndarray) -> int:
        target = self.targets[int(len(obs) > 2 and obs[2] > 0.5)]
        pos = (int(obs[0]), int(obs[1]))
        if self._explore():
            self.intended = step_towards(pos, target, self.label_rng)
            return int(self.rng.integers(self.num_actions))
        self.intended = step_towards(pos, target, self.rng)
        return self.intended

    def update(self, obs, action, reward, next_obs, terminated, truncated) -> None:
        del obs, action, reward, next_obs, terminated, truncated

    def end_episode(self) -> None:
        self.episode += 1


class PosteriorSampling(_Noisy):
    """Posterior sampling over the unknown rewarding cell(s) (see the module docstring).

    Dark Room rewards the cell the agent stands on when it acts (the observation before the
    step); Dark Room hard and Key-to-Door reward the cell a step arrives on (hard: only the
    first arrival of an episode), and Key-to-Door's door only counts while the key is held,
    so only those visits rule a door cell out.

    Args:
        env_id: "darkroom", "darkroom-hard" (17 x 17) or "keydoor" (9 x 9 rooms).
        num_actions: size of the action space (5).
        episodes: length of the history in episodes (sets the noise schedule).
        seed: seed of the target draws and of the noise stream.
        noise: optional random-action probability per episode (default: none).
        nearest: walk to the nearest cell not ruled out instead of a uniformly drawn one.
        aligned: after a move that did not bring the agent closer to the target, re-aim
            at a cell not ruled out that it did bring the agent closer to (see the module
            docstring; for labelling another policy's moves).
        memory: remember only the last ``memory`` episodes, the current one included (0:
            the whole history; see the module docstring).
    """

    def __init__(
        self,
        env_id: str,
        num_actions: int,
        episodes: int,
        seed: int,
        noise: NoiseSchedule | None = None,
        *,
        nearest: bool = False,
        aligned: bool = False,
        memory: int = 0,
    ) -> None:
        _check_env(env_id, "PosteriorSampling")
        if memory < 0:
            raise ValueError(f"PosteriorSampling: memory={memory}: expected episodes >= 0 "
                             f"(0: the whole history)")
        self.nearest = nearest
        self.aligned = aligned
        self.memory = memory
        super().__init__(episodes, noise or NoiseSchedule(start=0.0, end=0.0), seed)
        self.env_id = env_id
        self.num_actions = num_actions
        self.size = ROOM_SIZES[env_id]
        cells = goal_ids(self.size)  # every cell but the centre, where episodes start
        # stage 0: looking for the goal (Dark Room) or the key; stage 1: for the door.
        self.candidates = [set(cells), set(cells)]
        self.found: list[tuple[int, int] | None] = [None, None]
        self.target: tuple[int, int] | None = None
        # With a memory: the last episode each cell was ruled out, and when each found cell
        # last gave its reward.
        self._ruled_at = [np.full(self.size * self.size, -1, np.int64) for _ in range(2)]
        self._found_cell: list[tuple[int, int] | None] = [None, None]
        self._found_at = [-1, -1]

    def _stage(self, obs: np.ndarray) -> int:
        return int(self.env_id == "keydoor" and obs[2] > 0.5)

    def _draw(self, stage: int, pos: tuple[int, int],
              came_from: tuple[int, int] | None = None) -> tuple[int, int] | None:
        """The next target: the found cell, else a cell not ruled out (with ``came_from``
        only the cells the move ``came_from`` -> ``pos`` brought closer; None if none)."""
        if self.found[stage] is not None:
            return self.found[stage]
        pool = [gw.cell_xy(c, self.size) for c in sorted(self.candidates[stage])]
        if came_from is not None:
            pool = [c for c in pool if gw.manhattan(pos, c) < gw.manhattan(came_from, c)]
        if self.nearest and pool:
            dist = np.array([gw.manhattan(pos, c) for c in pool])
            pool = [c for c, d in zip(pool, dist, strict=True) if d == dist.min()]
        if not pool:
            return None
        return pool[self.rng.integers(len(pool))]

    def act(self, obs: np.ndarray) -> int:
        stage = self._stage(obs)
        pos = (int(obs[0]), int(obs[1]))
        if (
            self.target is None
            or (self.found[stage] is not None and self.target != self.found[stage])
            or (self.found[stage] is None
                and gw.cell_id(*self.target, self.size) not in self.candidates[stage])
        ):
            self.target = self._draw(stage, pos)
        if self._explore() or self.target is None:
            action = int(self.rng.integers(self.num_actions))
            # With nothing left to look for it wanders, and means to.
            self.intended = (action if self.target is None
                             else step_towards(pos, self.target, self.label_rng))
            return action
        self.intended = step_towards(pos, self.target, self.rng)
        return self.intended

    def update(self, obs, action, reward, next_obs, terminated, truncated) -> None:
        del action, truncated
        if self.env_id == "darkroom":
            self._learn(0, obs, reward > 0)
            self._align(obs, next_obs)
            return
        if self.env_id == "darkroom-hard":
            # Rewarded on arrival, and only the first time in an episode: a cell arrived on
            # without reward is ruled out unless it is the goal already found.
            self._learn(0, next_obs, reward > 0)
            self._align(obs, next_obs)
            return
        # Key-to-Door: the reward belongs to the cell arrived on; the key is the first
        # reward, the door the reward that ends the episode while the key is held.
        stage = self._stage(obs)
        got_key = stage == 0 and next_obs[2] > 0.5
        self._learn(stage, next_obs, got_key if stage == 0 else bool(terminated and reward > 0))
        if got_key:
            self.target = None
        elif not terminated:
            self._align(obs, next_obs)

    def _align(self, obs: np.ndarray, next_obs: np.ndarray) -> None:
        """The aligned learner's re-aim after a move away from (or not towards) its target
        while it searches; a move that stayed put (no-op, wall) says nothing and keeps it."""
        stage = self._stage(next_obs)
        if not self.aligned or self.target is None or self.found[stage] is not None:
            return
        was, pos = (int(obs[0]), int(obs[1])), (int(next_obs[0]), int(next_obs[1]))
        if pos == was or gw.manhattan(pos, self.target) < gw.manhattan(was, self.target):
            return
        target = self._draw(stage, pos, came_from=was)
        if target is not None:
            self.target = target

    def _learn(self, stage: int, obs: np.ndarray, rewarded: bool) -> None:
        cell = (int(obs[0]), int(obs[1]))
        if rewarded:
            self.found[stage] = self._found_cell[stage] = cell
            self._found_at[stage] = self.episode
        else:
            self.candidates[stage].discard(gw.cell_id(*cell, self.size))
            if cell != self._found_cell[stage]:
                self._ruled_at[stage][gw.cell_id(*cell, self.size)] = self.episode

    def end_episode(self) -> None:
        self.episode += 1
        self.target = None
        if self.memory:
            oldest = self.episode - self.memory + 1  # the oldest episode still remembered
            for stage in (0, 1):
                self.candidates[stage] = {c for c in goal_ids(self.size)
                                          if self._ruled_at[stage][c] < oldest}
                self.found[stage] = (self._found_cell[stage]
                                     if self._found_at[stage] >= oldest else None)


def step_towards(pos: tuple[int, int], target: tuple[int, int], rng: np.random.Generator) -> int:
    """A move along a shortest path to ``target``, drawn uniformly among the moves that
    bring the agent closer; the no-op on the target.

    Drawing among the shortest paths (instead of always moving along x first) keeps two
    episodes to the same cell from being copies of each other, so a model distilling the
    histories has to find the goal from the rewards rather than replay the last episode.
    """
    moves = []
    if target[0] != pos[0]:
        moves.append(4 if target[0] > pos[0] else 3)
    if target[1] != pos[1]:
        moves.append(1 if target[1] > pos[1] else 2)
    if not moves:
        return 0
    return moves[int(rng.integers(len(moves)))] if len(moves) > 1 else moves[0]


__all__ = ["GRID_ENVS", "ROOM_SIZES", "NoiseSchedule", "NoisyOracle", "PosteriorSampling",
           "step_towards"]
