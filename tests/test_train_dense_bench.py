"""The dense-vs-blockwise training benchmark's tiny variant: every figure follows from its raw
timings and memory points, and both attentions computed the same first loss."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from experiments.bench import train_dense


def test_tiny_benchmark_writes_consistent_results(tmp_path):
    cfg = train_dense.DenseConfig.tiny(str(tmp_path / "dense.json"))
    result = train_dense.run(cfg)
    train_dense.common.write_result(result, cfg.out, train_dense.plot)
    saved = json.loads(Path(cfg.out).read_text())
    assert Path(cfg.out).with_suffix(".png").stat().st_size > 0
    rows = saved["rows"]
    assert [(r["seq_len"], r["impl"]) for r in rows] == [
        (64, "reference"), (64, "blockwise"), (256, "reference"), (256, "blockwise")]
    for r in rows:
        assert r["devices"] == 1 and len(r["step_s"]) == 2
        assert r["tokens_per_s"] == pytest.approx(r["seq_len"] / statistics.median(r["step_s"]))
        assert r["peak_bytes"] > 0
    for t in (64, 256):
        dense, block = (r for r in rows if r["seq_len"] == t)
        ratio = saved["blockwise_vs_dense"][str(t)]
        assert ratio["speedup"] == pytest.approx(block["tokens_per_s"] / dense["tokens_per_s"])
        assert ratio["memory_ratio"] == pytest.approx(block["peak_bytes"] / dense["peak_bytes"])
        # same init, batch and float32 math: the oracle and blockwise agree on the loss
        assert block["loss"] == pytest.approx(dense["loss"], rel=1e-5)
        assert ratio["first_loss_rel_diff"] < 1e-5


@pytest.mark.parametrize("change, message", [
    (dict(seq_lens=(64, 30)), r"--seq-lens \[64, 30\]: expected positive multiples of 4"),
    (dict(batch=0), r"--batch 0: expected at least 1"),
])
def test_bad_options_are_named(change, message):
    import dataclasses

    with pytest.raises(ValueError, match=message):
        train_dense.check(dataclasses.replace(train_dense.DenseConfig(), **change))
