"""The context-scaling experiment: its tiny variants end to end (a bandit and a grid family),
and its pieces.

Oracles: cumulative regret, final returns, the target checks and the recipe-scale bytes
computed by hand on small arrays; the bandit baselines recomputed with
``envs.learners.bandits.play``, the grid sources' curves with ``collect_histories``, the
random policy's expected Dark Room hard return by an exact dynamic programme; the JSON / PNG
read back.
"""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import envs
from envs.learners.bandits import play, truncated_beta
from envs.learners.history import collect_histories, learning_curve
from experiments import context_scaling as cs
from experiments import context_scaling_floor as csf
from experiments import context_scaling_phases as csp
from experiments import context_scaling_play as csplay
from experiments import context_scaling_report as csr
from experiments import context_scaling_zeroshot as csz
from rl_ring.train.plan import attention_memory


def test_regret_summary_by_hand():
    regret = np.array([[0.5, 0.0, 0.25, 0.25], [0.1, 0.1, 0.0, 0.0]])
    s = cs.regret_summary(regret)
    assert s["final_per_task"] == pytest.approx([1.0, 0.2])
    assert s["final_mean"] == pytest.approx(0.6)
    assert s["final_sem"] == pytest.approx(np.std([1.0, 0.2], ddof=1) / np.sqrt(2))
    assert s["curve_x"] == [1, 2, 3, 4]
    assert s["curve"] == pytest.approx([0.3, 0.35, 0.475, 0.6])
    assert s["per_pull_regret"] == pytest.approx({"0-1": 0.3, "1-2": 0.05, "2-4": 0.125})


def test_return_summary_by_hand():
    # 2 tasks x 11 episodes: the last 10% is the last 2 episodes (ceil of 1.1).
    returns = np.zeros((2, 11))
    returns[0, 9:] = [1.0, 1.0]
    returns[1, 9:] = [0.0, 1.0]
    s = cs.return_summary(returns, np.array([2.0, 2.0]))
    assert s["final_episodes"] == [10, 11]
    assert s["final_per_task"] == pytest.approx([1.0, 0.5])
    assert s["final_mean"] == pytest.approx(0.75)
    assert s["final_fraction_of_optimal"] == pytest.approx(0.375)
    assert s["curve_x"] == list(range(1, 12)) and s["curve"][-2:] == pytest.approx([0.5, 1.0])


def test_targets_by_hand():
    cfg = cs.tiny_config().replace(windows=(8, 32))
    rec = [{"agent": "ad", "window": 8, "eval": {"final_per_task": [10.0, 12.0, 14.0]}},
           {"agent": "ad", "window": 32, "eval": {"final_per_task": [5.0, 6.0, 7.0]}}]
    base = {"thompson": {"final_mean": 5.0}, "ucb": {"final_mean": 8.0}}
    t = cs.targets(cfg, rec, base)["ad"]
    assert t["longest_over_thompson"] == pytest.approx(6.0 / 5.0)
    assert t["within_1.25x_thompson"] and t["below_ucb"]
    assert t["shortest_minus_longest"] == pytest.approx(6.0)
    se = np.sqrt(4.0 / 3 + 1.0 / 3)
    assert t["difference_se"] == pytest.approx(se) and t["shortest_worse_by_3se"]
    # Grids: seeds' final returns; spread = std(long) + std(short).
    g = cs.tiny_config("darkroom-hard")
    rec = [{"agent": "ad", "window": w, "eval": {"final_mean": f, "optimal": 1.0}}
           for w, fs in ((2, [0.2, 0.4]), (4, [0.7, 0.9])) for f in fs]
    t = cs.targets(g, rec, {})["ad"]
    assert t["longest_minus_shortest"] == pytest.approx(0.5)
    assert t["seed_spread"] == pytest.approx(0.2)
    assert t["longest_beats_shortest_by_seed_spread"]
    assert t["longest_fraction_of_optimal"] == pytest.approx(0.8)
    assert t["longest_reaches_70pct_optimal"]
    rec[2]["eval"]["final_mean"] = 0.2  # long seeds 0.2, 0.9: mean 0.55, spread 0.45
    t = cs.targets(g, rec, {})["ad"]
    assert not t["longest_beats_shortest_by_seed_spread"]
    assert not t["longest_reaches_70pct_optimal"]


def test_finished_run_kept_when_only_other_windows_change():
    cfg = cs.tiny_config()
    saved = {"config": dataclasses.asdict(cfg), "agent": "ad", "window": 32, "seed": 0}
    saved = json.loads(json.dumps(saved))  # as read back from record.json
    key = dict(saved, config=dataclasses.asdict(cfg.replace(windows=(32, 64), plan_windows=(9,))))
    assert cs.same_run(saved, key)
    for change in ({"steps": cfg.steps + 1}, {"ring_from": 1}, {"seed": 1}):
        assert not cs.same_run(saved, dict(saved, config=dataclasses.asdict(cfg.replace(**change))))
    assert not cs.same_run(saved, dict(saved, seed=1))
    assert not cs.same_run(saved, dict(saved, window=64))


def test_finished_only_reports_finished_runs_and_trains_nothing(tmp_path, capsys):
    cfg = cs.tiny_config("darkroom-hard")
    from rl_ring.io import claim_run_dir

    claim_run_dir(str(tmp_path / "runs"), kind="context_scaling", overwrite=False)
    work = tmp_path / "runs" / "tiny-darkroom-hard"
    (work / "ad-w4-seed0").mkdir(parents=True)
    record = {"key": cs.run_key(cfg, "ad", 4, 0), "name": "ad-w4-seed0"}
    (work / "ad-w4-seed0" / "record.json").write_text(json.dumps(record))
    assert cs.finished_record(cfg, "ad", 4, 0, work) == json.loads(json.dumps(record))
    assert cs.finished_record(cfg.replace(steps=5), "ad", 4, 0, work) is None
    assert cs.finished_record(cfg, "ad", 4, 1, work) is None
    # nothing finished for a 2-episode window: an error naming the option, nothing trained
    argv = ["--tiny", "--env", "darkroom-hard", "--agents", "ad", "--windows", "2",
            "--finished-only", "--out", str(tmp_path / "out"), "--workdir",
            str(tmp_path / "runs")]
    assert cs.main(argv) == 2
    assert "--finished-only: no finished run" in capsys.readouterr().err
    assert sorted(p.name for p in work.iterdir()) == ["ad-w4-seed0"]


def test_other_trainings_live_apart_and_finished_runs_are_never_deleted(tmp_path):
    base = cs.tiny_config("darkroom-hard")
    assert cs.config_suffix(base, base) == ""
    assert cs.config_suffix(base.replace(steps=300, batch_size=4, solved_weight=0.1),
                            base) == "-steps300-batch4-solved0.1"
    assert cs.config_suffix(base.replace(lr=1e-4, warmup_steps=10, init_from="f",
                                         init_window=16), base) == "-lr0.0001-warmup10-init16"
    assert cs.config_suffix(base.replace(init_from="f", init_window=16, init_seed=0),
                            base) == "-init16s0"
    assert cs.config_suffix(base.replace(windows=(16,), seed=base.seed), base) == ""
    assert cs.config_suffix(base.replace(history_episodes=128, histories=2000, eval_tasks=9),
                            base) == "-hist128-histories2000-eval9"
    for bad in (dict(histories=0), dict(history_episodes=0), dict(eval_tasks=-1)):
        with pytest.raises(ValueError, match="expected at least 1 history"):
            base.replace(**bad)
    assert cs.config_suffix(base.replace(source_noise=0.1), base) == "-noise0.1"
    for bad, match in ((dict(source_noise=1.5), "expected a probability"),
                       (dict(source_noise=-0.1), "expected a probability")):
        with pytest.raises(ValueError, match=match):
            base.replace(**bad)
    with pytest.raises(ValueError, match="bandit-hard takes 0"):
        cs.main_config("bandit-hard").replace(source_noise=0.1)
    meant = base.replace(source_noise=0.1, source_labels="intended")
    assert cs.config_suffix(meant, base) == "-noise0.1-intended"
    assert cs.ad_config(meant, 4).label_key == "intended_actions"
    assert cs.ad_config(base, 4).label_key == ""
    with pytest.raises(ValueError, match="without --source-noise"):
        base.replace(source_labels="intended")
    with pytest.raises(ValueError, match="--source-labels 'chosen': expected one of"):
        base.replace(source_labels="chosen")
    assert cs.main(["--tiny", "--env", "keydoor", "--source-labels", "intended", "--workdir",
                    str(tmp_path / "bad"), "--out", str(tmp_path / "bad")]) == 2
    assert cs.main(["--tiny", "--env", "keydoor", "--history-episodes", "-3", "--workdir",
                    str(tmp_path / "bad"), "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
    args = cs.Args(env="keydoor", history_episodes=64, histories=30, eval_tasks=5,
                   workdir="w")
    assert cs.destinations(cs.main_config("keydoor").replace(
        history_episodes=64, histories=30, eval_tasks=5), args) == (
        "context_scaling_keydoor_hist64_histories30_eval5",
        Path("w") / "keydoor-hist64-histories30-eval5")
    # the command line puts a reduced run in a folder (and results) of its own
    cfg = base.replace(steps=5)
    args = cs.Args(env="darkroom-hard", tiny=True, steps=5, workdir=str(tmp_path))
    assert cs.destinations(cfg, args) == ("context_scaling_darkroom_hard_steps5",
                                          tmp_path / "tiny-darkroom-hard-steps5")
    assert cs.destinations(base, cs.Args(env="darkroom-hard", tiny=True, workdir="w")) == (
        "context_scaling_darkroom_hard", Path("w") / "tiny-darkroom-hard")
    held = tmp_path / "tiny-darkroom-hard-steps5" / "ad-w4-seed0"
    held.mkdir(parents=True)
    record = {"key": cs.run_key(cfg, "ad", 4, 0), "name": "ad-w4-seed0"}
    (held / "record.json").write_text(json.dumps(record))
    # a finished run of another configuration in the way is refused, not replaced
    other = base.replace(steps=5, lr=1e-4)
    with pytest.raises(ValueError, match="another configuration .*lr.* it is kept"):
        cs.run_one(other, "ad", 4, 0, held.parent, data="unused", watch=False)
    assert json.loads((held / "record.json").read_text()) == json.loads(json.dumps(record))


def test_thompson_action_probabilities_and_entropy_by_hand():
    rng = np.random.default_rng(0)
    # P(Beta(2, 1) > Beta(1, 1)) = int_0^1 2x * x dx = 2/3.
    p = csf.thompson_action_probs(np.array([[2.0, 1.0]]), np.array([[1.0, 1.0]]), 40_000, rng)
    assert p[0] == pytest.approx([2 / 3, 1 / 3], abs=0.01)
    p = csf.thompson_action_probs(np.ones((1, 4)), np.ones((1, 4)), 40_000, rng)
    assert p[0] == pytest.approx([0.25] * 4, abs=0.01)
    # Miller-Madow: plug-in entropy + (nonzero bins - 1) / (2 samples).
    e = csf.entropy(np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]), 100)
    assert e == pytest.approx([np.log(2) + 1 / 200, 0.0])
    assert csf.bucket_means(np.array([1.0, 3.0, 5.0]), np.array([0, 300, 2000])) == {
        "all": 3.0, "0-256": 1.0, "256-1024": 3.0, "1024-4096": 5.0}
    # Posteriors truncated to the prior's range [0.5, 1]: Beta(2, 1) has density x / 0.375
    # there, Beta(1, 1) is uniform (CDF 2 (x - 0.5)): P(first is larger) =
    # int_0.5^1 (x / 0.375) 2 (x - 0.5) dx = 5/9 (2/3 without the truncation).
    p = csf.thompson_action_probs(np.array([[2.0, 1.0]]), np.array([[1.0, 1.0]]), 40_000, rng,
                                  support=(0.5, 1.0))
    assert p[0] == pytest.approx([5 / 9, 4 / 9], abs=0.01)
    x = truncated_beta(np.array([3.0, 40.0]), np.array([5.0, 2.0]), 0.3, 0.7, 2_000, rng)
    assert x.shape == (2_000, 2) and x.min() >= 0.3 and x.max() <= 0.7
    # Beta(40, 2) truncated: density x^39 (1 - x) on [0.3, 0.7], mean I(40) / I(39) with
    # I(n) = int_0.3^0.7 x^n (1 - x) dx = [x^(n+1) / (n+1) - x^(n+2) / (n+2)].

    def integral(n):
        return sum(sign * (b ** (n + 1) / (n + 1) - b ** (n + 2) / (n + 2))
                   for sign, b in ((1, 0.7), (-1, 0.3)))

    assert x[:, 1].mean() == pytest.approx(integral(40) / integral(39), abs=0.002)


def test_imitation_floor_starts_uniform_and_falls():
    params = cs.family("bandit-hard")
    means = params.means_of(cs.training_tasks(cs.main_config())[:8])
    fl = csf.imitation_floor(params, means, 512, 0, samples=2000, stride=64)
    k = params.arms
    # Before the first pull every posterior is Beta(1, 1): uniform over the arms.
    assert fl["entropy"][0] == pytest.approx(np.log(k), abs=0.02)
    assert fl["top_probability"][0] == pytest.approx(1 / k, abs=0.02)
    assert fl["entropy"][-1] < fl["entropy"][0] - 0.3
    with pytest.raises(ValueError, match="Bernoulli"):
        csf.imitation_floor(cs.family("bandit-gauss"), means, 8, 0, samples=2, stride=1)
    # DPT's floor: the best arm given uniform pulls, under the family's prior. It starts
    # uniform too and falls.
    dpt = csf.imitation_floor(params, means, 512, 0, samples=2000, stride=64,
                              learner="random", prior="family")
    assert dpt["entropy"][0] == pytest.approx(np.log(k), abs=0.02)
    assert dpt["entropy"][-1] < dpt["entropy"][0] - 0.1
    with pytest.raises(ValueError, match="prior"):
        csf.imitation_floor(params, means, 8, 0, samples=2, stride=1, prior="beta")


def test_floor_refuses_a_missing_workdir(tmp_path, capsys):
    assert csf.main(["--workdir", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "--workdir" in capsys.readouterr().err


def test_darkroom_hard_sources_search_then_walk_straight():
    # A corner goal, 16 moves from the centre: reward only on the first arrival of an
    # episode; once found, every episode walks a shortest path there.
    goal = envs.gridworld.cell_id(16, 0, 17)
    for learner in ("posterior", "optimistic"):
        s = collect_histories("darkroom-hard", learner, tasks=[goal], episodes_per_history=150,
                              seed=1)
        r = s.episode_returns
        k = int(np.argmax(r > 0))
        assert 10 < k < 150 and np.all(r[:k] == 0) and np.all(r[k:] == 1)
        for e in range(k + 1, 150):
            rewards = s.rewards[s.episode_starts[e]:s.episode_starts[e + 1]]
            assert np.flatnonzero(rewards).tolist() == [15]  # the 16th move arrives


def test_unknown_env_is_an_error():
    with pytest.raises(ValueError, match="bandit-hard, bandit-gauss, darkroom-hard, keydoor"):
        cs.main_config("darkroom")
    assert cs.tiny_config("keydoor").window_steps(4) == 200
    assert "ad" in cs.default_agents()


def test_recipe_step_bytes_by_hand():
    scale = csr.RecipeScale(width=8, depth=2, heads=2, ffn_mult=4, dtype_bytes=2, chunk=4)
    # Dense, T = 16 tokens, h = 2 heads of d = 4, B = 2 bytes: q+out 512, k+v 512, lse 128,
    # scores 2*16*16*4 = 2048, d_out 256, dq 512, dK/dV 1024, the scores' gradient 2048.
    dense = csr.step_bytes(scale, num_params=100, tokens=16, devices=1, attention="dense")
    assert dense == {"state": 1600, "saved": 2 * 16 * 8 * 2, "layer": 16 * 12 * 8 * 2,
                     "attention": 7040, "total": 1600 + 512 + 3072 + 7040}
    block = csr.step_bytes(scale, num_params=100, tokens=16, devices=1, attention="blockwise")
    # The same kernel in chunks of 4: scores 2*4*4*4 = 128 instead of 2048, no T^2 gradient.
    assert block["attention"] == 7040 - 2048 - 2048 + 128
    ring = csr.step_bytes(scale, num_params=100, tokens=20, devices=8, attention="ring")
    # 20 tokens pad to 24 (3 per device); the attention is plan's own ring estimate.
    assert ring["saved"] == 2 * 3 * 8 * 2 and ring["layer"] == 3 * 12 * 8 * 2
    assert ring["attention"] == attention_memory(seq_len=24, num_devices=8, heads=2, kv_heads=2,
                                                 head_dim=4, dtype_bytes=2, chunk=4
                                                 )["ring"]["fwd_bwd"]
    with pytest.raises(ValueError, match="one device"):
        csr.step_bytes(scale, num_params=1, tokens=16, devices=8, attention="blockwise")


def test_would_not_fit_logic():
    gib = csr.GIB

    def row(w, dense, block):
        return {"window": w, **{k: {"fits": csr.fits(int(v * gib))}
                                for k, v in (("dense", dense), ("blockwise", block))}}

    rows = [row(16, 10, 6), row(64, 40, 10), row(256, 600, 20), row(1024, 9000, 90)]
    # 64: dense too big but blockwise fits 16 GiB; 256: only 80 GiB; 1024: neither.
    assert csr.would_not_fit(rows) == {"16GiB": [256, 1024], "80GiB": [1024]}
    assert csr.fits(16 * gib) == {"16GiB": True, "80GiB": True}
    assert csr.fits(16 * gib + 1) == {"16GiB": False, "80GiB": True}


def test_tiny_bandit_end_to_end(tmp_path, capsys):
    out, work = tmp_path / "results", tmp_path / "runs"
    argv = ["--tiny", "--seeds", "1", "--agents", "ad", "dpt", "--out", str(out),
            "--workdir", str(work)]
    assert cs.main(argv) == 0
    summary = json.loads((out / "context_scaling.json").read_text())
    assert (out / "context_scaling.png").stat().st_size > 10_000
    cfg = cs.tiny_config()
    # Held-out bandits only, and the baselines are play() on exactly those bandits.
    held = cs.heldout_tasks(cfg)
    assert set(held) <= set(envs.task_split("bandit-hard", "test"))
    assert summary["eval_tasks"] == len(held) == cfg.eval_tasks
    means = cs.family("bandit-hard").means_of(held)
    ts = play(cs.family("bandit-hard"), means, "thompson", cfg.eval_episodes,
              seed=cfg.seed + 1000)
    assert summary["baselines"]["thompson"]["final_mean"] == pytest.approx(
        ts["regret"].sum(1).mean())
    b = {k: v["final_mean"] for k, v in summary["baselines"].items()}
    assert b["thompson"] < b["random"] and b["ucb"] < b["random"]
    # Arms in [0.3, 0.7): Thompson sampling that knows that prior is reported too.
    assert list(b) == ["thompson", "ucb", "random", "thompson-prior"]
    tp = play(cs.family("bandit-hard"), means, "thompson-prior", cfg.eval_episodes,
              seed=cfg.seed + 1003)
    assert b["thompson-prior"] == pytest.approx(tp["regret"].sum(1).mean())
    # Random's expected regret is the mean gap per pull.
    gap = (means.max(1) - means.mean(1)).mean() * cfg.eval_episodes
    assert b["random"] == pytest.approx(gap, rel=0.15)
    assert [(c["agent"], c["window"]) for c in summary["configs"]] == [
        (a, w) for a in ("ad", "dpt") for w in cfg.windows]
    for c in summary["configs"]:
        # AD: one token a pull; DPT: the transition and the query.
        assert c["tokens_per_sequence"] == c["window"] * (2 if c["agent"] == "dpt" else 1)
        assert c["mesh"] == ("seq=8" if c["window"] >= cfg.ring_from else "data=8")
        curve = np.asarray(c["curve_mean"])
        assert curve.shape == (len(c["curve_x"]),) and np.all(np.diff(curve) >= 0)
        assert c["curve_x"][-1] == cfg.eval_episodes
        final = c["final"]["mean"]
        assert curve[-1] == pytest.approx(final)
        # Regret lies between 0 and always pulling the worst arm.
        worst = (means.max(1) - means.min(1)).mean() * cfg.eval_episodes
        assert 0 < final < worst and final < 1.3 * b["random"]
        assert c["train_wall_s"][0] > 0 and c["tokens_per_s"][0] > 0
        assert np.isfinite(c["final_loss"][0])
    mem = [c for c in summary["configs"] if c["agent"] == "ad"][-1]["memory"]
    assert (mem["dense"]["devices"], mem["ring"]["devices"]) == (1, 8) and "blockwise" not in mem
    # Per device, the ring holds an eighth of the sequence: less than one device's dense step.
    assert 0 < mem["ring"]["peak_bytes"] < mem["dense"]["peak_bytes"]
    dec = summary["decode_longest"]
    assert dec["rows"] == cfg.eval_tasks and 0 < dec["s_per_token"] < dec["s_per_step"]
    t = summary["targets"]["ad"]
    assert t["longest_window"] == t["shortest_window"] == 32
    assert summary["headline"]["ad"]["windows"] == [32]
    rec = summary["recipe_scale"]
    assert [(r["agent"], r["window"]) for r in rec["rows"]] == [
        (a, w) for a in ("ad", "dpt") for w in (32, 128)]
    assert rec["would_not_fit_without_ring"]["ad"] == {"16GiB": [], "80GiB": []}
    # The checkpoint stays in the work dir, re-playable alone through the Policy protocol.
    ckpt = work / "tiny-bandit-hard" / "ad-w32-seed0" / "train"
    assert (ckpt / "metrics.jsonl").exists()
    printed = capsys.readouterr().out
    assert "| ad | 32 |" in printed and "| dpt | 32 | 64 |" in printed
    # A second call refuses to replace results.
    assert cs.main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    # The imitation floors of the trained runs: their loss on fresh histories (Thompson's for
    # AD, uniform pulls for DPT), window by window, equals the agent's own loss function on
    # those windows.
    fargv = ["--workdir", str(work / "tiny-bandit-hard"), "--histories", "2", "--pulls", "64",
             "--samples", "50", "--stride", "8", "--bin", "16", "--out", str(out)]
    assert csf.main(fargv) == 0
    fl = json.loads((out / "context_scaling_floor.json").read_text())
    assert (out / "context_scaling_floor.png").stat().st_size > 10_000
    c, d = fl["configs"]
    assert [(x["agent"], x["window"], x["seeds"]) for x in (c, d)] == [
        ("ad", 32, [0]), ("dpt", 32, [0])]
    assert [(f["source"], f["prior"], f["pulls"]) for f in fl["floors"].values()] == [
        ("thompson", "uniform", 64), ("random", "family", 64)]
    assert len(fl["floors"]["ad"]["curve"]["positions"]) == 8
    assert fl["curves"]["ad-w32"]["x"][0] == 1.5  # bins of 4 pulls: a 16th of 64
    _check_nll_against_loss_fn(ckpt, c["nll_per_seed"][0], pulls=64, histories=2)
    _check_nll_against_loss_fn(work / "tiny-bandit-hard" / "dpt-w32-seed0" / "train",
                               d["nll_per_seed"][0], pulls=64, histories=2)
    # The temperature sweep of that run, next to the sources on the same bandits.
    sargv = fargv[:2] + ["--out", str(out), "--sweep-run", "ad-w32-seed0", "--temperatures",
                         "1", "0", "--sweep-tasks", "3", "--sweep-pulls", "20"]
    assert csf.main(sargv) == 0
    sw = json.loads((out / "context_scaling_temperature.json").read_text())
    assert (out / "context_scaling_temperature.png").stat().st_size > 10_000
    assert [(r["temperature"], r["greedy"], r["tasks"], r["pulls"]) for r in sw["rows"]] == [
        (1.0, False, 3, 20), (0.0, True, 3, 20)]
    assert all(0 <= r["regret"] <= 20 * 0.4 for r in sw["rows"])  # arms in [0.3, 0.7)
    means = cs.family("bandit-hard").means_of(cs.heldout_tasks(cs.main_config())[:3])
    ts = play(cs.family("bandit-hard"), means, "thompson", 20, seed=1000)
    assert sw["sources"]["thompson"]["regret"] == pytest.approx(ts["regret"].sum(1).mean())
    capsys.readouterr()
    assert csf.main(fargv[:2] + ["--out", str(tmp_path / "o2"), "--sweep-run",
                                 "ad-w64-seed0"]) == 2
    assert "--sweep-run ad-w64-seed0: no finished run" in capsys.readouterr().err
    assert csf.main(fargv) == 2  # results exist


def _check_nll_against_loss_fn(ckpt, nll, *, pulls, histories):
    import jax.numpy as jnp

    from agents import registry
    from agents.run import load_checkpoint
    from envs.learners.bandits import bandit_histories

    model, tcfg, norm, _ = load_checkpoint(ckpt, attn_impl="blockwise")
    module = registry.get(tcfg.agent)
    params = cs.family("bandit-hard")
    tasks = cs.training_tasks(cs.main_config("bandit-hard"))[:histories]
    dpt = tcfg.agent == "dpt"
    store = bandit_histories("bandit-hard", params, tasks, "random" if dpt else "thompson",
                             pulls, 0)
    acfg = tcfg.agent_config
    if dpt:  # the best arm of each pull's bandit is its target, one history a group
        assert np.array_equal(store.extras["optimal_actions"].reshape(histories, pulls),
                              np.repeat(params.means_of(tasks).argmax(1)[:, None], pulls, 1))
        acfg = dataclasses.replace(acfg, group_key="history_id")
    sampler = module.make_sampler(store, acfg, batch_size=1, seed=0, norm=norm)
    w = acfg.context_steps if dpt else acfg.window_steps
    losses = []
    for h in range(histories):
        for start in range(0, pulls, w):
            spec = ({"group": np.array([h]), "start": np.array([start])} if dpt else
                    {"history": np.array([h]), "start": np.array([h * pulls + start])})
            t = sampler.batch_of(spec)
            losses.append(float(module.loss_fn(model, {k: jnp.asarray(v) for k, v in
                                                       t.tokens().items()})[0]))
    assert nll == pytest.approx(np.mean(losses), rel=1e-5)


def random_hit_probability(goal, size=17, steps=20):
    """Exact probability that uniformly random moves (no-op, up, down, left, right; walls
    stop) from the centre reach ``goal`` within ``steps`` moves."""
    p = np.zeros((size, size))
    c, idx = size // 2, np.arange(size)
    p[c, c] = 1.0
    hit = 0.0
    for _ in range(steps):
        q = np.zeros_like(p)
        for dx, dy in ((0, 0), (0, 1), (0, -1), (-1, 0), (1, 0)):
            nx, ny = np.clip(idx + dx, 0, size - 1), np.clip(idx + dy, 0, size - 1)
            np.add.at(q, (nx[:, None], ny[None, :]), p / 5)
        hit += q[goal]
        q[goal] = 0.0
        p = q
    return hit


def test_tiny_grid_end_to_end(tmp_path):
    out, work = tmp_path / "results", tmp_path / "runs"
    argv = ["--tiny", "--env", "darkroom-hard", "--seeds", "1", "--agents", "ad", "--out",
            str(out), "--workdir", str(work)]
    assert cs.main(argv) == 0
    summary = json.loads((out / "context_scaling_darkroom_hard.json").read_text())
    assert (out / "context_scaling_darkroom_hard.png").stat().st_size > 10_000
    cfg = cs.tiny_config("darkroom-hard")
    held = envs.task_split("darkroom-hard", "test")
    assert summary["eval_tasks"] == len(held) == 58  # every held-out goal
    assert summary["episode_steps"] == 20
    # The optimum: every goal of the 17x17 room is within 16 moves of the centre, so the
    # first-arrival reward makes it 1 for all.
    assert summary["optimal"] == 1.0
    e = cfg.eval_episodes
    base = summary["baselines"]
    assert set(base) == {"posterior", "optimistic", "random"}
    # The sources' curves: their own histories on every held-out goal.
    for i, learner in enumerate(cfg.learners):
        store = collect_histories("darkroom-hard", learner, tasks=held, episodes_per_history=e,
                                  histories=len(held), seed=cfg.seed + 1000 + i)
        assert base[learner]["curve"] == pytest.approx(learning_curve(store)[0].tolist())
        assert base[learner]["curve_x"] == list(range(1, e + 1))
    # Random: the exact probability of reaching the goal within 20 random moves.
    exact = np.mean([random_hit_probability(envs.gridworld.cell_xy(t, 17)) for t in held])
    n = len(held) * len(base["random"]["curve"])
    assert np.mean(base["random"]["curve"]) == pytest.approx(
        exact, abs=4 * np.sqrt(exact * (1 - exact) / n))
    assert [c["window"] for c in summary["configs"]] == list(cfg.windows)
    for c in summary["configs"]:
        assert c["window_steps"] == 20 * c["window"] == c["tokens_per_sequence"]
        assert c["mesh"] == ("seq=8" if c["window"] >= cfg.ring_from else "data=8")
        assert c["curve_x"] == list(range(1, e + 1)) and len(c["curve_mean"]) == e
        assert c["final"]["mean"] == pytest.approx(c["curve_mean"][-1])  # last 10% of 4: 1
        assert 0 <= c["final"]["mean"] <= 1 and c["final"]["fraction_of_optimal"] == \
            pytest.approx(c["final"]["mean"])
        assert c["memory"] is None and c["decode"]["rows"] == len(held)
    t = summary["targets"]["ad"]
    assert (t["shortest_window"], t["longest_window"]) == (2, 4)
    assert set(t) >= {"longest_beats_shortest_by_seed_spread", "longest_reaches_70pct_optimal"}
    assert summary["metric"]["at"] == "mean over in-context episodes 4-4"
    # Every held-out goal was played by the trained agent, in one context of e episodes.
    report = json.loads((work / "tiny-darkroom-hard" / "ad-w4-seed0" / "eval" /
                         "report.json").read_text())
    assert {ep["task"] for ep in report["episodes"]} == set(held)
    # The recipe-scale rows: the windows and plan_windows, tokens = episodes x 20 steps.
    rec = summary["recipe_scale"]
    rows = rec["rows"]
    assert [(r["window"], r["tokens"]) for r in rows] == [(2, 40), (4, 80), (16, 320)]
    r = rows[-1]
    again = csr.step_bytes(csr.RecipeScale(), num_params=r["num_params"], tokens=320,
                           devices=64, attention="ring")
    assert r["ring64"]["bytes"] == again
    assert 350e6 < r["num_params"] < 360e6  # the README recipe's 353.8M transformer
    # The search/solved analysis on the same work folder: 4 held-out goals, both sources.
    phases = csp.analyse(csp.Args(workdir=str(work / "tiny-darkroom-hard"), tasks=4), cfg,
                         work / "tiny-darkroom-hard")
    assert phases["fresh_histories"] == 8 and phases["history_episodes"] == 4
    assert [c["window"] for c in phases["configs"]] == [2, 4]
    for r in phases["runs"]:
        assert r["search"]["steps"] + (r["solved"]["steps"] if r["solved"] else 0) == 8 * 80
        assert len(r["nll_by_episode"]) == 4
        assert r["all"]["nll"] == pytest.approx(np.mean(r["nll_by_episode"]))
    for c in phases["configs"]:
        assert 0 < c["train_search_share"] <= 1 and c["seeds"] == [0]
    # The 2-episode runs played zero-shot with 4 episodes of context: the rl-ring eval path
    # (the command it records gives the same returns), reused when asked again.
    with pytest.warns(UserWarning, match="context_steps=80 is longer than the 40 steps"):
        zs = csz.run(csz.Args(workdir=str(work / "tiny-darkroom-hard"), window=2, context=4,
                              seeds=1, out=str(tmp_path / "zs")))
    (r,) = zs["runs"]
    assert r["own"]["final_mean"] == pytest.approx(summary["configs"][0]["final"]["mean"])
    assert not r["reused"] and (tmp_path / "zs" / "context_scaling_zeroshot.png").exists()
    cmd = r["command"].split()[2:-2] + ["--out", str(tmp_path / "zs_cli"), "--no-progress"]
    assert cmd[cmd.index("--context-steps") + 1] == "80"
    from rl_ring.cli.eval import main as eval_main

    assert eval_main(cmd) == 0
    again = cs.report_returns(json.loads((tmp_path / "zs_cli" / "report.json").read_text()),
                              held, e)
    assert r["long"]["curve"] == pytest.approx(again.mean(axis=0).tolist())
    assert csz.run(csz.Args(workdir=str(work / "tiny-darkroom-hard"), window=2, context=4,
                            seeds=1, out=str(tmp_path / "zs")))["runs"][0]["reused"]
    # the search / exploitation split reads both evaluations of the run folder
    play = csplay.analyse(work / "tiny-darkroom-hard")
    assert {(r["run"], r["eval"]) for r in play} >= {("ad-w2-seed0", "eval"),
                                                     ("ad-w2-seed0", "eval-ctx4")}
    for r in play:
        assert r["final"] == pytest.approx(
            next(c for c in summary["configs"] if c["window"] == r["window"])["final"]["mean"]
            if r["eval"] == "eval" else zs["long_final"]["mean"])
        assert r["stages"]["goal"]["ever"] == pytest.approx(r["found_curve"][-1])
    # ... with the sources' histories and the random baseline on the same held-out tasks
    assert csplay.main(["--folders", str(work / "tiny-darkroom-hard"), "--sources",
                        "--tag", "tiny", "--out", str(tmp_path / "play")]) == 0
    played = json.loads((tmp_path / "play" / "context_scaling_play_tiny.json").read_text())
    assert [b["name"] for b in played["baselines"]] == [*cfg.learners, "random"]
    assert {st for g in played["groups"] for st in g["stages"]} == {"goal"}
    for b in played["baselines"]:
        goal = b["stages"]["goal"]
        assert goal["ever"] == pytest.approx(b["found_curve"][-1])
        if b["kind"] == "source":  # posterior sampling / the sweep go back to a found goal
            assert goal["after"] is None or goal["after"] == 1.0
    with pytest.raises(ValueError, match="expected more episodes"):
        csz.run(csz.Args(workdir=str(work / "tiny-darkroom-hard"), window=4, context=4))
    # A curriculum step: the 4-episode window from the finished 2-episode run of its seed,
    # in a run folder and results of its own; a missing source run is an error, nothing made.
    from rl_ring.train.checkpoint import checkpoint_meta

    src = work / "tiny-darkroom-hard"
    step = [*argv, "--windows", "4", "--steps", "2", "--init-from", str(src),
            "--init-window", "2"]
    assert cs.main(step) == 0
    run = work / "tiny-darkroom-hard-steps2-init2" / "ad-w4-seed0"
    assert checkpoint_meta(run / "train")["init_from"] == {
        "workdir": str((src / "ad-w2-seed0" / "train").absolute()), "step": cfg.steps}
    assert (out / "context_scaling_darkroom_hard_steps2_init2.json").exists()
    # An evaluation interrupted after the training finished replays the finished checkpoint:
    # nothing is trained again (with its saved summary, or one rebuilt from metrics.jsonl).
    first = json.loads((run / "record.json").read_text())
    trained = json.loads((run / cs.TRAINED_FILE).read_text())["train"]
    assert trained == first["train"]

    def no_training(*a, **k):
        raise AssertionError("trained again")

    for legacy in (False, True):
        shutil.rmtree(run / "eval")
        (run / "record.json").unlink()
        if legacy:
            (run / cs.TRAINED_FILE).unlink()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(cs, "train", no_training)
            assert cs.main([*step, "--overwrite"]) == 0
        again = json.loads((run / "record.json").read_text())
        assert again["eval"]["curve"] == first["eval"]["curve"]
        if legacy:
            assert again["train"]["wall_s_from"] == "metrics.jsonl"
            assert again["train"]["history"] == first["train"]["history"]
            assert again["train"]["final_loss"] == first["train"]["final_loss"]
        else:
            assert again["train"] == first["train"]
    # a training without its last step's checkpoint, or of another config, is not finished
    from agents.run import config_from_meta

    tcfg = config_from_meta(json.loads((run / "train" / "config.json").read_text()))
    assert cs.finished_training(tcfg, run) == again["train"]
    assert cs.finished_training(dataclasses.replace(tcfg, seed=1), run) is None
    (run / "train" / "checkpoints" / "2").rename(run / "last")
    assert cs.finished_training(tcfg, run) is None
    # every seed from seed 0's run (one step's spread over training seeds); no seed-1 run
    assert cs.init_run(cfg.replace(init_from=str(src), init_window=2, init_seed=0), "ad",
                       1) == src / "ad-w2-seed0"
    with pytest.raises(ValueError, match="no finished run ad-w2-seed1"):
        cs.init_run(cfg.replace(init_from=str(src), init_window=2), "ad", 1)
    from_0 = cfg.replace(init_from=str(src), init_window=2, init_seed=0)
    assert cs.run_key(from_0, "ad", 0, 0) == cs.run_key(from_0.replace(init_seed=-1), "ad", 0, 0)
    assert cs.run_key(from_0, "ad", 0, 1) != cs.run_key(from_0.replace(init_seed=-1), "ad", 0, 1)
    for bad in ({"init_seed": -2}, {"init_seed": 0, "init_from": "", "init_window": 0}):
        with pytest.raises(ValueError, match="--init-seed"):
            cfg.replace(init_from=str(src), init_window=2).replace(**bad)
    assert cs.main([*step[:-1], "64"]) == 2  # no 64-episode run to start from
    assert not (work / "tiny-darkroom-hard-steps2-init64").exists()  # no folder made
    for bad in ({"lr": -1.0}, {"lr": float("inf")}, {"warmup_steps": -2}):
        with pytest.raises(ValueError, match="expected a finite learning rate"):
            cfg.replace(**bad)
    with pytest.raises(ValueError, match="a curriculum step takes both"):
        cfg.replace(init_window=2)


def test_tiny_grid_dpt_trains_on_histories_and_plays_every_heldout_goal(tmp_path):
    out, work = tmp_path / "results", tmp_path / "runs"
    argv = ["--tiny", "--env", "darkroom-hard", "--seeds", "1", "--agents", "dpt",
            "--windows", "2", "--out", str(out), "--workdir", str(work)]
    assert cs.main(argv) == 0
    summary = json.loads((out / "context_scaling_darkroom_hard.json").read_text())
    (c,) = summary["configs"]
    assert (c["agent"], c["window"]) == ("dpt", 2)
    assert c["tokens_per_sequence"] == 2 * 2 * 20  # two tokens per transition
    assert 0 <= c["final"]["mean"] <= 1
    run = work / "tiny-darkroom-hard" / "dpt-w2-seed0"
    held = envs.task_split("darkroom-hard", "test")
    report = json.loads((run / "eval" / "report.json").read_text())
    assert {ep["task"] for ep in report["episodes"]} == set(held)
    # one context per source history: the sampler groups by history_id
    tcfg = cs.train_config(cs.tiny_config("darkroom-hard"), "dpt", 2, 0, "d", "w")
    assert tcfg.agent_config.group_key == "history_id"
    # DPT on uniformly random actions: its own data and run folder, every step labelled
    # with the shortest-path action to its history's goal.
    from rl_ring.data import load

    assert cs.main([*argv, "--dpt-source", "random"]) == 0
    rwork = work / "tiny-darkroom-hard-dptrandom"
    assert (out / "context_scaling_darkroom_hard_dptrandom.json").exists()
    assert (rwork / "dpt-w2-seed0" / "record.json").exists()
    store = load(rwork / "data-dpt-random")
    x = store.episode_extras
    assert store.num_episodes == 8 * 4 and np.all(x["policy_noise"] == 1.0)
    assert np.array_equal(np.unique(x["history_id"]), np.arange(8))
    tasks = cs.training_tasks(cs.tiny_config("darkroom-hard"))
    assert x["task_id"][::4].tolist() == [tasks[h % len(tasks)] for h in range(8)]
    for e in range(store.num_episodes):
        goal = envs.gridworld.cell_xy(int(x["task_id"][e]), 17)
        lo, hi = store.episode_starts[e], store.episode_starts[e + 1]
        labels = store.extras["optimal_actions"][lo:hi]
        for obs, label in zip(store.observations[lo:hi], labels, strict=True):
            assert label == envs.gridworld.step_towards((int(obs[0]), int(obs[1])), goal)
    counts = np.bincount(store.actions.astype(int).ravel(), minlength=5)
    assert counts.min() > 0.15 * counts.sum()  # uniform over the 5 actions
    with pytest.raises(ValueError, match="for the grid families"):
        cs.main_config("bandit-hard").replace(dpt_source="random")
    with pytest.raises(ValueError, match="expected one of histories, random"):
        cs.tiny_config("darkroom-hard").replace(dpt_source="expert")


@pytest.mark.parametrize("env", ["darkroom-hard", "keydoor"])
def test_dpt_any_shortest_labels_are_shortest_moves_of_both_kinds(env):
    # The same histories as the x-first data; every label a move that brings the agent
    # closer to its target (Key-to-Door: the key, then the door), both moves drawn where two
    # are shortest; its own data and run folder, results name.
    base = cs.tiny_config(env)
    cfg = base.replace(dpt_labels="any-shortest")
    tasks = cs.training_tasks(cfg)
    plan = cs.AGENT_PLANS["dpt"]()
    xfirst, anyl = plan.data(base, tasks), plan.data(cfg, tasks)
    np.testing.assert_array_equal(anyl.observations, xfirst.observations)
    room = envs.make(env).unwrapped
    size = room.size
    lengths = np.diff(anyl.episode_starts)
    step_tasks = np.repeat(anyl.episode_extras["task_id"], lengths)
    target = room.label_targets(step_tasks, anyl.observations)
    pos = np.rint(anyl.observations[:, :2]).astype(int)
    labels = anyl.extras["optimal_actions"]
    moved = np.array([envs.gridworld.move(tuple(p), int(a), size)
                      for p, a in zip(pos, labels, strict=True)])
    before = np.abs(target - pos).sum(1)
    after = np.abs(target - moved).sum(1)
    assert np.all(np.where(before > 0, after == before - 1, labels == 0))
    two = (pos[:, 0] != target[:, 0]) & (pos[:, 1] != target[:, 1])
    y_moves = np.isin(labels[two], (1, 2)).mean()
    assert 0.35 < y_moves < 0.65  # x-first labels would give 0
    assert np.isin(xfirst.extras["optimal_actions"][two], (1, 2)).sum() == 0
    assert cs.data_suffix(cfg, "dpt") == "-anyshortest" and cs.data_suffix(cfg, "ad") == ""
    args = cs.Args(env=env, tiny=True, dpt_labels="any-shortest", workdir="w")
    name, folder = cs.destinations(cfg, args)
    assert folder == Path("w") / f"tiny-{env}-anyshortest"
    assert name == cs.results_name(env) + "_anyshortest"
    with pytest.raises(ValueError, match="expected one of x-first, any-shortest"):
        base.replace(dpt_labels="soft")
    with pytest.raises(ValueError, match="on bandit-hard the label is the best arm"):
        cs.main_config("bandit-hard").replace(dpt_labels="any-shortest")


def test_search_exploitation_split_by_hand():
    returns = np.array([[0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 1, 1]], float)
    got = csplay.split(returns, by=(1, 2, 8))
    assert got["found_curve"] == pytest.approx([1 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert got["found_by"] == pytest.approx({"1": 1 / 3, "2": 2 / 3})  # 8 > 4 episodes
    # after the first success: task 0 episodes 3-4 (1, 0), task 2 episodes 2-4 (0, 1, 1)
    assert got["after_first"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert got["tasks_after_first"] == 2 and got["final"] == pytest.approx(1 / 3)
    last_only = csplay.split(np.array([[0, 0, 1]], float))
    assert last_only["after_first"] is None and last_only["tasks_after_first"] == 0


def test_stage_counts_by_hand():
    # 3 tasks x 5 episodes; Key-to-Door's door is a return of 2, its key >= 1.
    r = np.array([[0, 1, 2, 2, 1],
                  [0, 0, 0, 0, 0],
                  [1, 1, 1, 2, 0]], float)
    key, door = csplay.stages("keydoor", r)["key"], csplay.stages("keydoor", r)["door"]
    assert key["ever"] == pytest.approx(2 / 3)
    assert key["first"] == 1.5  # episodes 2 and 1
    assert key["after"] == pytest.approx((3 / 3 + 3 / 4) / 2)
    # (e, e+1) pairs: row 0 hits at e = 1, 2, 3, each followed by a hit; row 2 at e = 0..3,
    # followed by 1, 1, 1, 0: 6 of 7. Misses before the end: row 0's e = 0 (then a hit),
    # row 1's four: 1 of 5.
    assert key["carry"] == pytest.approx(6 / 7)
    assert key["fresh"] == pytest.approx(1 / 5)
    assert key["rate"] == pytest.approx(8 / 15)
    assert door["ever"] == pytest.approx(2 / 3) and door["first"] == 3.5
    assert door["after"] == pytest.approx((1 / 2 + 0 / 1) / 2)
    assert door["carry"] == pytest.approx(1 / 3)
    assert door["fresh"] == pytest.approx(2 / 9)
    dark = csplay.stages("darkroom-hard", np.zeros((2, 3)))["goal"]
    assert dark["ever"] == 0 and dark["first"] is None and dark["after"] is None
    assert dark["carry"] is None and dark["fresh"] == 0
    with pytest.raises(ValueError, match="expected returns"):
        csplay.stage_stats(np.zeros((3, 1)), 1.0)


def test_search_phase_and_its_share_of_training_windows_by_hand():
    # three histories of 5 episodes, stored out of order
    returns = np.array([[0, 0, 1, 1, 0], [0, 0, 0, 0, 0], [1, 0, 1, 1, 1]], float)
    perm = np.random.default_rng(0).permutation(15)
    hist, order = np.repeat([7, 3, 5], 5)[perm], np.tile(np.arange(5), 3)[perm]
    got = cs.search_episodes(returns.reshape(-1)[perm], hist, order)
    expect = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(got, expect.reshape(-1)[perm])
    search = expect
    assert csp.first_success(search).tolist() == [3, 5, 1]
    # every start of every history, counted directly
    for w in (1, 2, 5):
        counts = [search[h, s:s + w].sum() for h in range(3) for s in range(5 - w + 1)]
        assert csp.search_weight(search, w) == pytest.approx(np.sum(counts) / (len(counts) * w))
    assert csp.search_weight(search, 5) == pytest.approx(9 / 15)
    with pytest.raises(ValueError, match="window 6 is longer than the histories"):
        csp.search_weight(search, 6)
    # two histories of 2 episodes of 2 steps; history 0 found the goal in episode 0
    nll = np.array([[1.0, 3.0, 0.5, 0.5], [2.0, 2.0, 4.0, 4.0]])
    correct = np.array([[0, 1, 1, 1], [0, 0, 1, 0]], bool)
    got = csp.phase_scores(nll, correct, np.array([[1, 0], [1, 1]], bool), 2)
    assert got["search"] == {"nll": pytest.approx(16 / 6), "accuracy": pytest.approx(2 / 6),
                             "steps": 6}
    assert got["solved"] == {"nll": 0.5, "accuracy": 1.0, "steps": 2}
    assert got["nll_by_episode"] == pytest.approx([2.0, 2.25])
    assert got["by_position"]["1-16 search"] == pytest.approx(16 / 6)
    assert got["by_position"]["17-64 search"] is None


def test_solved_weight_marks_the_search_and_keeps_finished_runs():
    from agents.ad import make_sampler

    cfg = cs.tiny_config("darkroom-hard").replace(history_episodes=12, solved_weight=0.25)
    store = cs.ad_data(cfg, cs.training_tasks(cfg))
    x = store.episode_extras
    search = cs.search_episodes(store.episode_returns, x["history_id"], x["episode_in_history"])
    assert 0 < search.mean() < 1  # tiny histories of 12 episodes: both phases present
    np.testing.assert_array_equal(x["loss_weight"], np.where(search, 1.0, 0.25))
    acfg = cs.ad_config(cfg, 4)
    assert acfg.weight_key == "loss_weight" and cs.ad_config(
        cfg.replace(solved_weight=1.0), 4).weight_key == ""
    batch = make_sampler(store, acfg, batch_size=8, seed=0).batch_at(0)
    assert set(np.unique(batch.loss_mask[batch.valid])) <= {1.0, 0.25}
    assert cs.weight_suffix(cfg) == "-solved0.25"
    assert cs.weight_suffix(cfg.replace(solved_weight=1.0)) == ""
    for bad in (0.0, float("nan"), -1.0):
        with pytest.raises(ValueError, match="expected a finite weight > 0"):
            cfg.replace(solved_weight=bad)
    with pytest.raises(ValueError, match="for the grid families"):
        cs.tiny_config("bandit-hard").replace(solved_weight=0.5)
    # a run saved before the field existed is the same run at its default, not at another
    key = {"config": dataclasses.asdict(cfg.replace(solved_weight=1.0)), "agent": "ad"}
    old = json.loads(json.dumps(key))
    old["config"].pop("solved_weight")
    assert cs.same_run(old, key)
    assert not cs.same_run(old, {"config": dataclasses.asdict(cfg), "agent": "ad"})


def test_source_noise_gives_the_sources_random_actions():
    from envs.registry import task_subset
    from experiments import grid_first_episode as gfe

    cfg = cs.main_config("keydoor").replace(history_episodes=2)
    tasks = task_subset("keydoor", "train", 6)
    clean = cs.source_histories(cfg, "posterior", tasks, seed=0)
    noisy = cs.source_histories(cfg.replace(source_noise=0.5), "posterior", tasks, seed=0)
    assert np.all(clean.episode_extras["policy_noise"] == 0)
    assert np.all(noisy.episode_extras["policy_noise"] == 0.5)

    def wall_moves(store):
        pos = np.rint(store.observations[:, :2])
        nxt = np.rint(store.extras["next_observations"][:, :2])
        moved = np.asarray(store.actions).reshape(-1) != 0
        return int((moved & np.all(pos == nxt, axis=1)).sum()), float((~moved).mean())

    assert wall_moves(clean) == (0, 0.0)  # the sources never hit a wall, never wait
    np.testing.assert_array_equal(clean.extras["intended_actions"], clean.actions)
    assert (noisy.extras["intended_actions"] != noisy.actions).mean() > 0.2
    bumps, noops = wall_moves(noisy)
    assert noops > 0.03  # half the steps random: ~1/10 of them no-ops
    assert gfe.summarize(gfe.source_first_episodes(cfg, "posterior", tasks, 0))["cells"] > 10

