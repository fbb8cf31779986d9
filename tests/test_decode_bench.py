"""The evaluation benchmark's tiny variant: every figure is consistent with the raw timings it
was computed from, the cached and recompute policies agree on their actions, and the files
are written."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest

from experiments.bench import eval as bench_eval


@pytest.mark.slow
def test_tiny_benchmark_writes_consistent_results(tmp_path):
    cfg = bench_eval.BenchEvalConfig.tiny_preset(str(tmp_path / "eval.json"))
    result = bench_eval.run(cfg)
    bench_eval.write(result, Path(cfg.out))
    saved = json.loads(Path(cfg.out).read_text())
    assert Path(cfg.out).with_suffix(".png").stat().st_size > 0
    assert saved["config"]["contexts"] == [64, 256]

    # Same model, same observations: the cached policy acts like the recompute oracle.
    assert saved["agreement"]["max_abs_action_diff"] < 1e-4

    cvr = saved["cached_vs_recompute"]
    rate = {(r["context_tokens"], r["policy"]): r["env_steps_per_s"] for r in cvr["rows"]}
    for r in cvr["rows"]:
        assert len(r["step_s"]) == cfg.rounds * (
            cfg.cached_steps if r["policy"] == "cached" else cfg.recompute_steps)
        assert r["env_steps_per_s"] == pytest.approx(1 / statistics.median(r["step_s"]))
    steps = {(r["context_tokens"], r["policy"]): r["step_s"] for r in cvr["rows"]}
    for ctx in cfg.contexts:
        assert cvr["speedup"][str(ctx)] == pytest.approx(
            rate[(ctx, "cached")] / rate[(ctx, "recompute")])
        assert cvr["speedup_fastest_steps"][str(ctx)] == pytest.approx(
            min(steps[(ctx, "recompute")]) / min(steps[(ctx, "cached")]))

    bat = saved["batching"]
    rate = {(r["context_tokens"], r["num_envs"]): r for r in bat["rows"]}
    for (_, n), r in rate.items():
        assert r["env_steps_per_s"] == pytest.approx(n / statistics.median(r["step_s"]))
    for ctx in cfg.batch_contexts:
        assert bat["throughput_ratio"][str(ctx)] == pytest.approx(
            rate[(ctx, 4)]["env_steps_per_s"] / rate[(ctx, 1)]["env_steps_per_s"])
        assert bat["policy_throughput_ratio"][str(ctx)] == pytest.approx(
            rate[(ctx, 4)]["policy_rows_per_s"] / rate[(ctx, 1)]["policy_rows_per_s"])
        for r in (rate[(ctx, 1)], rate[(ctx, 4)]):
            # The policy's share of each step is part of that step.
            assert all(p <= s for p, s in zip(r["policy_s"], r["step_s"], strict=True))

    dsc = saved["decode_scaling"]
    fills = [p["context_tokens"] for p in dsc["points"]]
    assert fills == list(cfg.decode_fills) and dsc["capacity"] >= max(fills) + 4
    per_tok = [statistics.median(p["call_s"]) / 4 for p in dsc["points"]]
    assert [p["per_token_s"] for p in dsc["points"]] == pytest.approx(per_tok)
    slope = np.polyfit(np.log(fills), np.log(per_tok), 1)[0]
    assert dsc["exponent"] == pytest.approx(slope)
    upper = slice(len(fills) // 2, None)  # fills 128 and 256
    slope = np.polyfit(np.log(fills[upper]), np.log(per_tok[upper]), 1)[0]
    assert dsc["exponent_upper_half"] == pytest.approx(slope)
    # One compilation for every fill level.
    assert dsc["compilations"]["decode"] <= 1

    t = saved["targets"]
    assert t["cached_vs_recompute_16k"]["measured"] is None  # no 16K context in the tiny run
    for ctx, target in t["batch16_vs_batch1"].items():
        assert target["pass"] == (bat["throughput_ratio"][ctx] >= 8.0)
    assert t["decode_not_quadratic"]["pass"] == (dsc["exponent_upper_half"] <= 1.5)
