"""XLand-MiniGrid in the registry: adapter, benchmarks, expert, noisy-expert collection.

Oracles: xminigrid itself (its env, its benchmark loader, its goal/rule encoders) and a
breadth-first search over xminigrid's own step function for the expert's path lengths.
"""

import functools

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xminigrid
from xminigrid.benchmarks import load_benchmark_from_path
from xminigrid.core import constants as C
from xminigrid.core.goals import AgentHoldGoal, AgentNearGoal, TileNearGoal
from xminigrid.core.rules import AgentHoldRule, AgentNearRule

import envs
from envs import xland
from envs import xland_benchmarks as xb
from envs.collect import main as collect_main
from envs.xland_expert import (
    NoisyExpertSchedule,
    collect_noisy_expert,
    expert_action,
    noisy_expert_histories,
    store_to_groups,
)

XL = "xland:XLand-MiniGrid-R1-9x9:trivial-n40"
SMALL = "xland:XLand-MiniGrid-R1-9x9:small-n8"


def test_constants_match_xminigrid():
    T = C.Tiles
    assert (xb.FLOOR, xb.BALL, xb.KEY, xb.STAR) == (T.FLOOR, T.BALL, T.KEY, T.STAR)
    assert set(xb.OBJECT_TILES) <= {int(t) for t in C.PICKABLE}
    assert C.Colors.BLACK not in xb.OBJECT_COLORS and C.NUM_ACTIONS == xland.NUM_ACTIONS


def test_registry_ids_and_splits():
    ids = envs.list_envs()
    assert "xland:XLand-MiniGrid-R1-9x9" in ids and "xland:MiniGrid-Empty-8x8" in ids
    info = envs.env_info(XL)
    assert info.in_context and info.num_tasks == 40 and info.observation_shape == (50,)
    assert info.action_space == {"type": "discrete", "n": 6} and info.max_episode_steps == 243
    train, test = envs.task_split(XL, "train"), envs.task_split(XL, "test")
    assert len(test) == 8 and sorted(train + test) == list(range(40))
    assert test == envs.task_split(XL, "test")  # fixed
    mg = envs.env_info("xland:MiniGrid-Empty-8x8")
    assert not mg.in_context and mg.max_episode_steps == 4 * 64
    with pytest.raises(ValueError, match="only in-context families take a task"):
        envs.make("xland:MiniGrid-Empty-8x8", task=0)


@pytest.mark.parametrize(
    "bad, match",
    [
        ("xland:XLand-MiniGrid-R1-9x8", "unknown xminigrid env .*Did you mean"),
        ("xland:XLand-MiniGrid-R1-9x9:huge", "unknown XLand benchmark 'huge'"),
        ("xland:MiniGrid-Empty-8x8:trivial", "takes no benchmark"),
    ],
)
def test_bad_ids(bad, match):
    with pytest.raises(ValueError, match=match):
        envs.make(bad)


def test_bad_ruleset_and_bad_path(tmp_path):
    with pytest.raises(ValueError, match="task 40 is not a valid task id"):
        envs.make(XL, task=40)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        envs.make(f"xland:XLand-MiniGrid-R1-9x9:file={tmp_path}/none.bz2")
    junk = tmp_path / "junk.bz2"
    junk.write_bytes(b"not bz2")
    with pytest.raises(ValueError, match="not an XLand-MiniGrid benchmark"):
        xb.load_benchmark(junk)


def test_adapter_matches_xminigrid():
    env = envs.make(XL, task=7, seed=3)
    obs, info = env.reset()
    assert info == {"task": 7} and obs.dtype == np.float32 and obs.shape == (50,)
    # The same episode straight from xminigrid.
    bench = xb.resolve("trivial-n40")
    xenv, params = xminigrid.make("XLand-MiniGrid-R1-9x9")
    params = params.replace(ruleset=bench.get_ruleset(7))
    xstep = jax.jit(xenv.step)
    # Step xminigrid itself from the adapter's reset state, side by side.
    ts = env.unwrapped.timestep
    rng = np.random.default_rng(0)
    for _ in range(60):
        a = int(rng.integers(6))
        obs, r, term, trunc, _ = env.step(a)
        ts = xstep(params, ts, a)
        np.testing.assert_array_equal(obs.reshape(5, 5, 2), np.asarray(ts.observation))
        assert r == pytest.approx(float(ts.reward))
        assert term == bool(ts.last() & (ts.discount == 0))
        if term or trunc:
            break
    # Reset is xminigrid's reset with the ruleset of the task.
    env2 = envs.make(XL, task=7, seed=3)
    env2.reset()
    st = env2.unwrapped.timestep.state
    np.testing.assert_array_equal(np.asarray(st.goal_encoding), bench.goals[7])
    placed = {tuple(c) for c in np.asarray(st.grid).reshape(-1, 2).tolist()}
    for tile in bench.init_tiles[7]:
        assert tuple(tile) in placed or tuple(tile) == (0, 0)


def test_generated_benchmarks_read_back_by_xminigrid(tmp_path):
    for kind in xb.KINDS:
        b = xb.generate_benchmark(kind, 30, seed=2)
        path = xb.save_benchmark(b, tmp_path / f"{kind}.bz2")
        back = load_benchmark_from_path(str(path))
        for k in xb.KEYS:
            np.testing.assert_array_equal(np.asarray(getattr(back, k)), getattr(b, k))
        # Prefix-stable and seeded.
        np.testing.assert_array_equal(xb.generate_benchmark(kind, 10, seed=2).goals, b.goals[:10])
        assert not np.array_equal(xb.generate_benchmark(kind, 30, seed=3).goals, b.goals)
        with pytest.raises(OSError, match="already exist"):
            xb.save_benchmark(b, path)
    # The hand-written encodings are xminigrid's.
    b = xb.generate_benchmark("trivial", 30)
    for g in b.goals:
        t1, t2 = jnp.asarray(g[1:3]), jnp.asarray(g[3:5])
        enc = {1: AgentHoldGoal(tile=t1), 3: AgentNearGoal(tile=t1),
               4: TileNearGoal(tile_a=t1, tile_b=t2)}[int(g[0])].encode()
        np.testing.assert_array_equal(np.asarray(enc), g)
    s = xb.generate_benchmark("small", 10)
    for r in s.rules.reshape(-1, 7):
        cls = {1: AgentHoldRule, 2: AgentNearRule}[int(r[0])]
        enc = cls(tile=jnp.asarray(r[1:3]), prod_tile=jnp.asarray(r[3:5])).encode()
        np.testing.assert_array_equal(np.asarray(enc), r)


def test_loading_a_benchmark_from_a_path(tmp_path):
    path = xb.save_benchmark(xb.generate_benchmark("small", 12, seed=5), tmp_path / "b.bz2")
    env_id = xland.with_benchmark("xland:XLand-MiniGrid-R1-9x9", str(path))
    assert env_id.endswith(f":file={path.resolve()}")
    assert envs.env_info(env_id).num_tasks == 12
    env = envs.make(env_id, task=11, seed=0)
    env.reset()
    assert gym.make(env.spec).unwrapped.benchmark_spec == env.unwrapped.benchmark_spec
    np.testing.assert_array_equal(np.asarray(env.unwrapped.timestep.state.goal_encoding),
                                  xb.generate_benchmark("small", 12, seed=5).goals[11])


_BFS_WIDTH = 128  # states expanded per compiled call (one shape, one compile)


@functools.cache
def _expand_fn(env):
    """``(params, states [W]) -> children [6W]``: xminigrid's own step on every (state,
    action) pair, PRNG keys as raw data so the BFS bookkeeping stays in numpy."""

    def expand(params, batch):
        batch = batch.replace(state=batch.state.replace(
            key=jax.random.wrap_key_data(batch.state.key)))
        rep = jax.tree_util.tree_map(lambda x: jnp.repeat(x, 6, axis=0), batch)
        acts = jnp.tile(jnp.arange(6), _BFS_WIDTH)
        out = jax.vmap(env.step, in_axes=(None, 0, 0))(params, rep, acts)
        return out.replace(state=out.state.replace(key=jax.random.key_data(out.state.key)))

    return jax.jit(expand)


def _bfs_length(env, params, ts, max_depth=20):
    """Fewest steps to a goal from ``ts`` over all 6 actions, by xminigrid's own step
    (breadth-first; states deduplicated by grid, agent position, direction and pocket)."""
    tree = jax.tree_util.tree_map
    ts = ts.replace(state=ts.state.replace(key=jax.random.key_data(ts.state.key)))
    level = tree(lambda x: np.asarray(x)[None], ts)
    expand = _expand_fn(env)
    seen = set()
    for depth in range(1, max_depth + 1):
        n = len(level.step_type)
        children = []
        for lo in range(0, n, _BFS_WIDTH):
            idx = np.arange(lo, lo + _BFS_WIDTH) % n
            out = tree(np.asarray, expand(params, tree(lambda x, i=idx: x[i], level)))
            valid = 6 * min(_BFS_WIDTH, n - lo)
            if (out.discount[:valid] == 0).any():
                return depth
            s = out.state
            keep = []
            for i in range(valid):
                k = (s.grid[i].tobytes(), s.agent.position[i].tobytes(),
                     int(s.agent.direction[i]), s.agent.pocket[i].tobytes())
                if k not in seen:
                    seen.add(k)
                    keep.append(i)
            sel = np.asarray(keep, np.int64)
            children.append(tree(lambda x, sel=sel: x[sel], out))
        level = tree(lambda *xs: np.concatenate(xs), *children)
    return None


def test_expert_paths_are_shortest_on_a_small_room():
    bench = xb.generate_benchmark("trivial", 40)
    # 7x7 (25 free cells for 5 objects): with the trivial goals the targets are never walled
    # in by objects here, so a walk without moving objects is a shortest solution.
    xenv, params = xminigrid.make("XLand-MiniGrid-R1-9x9", height=7, width=7, view_size=5)
    act = jax.jit(expert_action)
    step, reset = jax.jit(xenv.step), jax.jit(xenv.reset)
    kinds = {1: 0, 3: 0}
    for rid in range(40):
        if int(bench.goals[rid, 0]) not in kinds or kinds[int(bench.goals[rid, 0])] >= 1:
            continue
        kinds[int(bench.goals[rid, 0])] += 1
        p = params.replace(ruleset=bench.get_ruleset(rid))
        ts0 = reset(p, jax.random.key(rid))
        ts, n = ts0, 0
        while not bool(ts.last()) and n < 50:
            ts, n = step(p, ts, act(ts)), n + 1
        assert bool(ts.discount == 0), f"ruleset {rid}: the expert did not reach the goal"
        assert n == _bfs_length(xenv, p, ts0), f"ruleset {rid}: expert path {n} steps"
    assert kinds == {1: 1, 3: 1}


def test_noisy_expert_reaches_goals_and_decays_noise():
    for lo in (0, 4):  # the 8 small rulesets, 4 at a time (one compiled shape)
        out = noisy_expert_histories(SMALL, np.arange(lo, lo + 4), steps=160,
                                     schedule=NoisyExpertSchedule(0.0, 0.0, 1.0))
        first = out["dones"].argmax(1)
        assert out["terminals"][np.arange(4), first].all()  # every small ruleset solved
        np.testing.assert_array_equal(out["actions"], out["expert_actions"])
    noisy = noisy_expert_histories(SMALL, np.zeros(4, np.int32), steps=160, seed=1)
    assert noisy["noise"][:, 0].tolist() == [1.0] * 4
    assert (np.diff(noisy["noise"], axis=1) <= 0).all()


def test_noisy_expert_collection_writes_the_xland_layout(tmp_path, capsys):
    h5py = pytest.importorskip("h5py")
    out = tmp_path / "x.hdf5"
    argv = [SMALL, "--policy", "noisy-expert", "--rulesets", "3,5", "--histories", "2",
            "--history-steps", "160", "--format", "xland", "--out", str(out), "--quiet"]
    assert collect_main(argv) == 0
    with h5py.File(out, "r") as f:
        assert sorted(f) == ["0", "1"]
        g = f["1"]
        assert g.attrs["ruleset-id"] == 5 and g.attrs["env-id"] == "XLand-MiniGrid-R1-9x9"
        assert g["states"].shape == (2, 160, 5, 5) and g["expert_actions"].shape == (2, 160)
        states, acts, dones = g["states"][:], g["actions"][:], g["dones"][:]
    # Same seed, same data, through the EpisodeStore path (optimal_actions extras).
    store = collect_noisy_expert(SMALL, [3, 5], histories_per_ruleset=2, steps=160,
                                 schedule=NoisyExpertSchedule())
    groups = store_to_groups(store)
    np.testing.assert_array_equal(groups[1].states, states)
    np.testing.assert_array_equal(groups[1].actions, acts)
    np.testing.assert_array_equal(groups[1].dones, dones)
    assert "optimal_actions" in store.extras
    obs = store.observations.reshape(-1, 5, 5, 2).astype(np.int64)
    np.testing.assert_array_equal(groups[0].states.reshape(-1, 5, 5)[:160],
                                  (obs[:160, ..., 0] * C.NUM_COLORS + obs[:160, ..., 1]))
    assert collect_main([SMALL, "--policy", "noisy-expert", "--rulesets", "99", "--format",
                         "xland", "--out", str(tmp_path / "y.hdf5"), "--quiet"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_adapter_optimal_action_walks_to_the_goal():
    env = envs.make(XL, task=envs.task_split(XL, "test")[0], seed=1)
    obs, _ = env.reset()
    n, term, trunc = 0, False, False
    while not (term or trunc) and n < 60:
        obs, r, term, trunc, _ = env.step(env.unwrapped.optimal_action(obs))
        n += 1
    assert term and r == pytest.approx(1 - 0.9 * n / 243)
