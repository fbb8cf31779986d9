"""A trained in-context policy's own histories, each step labelled by a source learner.

Imitation from a source's histories trains a model on the states the source visits; played,
the model visits its own, and its errors compound where the data never went (measured on
Key-to-Door: the sources never walk into a wall, the models' sampled play does in 38-88% of
its moves). DAgger's remedy (Ross et al., 2011) is to play the model, ask the expert what
it would have done in every state the model reached, and train on those labels too.

The grid sources of :mod:`envs.learners.grid` can label any history: their state is a
function of the transitions they have observed (the cells ruled out, the key and goal once
found, the target they walk to). :func:`labelled_rollouts` plays ``policy`` for a whole
history of episodes on each task, one row per task, and feeds every transition the policy
makes to a *shadow* learner of that row: the learner observes the policy's steps instead of
its own, and at each state records the action it would take (``intended_actions``). The
tokens of a training window are the policy's own (its actions and rewards), the targets the
shadow's actions (``HistoryOptions.label_key="intended_actions"``).

A policy that finds most goals early leaves few histories that search long in vain, and a
model with a long window then has nothing to learn what to do after many fruitless
episodes from. With ``withhold`` (Dark Room), history ``h`` draws a number of episodes
``W_h`` uniformly in ``[0, withhold]``; in its first ``W_h`` episodes every move of the
policy onto the goal cell is replaced by a move drawn uniformly among those that do not
reach it, so the goal stays unfound however the policy searches. The environment, the
record and the policy's context (``Policy.observe(..., actions=)``) all take the executed
move; the shadow observes it too, so it never rules the goal out and its labels go on
pointing at the cells not yet searched, the goal among them.

A good searcher keeps coming back to a withheld goal (the one cell near it that it has not
ruled out) and hovers there, which no real search does: on Dark Room hard the 256-episode
model spent 12.6% of its withheld steps next to the goal (4 of 288 cells). With
``withhold_turns`` the goal comes back after the policy has been turned away from it in that
many episodes, even before ``W_h``: the search stays fruitless only as long as it does not
reach the goal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from envs import gridworld as gw
from envs.learners.history import make_learner
from envs.recording import episode_seed
from envs.registry import make, space_dict
from rl_ring.data import EpisodeStore
from rl_ring.eval.env_spec import env_seed, policy_seed
from rl_ring.eval.env_spec import episode_seed as eval_episode_seed
from rl_ring.eval.policy import Policy


def labelled_rollouts(
    policy: Policy,
    env_id: str,
    tasks: Sequence[int],
    learners: Sequence[str],
    *,
    episodes: int,
    seed: int = 0,
    rows: int = 256,
    progress: Callable[[int], None] | None = None,
    memory: int = 0,
    withhold: int = 0,
    withhold_turns: int = 0,
) -> EpisodeStore:
    """``policy``'s learning histories on ``tasks``, labelled by shadow source learners.

    Args:
        policy: a batched in-context policy (``rl_ring.eval`` ``Policy`` protocol), which
            keeps its context across the episodes of a history.
        env_id: a grid family ("darkroom", "darkroom-hard", "keydoor").
        tasks: one history per entry.
        learners: the shadow learners' names (:data:`envs.learners.history.LEARNERS`);
            history ``h`` is labelled by ``learners[h % len(learners)]``.
        episodes: episodes per history.
        seed: seeds the envs and policy streams as an evaluation seeded ``seed`` does, and
            the shadow learners.
        rows: histories played side by side.
        progress: called with the number of episodes just finished.
        memory: the shadows remember only the last ``memory`` episodes, the current one
            included (0: the whole history; :class:`envs.learners.grid.PosteriorSampling`).
        withhold: Dark Room families: the goal is withheld from history ``h`` for its first
            ``W_h`` episodes, ``W_h`` uniform in ``[0, withhold]`` (module docstring; 0:
            never). The policy must accept ``observe(..., actions=)``.
        withhold_turns: the goal comes back after the episode in which the policy was
            turned away from it for the ``withhold_turns``-th time (0: only after ``W_h``).

    Returns:
        An EpisodeStore of the policy's episodes, history after history, with the per-step
        extra ``intended_actions`` (the shadow learner's action at every state) and the
        per-episode extras ``history_id``, ``task_id``, ``episode_in_history``,
        ``policy_noise`` (0: the policy's own sampling is its exploration) and
        ``goal_withheld`` (whether the goal was withheld in that episode).

    Raises:
        ValueError: no tasks, no learners, fewer than one episode or row; a negative
            ``withhold``, or one on a family other than Dark Room; a negative
            ``withhold_turns``, or one without ``withhold``.
    """
    tasks = [int(t) for t in tasks]
    if not tasks or not learners or episodes < 1 or rows < 1:
        raise ValueError(f"labelled_rollouts: expected tasks, learners, episodes >= 1 and "
                         f"rows >= 1; got {len(tasks)} tasks, learners {list(learners)}, "
                         f"episodes={episodes}, rows={rows}")
    if withhold < 0 or (withhold and not env_id.startswith("darkroom")):
        raise ValueError(f"labelled_rollouts: withhold={withhold} on {env_id!r}: expected "
                         f"episodes >= 0, and a Dark Room family (its goal is one cell) "
                         f"when > 0")
    if withhold_turns < 0 or (withhold_turns and not withhold):
        raise ValueError(f"labelled_rollouts: withhold_turns={withhold_turns}: expected "
                         f"episodes >= 0, and a withhold > 0 when > 0 (here {withhold})")
    held = np.array([np.random.default_rng(episode_seed(seed, h, tag=3)).integers(withhold + 1)
                     for h in range(len(tasks))], np.int64)
    histories: list[list[dict[str, np.ndarray]]] = []
    for lo in range(0, len(tasks), rows):
        histories += _play(policy, env_id, tasks, range(lo, min(len(tasks), lo + rows)),
                           learners, episodes, seed, progress, memory, held, withhold_turns)
    eps = [ep for hist in histories for ep in hist]
    withheld = np.array([bool(ep.pop("goal_withheld")) for ep in eps])
    n = len(tasks)
    env = make(env_id)
    try:
        meta = {"env_id": env_id, "policy": "rollouts+" + "+".join(learners), "seed": seed,
                "shadow_memory": memory, "withhold": withhold,
                "withhold_turns": withhold_turns,
                "action_space": space_dict(env.action_space),
                "observation_space": space_dict(env.observation_space),
                "episodes_per_history": episodes, "histories": n}
    finally:
        env.close()
    return EpisodeStore.from_episodes(eps, episode_extras={
        "history_id": np.repeat(np.arange(n, dtype=np.int64), episodes),
        "task_id": np.repeat(np.asarray(tasks, np.int64), episodes),
        "episode_in_history": np.tile(np.arange(episodes, dtype=np.int64), n),
        "policy_noise": np.zeros(n * episodes, np.float32),
        "goal_withheld": withheld},
        metadata=meta)


def _play(policy: Policy, env_id: str, tasks: list[int], hs: range, learners: Sequence[str],
          episodes: int, seed: int, progress,
          memory: int, held: np.ndarray,
          turns: int = 0) -> list[list[dict[str, np.ndarray]]]:
    """Histories ``hs`` side by side: one row each, ``episodes`` episodes in one context;
    history ``h``'s goal withheld for its first ``held[h]`` episodes, or (``turns`` > 0)
    until the policy has been turned away from it in ``turns`` episodes. Each episode dict
    carries ``goal_withheld``."""
    envs = [make(env_id, task=tasks[h], seed=env_seed(seed, h)) for h in hs]
    n = len(envs)
    num_actions = int(envs[0].action_space.n)
    override = bool(held[list(hs)].any())
    # The replacement moves' streams, one per history (drawn only when a move is replaced).
    swap_rngs = [np.random.default_rng(episode_seed(seed, h, tag=4)) for h in hs]
    turned = np.zeros(n, np.int64)  # episodes in which each row was turned away
    shadows = [make_learner(learners[h % len(learners)], num_actions, episodes,
                            episode_seed(seed, h, tag=2), env_id=env_id, task=tasks[h],
                            memory=memory)
               for h in hs]
    policy.reset(n, seeds=[policy_seed(seed, h) for h in hs])
    out: list[list[dict[str, np.ndarray]]] = [[] for _ in range(n)]
    try:
        for e in range(episodes):
            obs = np.stack([env.reset(seed=eval_episode_seed(seed, h, e))[0]
                            for env, h in zip(envs, hs, strict=True)]).astype(np.float32)
            active = np.ones(n, bool)
            rec = [{k: [] for k in ("observations", "actions", "rewards", "terminals",
                                    "timeouts", "next_observations", "intended_actions")}
                   for _ in range(n)]
            policy.begin_trial(active.copy())
            withheld = np.array([e < held[h] and not (turns and turned[i] >= turns)
                                 for i, h in enumerate(hs)])
            turned_now = np.zeros(n, bool)
            while active.any():
                actions = np.asarray(policy.act(obs, active.copy())).copy()
                reward, term, trunc = np.zeros(n), np.zeros(n, bool), np.zeros(n, bool)
                for i in np.flatnonzero(active):
                    if withheld[i]:
                        meant = int(actions[i])
                        actions[i] = _avoid_goal(envs[i].unwrapped, obs[i], meant, swap_rngs[i])
                        turned_now[i] |= int(actions[i]) != meant
                    shadow, a = shadows[i], int(actions[i])
                    shadow.act(obs[i])  # the source's choice in the policy's state
                    o, r, te, tr, _ = envs[i].step(a)
                    shadow.update(obs[i], a, float(r), o, bool(te), bool(tr))
                    for k, v in (("observations", obs[i].copy()), ("actions", a),
                                 ("rewards", float(r)), ("terminals", bool(te)),
                                 ("timeouts", bool(tr and not te)),
                                 ("next_observations", np.asarray(o, np.float32)),
                                 ("intended_actions", shadow.intended)):
                        rec[i][k].append(v)
                    obs[i], reward[i], term[i], trunc[i] = o, r, te, tr
                if override:
                    policy.observe(reward, term, trunc, active.copy(), actions=actions)
                else:
                    policy.observe(reward, term, trunc, active.copy())
                active &= ~(term | trunc)
            turned += turned_now
            for i in range(n):
                shadows[i].end_episode()
                ep = {k: np.asarray(v) for k, v in rec[i].items()}
                ep["observations"] = ep["observations"].astype(np.float32)
                ep["actions"] = ep["actions"].astype(np.int64)
                ep["rewards"] = ep["rewards"].astype(np.float32)
                ep["intended_actions"] = ep["intended_actions"].astype(np.int64)
                ep["goal_withheld"] = bool(withheld[i])
                out[i].append(ep)
            if progress is not None:
                progress(n)
    finally:
        for env in envs:
            env.close()
    return out


def _avoid_goal(env, obs: np.ndarray, action: int, rng: np.random.Generator) -> int:
    """``action``, or if it reaches ``env``'s goal from cell ``obs`` a move drawn uniformly
    among those that do not."""
    pos, size = (int(round(obs[0])), int(round(obs[1]))), env.size
    if gw.move(pos, action, size) != env.goal:
        return action
    others = [a for a in range(gw.NUM_ACTIONS) if gw.move(pos, a, size) != env.goal]
    return others[int(rng.integers(len(others)))]


__all__ = ["labelled_rollouts"]
