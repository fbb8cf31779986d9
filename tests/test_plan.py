"""``rl-ring plan``: memory numbers against real device buffers, growth with sequence length,
fake-device re-execution, presets and errors."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from agents.presets import PAPER_AT_EXORL, get_shape
from rl_ring import sharding
from rl_ring.cli.plan import main
from rl_ring.data.batch import TOKEN_FIELDS, TokenBatch
from rl_ring.models import TrajectoryTransformer
from rl_ring.train.loader import MeshLoader
from rl_ring.train.optim import OptimConfig, make_optimizer
from rl_ring.train.plan import plan_step
from rl_ring.train.recipe import rule_specs
from rl_ring.train.state import build_state


def _shard_bytes(tree) -> int:
    return sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree))


def test_plan_arguments_equal_the_real_device_buffers(tmp_path):
    out = tmp_path / "plan.json"
    assert main(["tiny-at", "--mesh", "fsdp=2,seq=4", "--json-out", str(out)]) == 0
    report = json.loads(out.read_text())
    shape = get_shape("tiny-at")
    # The oracle: allocate the same state and batch for real and count one device's bytes.
    mesh = sharding.make_mesh("fsdp=2,seq=4")
    tx, _ = make_optimizer(OptimConfig(), 1000)
    state, _, _ = build_state(
        lambda r: TrajectoryTransformer(shape.model, rngs=r), tx, 0, mesh, rule_specs
    )
    b, t = shape.batch_size, shape.seq_len
    zeros = np.zeros((b, t), np.int32)
    batch = MeshLoader(mesh, b).place(TokenBatch(
        kind=zeros, values=np.zeros((b, t, shape.feature_dim), np.float32), positions=zeros,
        timesteps=zeros, segment_ids=zeros, valid=zeros.astype(bool),
        target=np.zeros((b, t, shape.model.act_dim), np.float32), target_ids=zeros,
        loss_mask=zeros.astype(np.float32)))
    assert report["params_bytes"] == _shard_bytes(state.params)
    assert report["opt_state_bytes"] == _shard_bytes(state.opt_state)
    assert report["batch_bytes"] == _shard_bytes([batch[f] for f in TOKEN_FIELDS])
    # ...and the compiled executable's argument size is exactly those buffers.
    assert report["argument_bytes"] == _shard_bytes(state) + report["batch_bytes"]
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(
        nnx.eval_shape(lambda: TrajectoryTransformer(shape.model, rngs=nnx.Rngs(0))), nnx.Param)))
    assert report["num_params"] == n_params
    # fsdp=2 splits the weight matrices: well under the replicated 4 bytes per parameter.
    assert report["params_bytes"] < 0.75 * 4 * n_params
    # Adam's two moments per parameter, sharded like the parameters.
    moments = 2 * report["params_bytes"]
    assert moments <= report["opt_state_bytes"] <= moments + 64  # + step counters
    # The donated state comes back in place.
    assert report["alias_bytes"] >= report["params_bytes"] + report["opt_state_bytes"]
    assert report["peak_bytes"] == (report["argument_bytes"] + report["output_bytes"]
                                    - report["alias_bytes"] + report["temp_bytes"])


def test_activation_memory_grows_linearly_with_ring_and_quadratically_dense():
    shape = get_shape("tiny-at")
    ring = [plan_step(shape.replace(steps_per_sequence=t // 4)).temp_bytes for t in (2048, 4096)]
    dense_shape = shape.replace(model=shape.model.replace(attn_impl="reference"), mesh="seq=1")
    dense = [plan_step(dense_shape.replace(steps_per_sequence=t // 4)).temp_bytes
             for t in (512, 1024)]
    assert 1.5 < ring[1] / ring[0] < 2.3, ring
    assert dense[1] / dense[0] > 3.5, dense


def test_plan_reexecutes_itself_for_more_fake_devices(tmp_path):
    out = tmp_path / "plan16.json"
    # This process has 8 devices: a 16-device mesh needs a fresh process.
    proc = subprocess.run(
        [sys.executable, "-m", "rl_ring.cli", "plan", "tiny-at", "--mesh", "seq=16",
         "--json-out", str(out)], capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mesh seq=16 (16 devices)" in proc.stdout
    report = json.loads(out.read_text())
    assert report["devices"] == 16 and report["seq_len"] == 256


def test_paper_preset_has_350m_parameters_and_512k_tokens():
    m = nnx.eval_shape(lambda: TrajectoryTransformer(PAPER_AT_EXORL.model, rngs=nnx.Rngs(0)))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
    assert 345e6 < n < 360e6
    assert PAPER_AT_EXORL.seq_len == 128 * 1000 * 4
    assert PAPER_AT_EXORL.seq_len % (2 * 256) == 0  # zigzag on 256 devices


@pytest.mark.parametrize("argv, match", [
    (["no-such-preset"], "neither a preset"),
    (["tiny-at", "--seq-len", "10"], "not a multiple of the 4 tokens per step"),
    (["tiny-at", "--mesh", "seq=3"], "sequence length 256 is not divisible by 3"),
])
def test_plan_errors(argv, match, capsys):
    assert main(argv) == 2
    assert match in capsys.readouterr().err


def test_train_and_plan_take_one_set_of_preset_names(capsys):
    from agents.presets import PRESETS, SHAPES, step_shape
    from agents.run import resolve_config
    from rl_ring.cli.plan import PlanArgs, resolve_shape
    from rl_ring.cli.train import parse

    assert set(PRESETS) == {"default", "tiny", *SHAPES}
    for name in PRESETS:
        agent = SHAPES[name].agent if name in SHAPES else "dt"
        cfg = resolve_config(parse(["--agent", agent, "--preset", name]))
        shape = resolve_shape(PlanArgs(config=name, agent=agent))
        assert shape.agent == cfg.agent == agent
        assert shape.model.width == cfg.agent_config.model.width, name
    # `tiny` (a train preset) is a plan preset too: the agent's tiny model and context.
    tiny = step_shape("tiny", "dt", obs_dim=4, act_dim=2)
    assert (tiny.steps_per_sequence, tiny.tokens_per_step, tiny.seq_len) == (5, 3, 15)
    assert main(["tiny", "--agent", "dt"]) == 0
    assert "batch 8 x 15 tokens" in capsys.readouterr().out
    # Both commands name the same presets when one is unknown.
    assert main(["nope"]) == 2
    assert str(list(PRESETS)) in capsys.readouterr().err
