"""Ctrl-C (SIGINT) or SIGTERM during ``rl-ring train``: the run finishes its step, saves a
checkpoint of it, says where and how to resume, and exits without a traceback; the rerun
says "resuming from step N" and the metrics hold every step once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from envs.collect import collect_random
from rl_ring.train.checkpoint import Checkpointer
from rl_ring.train.metrics import truncate_metrics


def _cmd(data: Path, workdir: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "rl_ring.cli", "train", "--agent", "bc", "--preset", "tiny",
            "--data", str(data), "--env", "darkroom", "--workdir", str(workdir),
            "--steps", str(steps), "--ckpt-every", "100000", "--log-every", "1",
            "--devices", "1", "--no-progress", "--no-tensorboard"]


def _steps(workdir: Path) -> list[int]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_and_the_rerun_resumes_cleanly(tmp_path, sig):
    data = collect_random("darkroom", 8, seed=0).save(tmp_path / "data")
    work = tmp_path / "work"
    proc = subprocess.Popen(_cmd(data, work, 100_000), env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while len(_steps(work)) < 5:  # compiled and training
            if proc.poll() is not None or time.time() > deadline:
                _, err = proc.communicate(timeout=10)
                raise AssertionError(f"train ended early ({proc.returncode}): {err[-3000:]}")
            time.sleep(0.1)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    kept = Checkpointer(work, read_only=True).steps()
    assert len(kept) == 1, kept  # ckpt_every is far away: this is the interrupt's save
    stopped = kept[0]
    assert f"saved a checkpoint of step {stopped}" in err and "Resume with the same" in err
    assert _steps(work)[-1] == stopped

    # Rows written after the checkpoint (as a killed run leaves them) must go on resume.
    with open(work / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": stopped + 1, "loss": 1.0}) + "\n" + '{"step": ')
    rerun = subprocess.run(_cmd(data, work, stopped + 3), env=dict(os.environ),
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from step {stopped}" in rerun.stderr
    assert _steps(work) == list(range(1, stopped + 4))


def test_truncate_metrics_keeps_rows_up_to_the_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": s / 10} for s in (1, 2, 3, 2, 3, 4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "lo')
    assert truncate_metrics(path, 2) == 4
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 2]
    assert truncate_metrics(path, 2) == 0
    assert truncate_metrics(tmp_path / "absent.jsonl", 3) == 0
