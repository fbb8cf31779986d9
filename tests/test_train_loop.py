"""The generic training loop on a stand-in model: optimiser, sharded step vs a plain loop,
loss decrease, metrics, in-process resume, NaN stop, checkpoints, bad configurations."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from model_oracle import tolerance
from test_train_standin import StandInModel, StandInSampler, loss_fn, standin_recipe

from rl_ring.attention import layout as layout_lib
from rl_ring.data.batch import TOKEN_FIELDS
from rl_ring.train.checkpoint import Checkpointer
from rl_ring.train.config import TrainConfig
from rl_ring.train.loader import MeshLoader, host_share
from rl_ring.train.loop import NonFiniteError, make_run_mesh, run
from rl_ring.train.metrics import read_metrics
from rl_ring.train.optim import OptimConfig, make_optimizer
from rl_ring.train.state import TrainState, build_state
from rl_ring.train.step import jit_step, make_step_fn

# f32 losses of the same math on different meshes differ only by reduction order.
F32_RTOL, F32_ATOL = tolerance("float32")


def _cfg(tmp_path, name="run", **kw) -> TrainConfig:
    base = dict(
        workdir=str(tmp_path / name), mesh="seq=1", devices=1, steps=40, batch_size=4,
        log_every=10, ckpt_every=20, progress=False, tensorboard=False,
        optim=OptimConfig(lr=3e-3, warmup_steps=5, weight_decay=1e-3),
    )
    base.update(kw)
    return TrainConfig(**base)


def _tree_equal(a, b) -> bool:
    eq = jax.tree.map(lambda x, y: bool(np.array_equal(np.asarray(x), np.asarray(y))), a, b)
    return all(jax.tree.leaves(eq))


# ------------------------------------------------------------------ optimiser


def test_schedule_warmup_cosine_and_decay_mask():
    cfg = OptimConfig(lr=1e-2, warmup_steps=10, min_lr_ratio=0.1, weight_decay=0.5, grad_clip=0)
    tx, sched = make_optimizer(cfg, total_steps=110)
    assert float(sched(0)) == 0.0
    assert float(sched(5)) == pytest.approx(5e-3)
    assert float(sched(10)) == pytest.approx(1e-2)
    # halfway through the cosine: (peak + end) / 2
    assert float(sched(60)) == pytest.approx((1e-2 + 1e-3) / 2, rel=1e-5)
    assert float(sched(110)) == pytest.approx(1e-3)
    # Zero gradients: Adam's step is 0, so only the decoupled weight decay acts, on matrices.
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
    state = tx.init(params)
    for _ in range(11):  # reach step 10, where the lr is the peak
        updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    np.testing.assert_allclose(updates["w"], -1e-2 * 0.5 * np.ones((2, 2)), rtol=1e-6)
    np.testing.assert_array_equal(updates["b"], np.zeros(2))


def test_gradient_clipping_bounds_the_update():
    cfg = OptimConfig(lr=1.0, warmup_steps=0, weight_decay=0.0, grad_clip=0.5, b1=0.0, b2=0.0)
    tx, _ = make_optimizer(cfg, total_steps=10)
    params = {"w": jnp.zeros(4)}
    grads = {"w": jnp.array([3.0, 4.0, 0.0, 0.0])}  # norm 5 -> clipped to 0.5
    clipped, _ = optax.clip_by_global_norm(0.5).update(grads, optax.EmptyState())
    np.testing.assert_allclose(clipped["w"], [0.3, 0.4, 0.0, 0.0], rtol=1e-6)
    updates, _ = tx.update(grads, tx.init(params), params)
    # b1 = b2 = 0: Adam's update is g / (|g| + eps) whatever the scale, i.e. the sign.
    np.testing.assert_allclose(updates["w"], [-1.0, -1.0, 0.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("bad", [dict(lr=0.0), dict(warmup_steps=-1), dict(b2=1.0),
                                 dict(grad_clip=-1.0), dict(min_lr_ratio=2.0)])
def test_optim_config_errors_name_the_option(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=f"optim.{name}"):
        OptimConfig(**bad).validate()


# ------------------------------------------------------------------ the step vs a plain loop


def _plain_losses(cfg: TrainConfig, steps: int) -> list[float]:
    """The oracle: an unsharded optax loop written directly on the NNX model."""
    model = StandInModel(nnx.Rngs(cfg.seed), dropout=False)
    graphdef, params = nnx.split(model, nnx.Param)
    tx, _ = make_optimizer(cfg.optim, cfg.steps)
    opt_state = tx.init(params)
    sampler = StandInSampler(batch_size=cfg.batch_size, seed=cfg.seed)

    @jax.jit
    def step(params, opt_state, tokens):
        def f(p):
            return loss_fn(nnx.merge(graphdef, p), tokens)[0]

        loss, grads = jax.value_and_grad(f)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state, sampler.next_batch().tokens())
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("mesh, devices", [("seq=1", 1), ("data=2,seq=2", 4)])
def test_sharded_step_matches_plain_loop(tmp_path, mesh, devices):
    cfg = _cfg(tmp_path, mesh=mesh, devices=devices, steps=6, log_every=1, ckpt_every=100)
    res = run(standin_recipe(dropout=False), cfg)
    np.testing.assert_allclose(res.losses, _plain_losses(cfg, 6), rtol=F32_RTOL, atol=F32_ATOL)
    # The state lives on the run's mesh.
    mesh_shape = res.state.params["inp"]["kernel"].sharding.mesh.shape
    assert mesh_shape["data"] == (2 if devices == 4 else 1)


def test_training_lowers_loss_and_logs_metrics(tmp_path):
    cfg = _cfg(tmp_path, steps=200, log_every=50, ckpt_every=100, tensorboard=True)
    res = run(standin_recipe(), cfg)
    assert res.step == 200 and res.losses.shape == (200,)
    start, end = res.losses[:5].mean(), res.losses[-20:].mean()
    assert end < 0.25 * start, (start, end)
    rows = read_metrics(cfg.workdir)
    assert [r["step"] for r in rows] == [1, 50, 100, 150, 200]
    for r in rows:
        assert {"loss", "lr", "grad_norm", "tokens_per_s", "wall_time", "mse"} <= set(r)
    _, sched = make_optimizer(cfg.optim, cfg.steps)
    # the logged lr is the rate the logged step's update used (schedule at step - 1)
    for r in rows:
        assert r["lr"] == pytest.approx(float(sched(r["step"] - 1)), rel=1e-6)
        assert r["loss"] == pytest.approx(res.losses[r["step"] - 1], rel=1e-6)
    assert all(r["tokens_per_s"] > 0 for r in rows)
    assert res.tokens_per_s > 0 and res.compile_s > 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["config"]["steps"] == 200 and saved["agent"] == "standin"
    assert saved["batch_shape"] == {"batch_size": 4, "seq_len": 16, "feature_dim": 3,
                                    "target_dim": 2}
    (events,) = (tmp_path / "run" / "tb").glob("events.out.tfevents.*")
    blob = events.read_bytes()
    assert b"loss" in blob and b"tokens_per_s" in blob and b"grad_norm" in blob


# ------------------------------------------------------------------ resume, checkpoints


class _Crash(Exception):
    pass


def test_resume_after_crash_is_bitwise_identical(tmp_path):
    kw = dict(steps=20, log_every=5, ckpt_every=10, eval_every=5)
    full = run(standin_recipe(), _cfg(tmp_path, "full", **kw))

    def crash_at_15(model, step):
        if step == 15:
            raise _Crash
        return {"probe": 1.0}

    with pytest.raises(_Crash):
        run(standin_recipe(), _cfg(tmp_path, "crashed", **kw), eval_fn=crash_at_15)
    assert Checkpointer(tmp_path / "crashed", read_only=True).steps() == [10]
    resumed = run(standin_recipe(), _cfg(tmp_path, "crashed", **kw))
    assert resumed.start_step == 10 and resumed.step == 20
    assert _tree_equal(full.state, resumed.state)
    np.testing.assert_array_equal(full.losses[10:], resumed.losses)
    # the hook's results were logged under eval/ at every eval_every step until the crash
    probes = [r["step"] for r in read_metrics(tmp_path / "crashed") if "eval/probe" in r]
    assert probes == [5, 10]


def test_resume_refuses_a_different_configuration(tmp_path):
    run(standin_recipe(), _cfg(tmp_path, steps=10, ckpt_every=10))
    with pytest.raises(ValueError, match=r"cannot resume from step 10.*batch_size: 4 -> 8"):
        run(standin_recipe(), _cfg(tmp_path, steps=20, batch_size=8))


def test_checkpoints_keep_last_k_and_ignore_unfinished(tmp_path):
    cfg = _cfg(tmp_path, steps=50, ckpt_every=10, keep_checkpoints=2)
    res = run(standin_recipe(), cfg)
    ck = Checkpointer(cfg.workdir, read_only=True)
    assert ck.steps() == [40, 50]
    # orbax finalises a step by renaming its temporary directory; one that was never
    # renamed (a save killed half-way) must not count as a checkpoint.
    (ck.directory / "60.orbax-checkpoint-tmp-1234" / "state").mkdir(parents=True)
    assert Checkpointer(cfg.workdir, read_only=True).steps() == [40, 50]
    state, meta, step = ck.restore(jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), res.state))
    assert step == 50 and meta["step"] == 50 and meta["sampler"] == {"step": 50}
    assert _tree_equal(state, res.state)
    assert meta["config"]["keep_checkpoints"] == 2


# ------------------------------------------------------------------ NaN stop


def test_nan_batch_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    cfg = _cfg(tmp_path, steps=60, ckpt_every=10, keep_checkpoints=1, log_every=4)
    with pytest.raises(NonFiniteError, match=r"step 27: loss is nan.*last good checkpoint is "
                                             r"step 20") as err:
        run(standin_recipe(nan_at=27), cfg)
    assert err.value.step == 27 and err.value.metric == "loss"
    ck = Checkpointer(cfg.workdir, read_only=True)
    assert ck.steps() == [20]
    meta, _ = ck.read_meta()
    assert meta["step"] == 20
    last = read_metrics(cfg.workdir)[-1]
    assert last["step"] == 27 and last["loss"] == "nan"


def _kept_states(recipe, cfg: TrainConfig) -> dict[int, TrainState]:
    """Every checkpoint the run kept, restored into the run's own state layout."""
    tx, _ = make_optimizer(cfg.optim, cfg.steps)
    abstract, _, _ = build_state(recipe.make_model, tx, cfg.seed, make_run_mesh(cfg),
                                 recipe.param_specs, materialize=False)
    ck = Checkpointer(cfg.workdir, read_only=True)
    out = {}
    for s in ck.steps():
        state, meta, step = ck.restore(abstract, s)
        assert step == s and meta["step"] == s
        out[s] = state
    return out


def _assert_all_finite(states: dict[int, TrainState]) -> None:
    for s, state in states.items():
        for path, leaf in jax.tree_util.tree_leaves_with_path(state):
            leaf = np.asarray(leaf)
            if np.issubdtype(leaf.dtype, np.inexact):
                assert np.all(np.isfinite(leaf)), f"checkpoint {s}: {jax.tree_util.keystr(path)}"


def test_huge_learning_rate_stops_before_saving_a_bad_state(tmp_path):
    # lr 1e30: step 1 moves every weight by ~1e30 (still finite, saved at once since
    # ckpt_every=1); step 2's forward pass overflows, so its loss is NaN and nothing of
    # step 2 may be saved.
    recipe = standin_recipe(dropout=False)
    cfg = _cfg(tmp_path, steps=40, ckpt_every=1, log_every=1,
               optim=OptimConfig(lr=1e30, warmup_steps=0, grad_clip=0.0, b2=0.0))
    with pytest.raises(NonFiniteError, match=r"step 2: loss is nan.*last good checkpoint is "
                                             r"step 1") as err:
        run(recipe, cfg)
    assert err.value.step == 2 and err.value.metric == "loss"
    assert err.value.last_checkpoint == 1
    kept = _kept_states(recipe, cfg)
    assert sorted(kept) == [1]
    # the saved state is the trained one (not the initial one) and every leaf is finite
    assert np.max(np.abs(np.asarray(kept[1].params["head"]["kernel"]))) > 1e29
    _assert_all_finite(kept)


def _drift_loss(model, t, *, mesh=None, rngs=None):
    # Linear in every weight, scaled so that sums of weights near f32's maximum stay finite
    # while the gradient (1e-4 / size) stays well above Adam's eps: the loss and gradient
    # stay finite however large the weights grow, so only the parameters can go non-finite.
    loss = sum(jnp.mean(1e-4 * x) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return loss, {"mse": loss}


def test_parameters_going_infinite_at_a_save_step_are_not_saved(tmp_path):
    # Adam normalises the gradient: each step moves every weight by the learning rate,
    # 3e38, so weights are finite (~ -3e38) after step 1 and -inf after step 2 while the
    # loss and gradient norm of step 2 (computed before its update) are still finite: only
    # the parameter check before saving step 2 can stop the run.
    recipe = dataclasses.replace(standin_recipe(dropout=False), loss_fn=_drift_loss)
    cfg = _cfg(tmp_path, steps=10, ckpt_every=1, log_every=1,
               optim=OptimConfig(lr=3e38, warmup_steps=0, grad_clip=0.0, weight_decay=0.0))
    with pytest.raises(NonFiniteError, match=r"step 2: params is nan.*last good checkpoint is "
                                             r"step 1") as err:
        run(recipe, cfg)
    assert err.value.step == 2 and err.value.metric == "params"
    assert err.value.last_checkpoint == 1
    rows = {r["step"]: r for r in read_metrics(cfg.workdir)}
    assert np.isfinite(float(rows[2]["loss"])) and np.isfinite(float(rows[2]["grad_norm"]))
    kept = _kept_states(recipe, cfg)
    assert sorted(kept) == [1]
    assert np.max(np.abs(np.asarray(kept[1].params["head"]["kernel"]))) > 1e38
    _assert_all_finite(kept)


# ------------------------------------------------------------------ configuration errors


def _never_built(tmp_path, match, recipe_kw=None, **cfg_kw):
    built = []
    recipe = standin_recipe(on_model=lambda: built.append(1), **(recipe_kw or {}))
    with pytest.raises(ValueError, match=match):
        run(recipe, _cfg(tmp_path, **cfg_kw))
    assert not built, "the model was built before the configuration error"


def test_bad_configs_fail_before_any_compute(tmp_path):
    _never_built(tmp_path, r"mesh spec 'seq=4' has 4 devices.* but 2 devices",
                 mesh="seq=4", devices=2)
    _never_built(tmp_path, r"sequence length 15 is not divisible by 2",
                 recipe_kw=dict(seq_len=15), mesh="seq=2", devices=2)
    _never_built(tmp_path, r"sequence length 12 is not divisible by 8 .*zigzag",
                 recipe_kw=dict(seq_len=12, layout="zigzag"), mesh="seq=4", devices=4)
    _never_built(tmp_path, r"batch_size=3 must be a positive multiple of the data x fsdp",
                 mesh="data=2", devices=2, batch_size=3)
    _never_built(tmp_path, r"TrainConfig.devices=99", devices=99)
    _never_built(tmp_path, r"TrainConfig.steps=0", steps=0)
    _never_built(tmp_path, r"compute_dtype='float16'", compute_dtype="float16")
    _never_built(tmp_path, r"optim.lr=-1.0", optim=OptimConfig(lr=-1.0))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_step_donates_the_incoming_state():
    mesh = make_run_mesh(TrainConfig(mesh="seq=1", devices=1))
    tx, sched = make_optimizer(OptimConfig(), 10)
    state, shardings, parts = build_state(lambda r: StandInModel(r), tx, 0, mesh)
    loader = MeshLoader(mesh, 2)
    batch = StandInSampler(batch_size=2, seed=0).next_batch()
    step = jit_step(make_step_fn(parts, loss_fn, tx, sched, mesh=mesh), shardings,
                    loader.shardings(batch), mesh)
    old = state.params["inp"]["kernel"]
    new, metrics = step(state, loader.place(batch))
    assert old.is_deleted() and not new.params["inp"]["kernel"].is_deleted()
    assert int(new.step) == 1 and float(metrics["lr"]) == float(sched(0))


# ------------------------------------------------------------------ the loader


def test_loader_places_rows_and_permutes_every_field():
    cfg = TrainConfig(mesh="data=2,seq=4", devices=8)
    mesh = make_run_mesh(cfg)
    assert host_share(mesh, 4) == host_share(mesh, 4).__class__(0, 4, 0, 1)
    batch = StandInSampler(batch_size=4, seed=3, seq_len=16).next_batch()
    for layout in ("contiguous", "zigzag", "striped"):
        placed = MeshLoader(mesh, 4, layout).place(batch)
        for f in TOKEN_FIELDS:
            want = getattr(batch, f)
            if layout != "contiguous":
                want = layout_lib.permute(want, 4, layout, axis=1)
            np.testing.assert_array_equal(np.asarray(placed[f]), want)
            assert placed[f].sharding.spec[:2] == (("data", "fsdp"), "seq")
        pos = np.asarray(placed["positions"])[0]
        # each token keeps its original global position
        np.testing.assert_array_equal(pos, layout_lib.layout_positions(16, 4, layout))


def test_loader_rejects_a_changing_sequence_length():
    mesh = make_run_mesh(TrainConfig(mesh="seq=2", devices=2))
    loader = MeshLoader(mesh, 2)
    loader.place(StandInSampler(batch_size=2, seed=0, seq_len=8).next_batch())
    with pytest.raises(ValueError, match="changed the sequence length from 8 to 10"):
        loader.place(StandInSampler(batch_size=2, seed=0, seq_len=10).next_batch())
