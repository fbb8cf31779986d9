"""The GPU attention benchmark's CPU dry run: every implementation but cuDNN runs (the Pallas
kernel interpreted), the kernel check against the dense reference is recorded, the JSON and
PNG are written. The GPU numbers themselves need a lent GPU (docs/attention.md)."""

import json

import jax
import jax.numpy as jnp
import pytest

from experiments.bench import attention_gpu
from rl_ring.sharding import make_mesh


def test_dry_run_times_every_implementation_and_checks_the_kernel(tmp_path):
    out = tmp_path / "g.json"
    argv = ["--dry-run", "--seq-lens", "128", "--causal", "True", "--out", str(out)]
    assert attention_gpu.main(argv) == 0
    result = json.loads(out.read_text())
    assert (tmp_path / "g.png").stat().st_size > 0
    check = result["checks"]["D64 causal"]
    for name in ("out", "dq", "dk", "dv"):  # float32, interpreted: as the kernel tests
        assert check[f"max_abs_err_{name}"] <= 1e-5 * max(1.0, check[f"max_abs_{name}"])
    impls = {e["impl"] for e in result["timings"].values()}
    assert impls == {"pallas", "xla", "dense", "ring1"}
    assert not result["skipped"]
    assert all(e["tflop_per_s"] > 0 for e in result["timings"].values())
    assert set(result["ratios"]) == {"D64 causal T128 fwd", "D64 causal T128 fwd_bwd"}


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_benchmark_kernels_lower_for_the_accelerators_at_its_longest_shape(platform):
    """The benchmark's Pallas and ring-on-one-device functions, forward+backward, bf16,
    D=128, causal, T=131,072 (its longest), lower with the compiled kernels for a GPU / TPU."""
    mesh = make_mesh("seq=1", jax.devices()[:1])
    x = jax.ShapeDtypeStruct((1, 131072, 16, 128), jnp.bfloat16)
    kernel_platform = "gpu" if platform == "cuda" else "tpu"
    for impl in ("pallas", "ring1"):
        fn = attention_gpu._fn(impl, True, mesh, interpret=False, kernel_platform=kernel_platform)
        text = attention_gpu._compiled(fn, True).trace(x, x, x, x).lower(
            lowering_platforms=(platform,)).as_text()
        marker = "__gpu$xla.gpu.triton" if platform == "cuda" else "tpu_custom_call"
        assert text.count(marker) >= 3, (impl, platform)  # forward, dq, dk/dv
