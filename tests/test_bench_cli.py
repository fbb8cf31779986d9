"""``rl-ring bench``: the benchmarks are listed and dispatched by name, and each refuses to
replace existing result files without ``--overwrite`` before doing any work."""

from __future__ import annotations

import pytest

from experiments import bench
from rl_ring import cli


def test_bench_lists_and_dispatches(capsys):
    assert cli.main(["bench", "--help"]) == 0
    listed = capsys.readouterr().out
    for name in bench.BENCHMARKS:
        assert f"  {name} " in listed
    assert cli.main(["bench", "no-such-benchmark"]) == 2
    assert "unknown benchmark 'no-such-benchmark'" in capsys.readouterr().err


# (name, argv given the tmp dir, the result file that already exists)
CASES = {
    "attention": (lambda d: ["--out", f"{d}/a.json", "--png", f"{d}/a.png"], "a.png"),
    "attention_gpu": (lambda d: ["--dry-run", "--out", f"{d}/g.json"], "g.png"),
    "data": (lambda d: ["--quick", "--out", f"{d}/d.json"], "d.json"),
    "train": (lambda d: ["--quick", "--out", f"{d}/t.json"], "t.png"),
    "train_dense": (lambda d: ["--out", f"{d}/td.json"], "td.png"),
    "eval": (lambda d: ["--tiny", "--out", f"{d}/e.json"], "e.json"),
    "eval_workers": (lambda d: ["--out", str(d)], "bench_eval_workers.png"),
    "refill": (lambda d: ["--out", f"{d}/r.json"], "r.png"),
    "jax_rollout": (lambda d: ["--quick", "--out", str(d)], "jax_rollout.json"),
    "model_memory": (lambda d: ["--out", f"{d}/m"], "m.json"),
    "xland_reader": (lambda d: ["--out", f"{d}/x.json"], "x.png"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_benchmark_refuses_existing_results_without_overwrite(name, tmp_path, capsys):
    assert set(CASES) == set(bench.BENCHMARKS)
    argv, existing = CASES[name]
    (tmp_path / existing).write_text("earlier result")
    assert bench.main([name, *argv(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"rl-ring bench {name}: " in err and existing in err and "--overwrite" in err
    assert (tmp_path / existing).read_text() == "earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]
