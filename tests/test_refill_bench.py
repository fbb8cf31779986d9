"""The refill benchmark's tiny variant: both refills write the same cache, every figure is
the raw timings' median, and the CLI refuses bad sizes and existing files."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from experiments.bench import refill


def test_tiny_refill_benchmark_is_consistent(tmp_path):
    cfg = refill.BenchRefillConfig.tiny_preset(str(tmp_path / "refill.json"))
    result = refill.run(cfg)
    refill.write(result, Path(cfg.out))
    saved = json.loads(Path(cfg.out).read_text())
    assert Path(cfg.out).with_suffix(".png").stat().st_size > 0
    a = saved["agreement"]
    assert a["rows"] == 3 and a["max_abs_kv_diff"] < 1e-5
    assert a["untouched_rows_zero"] and a["lengths_equal"]
    assert [r["rows_refilled"] for r in saved["rows"]] == [1, 3, 8]
    assert [r["bucket"] for r in saved["rows"]] == [1, 4, 8]
    for r in saved["rows"]:
        assert len(r["rows_that_slid_s"]) == len(r["whole_batch_s"]) == cfg.rounds
        slid = statistics.median(r["rows_that_slid_s"])
        whole = statistics.median(r["whole_batch_s"])
        assert r["rows_that_slid_median_s"] == pytest.approx(slid)
        assert r["speedup"] == pytest.approx(whole / slid)
    # One compilation per bucket (1, 4 and 8 rows; the agreement check's 3 rows is bucket 4).
    assert saved["compilations"]["prefill"] == 3


def test_refill_benchmark_cli_refuses_bad_input(tmp_path, capsys):
    out = tmp_path / "r.json"
    for argv, message in ((["--refill-rows", "0"], "--refill-rows [0]: each must lie in "
                                                   "[1, --batch=158]"),
                          (["--fill", "900"], "--fill 900 exceeds --capacity 800")):
        with pytest.raises(SystemExit) as exit_:
            refill.main(["--out", str(out), *argv])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
    assert not out.exists()
    out.write_text("{}")
    from rl_ring.io import OutputExistsError

    with pytest.raises(OutputExistsError):
        refill.main(["--out", str(out), "--batch", "4", "--refill-rows", "1"])
    assert out.read_text() == "{}"
