"""Warm starts (``TrainConfig.init_from``, ``rl-ring train --init-from``): a run starts from
another run's parameters, exactly, and keeps its own optimiser, steps and data; a source that
does not fit is refused before the work directory is touched."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from test_train_agents import policy_store

from agents import at
from agents.run import train
from rl_ring.cli.train import main as cli_main
from rl_ring.train import TrainConfig
from rl_ring.train.checkpoint import Checkpointer, checkpoint_meta
from rl_ring.train.optim import OptimConfig


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return str(policy_store(False).save(tmp_path_factory.mktemp("data") / "store"))


@pytest.fixture(scope="module")
def source(tmp_path_factory, data):
    """A finished tiny AT run of 6 steps (its parameters moved away from any init)."""
    workdir = tmp_path_factory.mktemp("source") / "run"
    res = train(_cfg(workdir, data, steps=6, lr=3e-3, warmup=1))
    return workdir, jax.device_get(res.state.params)


def _cfg(workdir, data, *, steps, lr=3e-3, warmup=1, width=None, agent="at", **kw):
    model = at.Config.tiny().model
    agent_cfg = dataclasses.replace(at.Config.tiny(), model=model.replace(
        width=width or model.width))
    return TrainConfig(agent=agent, preset="tiny", data=data, workdir=str(workdir),
                       mesh="seq=1", devices=1, steps=steps, batch_size=4, log_every=1,
                       ckpt_every=1, progress=False, tensorboard=False, seed=1,
                       optim=OptimConfig(lr=lr, warmup_steps=warmup),
                       agent_config=agent_cfg if agent == "at" else None, **kw)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_starts_exactly_at_the_source_parameters(tmp_path, data, source):
    src_dir, src_params = source
    # One step whose learning rate is 0 (the first of a warmup): the parameters after it are
    # the ones the run started from, bit for bit.
    warm = train(_cfg(tmp_path / "warm", data, steps=1, warmup=1, init_from=str(src_dir)))
    fresh = train(_cfg(tmp_path / "fresh", data, steps=1, warmup=1))
    for a, b in zip(_leaves(warm.state.params), _leaves(src_params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in
               zip(_leaves(fresh.state.params), _leaves(src_params), strict=True))
    # The optimiser and the step count started fresh, and the run says where it came from.
    assert int(warm.state.step) == 1 and warm.start_step == 0
    meta = checkpoint_meta(tmp_path / "warm")
    assert meta["init_from"] == {"workdir": str(src_dir.absolute()), "step": 6}
    # Training from there is training: the loss starts where the source ended, not at init.
    assert warm.losses[0] < fresh.losses[0]


def test_a_resumed_warm_run_continues_from_its_own_checkpoint(tmp_path, data, source):
    src_dir, _ = source
    cfg = _cfg(tmp_path / "warm", data, steps=2, init_from=str(src_dir))
    first = train(cfg)
    more = train(cfg.replace(steps=4))
    assert more.start_step == 2 and more.step == 4
    # Not re-initialised from the source at the resume: the step-2 state carried on.
    assert not all(np.array_equal(a, b) for a, b in
                   zip(_leaves(more.state.params), _leaves(first.state.params), strict=True))
    assert checkpoint_meta(tmp_path / "warm")["init_from"]["step"] == 6


def test_a_source_of_another_shape_is_refused_before_anything_is_written(tmp_path, data,
                                                                         source):
    src_dir, _ = source
    wide = at.Config.tiny().model.width * 2
    workdir = tmp_path / "wide"
    with pytest.raises(ValueError, match=r"init_from=.*do not fit this model.*saved \(") as err:
        train(_cfg(workdir, data, steps=1, width=wide, init_from=str(src_dir)))
    assert str(wide) in str(err.value)
    assert not workdir.exists()


@pytest.mark.parametrize("case", ["missing", "empty", "agent", "itself"])
def test_bad_sources_are_named(tmp_path, data, source, case):
    src_dir, _ = source
    workdir = tmp_path / "run"
    if case == "missing":
        cfg, match = _cfg(workdir, data, steps=1, init_from=str(tmp_path / "nope")), \
            "not a training run's work directory"
    elif case == "empty":
        (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
        cfg, match = _cfg(workdir, data, steps=1, init_from=str(tmp_path / "empty")), \
            "no finished checkpoint"
    elif case == "agent":
        cfg, match = _cfg(workdir, data, steps=1, agent="dt", init_from=str(src_dir)), \
            "trained agent 'at', this run trains 'dt'"
    else:
        cfg, match = _cfg(src_dir, data, steps=8, init_from=str(src_dir)), \
            "this run's own work directory"
    with pytest.raises(ValueError, match=match):
        train(cfg)
    assert case == "itself" or not workdir.exists()
    assert Checkpointer(src_dir, read_only=True).latest_step() == 6


def test_cli_option(tmp_path, data, source, capsys):
    src_dir, _ = source
    args = ["--agent", "at", "--preset", "tiny", "--data", data, "--mesh", "seq=1",
            "--devices", "1", "--batch-size", "4", "--no-progress", "--no-tensorboard"]
    assert cli_main([*args, "--steps", "1", "--workdir", str(tmp_path / "ok"),
                     "--init-from", str(src_dir)]) == 0
    assert checkpoint_meta(tmp_path / "ok")["init_from"]["step"] == 6
    assert cli_main([*args, "--steps", "1", "--workdir", str(tmp_path / "bad"),
                     "--init-from", str(tmp_path / "nope")]) == 2
    assert "rl-ring train: init_from=" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
