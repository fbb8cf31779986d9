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
from rl_ring.train.plan import attention_memory, plan_step
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
    # The analytic attention memory of every strategy, for this shape on this mesh.
    m = shape.model
    assert report["attention_memory"] == json.loads(json.dumps(attention_memory(
        seq_len=t, num_devices=4, heads=m.num_heads, kv_heads=m.kv_heads, head_dim=m.head_dim,
        batch=b // 2, chunk=dict(m.attn_options).get("q_chunk", 512))))


def test_attention_memory_formulas_against_hand_values():
    # T=1024 on n=4 (block L=256), 4 query / 2 K/V heads of 16, batch 2, bf16, chunk 128.
    got = attention_memory(seq_len=1024, num_devices=4, heads=4, kv_heads=2, head_dim=16,
                           batch=2, dtype_bytes=2, chunk=128)
    # blockwise over T: q+out 2*2*1024*4*16*2, k+v 2*2*1024*2*16*2, lse 2*4*1024*4,
    # scores 2*4*128*128*4; bwd: dout 2*1024*4*16*2, dq 2*1024*4*16*4, dkv 2*2*1024*2*16*4.
    assert got["blockwise"]["fwd"] == 524288 + 262144 + 32768 + 524288
    assert got["blockwise"]["fwd_bwd"] == 1343488 + 262144 + 524288 + 524288
    # ring over L=256: 131072 + 65536 + 8192 + 524288 + K/V in flight 2*2*256*2*16*2;
    # bwd 65536 + 131072 + dkv 2*2*256*2*16*4 + travelling dK/dV and its copy 2*131072.
    assert got["ring"]["fwd"] == 131072 + 65536 + 8192 + 524288 + 65536
    assert got["ring"]["fwd_bwd"] == 794624 + 65536 + 131072 + 131072 + 262144
    # allgather: the ring's local terms + gathered K/V 2*2*1024*2*16*2; bwd + f32 dK/dV of
    # the whole sequence 2*2*1024*2*16*4.
    assert got["allgather"]["fwd"] == 131072 + 65536 + 8192 + 524288 + 262144
    assert got["allgather"]["fwd_bwd"] == 991232 + 65536 + 131072 + 131072 + 524288
    # ulysses: K/V heads repeated 4/gcd(2,4)=2x -> 1 q and 1 K/V head per device over T:
    # q+out 2*2*1024*16*2, k+v the same, lse 2*1024*4, scores 2*128*128*4, local q/k/v/out
    # 2*256*(8+4)*16*2; bwd dout 2*1024*16*2, dq 2*1024*16*4, dkv 2*2*1024*16*4.
    assert got["ulysses"]["fwd"] == 131072 + 131072 + 8192 + 131072 + 196608
    assert got["ulysses"]["fwd_bwd"] == 598016 + 65536 + 131072 + 262144
    assert "repeated 2x" in got["ulysses"]["note"]
    # Heads that the devices do not divide: no Ulysses.
    bad = attention_memory(seq_len=96, num_devices=8, heads=6, kv_heads=6, head_dim=8)
    assert bad["ulysses"]["fwd"] is None and "6 heads not divisible by 8" in bad["ulysses"]["note"]
    # Per device, allgather's gathered K/V grows with T while the ring's stays T/n.
    big = attention_memory(seq_len=65536, num_devices=8, heads=8, kv_heads=8, head_dim=64)
    assert big["allgather"]["terms"]["kv_gathered"] == 8 * big["ring"]["terms"]["kv_in_flight"]


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
