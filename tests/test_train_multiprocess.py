"""Two processes x 4 fake CPU devices train one model on one 8-device mesh (jax.distributed,
gloo collectives): each process feeds only its own rows of the batch, and the losses equal a
single-process run on the same mesh. Run as a script, this file is one worker process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

STEPS = 6


def _config(data: str, workdir: str):
    from rl_ring.train import OptimConfig, TrainConfig

    return TrainConfig(agent="at", preset="tiny", data=data, workdir=workdir,
                       mesh="data=2,seq=4", batch_size=4, steps=STEPS, log_every=1,
                       ckpt_every=3, progress=False, tensorboard=False, attention="ring",
                       optim=OptimConfig(lr=1e-3, warmup_steps=0))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    from model_oracle import tolerance
    from test_train_agents import policy_store

    from agents.run import train

    data = str(policy_store(False).save(tmp_path / "data"))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent),
                                         env.get("PYTHONPATH", "")])
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, f"127.0.0.1:{port}", str(pid), data,
             str(tmp_path / "multi"), str(tmp_path / f"losses{pid}.json")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for pid in range(2)
    ]
    errors = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        if p.returncode != 0:
            errors.append(err[-4000:])
    assert not errors, "\n---\n".join(errors)
    multi = [json.loads((tmp_path / f"losses{pid}.json").read_text()) for pid in range(2)]
    assert multi[0]["losses"] == multi[1]["losses"]  # both processes saw the same step
    assert multi[0]["rows"] == {"row_start": 0, "rows": 2, "host_id": 0, "num_hosts": 2}
    assert multi[1]["rows"] == {"row_start": 2, "rows": 2, "host_id": 1, "num_hosts": 2}
    single = train(_config(data, str(tmp_path / "single")))
    rtol, atol = tolerance("float32")
    np.testing.assert_allclose(multi[0]["losses"], single.losses, rtol=rtol, atol=atol)
    # the checkpoint the two processes wrote together restores in one process
    from agents.run import load_checkpoint

    _, _, _, step = load_checkpoint(tmp_path / "multi")
    assert step == STEPS


def _worker(coordinator: str, pid: int, data: str, workdir: str, out: str) -> None:
    from rl_ring import sharding

    sharding.init_distributed(coordinator, 2, pid, local_device_count=4)
    import dataclasses

    from agents.run import train
    from rl_ring.train.loader import host_share
    from rl_ring.train.loop import make_run_mesh

    cfg = _config(data, workdir)
    share = host_share(make_run_mesh(cfg), cfg.batch_size)
    result = train(cfg)
    Path(out).write_text(json.dumps({"losses": result.losses.tolist(),
                                     "rows": dataclasses.asdict(share)}))


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    _worker(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
