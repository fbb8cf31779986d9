"""Report aggregation (per trial, last, best of n, normalised) against hand-computed values,
and the JSON schema."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from rl_ring.eval.report import aggregate, build_report, validate_report
from rl_ring.eval.rollout import FAILED, NOT_RUN, OK, EpisodeRecord, SeedResult
from rl_ring.io import write_json

NAN = math.nan
# [seeds, envs, trials]; seed 1 row 1 failed in trial 0, so that row is left out.
TABLE = [
    [[1.0, 2.0, 3.0], [3.0, 0.0, 1.0]],
    [[2.0, 2.0, 2.0], [NAN, 5.0, 5.0]],
]
HOPPER_MIN, HOPPER_MAX = -20.272305, 3234.3  # D4RL reference returns, typed in by hand


def seed_results(table) -> list[SeedResult]:
    out = []
    for s, rows in enumerate(table):
        res = SeedResult(seed=10 + s, env_steps=7, wall_s=0.5)
        for i, row in enumerate(rows):
            for k, ret in enumerate(row):
                rec = EpisodeRecord(10 + s, i, k, episode_seed=100 * s + 10 * i + k)
                if math.isnan(ret):
                    rec.status, rec.error, rec.length = FAILED, "RuntimeError: boom", 3
                else:
                    rec.episode_return, rec.length, rec.terminated = ret, int(ret) + 1, True
                res.episodes.append(rec)
        out.append(res)
    return out


def test_aggregate_hand_computed():
    agg = aggregate(np.array(TABLE))
    # per seed over complete rows: seed 0 rows 0 and 1, seed 1 row 0 only
    np.testing.assert_allclose(agg["per_seed"]["per_trial"], [[2.0, 1.0, 2.0], [2.0, 2.0, 2.0]])
    np.testing.assert_allclose(agg["per_seed"]["last"], [2.0, 2.0])
    np.testing.assert_allclose(agg["per_seed"]["best_of_n"], [3.0, 2.0])  # max(1,2,3), max(3,0,1)
    np.testing.assert_allclose(agg["per_trial"]["mean"], [2.0, 1.5, 2.0])
    np.testing.assert_allclose(agg["per_trial"]["std"], [0.0, math.sqrt(0.5), 0.0])  # ddof=1
    assert agg["last"] == {"mean": 2.0, "std": 0.0}
    assert agg["best_of_n"]["mean"] == 2.5
    assert agg["best_of_n"]["std"] == pytest.approx(math.sqrt(0.5))
    np.testing.assert_array_equal(agg["complete_rows"], [2, 1])


def test_aggregate_one_seed_has_no_std_and_empty_seeds_are_skipped():
    one = aggregate(np.array(TABLE[:1]))
    assert one["last"]["mean"] == 2.0 and math.isnan(one["last"]["std"])
    empty_seed = [[[NAN, 1.0], [2.0, NAN]]]
    agg = aggregate(np.array([[[1.0, 4.0], [3.0, 2.0]]] + empty_seed))
    assert agg["best_of_n"]["mean"] == 3.5 and math.isnan(agg["best_of_n"]["std"])
    assert math.isnan(agg["per_seed"]["last"][1])


def test_report_with_normalised_scores_hand_computed(tmp_path):
    report = build_report(seed_results(TABLE), config={"env_id": "toy"}, num_envs=2, trials=3,
                          score_name="hopper-medium-v2")
    validate_report(report)
    norm = lambda r: 100.0 * (r - HOPPER_MIN) / (HOPPER_MAX - HOPPER_MIN)  # noqa: E731
    summ = report["summary"]
    assert summ["return"]["last"] == {"mean": 2.0, "std": 0.0}
    assert summ["return"]["best_of_n"]["mean"] == 2.5
    assert summ["normalized_score"]["last"]["mean"] == pytest.approx(norm(2.0))
    assert summ["normalized_score"]["best_of_n"]["mean"] == pytest.approx(norm(2.5))
    assert summ["normalized_score"]["best_of_n"]["std"] == pytest.approx(
        math.sqrt(0.5) * 100.0 / (HOPPER_MAX - HOPPER_MIN))
    np.testing.assert_allclose(summ["length"]["per_trial"]["mean"], [3.0, 2.5, 3.0])
    assert (summ["seeds_used"], summ["complete_rows"], summ["total_rows"]) == (2, 3, 4)
    assert report["seeds"][1]["return"] == {"per_trial": [2.0, 2.0, 2.0], "last": 2.0,
                                            "best_of_n": 2.0}
    assert report["seeds"][1]["complete_rows"] == 1
    key = lambda e: (e["seed"], e["env_index"], e["trial"])  # noqa: E731
    ep = next(e for e in report["episodes"] if key(e) == (10, 0, 2))
    assert ep["return"] == 3.0 and ep["normalized_score"] == pytest.approx(norm(3.0))
    assert report["failures"] == [
        {"seed": 11, "env_index": 1, "trial": 0, "length": 3, "error": "RuntimeError: boom"}
    ]
    path = write_json(report, tmp_path / "r" / "report.json")
    back = json.loads(path.read_text())
    validate_report(back)
    assert back == report


def test_report_without_reference_has_no_normalised_score():
    report = build_report(seed_results(TABLE[:1]), config={}, num_envs=2, trials=3,
                          score_name="CartPole-v1")
    validate_report(report)
    assert report["summary"]["normalized_score"] is None
    assert report["summary"]["return"]["last"] == {"mean": 2.0, "std": None}
    assert "no reference" in report["normalization"]
    assert all(e["normalized_score"] is None for e in report["episodes"])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.pop("summary"), "missing key summary"),
        (lambda r: r.update(format="other"), "format is 'other'"),
        (lambda r: r["summary"]["return"]["last"].update(mean="2"), "summary.return.last.mean"),
        (lambda r: r["summary"]["return"]["per_trial"]["mean"].pop(), "expected 3 trials"),
        (lambda r: r["episodes"].pop(), "expected seeds x envs x trials = 12"),
        (lambda r: r["episodes"][0].pop("length"), "episodes[0].length"),
        (lambda r: r["episodes"][0].update(status="weird"), "episodes[0].status"),
        (lambda r: r["episodes"][0].update(**{"return": None}), "has status 'ok' and return"),
        (lambda r: r["seeds"][0]["return"].pop("best_of_n"), "seeds[0].return.best_of_n"),
    ],
)
def test_schema_rejects_broken_reports(mutate, message):
    report = build_report(seed_results(TABLE), config={}, num_envs=2, trials=3)
    validate_report(report)
    broken = copy.deepcopy(report)
    mutate(broken)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_report(broken)


def test_not_run_episodes_are_reported():
    res = seed_results([[[1.0, 2.0], [NAN, 9.0]]])
    res[0].episodes[3].status, res[0].episodes[3].episode_return = NOT_RUN, None
    report = build_report(res, config={}, num_envs=2, trials=2)
    validate_report(report)
    statuses = [e["status"] for e in report["episodes"]]
    assert statuses == [OK, OK, FAILED, NOT_RUN]
    assert report["summary"]["return"]["per_trial"]["mean"] == [1.0, 2.0]
