"""An XLand-MiniGrid expert: shortest paths on the known grid.

:func:`expert_action` ``(timestep) -> int32`` is pure JAX (jit / vmap it). It reads the full
state (grid, agent, pocket, goal, rules), picks a *target*: a set of agent states
``(y, x, direction)`` and the action that finishes from them, and walks a shortest path there
(breadth-first distances over the three moves forward / turn right / turn left, computed by
relaxation on the static grid):

* ``AgentHoldGoal(t)``: face a ``t`` and pick it up (holding ``t`` already: pick up);
* ``AgentNearGoal(t)``: the forward step after which a ``t`` is a neighbour;
* ``AgentOnTileGoal(t)`` (MiniGrid's Empty rooms): the forward step onto a ``t``;
* ``TileNearGoal(a, b)``: pick up ``a`` or ``b`` (the nearer), then put it down on a floor cell
  next to the other;
* holding something the goal does not need: put it down first.
* A goal object that is not on the grid, made by a rule (the "small" benchmarks):
  ``AgentHoldRule(x -> t)``: treat as pick up ``x``; ``AgentNearRule(x -> t)``: as stand
  next to ``x``.

On the trivial goals of an open room the paths are shortest (the tests check them against a
breadth-first search over xminigrid's own step); with other goals or unreachable targets the
expert turns right (action 1).

The planner alone (no registry, no collectors), so that the env adapter (``envs.xland``) can
offer ``optimal_action`` without importing the collectors; :mod:`envs.xland_expert` runs it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from envs.xland_benchmarks import (
    FLOOR,
    GOAL_AGENT_HOLD,
    GOAL_AGENT_NEAR,
    GOAL_AGENT_ON_TILE,
    GOAL_TILE_NEAR,
    RULE_AGENT_HOLD,
    RULE_AGENT_NEAR,
)

_INF = 10**6
_DY = jnp.array([-1, 0, 1, 0])  # xminigrid DIRECTIONS: up, right, down, left
_DX = jnp.array([0, 1, 0, -1])
_WALKABLE = (1, 6, 10)  # FLOOR, GOAL, DOOR_OPEN


def _front(m, fill):
    """``m`` [H, W] -> [H, W, 4]: the value of the cell in front of (y, x) facing d."""
    h, w = m.shape
    p = jnp.pad(m, 1, constant_values=fill)
    return jnp.stack([p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in
                      ((-1, 0), (0, 1), (1, 0), (0, -1))], axis=-1)


def _front_same_dir(v, fill):
    """``v`` [H, W, 4] -> [H, W, 4]: v at the cell in front of (y, x, d), same direction d."""
    return jnp.stack([_front(v[..., d], fill)[..., d] for d in range(4)], axis=-1)


def _near(m):
    return _front(m, False).any(-1)


def _is(grid, tile):
    return (grid[..., 0] == tile[0]) & (grid[..., 1] == tile[1])


def _targets(grid, pocket, goal, rules):
    """``(mask [H, W, 4] bool, final action)`` of the current subgoal (module docstring)."""
    h, w = grid.shape[:2]
    kind, t1, t2 = goal[0], goal[1:3], goal[3:5]
    empty_pocket = pocket[0] == 0

    def holds(t):
        return (pocket[0] == t[0]) & (pocket[1] == t[1])

    def present(t):
        return _is(grid, t).any() | holds(t)

    # A missing goal object made by a rule: aim at the rule's input instead.
    r_kind, r_in, r_out = rules[:, 0], rules[:, 1:3], rules[:, 3:5]
    makes = ((r_kind == RULE_AGENT_HOLD) | (r_kind == RULE_AGENT_NEAR)) & (
        (r_out[:, 0] == t1[0]) & (r_out[:, 1] == t1[1]))
    r = jnp.argmax(makes)
    use_rule = ((kind == GOAL_AGENT_HOLD) | (kind == GOAL_AGENT_NEAR)) & ~present(t1) & makes.any()
    kind = jnp.where(use_rule, jnp.where(r_kind[r] == RULE_AGENT_HOLD, GOAL_AGENT_HOLD,
                                         GOAL_AGENT_NEAR), kind)
    t1 = jnp.where(use_rule, r_in[r], t1)

    walk = jnp.isin(grid[..., 0], jnp.array(_WALKABLE))
    floor = grid[..., 0] == FLOOR
    f_walk = _front(walk, False)
    put_anywhere = _front(floor, False)
    is1, is2 = _is(grid, t1), _is(grid, t2)
    here = jnp.ones((h, w, 4), bool)
    # (mask, action) per mode; mode chosen below.
    hold = jnp.where(holds(t1), here, _front(is1, False))
    near = jnp.where(f_walk, _front(_near(is1), False), _near(is1)[..., None])
    on = jnp.where(f_walk, _front(is1, False), is1[..., None])
    put_near2 = _front(floor & _near(is2), False)
    put_near1 = _front(floor & _near(is1), False)
    pick_either = _front(is1 | is2, False)
    none = jnp.zeros((h, w, 4), bool)

    modes = [
        (put_anywhere, 4),  # 0: hands full with the wrong thing
        (hold, 3),  # 1
        (near, 0),  # 2
        (on, 0),  # 3
        (put_near2, 4),  # 4: holding a, put next to b
        (put_near1, 4),  # 5: holding b, put next to a
        (pick_either, 3),  # 6
        (none, 1),  # 7: unsupported goal
    ]
    mode = jnp.select(
        [
            kind == GOAL_AGENT_HOLD,
            (kind == GOAL_AGENT_NEAR) & holds(t1),
            kind == GOAL_AGENT_NEAR,
            kind == GOAL_AGENT_ON_TILE,
            (kind == GOAL_TILE_NEAR) & holds(t1),
            (kind == GOAL_TILE_NEAR) & holds(t2),
            (kind == GOAL_TILE_NEAR) & empty_pocket,
            kind == GOAL_TILE_NEAR,
        ],
        [jnp.where(holds(t1) | empty_pocket, 1, 0), 0, 2, 3, 4, 5, 6, 0],
        7,
    )
    masks = jnp.stack([m for m, _ in modes])
    acts = jnp.array([a for _, a in modes])
    return masks[mode], acts[mode], walk


def distances(target, walk):
    """Shortest numbers of moves to reach a ``target`` state, ``[H, W, 4]`` int32 (``_INF``:
    unreachable), over forward (into walkable cells) and the two turns."""
    h, w = walk.shape
    f_walk = _front(walk, False)
    d0 = jnp.where(target, 0, _INF).astype(jnp.int32)

    def relax(d):
        fwd = jnp.where(f_walk, _front_same_dir(d, _INF), _INF)
        turn = jnp.minimum(jnp.roll(d, -1, axis=-1), jnp.roll(d, 1, axis=-1))
        return jnp.minimum(d, jnp.minimum(fwd, turn) + 1)

    def cond(c):
        d, prev, i = c
        return (i < 4 * h * w) & jnp.any(d != prev)

    def body(c):
        d, _, i = c
        return relax(d), d, i + 1

    d, _, _ = jax.lax.while_loop(cond, body, (relax(d0), d0, 1))
    return jnp.minimum(d, _INF)


def expert_action(timestep) -> jax.Array:
    """The expert's action (int32) in an xminigrid ``TimeStep`` (module docstring)."""
    s = timestep.state
    target, final, walk = _targets(s.grid, s.agent.pocket, s.goal_encoding, s.rule_encoding)
    d = distances(target, walk)
    y, x, k = s.agent.position[0], s.agent.position[1], s.agent.direction
    fy, fx = y + _DY[k], x + _DX[k]
    h, w = walk.shape
    inside = (fy >= 0) & (fy < h) & (fx >= 0) & (fx < w)
    fyc, fxc = jnp.clip(fy, 0, h - 1), jnp.clip(fx, 0, w - 1)
    q_fwd = jnp.where(inside & walk[fyc, fxc], d[fyc, fxc, k], _INF)
    q = jnp.stack([q_fwd, d[y, x, (k + 1) % 4], d[y, x, (k - 1) % 4]])
    move = jnp.argmin(q).astype(jnp.int32)  # ties: forward first, then right, then left
    act = jnp.where(target[y, x, k], final, jnp.where(q[move] >= _INF, 1, move))
    return act.astype(jnp.int32)
