"""One process of the multi-process ring attention test (tests/test_multiprocess_ring.py).

Usage: ``python tests/mp_worker.py PROCESS_ID NUM_PROCESSES PORT LOCAL_DEVICES``.

Every process joins one global CPU mesh through ``jax.distributed`` (gloo collectives),
builds the same seeded global inputs, runs ring attention (forward and VJP) on global
arrays, and checks each of *its own* addressable output shards against the dense oracle
that it computes itself. It prints ``OK <process> <shards checked>`` on success.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    process_id, num_processes, port, local_devices = (int(a) for a in argv[1:5])
    os.environ["JAX_PLATFORMS"] = "cpu"
    from rl_ring.sharding import init_distributed

    init_distributed(
        f"127.0.0.1:{port}", num_processes, process_id, local_device_count=local_devices
    )
    import jax
    import jax.numpy as jnp
    import numpy as np
    from attention_oracle import make_qkv, reference_vjp, segments, tolerance

    from rl_ring.attention import attention, layout_positions, permute
    from rl_ring.sharding import batch_sharding, make_mesh

    total = num_processes * local_devices
    assert jax.process_count() == num_processes, jax.process_count()
    assert jax.device_count() == total and jax.local_device_count() == local_devices

    checked = 0
    for spec, layout in ((f"seq={total}", "zigzag"), (f"data=2,seq={total // 2}", "contiguous")):
        mesh = make_mesh(spec)
        n = mesh.shape["seq"]
        b, t = 2, 16 * total
        q, k, v, ct = (np.asarray(x) for x in make_qkv(11, b, t, 4, 2, 8))
        seg = np.asarray(segments(b, t, [[t // 3, t // 2 + 1], [5]]))
        pos = np.broadcast_to(layout_positions(t, n, layout), (b, t))
        inputs = [permute(x, n, layout) for x in (q, k, v, ct, seg)]

        def to_global(x, mesh=mesh):
            sharding = batch_sharding(mesh, x.ndim)
            return jax.make_array_from_callback(x.shape, sharding, lambda idx, x=x: x[idx])

        gq, gk, gv, gct, gseg = (to_global(x) for x in inputs)

        @jax.jit
        def run(q, k, v, ct, seg, mesh=mesh, layout=layout):
            f = lambda q, k, v: attention(
                q, k, v, impl="ring", mesh=mesh, causal=True, segment_ids=seg, layout=layout,
                permuted_inputs=True,
                q_chunk=8, k_chunk=8,
            )
            out, pullback = jax.vjp(f, q, k, v)
            return (out, *pullback(ct))

        got = run(gq, gk, gv, gct, gseg)
        # The oracle on this process's own (non-distributed) copy of the inputs.
        pq, pk, pv, pct, pseg = (jnp.asarray(x) for x in inputs)
        want_out, want_grads = reference_vjp(
            pq, pk, pv, pct, causal=True, segment_ids=pseg, positions=jnp.asarray(pos)
        )
        for name, arr, want in zip(("out", "dq", "dk", "dv"), got, (want_out, *want_grads),
                                   strict=True):
            want = np.asarray(want)
            scale = np.max(np.abs(want))
            for shard in arr.addressable_shards:
                err = np.max(np.abs(np.asarray(shard.data) - want[shard.index])) / scale
                if not err <= tolerance(jnp.float32):
                    print(f"FAIL {spec} {name} shard {shard.index}: relative error {err:.3g}",
                          file=sys.stderr)
                    return 1
                checked += 1
    print(f"OK {process_id} {checked}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
