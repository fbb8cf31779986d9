"""Shared pieces of the square grid worlds (Dark Room, Key-to-Door).

Cells are addressed by ``(x, y)`` with ``x`` the column and ``y`` the row, both in
``[0, size)``, or by the cell id ``y * size + x``. The five actions are

    0 no-op, 1 up (y + 1), 2 down (y - 1), 3 left (x - 1), 4 right (x + 1);

a move into a wall leaves the agent where it is.
"""

from __future__ import annotations

import numpy as np

ACTION_NAMES = ("noop", "up", "down", "left", "right")
MOVES = np.array([[0, 0], [0, 1], [0, -1], [-1, 0], [1, 0]], dtype=np.int64)
NUM_ACTIONS = len(ACTION_NAMES)


def cell_id(x: int, y: int, size: int) -> int:
    """Cell id of column ``x``, row ``y``."""
    return int(y) * size + int(x)


def cell_xy(cell: int, size: int) -> tuple[int, int]:
    """``(x, y)`` of a cell id."""
    return int(cell) % size, int(cell) // size


def centre(size: int) -> tuple[int, int]:
    """The start cell: the middle of the grid."""
    return size // 2, size // 2


def manhattan(a: tuple[int, int], b: tuple[int, int]) -> int:
    """Fewest moves between two cells (no obstacles inside the room)."""
    return abs(a[0] - b[0]) + abs(a[1] - b[1])


def move(pos: tuple[int, int], action: int, size: int) -> tuple[int, int]:
    """The cell reached from ``pos`` by ``action``; walls stop the agent."""
    dx, dy = MOVES[action]
    return (min(max(pos[0] + int(dx), 0), size - 1), min(max(pos[1] + int(dy), 0), size - 1))


def step_towards(pos: tuple[int, int], target: tuple[int, int]) -> int:
    """The action of one shortest path to ``target``: along x first, then y; the no-op on
    it. The grid oracles walk it and collectors record it as the optimal action."""
    if pos[0] != target[0]:
        return 4 if target[0] > pos[0] else 3
    if pos[1] != target[1]:
        return 1 if target[1] > pos[1] else 2
    return 0


def random_shortest_actions(pos, target, rng: np.random.Generator) -> np.ndarray:
    """``[N]`` int64 actions, each drawn uniformly among the moves from ``pos[i]`` that bring
    the agent closer to ``target[i]`` (one or two of them); the no-op on the target.

    The "any-shortest" labels: a model trained on them learns the uniform distribution over
    shortest-path moves, where :func:`step_towards`'s labels (x first) teach one path.

    Args:
        pos, target: ``[N, 2]`` integer cells ``(x, y)``.
        rng: draws the choice where two moves are shortest.
    """
    pos, target = np.asarray(pos, np.int64), np.asarray(target, np.int64)
    if pos.shape != target.shape or pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"random_shortest_actions: pos {pos.shape} and target {target.shape} "
                         "must both be [N, 2] cells")
    dx, dy = target[:, 0] - pos[:, 0], target[:, 1] - pos[:, 1]
    x_move = np.where(dx > 0, 4, 3)
    y_move = np.where(dy > 0, 1, 2)
    pick_y = rng.random(len(pos)) < 0.5
    both = (dx != 0) & (dy != 0)
    out = np.where(dx != 0, x_move, np.where(dy != 0, y_move, 0))
    return np.where(both & pick_y, y_move, out).astype(np.int64)


def check_action(action, env_name: str) -> int:
    """Converts an action to int, raising a clear error for anything outside ``[0, 5)``."""
    a = np.asarray(action)
    if a.shape not in ((), (1,)) or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(
            f"{env_name}: action must be an integer in [0, {NUM_ACTIONS}), got {action!r}"
        )
    a = int(a.reshape(()))
    if not 0 <= a < NUM_ACTIONS:
        raise ValueError(f"{env_name}: action must be in [0, {NUM_ACTIONS}), got {a}")
    return a


def render_grid(
    size: int, marks: list[tuple[tuple[int, int], tuple[int, int, int]]], cell_px: int = 16
) -> np.ndarray:
    """An RGB image of the grid, ``[size * cell_px, size * cell_px, 3]`` uint8.

    Args:
        size: grid side.
        marks: ``((x, y), (r, g, b))`` cells to paint, later marks over earlier ones.
        cell_px: pixels per cell side.
    """
    img = np.full((size, size, 3), 30, dtype=np.uint8)
    img[(np.add.outer(np.arange(size), np.arange(size)) % 2) == 0] = 40
    for (x, y), colour in marks:
        # Row 0 of the image is the top of the room, i.e. the largest y.
        img[size - 1 - y, x] = colour
    return np.repeat(np.repeat(img, cell_px, axis=0), cell_px, axis=1)
