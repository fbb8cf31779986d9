"""The GPU attention benchmark's CPU dry run: every implementation but cuDNN runs (the Pallas
kernel interpreted), the kernel check against the dense reference is recorded, the JSON and
PNG are written. The GPU numbers themselves need a lent GPU (docs/attention.md)."""

import json

from experiments.bench import attention_gpu


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
