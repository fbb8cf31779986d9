"""``rl-ring quickstart --tiny``: collect, train with ring attention on 8 devices, evaluate.

Checks real numbers: the training loss fell, the evaluation is on the held-out goals with
their hand-computed optimum, the window means agree with the per-episode curve, and the
files (JSON read back, PNG) exist.
"""

import json

import numpy as np
import pytest

import envs
from experiments import quickstart
from rl_ring import cli


def test_quickstart_tiny_end_to_end(tmp_path, capsys):
    out = tmp_path / "qs"
    assert cli.main(["quickstart", "--tiny", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "quickstart.json").read_text())
    assert (out / "quickstart.png").stat().st_size > 10_000
    assert summary["format"] == "rl_ring.Quickstart" and summary["devices"] == 8
    # Trained with ring attention over 8 devices.
    run = summary["runs"][0]
    assert run["config"]["mesh"] == "seq=8"
    # The checkpoint is where the summary says, once (not a doubled runs/.../runs/ path).
    assert summary["checkpoint"] == str(out / "ad-tiny" / "train")
    assert str(out / "ad-tiny" / "train") in printed
    train_cfg = json.loads((out / "ad-tiny" / "train" / "config.json").read_text())
    assert train_cfg["config"]["agent_config"]["model"]["attn_impl"] == "ring"
    # The loss fell from about log(5) = 1.609 (uniform over the 5 actions).
    assert summary["train_loss"]["first"] == pytest.approx(np.log(5), abs=0.1)
    assert summary["train_loss"]["last"] < 0.85 * summary["train_loss"]["first"]
    # The learning effect asserted is on the actions, not on returns: after 60 steps the
    # held-out window return is noise around a random policy's (measured over training
    # seeds 0-3: 0.08-0.22 of a 15.1 optimum; random 0.16). On fresh windows of the
    # training goals' histories the checkpoint predicts the source's next action stably
    # (loss 1.00-1.04, accuracy 0.67-0.69 over the same seeds) better than the best
    # context-free guess, the data's action frequencies (loss 1.35, accuracy 0.52).
    fresh = run["loss"]["train_tasks"]
    assert fresh["loss"] < 1.2 and fresh["accuracy"] > 0.6
    # Held-out goals only, with the optimum computed by hand: 20 - Manhattan distance.
    test = summary["ad_test"]
    assert set(test["tasks"]) <= set(envs.task_split("darkroom", "test"))
    hand = [20 - abs(g % 9 - 4) - abs(g // 9 - 4) for g in test["tasks"]]
    assert test["optimal"] == pytest.approx(np.mean(hand))
    curve = np.asarray(test["per_episode_mean"])
    assert curve.shape == (quickstart.quick_run(tiny=True).eval_episodes,)
    lo, hi = test["window"]
    assert test["window_return"]["mean"] == pytest.approx(curve[lo - 1:hi].mean())
    assert summary["baselines"]["random"]["window_return"] < test["optimal"]
    assert "| AD (1 training seeds) |" in printed and "| optimal |" in printed
    # Mean ± standard error over the evaluation seeds, not one seed's anecdote.
    by = test["by_eval_seed"]
    assert by["n"] == quickstart.quick_run(tiny=True).eval_test_seeds == 2
    assert by["mean"] == pytest.approx(test["window_fraction_of_optimal"]["mean"])
    assert "standard error over 2 evaluations" in printed

    # `rl-ring eval --checkpoint` on the quickstart's model reproduces its number: the
    # checkpoint carries AD's evaluation defaults (sampled actions, one-episode slide).
    run = quickstart.quick_run(tiny=True)
    argv = ["eval", "--checkpoint", summary["checkpoint"], "--env", "darkroom",
            "--trials", str(run.eval_episodes), "--envs", str(run.eval_rows),
            "--seeds", str(run.eval_test_seeds), "--task-split", "test", "--no-progress"]
    assert cli.main([*argv, "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    np.testing.assert_allclose(report["summary"]["return"]["per_trial"]["mean"], curve,
                               rtol=0, atol=1e-9)
    # Greedy decoding is one flag away, and is a different policy.
    assert cli.main([*argv, "--greedy", "--out", str(tmp_path / "greedy")]) == 0
    greedy = json.loads((tmp_path / "greedy" / "report.json").read_text())
    assert greedy["summary"]["return"]["per_trial"]["mean"] != report["summary"]["return"][
        "per_trial"]["mean"]


def test_quickstart_config_is_the_main_run_shortened():
    from experiments.configs.ad_darkroom import main_run

    full, main = quickstart.quick_run(), main_run()
    assert full.mesh == "seq=8" and full.steps < main.steps
    assert full.replace(name=main.name, steps=main.steps, eval_train_seeds=main.eval_train_seeds,
                        loss_batches=main.loss_batches) == main
