"""KV-cached decoding equals the recomputed forward pass: the cached-attention kernel against
dense attention (grouped heads, several new tokens, rows at different fill levels, a
sequence-sharded cache), the model's decode and prefill against its forward pass for every
agent's token layout (chains of several trials, learning histories across episodes) on one
device and on a cache sharded over 8 fake devices; one compilation however long the
context grows; errors for bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_oracle import assert_trees_close

import agents
from rl_ring.attention import reference_attention
from rl_ring.attention.decode import (
    DecodeOptions,
    decode_attention,
    new_slots,
    sharded_write_positions,
)
from rl_ring.data.store import EpisodeStore
from rl_ring.models.decode import Decoder, decode, init_cache, prefill, refill_bucket
from rl_ring.sharding import make_mesh

FIELDS = ("kind", "values", "positions", "timesteps")


# ---------------------------------------------------------------------------------- kernel
def _kernel_case(seed=0, b=4, cap=32, h=4, hk=2, d=8, m=3):
    rng = np.random.default_rng(seed)
    fill = np.array([0, 5, 13, 20])[:b]  # cached tokens per row before the step
    num_new = np.array([3, 1, 0, 3])[:b]  # row 2 is idle
    base = 100 * np.arange(b)[:, None]  # positions are global, not slot numbers
    cache_pos = (base + np.arange(cap)).astype(np.int32)
    ck = rng.normal(size=(1, b, hk, cap, d)).astype(np.float32)
    cv = rng.normal(size=(1, b, hk, cap, d)).astype(np.float32)
    # Slots never written hold NaN: a chunk wholly past every row's fill must not be read
    # (0 * NaN would poison the output), and masked slots inside a read chunk must not count.
    after = fill + num_new
    first_unread = -(-after.max() // 4) * 4  # chunk of 4 slots in the test below
    ck[..., first_unread:, :] = np.nan
    cv[..., first_unread:, :] = np.nan
    q = rng.normal(size=(b, m, h, d)).astype(np.float32)
    k = rng.normal(size=(b, m, hk, d)).astype(np.float32)
    v = rng.normal(size=(b, m, hk, d)).astype(np.float32)
    q_pos = (base + fill[:, None] + np.arange(m)).astype(np.int32)
    return dict(fill=fill, num_new=num_new, cache_pos=cache_pos, ck=ck, cv=cv, q=q, k=k, v=v,
                q_pos=q_pos, first_unread=first_unread)


def _kernel(c, mesh=None, k_chunk=4):
    slots, write, new_len = new_slots(jnp.asarray(c["fill"]), jnp.asarray(c["num_new"]),
                                      c["q"].shape[1])
    pos = sharded_write_positions(jnp.asarray(c["cache_pos"]), jnp.asarray(c["q_pos"]), slots,
                                  write, mesh=mesh)
    out, ck, cv = decode_attention(
        c["q"], c["k"], c["v"], c["q_pos"], c["ck"], c["cv"], pos, slots, write, new_len,
        layer=0, mesh=mesh, options=DecodeOptions(k_chunk=k_chunk),
    )
    return out, ck, cv


@pytest.mark.parametrize("mesh_spec", [None, "seq=4", "data=2,seq=4"])
def test_cache_attention_equals_dense_attention(mesh_spec):
    c = _kernel_case()
    devices = jax.devices()[: 4 if mesh_spec == "seq=4" else 8]
    mesh = None if mesh_spec is None else make_mesh(mesh_spec, devices)
    arrays = {key: val for key, val in c.items() if key != "first_unread"}
    out, ck, cv = (np.asarray(x) for x in jax.jit(lambda a: _kernel(a, mesh))(arrays))
    b, m = c["q"].shape[:2]
    for i in range(b):
        n, f = int(c["num_new"][i]), int(c["fill"][i])
        if n == 0:  # idle row: its cache is untouched
            np.testing.assert_array_equal(ck[:, i, :, : f + 3], c["ck"][:, i, :, : f + 3])
            continue
        # The row's keys in order: cached slots, then its real new tokens.
        keys = np.concatenate([c["ck"][0, i, :, :f].transpose(1, 0, 2), c["k"][i, :n]])
        vals = np.concatenate([c["cv"][0, i, :, :f].transpose(1, 0, 2), c["v"][i, :n]])
        pos = np.concatenate([c["cache_pos"][i, :f], c["q_pos"][i, :n]])
        # Dense oracle: every token of the row as a query, causal on global positions.
        q_all = np.zeros((1, f + n, *c["q"].shape[2:]), np.float32)
        q_all[0, f:] = c["q"][i, :n]
        want = reference_attention(q_all, keys[None], vals[None], causal=True,
                                   positions=pos[None].astype(np.int32))
        assert_trees_close(out[i, :n], np.asarray(want)[0, f:], what=f"row {i}")
        # The new keys/values sit in slots fill .. fill + n - 1.
        np.testing.assert_array_equal(ck[0, i, :, f : f + n], c["k"][i, :n].transpose(1, 0, 2))
        np.testing.assert_array_equal(cv[0, i, :, f : f + n], c["v"][i, :n].transpose(1, 0, 2))
        assert np.isnan(ck[0, i, :, c["first_unread"] :]).all()


# ---------------------------------------------------------------------------------- model
def synthetic_store(discrete: bool = False, episodes: int = 10, length: int = 9, seed: int = 0):
    rng = np.random.default_rng(seed)
    eps = []
    for _ in range(episodes):
        obs = rng.normal(size=(length, 3)).astype(np.float32)
        act = rng.integers(0, 3, length) if discrete else np.tanh(obs[:, :2]).astype(np.float32)
        eps.append(dict(observations=obs, actions=act, rewards=rng.random(length)))
    extras = {"history_id": np.zeros(episodes, int), "episode_in_history": np.arange(episodes)}
    meta = {"action_space": {"type": "discrete", "n": 3}} if discrete else {}
    return EpisodeStore.from_episodes(eps, episode_extras=extras, metadata=meta)


def agent_model_and_tokens(name: str, discrete: bool = False):
    """A tiny model of the agent and one sampled batch in its layout (rows of different
    lengths for DT/BC; several trials per AT chain; AD histories across episodes)."""
    agent = agents.get(name)
    cfg = agent.Config.tiny()
    # Grouped K/V heads, and weights large enough that tokens' predictions differ clearly.
    model_cfg = cfg.model.replace(num_heads=2, num_kv_heads=1, init_std=0.2)
    cfg = cfg.__class__(**{**cfg.__dict__, "model": model_cfg})
    store = synthetic_store(discrete)
    tokens = agent.make_sampler(store, cfg, batch_size=2, seed=1, pad_multiple=16).next_batch()
    model = agent.make_model(cfg, store, rngs=nnx.Rngs(0))
    return model, tokens.tokens()


@nnx.jit
def _forward(model, tokens):
    return model(tokens)


def forward(model, tokens):
    keep = (*FIELDS, "segment_ids", "valid")
    return np.asarray(_forward(model, {f: tokens[f] for f in keep}))


def feed(decoder: Decoder, tokens, schedule, start=None, m=3):
    """Feeds each row's real tokens through ``decoder.step`` in chunks of ``schedule[b]``
    (cycled; 0 = the row idles in that call); returns each row's predictions in order."""
    b = tokens["kind"].shape[0]
    total = tokens["valid"].sum(-1)
    done = np.zeros(b, int) if start is None else np.array(start)
    preds = [[] for _ in range(b)]
    call = 0
    while (done < total).any():
        num = np.array([min(schedule[i][call % len(schedule[i])], total[i] - done[i])
                        for i in range(b)])
        step = {}
        for f in FIELDS:
            a = tokens[f]
            out = np.zeros((b, m, *a.shape[2:]), a.dtype)
            for i in range(b):
                out[i, : num[i]] = a[i, done[i] : done[i] + num[i]]
            step[f] = out
        p = np.asarray(decoder.step(step, num))
        for i in range(b):
            preds[i].append(p[i, : num[i]])
        done += num
        call += 1
    return [np.concatenate(p) for p in preds]


MODEL_CASES = [
    ("at", False, None), ("dt", False, None), ("bc", False, None), ("ad", True, None),
    ("at", True, None),
    ("at", False, "seq=8"), ("dt", False, "seq=8"), ("bc", False, "seq=8"), ("ad", True, "seq=8"),
    ("at", False, "data=2,seq=4"),
]


@pytest.mark.parametrize("name, discrete, mesh_spec", MODEL_CASES)
def test_decode_equals_forward(name, discrete, mesh_spec):
    model, tokens = agent_model_and_tokens(name, discrete)
    want = forward(model, tokens)
    mesh = None if mesh_spec is None else make_mesh(mesh_spec)
    b, cap = tokens["kind"].shape
    dec = Decoder(model, b, cap, mesh=mesh, options=DecodeOptions(k_chunk=4))
    # Row 0 appends 3, 1, 2 tokens per call; row 1 2, idles, 3: rows at different fill levels.
    got = feed(dec, tokens, [[3, 1, 2], [2, 0, 3]])
    for i in range(b):
        n = int(tokens["valid"][i].sum())
        assert_trees_close(got[i], want[i, :n], what=f"{name} row {i}")
    np.testing.assert_array_equal(np.asarray(dec.cache.length), tokens["valid"].sum(-1))
    if mesh is not None:
        assert dec.cache.k.sharding.spec[3] == "seq"
    assert dec.compilations["decode"] <= 1  # at most once for the whole growing context


@pytest.mark.parametrize("mesh_spec", [None, "seq=8"])
def test_prefill_then_decode_equals_forward(mesh_spec):
    model, tokens = agent_model_and_tokens("at")
    want = forward(model, tokens)
    b, cap = tokens["kind"].shape
    mesh = None if mesh_spec is None else make_mesh(mesh_spec)
    dec = Decoder(model, b, cap, mesh=mesh)
    # Row 1 is decoded for 10 tokens first; then row 0 alone is prefilled with its first 37
    # tokens (row 1's cache must survive), then both rows decode the rest.
    first = feed(dec, {**tokens, "valid": np.stack([np.zeros(cap, bool), np.arange(cap) < 10])},
                 [[0], [3]])
    before = [np.asarray(a)[..., 1, :, :10, :] for a in (dec.cache.k, dec.cache.v)]
    prefix = {f: tokens[f] for f in FIELDS}
    prefix["valid"] = np.stack([np.arange(cap) < 37, np.arange(cap) < 10])
    last = np.asarray(dec.prefill(prefix, np.array([True, False])))
    assert_trees_close(last[0], want[0, 36], what="prefill prediction")
    after = [np.asarray(a)[..., 1, :, :10, :] for a in (dec.cache.k, dec.cache.v)]
    for x, y in zip(before, after, strict=True):
        np.testing.assert_array_equal(x, y)
    rest = feed(dec, tokens, [[4], [3]], start=[37, 10], m=4)
    assert_trees_close(first[1], want[1, :10], what="row 1 before")
    assert_trees_close(rest[0], want[0, 37:96], what="row 0 after prefill")
    assert_trees_close(rest[1], want[1, 10:96], what="row 1 after")


@pytest.mark.parametrize("mesh_spec", [None, "data=2,seq=4"])
def test_refill_of_some_rows_runs_over_those_rows_and_equals_the_forward(mesh_spec):
    # Four rows (the two sampled ones twice, at different fills) decoded for a while; then
    # rows 1 and 2 (a bucket of 2) and then row 3 alone (a bucket of 1, or of 2 = the batch
    # shards of data=2) are refilled: their predictions and caches equal the forward pass
    # over their contexts, the other rows' caches are untouched, and every row decodes on.
    model, two = agent_model_and_tokens("at")
    tokens = {f: np.concatenate([two[f], two[f]]) for f in (*FIELDS, "segment_ids", "valid")}
    want = forward(model, tokens)
    b, cap = tokens["kind"].shape
    mesh = None if mesh_spec is None else make_mesh(mesh_spec)
    dec = Decoder(model, b, cap, mesh=mesh)
    feed(dec, {**tokens, "valid": tokens["valid"] & (np.arange(cap) < 12)}, [[3], [2], [1], [3]])
    fills = np.array([12, 40, 25, 61])
    prefix = {f: tokens[f] for f in FIELDS}
    prefix["valid"] = np.arange(cap)[None, :] < fills[:, None]
    for rows in ([False, True, True, False], [False, False, False, True]):
        rows = np.array(rows)
        kept = [np.asarray(a)[:, ~rows] for a in (dec.cache.k, dec.cache.v)]
        last = np.asarray(dec.prefill(prefix, rows))
        for i in np.flatnonzero(rows):
            assert_trees_close(last[i], want[i, fills[i] - 1], what=f"row {i} refilled")
        np.testing.assert_array_equal(last[~rows], 0.0)
        for x, a in zip(kept, (dec.cache.k, dec.cache.v), strict=True):
            np.testing.assert_array_equal(x, np.asarray(a)[:, ~rows])
    np.testing.assert_array_equal(np.asarray(dec.cache.length), fills)
    rest = feed(dec, tokens, [[2], [3], [1], [2]], start=fills, m=3)
    for i in range(b):
        n = int(tokens["valid"][i].sum())
        assert_trees_close(rest[i], want[i, fills[i]:n], what=f"row {i} after the refills")
    # Buckets: 2 rows, then 1 (2 on the data=2 mesh); one compilation per bucket size.
    assert dec.compilations["prefill"] == (2 if mesh is None else 1)


def test_refill_bucket_sizes():
    assert [refill_bucket(r, 158) for r in (1, 2, 3, 5, 64, 65, 129, 158)] == [
        1, 2, 4, 8, 64, 128, 158, 158]
    assert [refill_bucket(r, 8, multiple=4) for r in (1, 3, 5, 8)] == [4, 4, 8, 8]
    assert len({refill_bucket(r, 158) for r in range(1, 159)}) <= 158 .bit_length() + 1


def test_one_compilation_as_the_context_grows_and_the_cache_is_donated():
    model, tokens = agent_model_and_tokens("at")
    b, cap = tokens["kind"].shape
    dec = Decoder(model, b, cap)
    old = dec.cache
    first = {f: tokens[f][:, :3] for f in FIELDS}
    dec.step(first, np.array([3, 3]))
    compiled, executables = dec.compilations, dec._step._cache_size()
    assert compiled["decode"] <= 1 and executables >= 1
    # Donated: the first cache's buffers were handed to the step, not copied.
    assert old.k.is_deleted() and old.v.is_deleted()
    # 31 more calls, the fill growing to 96: nothing is traced or compiled again.
    feed(dec, tokens, [[2], [3]], start=[3, 3], m=3)
    assert dec.compilations == compiled
    assert dec._step._cache_size() == executables
    np.testing.assert_array_equal(np.asarray(dec.cache.length), [96, 96])
    # A second decoder of the same model and shapes reuses the compiled step.
    again = Decoder(model, b, cap)
    again.step(first, np.array([3, 3]))
    assert again.compilations == {"decode": 0, "prefill": 0}


def test_prefill_and_decode_functions_under_jit():
    model, tokens = agent_model_and_tokens("dt")  # rows of 9 and 15 real tokens
    want = forward(model, tokens)
    b, cap = tokens["kind"].shape

    @nnx.jit
    def run(model, tokens):
        cache = init_cache(model, b, cap)
        head = {**tokens, "valid": tokens["valid"] & (np.arange(cap) < 6)}
        pred_head, cache = prefill(model, head, cache, jnp.ones(b, bool))
        new = {f: tokens[f][:, 6:9] for f in FIELDS}
        pred_new, cache = decode(model, new, cache, jnp.array([3, 3]))
        return pred_head, pred_new, cache.length

    pred_head, pred_new, length = run(model, {**{f: tokens[f] for f in FIELDS},
                                              "valid": tokens["valid"]})
    assert_trees_close(np.asarray(pred_head)[:, :6], want[:, :6], what="prefill")
    assert_trees_close(np.asarray(pred_new), want[:, 6:9], what="decode")
    np.testing.assert_array_equal(np.asarray(length), [9, 9])


def test_bad_input_raises_clear_errors():
    model, tokens = agent_model_and_tokens("dt")
    b, cap = tokens["kind"].shape
    dec = Decoder(model, b, cap)
    step = {f: tokens[f][:, :3] for f in FIELDS}
    with pytest.raises(ValueError, match="missing fields \\['timesteps'\\]"):
        dec.step({f: step[f] for f in FIELDS[:3]}, np.array([3, 3]))
    with pytest.raises(ValueError, match="tokens\\['values'\\] has shape"):
        dec.step({**step, "values": step["values"][:, :2]}, np.array([3, 3]))
    with pytest.raises(ValueError, match="\\[batch=2, m\\]"):
        dec.step({f: v[:1] for f, v in step.items()}, np.array([3]))
    with pytest.raises(ValueError, match="num_new must lie in \\[0, 3\\]"):
        dec.step(step, np.array([4, 0]))
    for _ in range(cap // 3):
        dec.step(step, np.array([3, 1]))
    with pytest.raises(ValueError, match="KV cache overflow in rows \\[0\\]: row 0 holds 15 of 16"):
        dec.step(step, np.array([3, 1]))
    bad = {f: tokens[f] for f in FIELDS}
    bad["valid"] = np.ones((b, cap), bool)
    bad["valid"][0, 3] = False
    with pytest.raises(ValueError, match="rows \\[0\\] are not a prefix"):
        dec.prefill(bad, np.array([True, False]))
    with pytest.raises(ValueError, match="capacity 12 is not divisible by the 8 devices"):
        init_cache(model, 2, 12, mesh=make_mesh("seq=8"))
    with pytest.raises(ValueError, match="batch 3 is not divisible by the 2 devices"):
        Decoder(model, 3, 16, mesh=make_mesh("data=2,seq=4"))
    with pytest.raises(ValueError, match="k_chunk must be a positive int"):
        DecodeOptions(k_chunk=0)
