"""Ring attention across 2 local processes x 4 CPU devices forming one 8-device mesh.

This is the multi-host path (``jax.distributed`` with gloo CPU collectives): the ring
crosses the process boundary. Each process checks its own addressable shards against the
dense oracle (see tests/mp_worker.py).
"""

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = Path(__file__).with_name("mp_worker.py")
NUM_PROCESSES, LOCAL_DEVICES = 2, 4
TIMEOUT_S = 300  # generous: the machine is shared; a healthy run takes well under a minute


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ring_attention_across_processes():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the 8 fake devices of conftest: each worker brings 4 of its own
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(WORKER.parent.parent), str(WORKER.parent), env.get("PYTHONPATH", "")]
    )
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        logs, procs = [], []
        for i in range(NUM_PROCESSES):
            out = open(Path(tmp) / f"{i}.out", "w+")
            err = open(Path(tmp) / f"{i}.err", "w+")
            logs.append((out, err))
            cmd = [sys.executable, str(WORKER), str(i), str(NUM_PROCESSES), str(port),
                   str(LOCAL_DEVICES)]
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=err, env=env))
        timed_out = False
        try:
            for p in procs:
                p.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            timed_out = True
            for p in procs:
                p.kill()
                p.wait()

        def report() -> str:
            parts = []
            for i, (out, err) in enumerate(logs):
                out.seek(0)
                err.seek(0)
                parts.append(
                    f"--- worker {i} (exit {procs[i].returncode}) stdout:\n{out.read()}\n"
                    f"--- worker {i} stderr (last 4000 chars):\n{err.read()[-4000:]}"
                )
            return "\n".join(parts)

        text = report()
        for out, err in logs:
            out.close()
            err.close()
    assert not timed_out, f"workers did not finish within {TIMEOUT_S}s\n{text}"
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"worker {i} failed\n{text}"
        # Each process holds 4 of 8 devices: 2 meshes x 4 arrays x 4 shards = 32 checks.
        assert f"OK {i} 32" in text, text
