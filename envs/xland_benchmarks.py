"""XLand-MiniGrid benchmarks (sets of rulesets): generated locally from a seed, or loaded from a
file the user names.

xminigrid downloads its published benchmarks (``trivial-1m``, ``small-1m``, ...) from a hub at
run time, which a machine without network cannot do. This module gives rl_ring two other
sources, both in the file format ``xminigrid.benchmarks.load_benchmark_from_path`` reads (a
bz2-compressed pickle of a dict ``{"goals" [N, 5], "rules" [N, R, 7], "init_tiles" [N, K, 2],
"num_rules" [N]}``, uint8 except ``num_rules``):

* :func:`generate_benchmark`: deterministic from ``(kind, seed)``; ruleset ``i`` depends only
  on ``(seed, i)``, so the first ``n`` rulesets of a larger benchmark equal a benchmark of ``n``.

  - ``"trivial"``: one goal, no rules, 3 distractor objects. Goals: pick up an object
    (``AgentHoldGoal``), stand next to it (``AgentNearGoal``) or put one object next to
    another (``TileNearGoal``), as xminigrid's trivial benchmark (chain depth 0).
  - ``"small"``: a goal on an object that is not on the grid at the start, one rule that makes
    it (``AgentHoldRule`` X -> Y: picking X up turns it into Y; ``AgentNearRule`` X -> Y:
    stepping next to X turns it into Y), one distractor rule and 2 distractor objects.

* :func:`load_benchmark`: a benchmark file the user already has (xminigrid's published files
  or one written by :func:`save_benchmark`). **Loading unpickles the file**, which can run
  arbitrary code: load only files from paths you chose yourself, never from a path taken out
  of a downloaded dataset or checkpoint.

A benchmark *spec* names one of them in an env id (``xland:<xminigrid id>:<spec>``):
``trivial`` / ``small`` (seed 0, :data:`DEFAULT_NUM_RULESETS` rulesets), optionally with
``-s<seed>`` and ``-n<count>`` (``trivial-s3-n4096``), or ``file=<path>``.
"""

from __future__ import annotations

import bz2
import functools
import os
import pickle
import re
from pathlib import Path

import numpy as np

from rl_ring.io import atomic_output

KINDS = ("trivial", "small")
DEFAULT_NUM_RULESETS = 1024

# xminigrid.core.constants (checked against xminigrid in the tests; kept as plain ints so
# generation needs no jax).
FLOOR, BALL, SQUARE, PYRAMID, KEY, HEX, STAR = 1, 3, 4, 5, 7, 11, 12
OBJECT_TILES = (BALL, SQUARE, PYRAMID, KEY, HEX, STAR)
# Every colour except EMPTY (0) and BLACK (7, the floor's colour).
OBJECT_COLORS = (1, 2, 3, 4, 5, 6, 8, 9, 10, 11)
GOAL_LEN, RULE_LEN = 5, 7  # MAX_GOAL_ENCODING_LEN, MAX_RULE_ENCODING_LEN
# Goal / rule type ids of xminigrid.core.goals.check_goal / core.rules.check_rule.
GOAL_AGENT_HOLD, GOAL_AGENT_ON_TILE, GOAL_AGENT_NEAR, GOAL_TILE_NEAR = 1, 2, 3, 4
RULE_AGENT_HOLD, RULE_AGENT_NEAR = 1, 2

_SPEC = re.compile(r"(?P<kind>trivial|small)(?:-s(?P<seed>\d+))?(?:-n(?P<n>\d+))?")
KEYS = ("goals", "rules", "init_tiles", "num_rules")


def _objects(rng: np.random.Generator, k: int) -> list[tuple[int, int]]:
    """``k`` distinct (tile, colour) objects."""
    combos = [(t, c) for t in OBJECT_TILES for c in OBJECT_COLORS]
    idx = rng.choice(len(combos), size=k, replace=False)
    return [combos[int(i)] for i in idx]


def _trivial(rng: np.random.Generator) -> tuple[list, list, list]:
    a, b, *distractors = _objects(rng, 5)
    kind = int(rng.integers(3))
    if kind == 0:
        goal, on_grid = [GOAL_AGENT_HOLD, *a, 0, 0], [a]
    elif kind == 1:
        goal, on_grid = [GOAL_AGENT_NEAR, *a, 0, 0], [a]
    else:
        goal, on_grid = [GOAL_TILE_NEAR, *a, *b], [a, b]
    return goal, [], on_grid + distractors


def _small(rng: np.random.Generator) -> tuple[list, list, list]:
    x, y, d_in, d_out, *distractors = _objects(rng, 6)
    goal_type = (GOAL_AGENT_HOLD, GOAL_AGENT_NEAR)[int(rng.integers(2))]
    rule_type = (RULE_AGENT_HOLD, RULE_AGENT_NEAR)[int(rng.integers(2))]
    d_type = (RULE_AGENT_HOLD, RULE_AGENT_NEAR)[int(rng.integers(2))]
    goal = [goal_type, *y, 0, 0]
    rules = [[rule_type, *x, *y, 0, 0], [d_type, *d_in, *d_out, 0, 0]]
    return goal, rules, [x, d_in, *distractors]


_KIND_SHAPES = {"trivial": (_trivial, 1, 5), "small": (_small, 2, 4)}  # (fn, R, K)


def generate_benchmark(kind: str, num_rulesets: int = DEFAULT_NUM_RULESETS, *, seed: int = 0):
    """A benchmark of ``num_rulesets`` rulesets of ``kind`` ("trivial" or "small").

    Returns:
        ``xminigrid.benchmarks.Benchmark`` with numpy arrays: goals uint8 [N, 5], rules uint8
        [N, R, 7] (padded with empty rules), init_tiles uint8 [N, K, 2] (padded with empty
        tiles), num_rules int32 [N].

    Raises:
        ValueError: unknown kind, ``num_rulesets < 1`` or a negative seed.
    """
    if kind not in _KIND_SHAPES:
        raise ValueError(f"benchmark kind must be one of {KINDS}, got {kind!r}")
    if num_rulesets < 1 or seed < 0:
        raise ValueError(f"need num_rulesets >= 1 and seed >= 0, got {num_rulesets}, {seed}")
    fn, n_rules, n_tiles = _KIND_SHAPES[kind]
    goals = np.zeros((num_rulesets, GOAL_LEN), np.uint8)
    rules = np.zeros((num_rulesets, n_rules, RULE_LEN), np.uint8)
    tiles = np.zeros((num_rulesets, n_tiles, 2), np.uint8)
    num_rules = np.zeros(num_rulesets, np.int32)
    tag = KINDS.index(kind)
    for i in range(num_rulesets):
        rng = np.random.default_rng([int(seed), tag, i])
        goal, rs, objs = fn(rng)
        goals[i] = goal
        for j, r in enumerate(rs):
            rules[i, j] = r
        num_rules[i] = len(rs)
        tiles[i, : len(objs)] = objs
    return _benchmark({"goals": goals, "rules": rules, "init_tiles": tiles,
                       "num_rules": num_rules})


def _benchmark(arrays: dict):
    from xminigrid.benchmarks import Benchmark

    return Benchmark(**{k: arrays[k] for k in KEYS})


def save_benchmark(benchmark, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Writes ``benchmark`` as xminigrid's bz2 pickle (``load_benchmark_from_path`` reads it).

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    arrays = {k: np.asarray(getattr(benchmark, k)) for k in KEYS}
    what = "an XLand benchmark"
    with atomic_output(path, directory=False, overwrite=overwrite, what=what) as tmp:
        with bz2.open(tmp, "wb") as f:
            pickle.dump(arrays, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def load_benchmark(path: str | os.PathLike):
    """Loads a benchmark file (bz2 pickle). **Unpickles**: pass only paths you trust.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a bz2 pickle of a benchmark dict with the expected keys
            and shapes.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file {str(path)!r} does not exist")
    try:
        with bz2.open(path, "rb") as f:
            data = pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError) as err:
        raise ValueError(
            f"{path}: not an XLand-MiniGrid benchmark (expected a bz2-compressed pickle as "
            f"xminigrid.benchmarks.save_bz2_pickle writes): {err}"
        ) from err
    if not isinstance(data, dict) or set(KEYS) - set(data):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: expected a dict with keys {list(KEYS)}, found {found}")
    arrays = {k: np.asarray(data[k]) for k in KEYS}
    n = len(arrays["goals"])
    shapes = {k: a.shape for k, a in arrays.items()}
    ok = (
        arrays["goals"].ndim == 2 and arrays["goals"].shape[1] == GOAL_LEN
        and arrays["rules"].ndim == 3 and arrays["rules"].shape[2] == RULE_LEN
        and arrays["init_tiles"].ndim == 3 and arrays["init_tiles"].shape[2] == 2
        and all(len(a) == n for a in arrays.values()) and n > 0
    )
    if not ok:
        raise ValueError(
            f"{path}: expected goals [N, {GOAL_LEN}], rules [N, R, {RULE_LEN}], init_tiles "
            f"[N, K, 2], num_rules [N] with N >= 1, found {shapes}"
        )
    return _benchmark(arrays)


def parse_spec(spec: str) -> tuple[str, dict]:
    """``("generated", {kind, seed, num_rulesets})`` or ``("file", {"path": ...})``.

    Raises:
        ValueError: a spec that is neither (the message lists the grammar).
    """
    if spec.startswith("file="):
        path = spec[len("file="):]
        if not path:
            raise ValueError("benchmark spec 'file=' names no path")
        return "file", {"path": path}
    m = _SPEC.fullmatch(spec)
    if m is None:
        raise ValueError(
            f"unknown XLand benchmark {spec!r}: expected 'trivial' or 'small', optionally with "
            "'-s<seed>' and '-n<rulesets>' (e.g. 'trivial-s3-n4096'), or 'file=<path>' for a "
            "benchmark file you have (xminigrid's bz2 format)"
        )
    n = int(m["n"]) if m["n"] else DEFAULT_NUM_RULESETS
    if n < 1:
        raise ValueError(f"benchmark {spec!r}: need at least 1 ruleset")
    return "generated", {"kind": m["kind"], "seed": int(m["seed"] or 0), "num_rulesets": n}


@functools.lru_cache(maxsize=8)
def _cached(spec: str, mtime: float | None):
    source, args = parse_spec(spec)
    if source == "file":
        return load_benchmark(args["path"])
    return generate_benchmark(args["kind"], args["num_rulesets"], seed=args["seed"])


def resolve(spec: str):
    """The benchmark a spec names (cached; a file is reloaded when it changes)."""
    source, args = parse_spec(spec)
    mtime = None
    if source == "file":
        p = Path(args["path"]).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"benchmark file {args['path']!r} does not exist")
        mtime = p.stat().st_mtime
    return _cached(spec, mtime)
