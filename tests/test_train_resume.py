"""Kill and resume: ``rl-ring train`` killed with SIGKILL after a checkpoint, then resumed,
ends with parameters bit-identical to an uninterrupted run with the same seed."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import XLA_FLAGS_AT_START
from test_train_agents import policy_store

from agents.run import load_checkpoint, train
from rl_ring.train import TrainConfig
from rl_ring.train.checkpoint import Checkpointer
from rl_ring.train.optim import OptimConfig

STEPS, CKPT_EVERY, HOLD_AT = 60, 10, 30
MARKER_ENV = "RL_RING_TEST_HOLD_MARKER"


def hold_after_checkpoint(cfg):
    """An evaluation hook for the killed run: at step HOLD_AT it writes a marker and waits,
    so the test can kill the process at a known point after the checkpoint of that step."""
    marker = Path(os.environ[MARKER_ENV])

    def eval_fn(model, step):
        if step == HOLD_AT:
            marker.write_text(str(step))
            time.sleep(600)
        return {}

    return eval_fn


# (mesh, attention, dropout): the reference-attention data-parallel case, and the path long
# runs take: ring attention over a seq mesh, with dropout on (its keys derive from the step).
CASES = {"data2": ("data=2", "auto", 0.0), "ring-seq2-dropout": ("seq=2", "ring", 0.1)}


def _args(data: str, workdir: Path, case: str) -> list[str]:
    mesh, attention, dropout = CASES[case]
    return ["--agent", "at", "--preset", "tiny", "--data", data, "--workdir", str(workdir),
            "--mesh", mesh, "--devices", "2", "--batch-size", "4", "--steps", str(STEPS),
            "--ckpt-every", str(CKPT_EVERY), "--log-every", "5", "--no-progress",
            "--optim.lr", "3e-3", "--attention", attention,
            "--agent-config.model.dropout", str(dropout)]


def _config(data: str, workdir: Path, case: str) -> TrainConfig:
    from agents import at

    mesh, attention, dropout = CASES[case]
    tiny = at.Config.tiny()
    agent_cfg = dataclasses.replace(tiny, model=tiny.model.replace(dropout=dropout))
    return TrainConfig(agent="at", preset="tiny", data=data, workdir=str(workdir),
                       mesh=mesh, devices=2, batch_size=4, steps=STEPS, attention=attention,
                       ckpt_every=CKPT_EVERY, log_every=5, progress=False,
                       optim=OptimConfig(lr=3e-3), agent_config=agent_cfg)


@pytest.mark.parametrize("case", list(CASES))
def test_sigkill_then_resume_is_bitwise_identical(tmp_path, case):
    data = str(policy_store(False).save(tmp_path / "data"))
    killed = tmp_path / "killed"
    marker = tmp_path / "held"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    env[MARKER_ENV] = str(marker)
    # Bit-identical results need the in-process run's XLA flags (thread count of the
    # kernels changes float sums), whatever earlier tests left in os.environ.
    env["XLA_FLAGS"] = XLA_FLAGS_AT_START
    cmd = [sys.executable, "-m", "rl_ring.cli", "train", *_args(data, killed, case),
           "--eval-every", "1", "--eval-hook", "test_train_resume:hold_after_checkpoint"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 300
        while not marker.exists():
            if proc.poll() is not None or time.time() > deadline:
                _, err = proc.communicate(timeout=10)
                raise AssertionError(f"worker ended early ({proc.returncode}): {err[-3000:]}")
            time.sleep(0.2)
        # The marker is written after step HOLD_AT's checkpoint was started; wait until it
        # is finished (visible), then kill without warning.
        while HOLD_AT not in Checkpointer(killed, read_only=True).steps():
            assert time.time() < deadline, "the checkpoint never became visible"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert Checkpointer(killed, read_only=True).steps()[-1] == HOLD_AT

    resumed = train(_config(data, killed, case))
    assert resumed.start_step == HOLD_AT and resumed.step == STEPS
    full = train(_config(data, tmp_path / "full", case))
    same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                        full.state, resumed.state)
    assert all(jax.tree.leaves(same)), "resumed parameters differ from the uninterrupted run"
    np.testing.assert_array_equal(full.losses[HOLD_AT:], resumed.losses)
    # and what evaluation loads is that state
    model, _, _, step = load_checkpoint(killed)
    assert step == STEPS
