"""The trajectory transformer on one device: config checks, blockwise FFN, rotary, layouts,
losses, remat, dropout and parameter partition rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from model_oracle import assert_trees_close, random_tokens

from rl_ring import sharding
from rl_ring.attention import layout as attn_layout
from rl_ring.data.batch import Kind
from rl_ring.models import (
    ModelConfig,
    TrajectoryTransformer,
    action_loss,
    param_specs,
    placement,
    shard_model,
)
from rl_ring.models.layers import FeedForward, blockwise_apply, chunk_size, dropout, rotary

AT_KINDS = (Kind.RTG, Kind.STATE, Kind.ACTION, Kind.REWARD)
OBS, ACT = 3, 2


def at_widths(obs=OBS, act=ACT):
    return {Kind.RTG: 1, Kind.STATE: obs, Kind.ACTION: act, Kind.REWARD: 2}


def tiny_cfg(**kw) -> ModelConfig:
    feats = tuple((k.name, w) for k, w in at_widths().items())
    return ModelConfig.tiny(obs_dim=OBS, act_dim=ACT, token_features=feats, **kw)


def at_tokens(seq=32, batch=2, **kw):
    return random_tokens(AT_KINDS, at_widths(), batch=batch, seq=seq, act_dim=ACT, **kw)


def loss_of(model, tokens, **kw):
    pred = model(tokens, **kw)
    return action_loss(pred, tokens, discrete=model.cfg.discrete_actions)[0]


# Compiled once per config: eager dispatch of a scanned model is slower than compiling it.
grad_of = nnx.jit(nnx.grad(loss_of))


def grad_and_loss(model, tokens, mesh=None):
    def f(model, tokens):
        return nnx.value_and_grad(lambda m: loss_of(m, tokens, mesh=mesh))(model)

    return nnx.jit(f)(model, tokens)
apply = nnx.jit(lambda model, tokens: model(tokens))


@nnx.jit
def apply_dropout(model, tokens, key):
    return model(tokens, deterministic=False, rngs=nnx.Rngs(dropout=key))


# ------------------------------------------------------------------------------ config checks
@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(width=30, num_heads=4), "num_heads=4 does not divide width=30"),
        (dict(num_heads=4, num_kv_heads=3), "num_kv_heads=3 does not divide num_heads=4"),
        (dict(attn_impl="flash"), r"attn_impl='flash' is invalid: expected one of"),
        (dict(attn_layout="spiral"), r"attn_layout='spiral'"),
        (dict(remat="some"), r"remat='some'"),
        (dict(dropout=1.0), r"dropout=1.0 is invalid"),
        (dict(width=6, num_heads=2), "even head_dim"),
        (dict(action_low=(0.0,)), "action_low has 1 entries, expected act_dim=2"),
        (dict(token_features=(("GOAL", 3),)), "token_features entry"),
        (dict(discrete_actions=True, squash_actions=True), "continuous actions only"),
    ],
)
def test_bad_config_fails_before_compute(kw, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig.tiny(obs_dim=OBS, act_dim=ACT, **kw)


def test_bad_tokens_fail_with_named_field():
    model = TrajectoryTransformer(tiny_cfg(), rngs=nnx.Rngs(0))
    tok = at_tokens(seq=12)
    mesh = sharding.make_mesh("seq=8")
    with pytest.raises(ValueError, match=r"sequence length 12 is not divisible by 8 .*seq axis"):
        model(tok, mesh=mesh)
    with pytest.raises(ValueError, match=r"not divisible by 16 .*zigzag"):
        TrajectoryTransformer(tiny_cfg(attn_layout="zigzag"), rngs=nnx.Rngs(0))(
            at_tokens(seq=24), mesh=mesh
        )
    with pytest.raises(ValueError, match=r"batch size 1 is not divisible by the 2 batch shards"):
        model(at_tokens(seq=16, batch=1), mesh=sharding.make_mesh("data=2,seq=4"))
    with pytest.raises(ValueError, match=r"missing fields \['timesteps'\]"):
        model({k: v for k, v in tok.items() if k != "timesteps"})
    with pytest.raises(ValueError, match=r"tokens\['valid'\] has shape \(2, 11\)"):
        model({**tok, "valid": tok["valid"][:, :11]})
    with pytest.raises(ValueError, match=r"has 2 features but token kind STATE needs 3"):
        model({**tok, "values": tok["values"][..., :2]})
    with pytest.raises(ValueError, match="no rngs were given"):
        TrajectoryTransformer(tiny_cfg(dropout=0.1), rngs=nnx.Rngs(0))(tok, deterministic=False)


# ------------------------------------------------------------------------------ blockwise FFN
@pytest.mark.parametrize("chunk", [4, 5, 64])
def test_blockwise_ffn_matches_plain_ffn_values_and_grads(chunk):
    cfg = tiny_cfg(ffn_chunk=chunk)
    ffn = FeedForward(cfg, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(2), (2, 40, cfg.width))
    w = jax.random.normal(jax.random.key(3), (2, 40, cfg.width))

    def f(ffn, x, blockwise):
        return jnp.sum(ffn(x, blockwise=blockwise) * w)

    plain = nnx.value_and_grad(f, argnums=(0, 1))(ffn, x, False)
    block = nnx.value_and_grad(f, argnums=(0, 1))(ffn, x, True)
    assert_trees_close(block[0], plain[0], what="ffn value")
    assert_trees_close(nnx.state(block[1][0]), nnx.state(plain[1][0]), what="ffn param grads")
    assert_trees_close(block[1][1], plain[1][1], what="ffn input grads")


def test_blockwise_apply_never_materialises_whole_hidden():
    # The hidden activation is [.., chunk, 7]; only ever one chunk of it exists per step.
    seen = []

    def fn(x):
        seen.append(x.shape)
        return jnp.tanh(x @ jnp.ones((4, 7))) @ jnp.ones((7, 4))

    x = jnp.ones((2, 48, 4))
    y = blockwise_apply(fn, x, chunk=8, mesh=None)
    np.testing.assert_allclose(y, fn(x), rtol=1e-6)
    assert seen[0] == (2, 1, 8, 4)  # [batch, seq shards, chunk, features] inside the map
    assert chunk_size(48, 8) == 8 and chunk_size(40, 16) == 10 and chunk_size(7, 4) == 1


def test_blockwise_ffn_on_sequence_mesh_matches_one_device():
    cfg = tiny_cfg(ffn_chunk=4)
    ffn = FeedForward(cfg, rngs=nnx.Rngs(1))
    mesh = sharding.make_mesh("data=2,seq=4")
    x = jax.random.normal(jax.random.key(2), (2, 32, cfg.width))
    expect = ffn(x, blockwise=False)
    xs = jax.device_put(x, sharding.batch_sharding(mesh, 3))
    got = nnx.jit(lambda f, x: f(x, mesh=mesh))(ffn, xs)
    assert_trees_close(got, expect, what="sharded blockwise ffn")


# ------------------------------------------------------------------------------ rotary / layout
def test_rotary_scores_depend_only_on_relative_position():
    q = jax.random.normal(jax.random.key(0), (1, 1, 1, 8))
    k = jax.random.normal(jax.random.key(1), (1, 1, 1, 8))

    def score(pq, pk):
        rq = rotary(q, jnp.array([[pq]]), base=100.0)
        rk = rotary(k, jnp.array([[pk]]), base=100.0)
        return float(jnp.sum(rq * rk))

    assert score(5, 2) == pytest.approx(score(1005, 1002), rel=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 3), rel=1e-3)
    # Hand-computed: head_dim 2 rotates (x1, x2) by the position itself (frequency 1).
    x = jnp.array([[[[1.0, 0.0]]]])
    out = rotary(x, jnp.array([[3]]), base=100.0)
    np.testing.assert_allclose(out[0, 0, 0], [np.cos(3.0), np.sin(3.0)], rtol=1e-6)


@pytest.mark.parametrize("layout", ["zigzag", "striped", "random"])
def test_model_is_invariant_to_token_layout(layout):
    model = TrajectoryTransformer(tiny_cfg(), rngs=nnx.Rngs(0))
    tok = at_tokens(seq=32, num_segments=2, pad=3)
    expect = model(tok)
    if layout == "random":
        perm = np.random.default_rng(0).permutation(32)
        fwd = lambda x: np.take(x, perm, axis=1)
        back = lambda y: np.take(y, np.argsort(perm), axis=1)
    else:
        fwd = lambda x: attn_layout.permute(x, 4, layout)
        back = lambda y: attn_layout.unpermute(y, 4, layout)
    got = back(np.asarray(model({k: fwd(v) for k, v in tok.items()})))
    assert_trees_close(got, expect, what=f"{layout} layout")
    # Padding and segment boundaries matter: dropping the segment ids changes the output.
    other = model({**tok, "segment_ids": np.zeros_like(tok["segment_ids"])})
    assert not np.allclose(other, expect, atol=1e-4)


def test_timesteps_clip_to_table_and_change_output():
    cfg = tiny_cfg()
    model = TrajectoryTransformer(cfg, rngs=nnx.Rngs(0))
    tok = at_tokens(seq=16)
    big = {**tok, "timesteps": np.full_like(tok["timesteps"], cfg.max_timestep + 100)}
    edge = {**tok, "timesteps": np.full_like(tok["timesteps"], cfg.max_timestep)}
    assert_trees_close(apply(model, big), apply(model, edge), what="clipped timesteps")
    assert not np.allclose(apply(model, tok), apply(model, edge), atol=1e-4)


def test_causality_future_tokens_do_not_change_past_predictions():
    model = TrajectoryTransformer(tiny_cfg(), rngs=nnx.Rngs(0))
    tok = at_tokens(seq=16)
    changed = {k: v.copy() for k, v in tok.items()}
    changed["values"][:, 9:] += 1.0  # tokens 9.. change
    a, b = np.asarray(model(tok)), np.asarray(model(changed))
    assert_trees_close(a[:, :9], b[:, :9], what="past predictions")
    assert not np.allclose(a[:, 9:], b[:, 9:], atol=1e-4)


# ------------------------------------------------------------------------------ losses
def test_action_loss_continuous_matches_hand_computation():
    pred = np.array([[[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]]], np.float32)
    target = np.array([[[0.0, 0.0], [5.0, 5.0], [1.0, 1.0]]], np.float32)
    mask = np.array([[1.0, 0.0, 2.0]], np.float32)
    loss, metrics = action_loss(
        jnp.asarray(pred), {"target": target, "loss_mask": mask}, discrete=False
    )
    # token 0: (1 + 4) / 2 = 2.5; token 2: (4 + 4) / 2 = 4; weighted (2.5 + 2*4) / 3 = 3.5
    assert float(loss) == pytest.approx(3.5)
    assert float(metrics["num_targets"]) == 3.0


def test_action_loss_discrete_matches_hand_computation():
    logits = np.log(np.array([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]]], np.float32))
    ids = np.array([[0, 1, 2]], np.int32)
    mask = np.array([[1.0, 1.0, 0.0]], np.float32)
    loss, metrics = action_loss(
        jnp.asarray(logits), {"target_ids": ids, "loss_mask": mask}, discrete=True
    )
    assert float(loss) == pytest.approx(-(np.log(0.7) + np.log(0.1)) / 2, rel=1e-5)
    assert float(metrics["accuracy"]) == pytest.approx(0.5)
    empty, _ = action_loss(
        jnp.asarray(logits), {"target_ids": ids, "loss_mask": 0 * mask}, discrete=True
    )
    assert float(empty) == 0.0


def test_squashed_actions_stay_in_the_box():
    cfg = tiny_cfg(
        squash_actions=True, action_low=(-2.0, 0.0), action_high=(2.0, 0.5), init_std=2.0
    )
    pred = np.asarray(TrajectoryTransformer(cfg, rngs=nnx.Rngs(0))(at_tokens(seq=16)))
    assert pred[..., 0].min() >= -2.0 and pred[..., 0].max() <= 2.0
    assert pred[..., 1].min() >= 0.0 and pred[..., 1].max() <= 0.5
    assert pred[..., 0].max() - pred[..., 0].min() > 0.5  # not collapsed to a constant


# ------------------------------------------------------------------------------ remat / dropout
@pytest.mark.parametrize("policy", ["full", "dots", "save_attention"])
def test_remat_policies_give_identical_gradients(policy):
    tok = at_tokens(seq=16)
    base = TrajectoryTransformer(tiny_cfg(), rngs=nnx.Rngs(0))
    remat = TrajectoryTransformer(tiny_cfg(remat=policy), rngs=nnx.Rngs(0))
    g0 = grad_of(base, tok)
    g1 = grad_of(remat, tok)
    assert_trees_close(nnx.state(g1), nnx.state(g0), what=f"remat={policy}")


def test_dropout_is_random_per_key_and_off_when_deterministic():
    model = TrajectoryTransformer(tiny_cfg(dropout=0.3), rngs=nnx.Rngs(0))
    tok = at_tokens(seq=16)
    a = apply_dropout(model, tok, jax.random.key(1))
    b = apply_dropout(model, tok, jax.random.key(1))
    c = apply_dropout(model, tok, jax.random.key(2))
    assert_trees_close(a, b, what="same dropout key")
    assert not np.allclose(a, c, atol=1e-4)
    assert not np.allclose(a, apply(model, tok), atol=1e-4)
    # A raw key works as well as an nnx.Rngs.
    d = model(tok, deterministic=False, rngs=jax.random.key(1))
    assert not np.allclose(d, apply(model, tok), atol=1e-4)
    x = jnp.ones((200_000,))
    y = np.asarray(dropout(x, 0.3, jax.random.key(0)))
    frac_zero = float(np.mean(y == 0))
    assert abs(frac_zero - 0.3) < 5 * np.sqrt(0.3 * 0.7 / x.size)  # 5 sigma of a binomial
    assert abs(float(y.mean()) - 1.0) < 0.01


# ------------------------------------------------------------------------------ partition rules
def test_every_parameter_matches_a_partition_rule():
    cfg = tiny_cfg(num_heads=4, num_kv_heads=2)
    model = TrajectoryTransformer(cfg, rngs=nnx.Rngs(0))
    mesh = sharding.make_mesh("fsdp=2,tensor=4")
    specs = param_specs(model, mesh)
    flat = {
        jax.tree_util.keystr(p): s
        for p, s in jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, P))
    }
    n_params = len(jax.tree_util.tree_leaves(nnx.state(model)))
    assert len(flat) == n_params
    q = [s for k, s in flat.items() if "'wq'" in k and "'kernel'" in k]
    ffn_out = [s for k, s in flat.items() if "'w_out'" in k]
    assert q == [P(None, "fsdp", "tensor")] and ffn_out == [P(None, "tensor", "fsdp")]
    # Embedding tables, input maps and the action head stay replicated (see placement.RULES).
    embed_and_head = [s for k, s in flat.items() if k.startswith(("['embed']", "['head']"))]
    assert embed_and_head and all(s == P() or set(s) == {None} for s in embed_and_head)
    # The specs have the shape of the pure parameter dict the trainer holds.
    assert jax.tree.structure(specs, is_leaf=lambda x: isinstance(x, P)) == jax.tree.structure(
        nnx.to_pure_dict(nnx.state(model))
    )

    # A new parameter without logical axes, or with one no rule maps, fails loudly, naming it.
    model.head.extra = nnx.Param(jnp.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"no placement rule.*head/extra \(3, 5\) declares no"):
        param_specs(model, mesh)
    model.head.extra = placement.param(jnp.zeros((3, 5)), placement.EMBED, "experts")
    with pytest.raises(ValueError, match=r"head/extra \(3, 5\) has logical axes \['experts'\]"):
        param_specs(model, mesh)
    model.head.extra = placement.param(jnp.zeros((3, 5)), placement.EMBED)
    with pytest.raises(ValueError, match=r"head/extra \(3, 5\) declares 1 logical axes"):
        param_specs(model, mesh)


def test_sharded_parameters_give_the_same_loss_and_gradients(capfd):
    cfg = tiny_cfg(num_heads=4)
    tok = at_tokens(seq=16, batch=4)
    expect = grad_and_loss(TrajectoryTransformer(cfg, rngs=nnx.Rngs(0)), tok)
    mesh = sharding.make_mesh("data=2,fsdp=2,tensor=2")
    model = shard_model(TrajectoryTransformer(cfg, rngs=nnx.Rngs(0)), mesh)
    assert model.blocks.ffn.w_in[...].sharding.spec == P(None, "fsdp", "tensor")
    placed = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim)) for k, v in tok.items()}
    capfd.readouterr()
    got = grad_and_loss(model, placed, mesh=mesh)
    assert_trees_close(got[0], expect[0], what="fsdp/tensor loss")
    assert_trees_close(nnx.state(got[1]), nnx.state(expect[1]), what="fsdp/tensor grads")
    # Every reshard the compiler needs is a proper collective: none replicates a whole tensor.
    assert "Involuntary full rematerialization" not in capfd.readouterr().err


# ------------------------------------------------------------------------------ memory
def test_blockwise_ffn_never_keeps_the_whole_hidden_activation():
    # Compiled (not run) training steps: the whole-sequence FFN keeps [T, ffn] hiddens per
    # layer for the backward pass; the blockwise one keeps only chunk inputs, whatever the
    # remat policy. 2048 tokens x 256 hidden x 4 bytes = 2 MiB per hidden tensor.
    from experiments.bench.model_memory import step_memory

    seq, depth = 2048, 2
    hidden = seq * 256 * 4
    base = ModelConfig(
        obs_dim=3,
        act_dim=2,
        width=64,
        depth=depth,
        num_heads=2,
        ffn_mult=4,
        dropout=0.0,
        attn_impl="blockwise",
        attn_options=(("q_chunk", 128), ("k_chunk", 128)),
    )
    temp = {}
    for remat in ("none", "dots"):
        for chunk in (64, seq):
            cfg = base.replace(remat=remat, ffn_chunk=chunk)
            temp[remat, chunk] = step_memory(cfg, batch=1, seq=seq)["temp"]
        saved = temp[remat, seq] - temp[remat, 64]
        assert saved >= 1.5 * depth * hidden, f"remat={remat}: blockwise FFN saves {saved} bytes"
    assert temp["dots", 64] < temp["none", 64]  # remat keeps less than no remat


def test_bfloat16_compute_stays_within_bfloat16_tolerance_of_float32():
    tok = at_tokens(seq=32)
    out = {}
    for dt in ("float32", "bfloat16"):
        model = TrajectoryTransformer(tiny_cfg(dtype=dt, init_std=0.2), rngs=nnx.Rngs(0))
        out[dt] = nnx.jit(nnx.value_and_grad(loss_of))(model, tok)
        assert model(tok).dtype == jnp.float32  # predictions and loss stay float32
    assert_trees_close(out["bfloat16"][0], out["float32"][0], dtype="bfloat16", what="loss")
    assert_trees_close(
        nnx.state(out["bfloat16"][1]), nnx.state(out["float32"][1]), dtype="bfloat16", what="grads"
    )
    assert float(out["bfloat16"][0]) != float(out["float32"][0])  # bf16 really was used
