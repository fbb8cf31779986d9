"""The training benchmark's tiny variant: figures consistent with their raw timings and
memory points, and the confirmation step really ran (its loss is the loss of that step)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest

from experiments.bench import train as bench_train


@pytest.mark.slow
def test_tiny_benchmark_writes_consistent_results(tmp_path):
    cfg = bench_train.BenchConfig.tiny(str(tmp_path / "train.json"))
    result = bench_train.run(cfg)
    bench_train.write(result, Path(cfg.out))
    saved = json.loads(Path(cfg.out).read_text())
    assert Path(cfg.out).with_suffix(".png").stat().st_size > 0
    assert saved["config"]["seq_len"] == 256 and saved["platform"]["devices"] == 8

    rows = saved["throughput"]["rows"]
    assert [(r["impl"], r["devices"]) for r in rows] == [("blockwise", 1), ("ring", 8)]
    for r in rows:
        assert r["tokens_per_s"] == pytest.approx(256 / statistics.median(r["step_s"]))
        assert r["vs_blockwise"] == pytest.approx(r["tokens_per_s"] / rows[0]["tokens_per_s"])
    # Same seed, same batch, same f32 math: blockwise and ring first losses agree.
    assert rows[1]["loss"] == pytest.approx(rows[0]["loss"], rel=1e-4)
    target = saved["targets"]["ring_vs_blockwise_tokens_per_s"]
    assert target["pass"] == (target["measured"] >= 0.9)

    budget = cfg.budget_gb * bench_train.GIB
    for impl in cfg.impls:
        s = saved["longest_context"][impl]
        lens = [p["seq_len"] for p in s["points"]]
        assert lens == sorted(lens) and lens[0] == 256
        for p in s["points"]:
            assert p["total_bytes"] == p["peak_bytes"] * p["devices"]
        fits = [p["seq_len"] for p in s["points"] if p["total_bytes"] <= budget]
        assert s["longest_seq_len"] == (max(fits) if fits else 0)
    dense = saved["longest_context"]["reference"]["points"]
    ring = saved["longest_context"]["ring"]["points"]
    # Dense attention's memory grows much faster with length than the ring's.
    assert dense[1]["total_bytes"] / dense[0]["total_bytes"] > (
        ring[1]["total_bytes"] / ring[0]["total_bytes"])

    (run,) = saved["confirmed_runs"]
    assert run["ok"] and run["impl"] == "reference" and run["seq_len"] == 256
    assert run["measured_step_growth_bytes"] > 0
    # The child ran the benchmark's step: same init, same batch, so its dense-attention loss
    # is the blockwise loss of the throughput run (attention variants agree to f32 rounding).
    np.testing.assert_allclose(run["loss"], rows[0]["loss"], rtol=1e-5)
