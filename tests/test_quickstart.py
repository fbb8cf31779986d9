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
    train_cfg = json.loads((out / "runs" / "quickstart-tiny" / "train" / "config.json")
                           .read_text())
    assert train_cfg["config"]["agent_config"]["model"]["attn_impl"] == "ring"
    # The loss fell from about log(5) = 1.609 (uniform over the 5 actions).
    assert summary["train_loss"]["first"] == pytest.approx(np.log(5), abs=0.1)
    assert summary["train_loss"]["last"] < 0.85 * summary["train_loss"]["first"]
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


def test_quickstart_config_is_the_main_run_shortened():
    from experiments.configs.ad_darkroom import main_run

    full, main = quickstart.quick_run(), main_run()
    assert full.mesh == "seq=8" and full.steps < main.steps
    assert full.replace(name=main.name, steps=main.steps, eval_train_seeds=main.eval_train_seeds,
                        loss_batches=main.loss_batches) == main
