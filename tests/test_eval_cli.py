"""``rl-ring eval`` end to end: files written, partial results kept, video, bad input."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
from toy_envs import BanditEnv, CountdownEnv

from rl_ring.cli.eval import main
from rl_ring.eval.env_spec import EnvSpec, episode_seed
from rl_ring.eval.evaluate import EvalConfig, evaluate
from rl_ring.eval.policy import RowPolicy
from rl_ring.eval.report import validate_report
from rl_ring.eval.rollout import run_seed
from rl_ring.eval.workers import InProcessWorkers, SubprocessWorkers

COUNTDOWN = "toy_envs:CountdownEnv"


def test_cli_writes_report_and_plot(tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main(["--env", "CartPole-v1", "--policy", "random", "--trials", "3", "--envs", "4",
               "--seeds", "2", "--out", str(out), "--no-progress"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    validate_report(report)
    assert (report["num_seeds"], report["num_envs"], report["trials"]) == (2, 4, 3)
    # CartPole pays 1 per step: every return equals its length
    assert all(e["return"] == e["length"] for e in report["episodes"])
    per_seed_last = [np.mean([e["return"] for e in report["episodes"]
                              if e["seed"] == s and e["trial"] == 2]) for s in (0, 1)]
    assert report["summary"]["return"]["last"]["mean"] == pytest.approx(np.mean(per_seed_last))
    assert report["summary"]["return"]["last"]["std"] == pytest.approx(
        np.std(per_seed_last, ddof=1))
    png = (out / report["files"]["plot"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "last trial" in printed and "best of 3" in printed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--policy", "greedy"], "--policy 'greedy'"),
        (["--checkpoint", "/nonexistent/run"], "--checkpoint /nonexistent/run: expected a"),
        (["--trials", "0"], "--trials must be >= 1"),
        (["--env", "NoSuchEnv-v9"], "'NoSuchEnv-v9': not in the rl_ring registry"),
        (["--temperature", "0.5"], "--temperature applies to a trained agent"),
        (["--temperature", "0"], "--temperature must be a finite number > 0, got 0.0"),
    ],
)
def test_cli_bad_input_names_the_argument(tmp_path, capsys, argv, message):
    base = {"--env": "CartPole-v1", "--out": str(tmp_path / "x")}
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        base[flag] = value
    args = [a for kv in base.items() for a in kv] + ["--no-progress", "--envs", "2"]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x" / "report.json").exists()


def test_num_tasks_plays_the_experiments_subset(tmp_path, capsys):
    from envs.registry import task_split, task_subset

    out = tmp_path / "eval"
    assert main(["--env", "keydoor", "--policy", "random", "--num-tasks", "5", "--envs", "5",
                 "--seeds", "1", "--trials", "1", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    played = [e["task"] for e in report["episodes"]]
    # the fixed shuffle's first 5, not the split's first 5
    assert played == task_subset("keydoor", "test", 5) != task_split("keydoor", "test")[:5]
    assert report["config"]["num_tasks"] == 5
    for argv, message in ((["--num-tasks", "-1"], "--num-tasks -1: expected >= 0"),
                          (["--num-tasks", "99999"], "num_tasks=99999: keydoor has"),
                          (["--num-tasks", "2", "--task-split", "none"], "needs a split"),
                          (["--num-tasks", "2", "--env", "CartPole-v1"], "has no tasks")):
        args = {"--env": "keydoor", "--out": str(tmp_path / "x"), **dict(zip(
            argv[::2], argv[1::2], strict=True))}
        assert main([a for kv in args.items() for a in kv] + ["--no-progress"]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "x").exists()


def test_killed_worker_results_saved_and_failure_reported(tmp_path):
    n = 4
    workers = SubprocessWorkers(n, 2, timeout_s=60)
    victim = workers.pids[0]
    calls = {"n": 0}

    def kill_on_third_step(obs):
        calls["n"] += 1
        if calls["n"] == 3 * n:  # rows are evaluated one by one inside one act call
            os.kill(victim, signal.SIGKILL)
        return 2

    cfg = EvalConfig(env="countdown", env_factory=COUNTDOWN, out=str(tmp_path), trials=2,
                     envs=n, seeds=2, progress=False)
    try:
        evaluate(cfg, policy=lambda space: RowPolicy(kill_on_third_step, space),
                 workers=workers)
    finally:
        workers.close()
    report = json.loads((tmp_path / "report.json").read_text())
    validate_report(report)
    assert report["complete"] is True
    fails = report["failures"]
    assert [(f["seed"], f["env_index"], f["trial"]) for f in fails] == [(0, 0, 0), (0, 1, 0)]
    assert all("died" in f["error"] and "exit code -9" in f["error"] for f in fails)
    ok = [e for e in report["episodes"] if e["status"] == "ok"]
    assert len(ok) == (2 * n - 2) * 2
    for e in ok:  # action 2 pays 3 (t + 1) per step
        length = CountdownEnv.episode_length(episode_seed(e["seed"], e["env_index"], e["trial"]))
        assert (e["length"], e["return"]) == (length, 3 * length * (length + 1) / 2)
    assert report["summary"]["complete_rows"] == 2 * n - 2


def test_interrupted_evaluation_keeps_finished_seeds(tmp_path):
    class Boom(RowPolicy):
        def reset(self, num_envs, *, seeds):
            self.resets = getattr(self, "resets", 0) + 1
            if self.resets == 2:
                raise KeyboardInterrupt
            super().reset(num_envs, seeds=seeds)

    policy = Boom(lambda obs: 0, CountdownEnv().action_space)
    cfg = EvalConfig(env="countdown", env_factory=COUNTDOWN, out=str(tmp_path), trials=2,
                     envs=3, seeds=3, progress=False)
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg, policy=policy)
    report = json.loads((tmp_path / "report.json").read_text())
    validate_report(report)
    assert report["complete"] is False and report["num_seeds"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_video_records_the_chosen_trial(tmp_path):
    cfg = EvalConfig(env="countdown", env_factory=COUNTDOWN, out=str(tmp_path), trials=3,
                     envs=2, seeds=1, video=True, video_trial=1, progress=False)
    report = evaluate(cfg, policy=lambda space: RowPolicy(lambda obs: 0, space))
    import imageio.v3 as iio

    frames = iio.imread(tmp_path / report["files"]["video"], index=None)
    length = CountdownEnv.episode_length(episode_seed(0, 0, 1))
    # the first frame after reset, then one per step that did not end the episode; a GIF
    # merges identical consecutive frames, and every frame here differs (red = 20 * t)
    assert frames.shape[0] == length
    np.testing.assert_array_equal(frames[:, 0, 0, 0], 20 * np.arange(length))


def test_render_failure_keeps_scores():
    specs = [EnvSpec("bandit", task=0, factory=BanditEnv)]
    with InProcessWorkers(1) as workers:
        res = run_seed(workers, lambda space: RowPolicy(lambda obs: 0, space), specs,
                       seed=0, trials=2, record_row=0)
    assert res.frames is None and "rendering row 0 failed" in res.video_error
    assert [e.episode_return for e in res.episodes] == [1.0, 1.0]


def test_bench_tiny_variant(tmp_path):
    """The worker benchmark's tiny CPU variant: every configuration ran its episodes."""
    pytest.importorskip("envs")
    from experiments.bench import eval_workers as bench

    assert bench.main(["--envs", "darkroom", "--rows", "1", "3", "--modes", "inprocess",
                       "--repeats", "1", "--steps", "60", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench_eval_workers.json").read_text())
    got = {(r["mode"], r["num_envs"]): r["env_steps"] for r in result["rows"]}
    # darkroom episodes last 20 steps; trials = round(60 / (20 * rows)) per row
    assert got == {("inprocess", 1): 60, ("inprocess", 3): 60}
    assert all(r["steps_per_s_median"] > 0 for r in result["rows"])
    assert (tmp_path / "bench_eval_workers.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_asks_for_what_it_does_not_build(tmp_path):
    """Evaluation never looks up envs or agents by name: a scripted or trained policy and the
    tasks of a split are passed in, and leaving one out names the missing argument."""
    base = {"env": "countdown", "progress": False, "envs": 2, "seeds": 1, "trials": 1}
    with pytest.raises(ValueError, match=r"--policy 'scripted' needs policy="):
        evaluate(EvalConfig(out=str(tmp_path / "a"), policy="scripted", **base))
    with pytest.raises(ValueError, match=r"--checkpoint runs/x needs policy="):
        evaluate(EvalConfig(out=str(tmp_path / "b"), checkpoint="runs/x", **base))
    with pytest.raises(ValueError, match=r"task_split='test' needs tasks="):
        evaluate(EvalConfig(out=str(tmp_path / "c"), **base), make_env=CountdownEnv)
    with pytest.raises(ValueError, match=r"--env-factory toy_envs:CountdownEnv and make_env="):
        evaluate(EvalConfig(out=str(tmp_path / "d"), env_factory=COUNTDOWN, **base),
                 make_env=CountdownEnv)
    # the factory passed in builds every row; tasks=[None] is a single-task env
    report = evaluate(EvalConfig(out=str(tmp_path / "e"), **base), make_env=CountdownEnv,
                      tasks=[None], policy=lambda space: RowPolicy(lambda obs: 0, space))
    length = CountdownEnv.episode_length(episode_seed(0, 1, 0))
    assert [e["length"] for e in report["episodes"]] == [
        CountdownEnv.episode_length(episode_seed(0, 0, 0)), length]
