"""The trainer on the real agents: every agent learns through ``train(cfg)``, ring meshes
follow the single-device reference loss, the CLI trains and ``load_checkpoint`` returns the
trained model, bad configurations fail before any compute."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from model_oracle import tolerance

import agents
from agents.run import load_checkpoint, saved_config, train
from rl_ring.cli.plan import main as plan_main
from rl_ring.cli.train import main as cli_main
from rl_ring.data.store import EpisodeStore
from rl_ring.train import TrainConfig
from rl_ring.train.checkpoint import Checkpointer
from rl_ring.train.config import run_model_config
from rl_ring.train.metrics import read_metrics
from rl_ring.train.optim import OptimConfig

W = np.array([[1.5, -1.0, 0.5], [-0.5, 2.0, 1.0]], np.float32)  # [act, obs]
# Losses of the same f32 steps on different meshes differ only in summation order (measured:
# 1.8e-7 relative over 4 steps); the project's one float32 tolerance.
MESH_RTOL, MESH_ATOL = tolerance("float32")


def policy_store(discrete: bool, episodes: int = 24, length: int = 12, seed: int = 0):
    """Random states; the action is tanh(W s) (continuous) or argmax([W s, 0]) (3 ids)."""
    rng = np.random.default_rng(seed)
    eps = []
    for _ in range(episodes):
        obs = rng.normal(size=(length, 3)).astype(np.float32)
        z = obs @ W.T
        if discrete:
            act = np.argmax(np.concatenate([z, np.zeros((length, 1))], axis=1), axis=1)
        else:
            act = np.tanh(z).astype(np.float32)
        eps.append(dict(observations=obs, actions=act,
                        rewards=rng.random(length).astype(np.float32)))
    extras = {"history_id": np.arange(episodes) % 2,
              "episode_in_history": np.arange(episodes) // 2}
    space = ({"type": "discrete", "n": 3} if discrete
             else {"type": "box", "low": [-1.0, -1.0], "high": [1.0, 1.0]})
    return EpisodeStore.from_episodes(eps, episode_extras=extras,
                                      metadata={"action_space": space})


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {d: str(policy_store(d).save(root / ("disc" if d else "cont"))) for d in (False, True)}


def _cfg(tmp_path, data, agent="at", name="run", **kw) -> TrainConfig:
    base = dict(agent=agent, preset="tiny", data=data, workdir=str(tmp_path / name),
                mesh="seq=1", devices=1, steps=200, batch_size=8, log_every=1,
                ckpt_every=1000, progress=False, tensorboard=False,
                optim=OptimConfig(lr=3e-3, warmup_steps=20))
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("agent, discrete, dtype", [
    ("at", False, "bfloat16"), ("dt", False, "float32"), ("bc", False, "float32"),
    ("ad", True, "float32"),
])
def test_every_agent_learns_through_train(tmp_path, data_dirs, agent, discrete, dtype):
    res = train(_cfg(tmp_path, data_dirs[discrete], agent=agent, steps=150,
                     compute_dtype=dtype))
    start, end = res.losses[:3].mean(), res.losses[-10:].mean()
    assert np.isfinite(res.losses).all()
    assert end < 0.1 * start, f"{agent}: loss {start:.4f} -> {end:.4f}"
    # bfloat16 compute keeps float32 parameters (and optimiser moments)
    assert {x.dtype for x in jax.tree.leaves(res.state.params)} == {np.dtype("float32")}
    assert res.model.cfg.dtype == dtype


def test_ring_meshes_follow_the_single_device_reference(tmp_path, data_dirs):
    kw = dict(steps=4, optim=OptimConfig(lr=1e-3, warmup_steps=0))
    ref = train(_cfg(tmp_path, data_dirs[False], name="ref", attention="reference", **kw))
    runs = {
        "seq=8": train(_cfg(tmp_path, data_dirs[False], name="s8", mesh="seq=8", devices=8,
                            attention="ring", **kw)),
        "data=2,seq=4 zigzag": train(_cfg(tmp_path, data_dirs[False], name="d2s4",
                                          mesh="data=2,seq=4", devices=8, attention="ring",
                                          layout="zigzag", **kw)),
        # parameters and Adam moments sharded by the partition rules over fsdp and tensor
        "fsdp=2,seq=2,tensor=2": train(_cfg(tmp_path, data_dirs[False], name="fst",
                                            mesh="fsdp=2,seq=2,tensor=2", devices=8,
                                            attention="ring", **kw)),
    }
    kernel = runs["fsdp=2,seq=2,tensor=2"].state.params["blocks"]["attn"]["wq"]["kernel"]
    assert tuple(kernel.sharding.spec) == (None, "fsdp", "tensor")
    assert ref.losses.shape == (4,) and ref.losses[0] > 0.05
    for name, res in runs.items():
        np.testing.assert_allclose(res.losses, ref.losses, rtol=MESH_RTOL, atol=MESH_ATOL,
                                   err_msg=name)
        # the ring really ran: the saved config says so
        assert res.model.cfg.attn_impl == "ring"


def test_auto_attention_without_a_seq_axis_trains_blockwise_on_the_reference_numbers(
        tmp_path, data_dirs):
    # ModelConfig's default is the dense oracle; "auto" on a mesh without a seq axis trains
    # the same exact attention blockwise, and an explicit choice of the agent is kept.
    kw = dict(agent="ad", steps=4, optim=OptimConfig(lr=1e-3, warmup_steps=0))
    ref = train(_cfg(tmp_path, data_dirs[True], name="dense", attention="reference", **kw))
    auto = train(_cfg(tmp_path, data_dirs[True], name="auto", mesh="data=2", devices=2, **kw))
    assert ref.model.cfg.attn_impl == "reference" and auto.model.cfg.attn_impl == "blockwise"
    assert ref.losses.shape == (4,) and ref.losses[0] > 0.05
    np.testing.assert_allclose(auto.losses, ref.losses, rtol=MESH_RTOL, atol=MESH_ATOL)
    model = agents.get("ad").Config.tiny().model
    cfg = _cfg(tmp_path, data_dirs[True], **kw)
    assert run_model_config(cfg, model).attn_impl == "blockwise"
    assert run_model_config(cfg, model.replace(attn_impl="ring")).attn_impl == "ring"
    assert run_model_config(cfg.replace(attention="reference"), model).attn_impl == "reference"


def test_cli_trains_and_load_checkpoint_returns_the_model(tmp_path, data_dirs, capsys,
                                                          monkeypatch):
    import rl_ring.cli.train as cli_train

    # The CLI runs agents.run.train in this process: keep what it returns, the parameters
    # and model the run held in memory when it finished, to compare the checkpoint with.
    trained = []

    def keep_result(cfg, **kw):
        trained.append(train(cfg, **kw))
        return trained[-1]

    monkeypatch.setattr(cli_train, "train", keep_result)
    workdir = tmp_path / "cli"
    code = cli_main(["--agent", "dt", "--preset", "tiny", "--data", data_dirs[False],
                     "--env", "dmc:cartpole-swingup", "--workdir", str(workdir), "--mesh", "seq=1",
                     "--devices", "1", "--steps", "30", "--ckpt-every", "10",
                     "--log-every", "10", "--no-progress", "--agent-config.context-steps", "4"])
    assert code == 0, capsys.readouterr().err
    assert "trained dt to step 30" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(workdir)] == [1, 10, 20, 30]
    model, cfg, norm, step = load_checkpoint(workdir)
    assert step == 30 and cfg.agent == "dt" and cfg.env == "dmc:cartpole-swingup"
    assert cfg.agent_config.context_steps == 4  # the CLI option reached the agent
    store = EpisodeStore.load(data_dirs[False])
    np.testing.assert_allclose(norm.obs_mean, store.observations.mean(0), rtol=1e-4, atol=1e-5)
    # The loaded parameters are the checkpoint's, bit for bit.
    ck = Checkpointer(workdir, read_only=True)
    meta, _ = ck.read_meta(30)
    assert meta["step"] == 30 and meta["sampler"]["step"] == 30
    from flax import nnx

    loaded = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    (result,) = trained
    assert result.step == 30

    def same(a, b) -> bool:
        return all(jax.tree.leaves(jax.tree.map(
            lambda x, y: bool(np.array_equal(np.asarray(x), np.asarray(y))), a, b)))

    # The loaded parameters are the ones the training run ended with, bit for bit.
    assert jax.tree.structure(loaded) == jax.tree.structure(result.state.params)
    assert same(loaded, result.state.params)
    assert same(loaded, nnx.to_pure_dict(nnx.state(result.model, nnx.Param)))
    agent = agents.get("dt")
    sampler = agent.make_sampler(store, cfg.agent_config, batch_size=4, seed=9, norm=norm)
    batch = sampler.next_batch().tokens()
    loss, _ = agent.loss_fn(model, batch)
    trained_loss, _ = agent.loss_fn(result.model, batch)
    assert np.isfinite(float(loss))
    np.testing.assert_array_equal(np.asarray(loss), np.asarray(trained_loss))
    # The whole train state restored by a resumed run (nothing left to train) holds the
    # same parameters, bit for bit.
    again = train(saved_config(workdir))
    assert again.start_step == again.step == 30
    assert all(jax.tree.leaves(jax.tree.map(
        lambda a, b: bool(np.array_equal(a, b)), loaded, again.state.params)))
    earlier, _, _, _ = load_checkpoint(workdir, step=20)
    assert not all(jax.tree.leaves(jax.tree.map(
        lambda a, b: bool(np.array_equal(a, b)), loaded,
        nnx.to_pure_dict(nnx.state(earlier, nnx.Param)))))
    # `rl-ring plan WORKDIR` compiles this run's step: same model, same batch shape
    out = tmp_path / "plan.json"
    assert plan_main([str(workdir), "--json-out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["num_params"] == sum(x.size for x in jax.tree.leaves(loaded))
    assert report["seq_len"] == meta["batch_shape"]["seq_len"] == batch["kind"].shape[1]
    assert report["batch_size"] == 8 and report["devices"] == 1


@pytest.mark.parametrize("argv, match", [
    (["--agent", "xx"], "unknown agent 'xx'; known agents are"),
    (["--agent", "at", "--data", "/no/such/dir"], "--data /no/such/dir: no such file"),
    (["--agent", "at", "--data", "DATA", "--mesh", "seq=4", "--devices", "2"],
     "mesh spec 'seq=4' has 4 devices"),
    (["--agent", "at", "--preset", "d4rl-dt"], "preset 'd4rl-dt' is for agent 'dt'"),
    (["--agent", "at", "--preset", "nope"], "unknown preset 'nope'"),
    # the env is checked against the registry before anything trains (as collect and eval do)
    (["--agent", "at", "--data", "DATA", "--env", "dmc:cartpole-swingpu"],
     "unknown dm_control env id 'dmc:cartpole-swingpu'"),
    (["--agent", "at", "--data", "DATA", "--attention", "flash"], "attention='flash'"),
    (["--agent", "at", "--data", "DATA", "--batch-size", "3", "--mesh", "data=2",
      "--devices", "2"], "batch_size=3 must be a positive multiple"),
])
def test_cli_bad_configs_fail_before_compute(tmp_path, data_dirs, argv, match, capsys):
    argv = [a.replace("DATA", data_dirs[False]) for a in argv]
    assert cli_main([*argv, "--workdir", str(tmp_path / "w"), "--no-progress"]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_cli_takes_agent_names_in_any_case(tmp_path, data_dirs, capsys):
    workdir = tmp_path / "upper"
    code = cli_main(["--agent", "AT", "--preset", "tiny", "--data", data_dirs[False],
                     "--workdir", str(workdir), "--devices", "1", "--steps", "2",
                     "--no-progress", "--no-tensorboard"])
    assert code == 0, capsys.readouterr().err
    assert "trained at to step 2" in capsys.readouterr().out
    assert saved_config(workdir).agent == "at"  # stored as the registry's name
    assert agents.get("Dt") is agents.get("dt")
