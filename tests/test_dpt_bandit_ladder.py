"""The DPT bandit ladder: its scoring against hand-computed values, and its tiny variant end
to end (two families, trained, scored on held-out bandits, reused when asked again)."""

import json
import math

import numpy as np
import pytest

import envs.bandit
from experiments import dpt_bandit_ladder as lad


def test_gap_closed_by_hand():
    assert lad.gap_closed(math.log(5), 1.0, 5) == pytest.approx(0.0)
    assert lad.gap_closed(1.0, 1.0, 5) == pytest.approx(1.0)
    # halfway between ln 4 and a floor of ln 4 - 0.4
    assert lad.gap_closed(math.log(4) - 0.2, math.log(4) - 0.4, 4) == pytest.approx(0.5)


def test_score_by_hand():
    nll = np.array([[1.0, 9.0, 2.0, 9.0], [3.0, 9.0, 0.0, 9.0]])  # positions 1, 3 unscored
    hit = np.array([[1, 1, 0, 1], [0, 1, 0, 1]], bool)
    floor = {"positions": [0, 2], "entropy": [1.2, 0.8], "top_probability": [0.4, 0.6]}
    s = lad.score(nll, hit, floor, arms=4)
    assert s["nll"] == pytest.approx(1.5)  # bandits' means 1.5 and 1.5
    assert s["nll_sem"] == pytest.approx(0.0)
    assert s["accuracy"] == pytest.approx(0.25)
    assert s["floor"] == pytest.approx(1.0) and s["ceiling"] == pytest.approx(0.5)
    assert s["gap_closed"] == pytest.approx((math.log(4) - 1.5) / (math.log(4) - 1.0))
    assert s["curve"]["nll"] == pytest.approx([2.0, 1.0])
    s = lad.score(np.array([[1.0], [3.0]]), hit[:, :1], {"positions": [0], "entropy": [1.0],
                  "top_probability": [0.5]}, arms=4)
    assert s["nll_sem"] == pytest.approx(np.std([1.0, 3.0], ddof=1) / np.sqrt(2))


def test_rungs_change_one_factor_at_a_time():
    a, a10, b, c = (lad.RUNGS[k] for k in ("arms5-wide", "arms10-wide", "arms20-wide",
                                           "arms20-narrow"))
    assert (a.low, a.high) == (a10.low, a10.high) == (b.low, b.high)
    assert a.arms < a10.arms < b.arms
    assert b.arms == c.arms and (b.low, b.high) != (c.low, c.high)
    from envs.bandit import HARD_BERNOULLI
    from envs.registry import IN_CONTEXT

    assert c.params() == HARD_BERNOULLI
    for r in (a, a10):
        assert IN_CONTEXT[r.env].kwargs["arms"] == r.arms
        assert r.params().means(3) == pytest.approx(envs.bandit.arm_means(3, arms=r.arms))


def test_tiny_ladder_end_to_end(tmp_path, capsys):
    work, out = tmp_path / "work", tmp_path / "out"
    argv = ["--tiny", "--rungs", "arms5-wide", "arms20-narrow", "--seeds", "1",
            "--workdir", str(work)]
    assert lad.main([*argv, "--out", str(out)]) == 0
    res = json.loads((out / "dpt_bandit_ladder.json").read_text())
    assert (out / "dpt_bandit_ladder.png").stat().st_size > 0
    assert list(res["families"]) == ["arms5-wide", "arms20-narrow"]
    for run in res["runs"]:
        k = run["arms"]
        assert run["uniform"] == pytest.approx(math.log(k))
        assert run["train"]["history"] and np.isfinite(run["nll"])
        # before any pull the best arm's posterior is the prior's: uniform over the arms
        assert run["curve"]["floor"][0] == pytest.approx(math.log(k), abs=0.15)
        assert run["gap_closed"] == pytest.approx(lad.gap_closed(run["nll"], run["floor"], k))
        ckpt = work / f"{run['name']}-seed0" / "train"
        assert (ckpt / "checkpoints" / "4").is_dir()  # the final step's checkpoint stays
        assert json.loads((ckpt / "config.json").read_text())["config"]["env"] == lad.RUNGS[
            run["name"]].env
    wide, narrow = (res["families"][k] for k in ("arms5-wide", "arms20-narrow"))
    assert wide["seeds"] == [0] and wide["nll_std"] is None  # no spread from one seed
    assert wide["nll_mean"] == pytest.approx(res["runs"][0]["nll"])
    # 16 uniform pulls say far more about the best of 5 arms in [0, 1) than of 20 in
    # [0.3, 0.7): the learnable part of the loss is a larger share of ln K
    assert (wide["uniform"] - wide["floor"]) / wide["uniform"] > 3 * (
        (narrow["uniform"] - narrow["floor"]) / narrow["uniform"])

    # Asked again: the finished runs are reused, the numbers the same, nothing retrained.
    capsys.readouterr()
    assert lad.main([*argv, "--out", str(tmp_path / "again")]) == 0
    assert capsys.readouterr().out.count("finished before, reusing") == 2
    again = json.loads((tmp_path / "again" / "dpt_bandit_ladder.json").read_text())
    assert again["families"] == res["families"]
    # The first results are not overwritten without --overwrite.
    assert lad.main([*argv, "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_unknown_rung_is_an_error(tmp_path, capsys):
    assert lad.main(["--tiny", "--rungs", "arms7", "--workdir", str(tmp_path / "w"),
                     "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--rungs" in err and "arms7" in err and "arms5-wide" in err


def test_bad_tag_is_an_error(tmp_path, capsys):
    assert lad.main(["--tiny", "--tag", "../x", "--workdir", str(tmp_path / "w"),
                     "--out", str(tmp_path)]) == 2
    assert "--tag" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()  # refused before anything is written


def test_tiny_curriculum(tmp_path, capsys):
    """--init-rung: bandit-hard's run starts from the 20-wide-arm run of its seed (trained
    first), both are reported, and the warm start is recorded in the checkpoint."""
    from rl_ring.train.checkpoint import checkpoint_meta

    work, out = tmp_path / "work", tmp_path / "out"
    argv = ["--tiny", "--rungs", "arms20-narrow", "--init-rung", "arms20-wide", "--seeds", "1",
            "--workdir", str(work), "--tag", "curr"]
    assert lad.main([*argv, "--out", str(out)]) == 0
    res = json.loads((out / "dpt_bandit_ladder_curr.json").read_text())
    assert list(res["families"]) == ["arms20-wide", "arms20-narrow-from-arms20-wide"]
    assert res["families"]["arms20-narrow-from-arms20-wide"]["init"] == "arms20-wide"
    # The source is also scored as it is on the new family (what carried over), on the
    # same held-out pulls and floor as the fine-tuned run.
    warm_run = res["runs"][1]
    zero = warm_run["zero_shot"]
    assert zero["floor"] == pytest.approx(warm_run["floor"])
    assert zero["uniform"] == pytest.approx(math.log(20)) and np.isfinite(zero["nll"])
    assert zero["nll"] != pytest.approx(warm_run["nll"], abs=1e-6)
    warm = work / "arms20-narrow-from-arms20-wide-seed0" / "train"
    assert checkpoint_meta(warm)["init_from"] == {
        "workdir": str((work / "arms20-wide-seed0" / "train").absolute()), "step": 4}
    # Asked again: both reused.
    capsys.readouterr()
    assert lad.main([*argv, "--out", str(tmp_path / "again")]) == 0
    assert capsys.readouterr().out.count("finished before, reusing") >= 2


def test_curriculum_across_arm_counts_is_an_error(tmp_path, capsys):
    assert lad.main(["--tiny", "--rungs", "arms20-narrow", "--init-rung", "arms5-wide",
                     "--workdir", str(tmp_path / "w"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--init-rung arms5-wide (5 arms)" in err and "arms20-narrow" in err
    assert not (tmp_path / "w").exists()


def test_tiny_curriculum_of_two_steps_played_online(tmp_path, capsys):
    """--init-workdir: a second curriculum step (another window) starts from a finished
    curriculum run of another ladder; --online-pulls plays it on context_scaling's held-out
    bandits next to the baselines of the same bandits and seeds."""
    from experiments import context_scaling as cs
    from rl_ring.train.checkpoint import checkpoint_meta

    w1, w2 = tmp_path / "w1", tmp_path / "w2"
    assert lad.main(["--tiny", "--rungs", "arms20-narrow", "--init-rung", "arms20-wide",
                     "--seeds", "1", "--workdir", str(w1), "--out", str(tmp_path / "o1")]) == 0
    argv = ["--tiny", "--rungs", "arms20-narrow", "--init-rung",
            "arms20-narrow-from-arms20-wide", "--init-workdir", str(w1), "--window", "32",
            "--seeds", "1", "--workdir", str(w2), "--online-pulls", "24",
            "--online-bandits", "3"]
    capsys.readouterr()
    assert lad.main([*argv, "--out", str(tmp_path / "o2")]) == 0
    assert "over 3 held-out bandits" in capsys.readouterr().out  # played
    res = json.loads((tmp_path / "o2" / "dpt_bandit_ladder.json").read_text())
    name = "arms20-narrow-from-arms20-narrow-from-arms20-wide"
    assert list(res["families"]) == [name]  # the sources, finished elsewhere, are not here
    (run,) = res["runs"]
    assert res["config"]["window"] == 32 and run["zero_shot"]["floor"] == run["floor"]
    src = w1 / "arms20-narrow-from-arms20-wide-seed0" / "train"
    assert checkpoint_meta(w2 / f"{name}-seed0" / "train")["init_from"] == {
        "workdir": str(src.absolute()), "step": 4}
    # Online: 24 pulls on the first 3 of context_scaling's held-out bandits.
    o = run["online"]
    scfg = cs.main_config("bandit-hard").replace(eval_tasks=3, eval_episodes=24)
    means = cs.family("bandit-hard").means_of(cs.heldout_tasks(scfg))
    gaps = means.max(axis=1) - means.min(axis=1)
    assert (o["pulls"], o["bandits"], len(o["final_per_task"])) == (24, 3, 3)
    assert all(0.0 <= r <= 24 * g + 1e-9 for r, g in zip(o["final_per_task"], gaps, strict=True))
    assert np.all(np.diff(o["curve"]) >= -1e-12) and o["curve"][-1] == pytest.approx(
        o["final_mean"])
    base = res["online_baselines"]["arms20-narrow"]
    assert base == json.loads(json.dumps(cs.bandit_baselines(scfg, means, 24)))
    assert res["families"][name]["online_regret"] == [o["final_mean"]]
    assert (tmp_path / "o2" / "dpt_bandit_ladder.png").stat().st_size > 0
    # Asked again: nothing retrained or replayed, the same numbers.
    assert lad.main([*argv, "--out", str(tmp_path / "o3")]) == 0
    out = capsys.readouterr().out
    assert "finished before, reusing" in out and "held-out bandits (" not in out
    again = json.loads((tmp_path / "o3" / "dpt_bandit_ladder.json").read_text())
    assert again["families"] == res["families"]
    # A curriculum in one ladder whose --init-rung has no registry env: only --rungs play.
    assert lad.main(["--tiny", "--rungs", "arms20-narrow", "--init-rung", "arms20-wide",
                     "--seeds", "1", "--workdir", str(w1), "--out", str(tmp_path / "o4"),
                     "--online-pulls", "8", "--online-bandits", "2"]) == 0
    res = json.loads((tmp_path / "o4" / "dpt_bandit_ladder.json").read_text())
    assert [("online" in r) for r in res["runs"]] == [False, True]
    assert list(res["online_baselines"]) == ["arms20-narrow"]


@pytest.mark.parametrize("argv, words", [
    (["--init-rung", "arms20-wide", "--init-workdir", "W1"], ["--init-workdir", "no finished run",
                                                              "arms20-wide-seed0"]),
    (["--init-workdir", "W1"], ["--init-workdir needs --init-rung"]),
    (["--rungs", "arms20-wide", "--online-pulls", "8"], ["--online-pulls", "arms20-wide"]),
    (["--online-pulls", "-1"], ["--online-pulls -1"]),
])
def test_bad_curriculum_or_online_options(tmp_path, capsys, argv, words):
    argv = [a.replace("W1", str(tmp_path / "w1")) for a in argv]
    assert lad.main(["--tiny", "--rungs", "arms20-narrow", *argv, "--seeds", "1",
                     "--workdir", str(tmp_path / "w"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert not (tmp_path / "w").exists()  # refused before anything is written


def test_tiny_rung_trains_in_a_watched_child(tmp_path):
    """The experiments' real path: training in a child process under rl_ring.io.run_watched
    (context_scaling.train(watch=True)), its metrics read back."""
    rec = lad.run_rung(lad.tiny_config(), "arms5-wide", 0, tmp_path, watch=True)
    assert rec["train"]["restarts"] == 0 and [h["step"] for h in rec["train"]["history"]][-1] == 4
    assert (tmp_path / "arms5-wide-seed0" / "train" / "checkpoints" / "4").is_dir()
