"""The context-scaling experiment: its tiny variant end to end, and its pieces.

Oracles: cumulative regret and the target checks computed by hand on small arrays; the
baselines recomputed with ``envs.learners.bandits.play``; the JSON / PNG read back.
"""

import json

import numpy as np
import pytest

import envs
from envs.learners.bandits import play
from experiments import context_scaling as cs


def test_regret_summary_by_hand():
    regret = np.array([[0.5, 0.0, 0.25, 0.25], [0.1, 0.1, 0.0, 0.0]])
    s = cs.regret_summary(regret)
    assert s["final_per_bandit"] == pytest.approx([1.0, 0.2])
    assert s["final_mean"] == pytest.approx(0.6)
    assert s["final_sem"] == pytest.approx(np.std([1.0, 0.2], ddof=1) / np.sqrt(2))
    assert s["curve_pulls"] == [1, 2, 3, 4]
    assert s["curve"] == pytest.approx([0.3, 0.35, 0.475, 0.6])
    assert s["per_pull_regret"] == pytest.approx({"0-1": 0.3, "1-2": 0.05, "2-4": 0.125})


def test_targets_by_hand():
    cfg = cs.tiny_config()
    rec = [{"agent": "ad", "window": 16, "eval": {"final_per_bandit": [10.0, 12.0, 14.0]}},
           {"agent": "ad", "window": 64, "eval": {"final_per_bandit": [5.0, 6.0, 7.0]}}]
    base = {"thompson": {"final_mean": 5.0}, "ucb": {"final_mean": 8.0}}
    t = cs.targets(cfg, rec, base)["ad"]
    assert t["longest_over_thompson"] == pytest.approx(6.0 / 5.0)
    assert t["within_1.25x_thompson"] and t["below_ucb"]
    assert t["shortest_minus_longest"] == pytest.approx(6.0)
    se = np.sqrt(4.0 / 3 + 1.0 / 3)
    assert t["difference_se"] == pytest.approx(se) and t["shortest_worse_by_3se"]


def test_unknown_env_and_agent_are_errors(capsys):
    with pytest.raises(ValueError, match="bandit-hard, bandit-gauss"):
        cs.family("darkroom")
    assert "ad" in cs.default_agents()


def test_tiny_end_to_end(tmp_path, capsys):
    out, work = tmp_path / "results", tmp_path / "runs"
    argv = ["--tiny", "--seeds", "1", "--agents", "ad", "--out", str(out),
            "--workdir", str(work)]
    assert cs.main(argv) == 0
    summary = json.loads((out / "context_scaling.json").read_text())
    assert (out / "context_scaling.png").stat().st_size > 10_000
    cfg = cs.tiny_config()
    # Held-out bandits only, and the baselines are play() on exactly those bandits.
    held = cs.heldout_tasks(cfg)
    assert set(held) <= set(envs.task_split("bandit-hard", "test"))
    assert summary["eval_bandits"] == len(held) == cfg.eval_bandits
    means = cs.family("bandit-hard").means_of(held)
    ts = play(cs.family("bandit-hard"), means, "thompson", cfg.eval_pulls, seed=cfg.seed + 1000)
    assert summary["baselines"]["thompson"]["final_mean"] == pytest.approx(
        ts["regret"].sum(1).mean())
    b = {k: v["final_mean"] for k, v in summary["baselines"].items()}
    assert b["thompson"] < b["random"] and b["ucb"] < b["random"]
    # Random's expected regret is the mean gap per pull.
    gap = (means.max(1) - means.mean(1)).mean() * cfg.eval_pulls
    assert b["random"] == pytest.approx(gap, rel=0.15)
    assert [c["window"] for c in summary["configs"]] == list(cfg.windows)
    for c in summary["configs"]:
        assert c["tokens_per_sequence"] == c["window"]
        assert c["mesh"] == ("seq=8" if c["window"] >= cfg.ring_from else "data=8")
        curve = np.asarray(c["curve_mean"])
        assert curve.shape == (len(c["curve_pulls"]),) and np.all(np.diff(curve) >= 0)
        assert c["curve_pulls"][-1] == cfg.eval_pulls
        final = c["final_regret"]["mean"]
        assert curve[-1] == pytest.approx(final)
        # Regret lies between 0 and always pulling the worst arm.
        worst = (means.max(1) - means.min(1)).mean() * cfg.eval_pulls
        assert 0 < final < worst and final < 1.3 * b["random"]
        assert c["train_wall_s"][0] > 0 and c["tokens_per_s"][0] > 0
        assert np.isfinite(c["final_loss"][0])
    mem = summary["configs"][-1]["memory"]
    assert {mem[k]["devices"] for k in ("dense", "blockwise", "ring")} == {1, 8}
    # Per device, the ring holds an eighth of the sequence: less than one device's dense step.
    assert 0 < mem["ring"]["peak_bytes"] < mem["dense"]["peak_bytes"]
    dec = summary["decode_longest"]
    assert dec["rows"] == cfg.eval_bandits and 0 < dec["s_per_token"] < dec["s_per_step"]
    t = summary["targets"]["ad"]
    assert t["longest_window"] == 64 and t["shortest_window"] == 16
    assert summary["headline"]["ad"]["windows"] == [16, 64]
    # The checkpoint stays in the work dir, re-playable alone through the Policy protocol.
    ckpt = work / "tiny-bandit-hard" / "ad-w64-seed0" / "train"
    assert (ckpt / "metrics.jsonl").exists()
    assert "| ad | 64 |" in capsys.readouterr().out
    # A second call refuses to replace results, and --overwrite reuses the finished runs.
    assert cs.main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
