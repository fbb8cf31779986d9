"""Multi-trial in-context evaluation: N rows, each playing several episodes in one context.

:func:`run_seed` plays one evaluation seed: every row plays ``trials`` consecutive
episodes of its environment (and task) while the policy keeps its context, so trial ``k``
is conditioned on trials ``0..k-1`` (Agentic Transformer's trials, Algorithm Distillation's
in-context episodes). Rows advance independently: a row that ends an episode starts its
next trial on the same step, and only rows that have played all their trials (or failed)
fall idle. Each env step makes exactly one batched ``policy.act`` call.

A row whose environment raises (or whose worker process dies) gets a ``"failed"`` episode
carrying the error text; its remaining trials are recorded as ``"not_run"`` (the policy
context of that row is broken, so later trials would not be comparable) and every other
row completes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rl_ring.eval.env_spec import EnvSpec, env_seed, episode_seed, policy_seed
from rl_ring.eval.policy import Policy
from rl_ring.eval.workers import StepResult, Workers
from rl_ring.io import jsonable

OK, FAILED, NOT_RUN = "ok", "failed", "not_run"


@dataclass
class EpisodeRecord:
    """One episode of one row: the unit every report aggregates."""

    seed: int
    """Evaluation seed."""
    env_index: int
    """Row within the seed."""
    trial: int
    """Position of the episode in the row's context (0-based)."""
    episode_seed: int | None
    """Seed passed to ``env.reset`` for this episode."""
    task: Any = None
    """The row's task (``None`` for single-task environments)."""
    status: str = OK
    """``"ok"``, ``"failed"`` (error text in ``error``) or ``"not_run"``."""
    episode_return: float | None = None
    """Undiscounted sum of rewards (``None`` unless ``status == "ok"``)."""
    length: int = 0
    """Environment steps taken (also for a failed episode: steps before the failure)."""
    terminated: bool = False
    """The environment terminated the episode."""
    truncated: bool = False
    """The episode was cut by a time limit (the env's or the evaluator's ``max_steps``)."""
    error: str | None = None
    """Exception text of a failed episode."""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["return"] = out.pop("episode_return")
        out["task"] = jsonable(self.task)
        return out


@dataclass
class SeedResult:
    """All episodes of one seed plus timing."""

    seed: int
    episodes: list[EpisodeRecord] = field(default_factory=list)
    env_steps: int = 0
    policy_s: float = 0.0
    """Seconds inside ``policy.act`` / ``observe`` / ``begin_trial``."""
    env_s: float = 0.0
    """Seconds waiting for the workers to step (and reset) after the first reset."""
    make_s: float = 0.0
    """Seconds building the environments and resetting them for the first trial."""
    render_s: float = 0.0
    """Seconds spent rendering video frames."""
    wall_s: float = 0.0
    frames: list[np.ndarray] | None = None
    """Rendered frames of the recorded episode (``record_row``), if any."""
    video_error: str | None = None
    """Why recording stopped, if rendering failed (the evaluation itself goes on)."""


def run_seed(
    workers: Workers,
    policy: Policy | Callable[[Any], Policy],
    specs: Sequence[EnvSpec],
    *,
    seed: int,
    trials: int,
    max_steps: int | None = None,
    record_row: int | None = None,
    record_trial: int = -1,
    on_steps: Callable[[int, int], None] | None = None,
) -> SeedResult:
    """Plays one evaluation seed: ``len(specs)`` rows, ``trials`` episodes each, in context.

    Args:
        workers: the backend holding the environments (rebuilt here from ``specs``).
        policy: a policy, or a function ``(action_space) -> policy`` called once the
            environments exist (the random policy needs their action space).
        specs: one environment recipe per row.
        seed: evaluation seed; rows and episodes get seeds derived from it
            (:mod:`rl_ring.eval.env_spec`).
        trials: episodes per row, played one after another in the same context.
        max_steps: the evaluator ends (truncates) an episode after this many steps if the
            environment has not; ``None`` relies on the environment's own time limit.
        record_row: if set, render this row every step of trial ``record_trial``
            (``-1``: the last) into ``SeedResult.frames``.
        on_steps: called as ``on_steps(new_env_steps, finished_episodes)`` after each step
            (progress bars).

    Returns:
        The seed's episodes in ``(env_index, trial)`` order, and timings.
    """
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    n = len(specs)
    if n != workers.num_envs:
        raise ValueError(f"{n} env specs for a backend of {workers.num_envs} rows")
    record_trial = record_trial % trials
    out = SeedResult(seed=seed)
    t_start = time.perf_counter()
    records: dict[tuple[int, int], EpisodeRecord] = {}
    # [rows, trials + 1]: derived once, not per step (a SeedSequence costs ~10 us); the
    # extra column stands for "no next trial"
    ep_seeds = [[episode_seed(seed, i, k) for k in range(trials)] + [None] for i in range(n)]

    def new_record(i: int, k: int) -> EpisodeRecord:
        rec = EpisodeRecord(seed, i, k, ep_seeds[i][k], task=specs[i].task)
        records[(i, k)] = rec
        return rec

    def fail_row(i: int, k: int, error: str, length: int = 0) -> None:
        rec = records.get((i, k)) or new_record(i, k)
        rec.status, rec.error, rec.length = FAILED, error, length
        for later in range(k + 1, trials):
            new_record(i, later).status = NOT_RUN

    t0 = time.perf_counter()
    make_errors = workers.make(specs, [env_seed(seed, i) for i in range(n)])
    active = np.ones(n, dtype=bool)
    for i, err in make_errors.items():
        fail_row(i, 0, f"environment could not be built: {err}")
        active[i] = False
    if workers.spaces is None:
        first = next(iter(make_errors.values()), "?").strip().splitlines()[-1]
        raise ValueError(f"seed {seed}: no environment could be built ({first})")
    obs_space, act_space = workers.spaces
    rows = np.flatnonzero(active)
    resets = workers.reset(rows, [ep_seeds[i][0] for i in rows])
    out.make_s = time.perf_counter() - t0

    obs = None
    trial = np.zeros(n, dtype=np.int64)
    ep_len = np.zeros(n, dtype=np.int64)
    ep_ret = np.zeros(n, dtype=np.float64)

    def take_obs(i: int, res: StepResult) -> None:
        nonlocal obs
        o = np.asarray(res.obs)
        if obs is None:
            obs = np.zeros((n, *o.shape), dtype=o.dtype if o.dtype != np.float64 else np.float32)
        if o.shape != obs.shape[1:]:
            raise ValueError(
                f"seed {seed} row {i}: observation shape {o.shape}, rows before had "
                f"{obs.shape[1:]} (all rows of one evaluation must share it)"
            )
        obs[i] = o

    for i in rows:
        new_record(int(i), 0)
        res = resets[int(i)]
        if res.error is not None:
            fail_row(int(i), 0, res.error)
            active[i] = False
        else:
            take_obs(int(i), res)

    tp = time.perf_counter()
    if isinstance(policy, type) or not hasattr(policy, "act"):  # a factory, not a policy
        policy = policy(act_space)
    if hasattr(policy, "set_tasks"):  # privileged baselines (oracles) only
        policy.set_tasks([spec.task for spec in specs])
    policy.reset(n, seeds=[policy_seed(seed, i) for i in range(n)])
    policy.begin_trial(active.copy())
    out.policy_s += time.perf_counter() - tp
    frames: list[np.ndarray] | None = None

    def grab(row: int) -> None:
        nonlocal frames, record_row
        tr = time.perf_counter()
        try:
            frame = np.asarray(workers.render(row))
            if frame.ndim != 3 or frame.dtype == object:
                raise ValueError(f"render() gave {frame.dtype} {frame.shape}, expected an "
                                 "RGB [height, width, 3] frame")
        except Exception as err:  # a video is optional, the scores are not
            out.video_error = f"rendering row {row} failed: {type(err).__name__}: {err}"
            record_row = None
            return
        finally:
            out.render_s += time.perf_counter() - tr
        frames = [] if frames is None else frames
        frames.append(frame)

    if record_row is not None and active[record_row] and record_trial == 0:
        grab(record_row)

    while active.any():
        tp = time.perf_counter()
        actions = policy.act(obs, active.copy())
        out.policy_s += time.perf_counter() - tp
        if len(actions) != n:
            raise ValueError(f"{type(policy).__name__}.act returned {len(actions)} actions "
                             f"for {n} rows (expected one per row, masked rows included)")
        rows = np.flatnonzero(active)
        next_seeds = [ep_seeds[i][trial[i] + 1] for i in rows]
        te = time.perf_counter()
        results = workers.step(rows, [actions[i] for i in rows], next_seeds)
        out.env_s += time.perf_counter() - te

        stepped = np.zeros(n, dtype=bool)
        reward = np.zeros(n, dtype=np.float32)
        term = np.zeros(n, dtype=bool)
        trunc = np.zeros(n, dtype=bool)
        needs_reset: list[int] = []
        begin = np.zeros(n, dtype=bool)
        finished = 0
        for i in map(int, rows):
            res = results[i]
            if res.error is not None:
                fail_row(i, int(trial[i]), res.error, int(ep_len[i]))
                active[i] = False
                finished += 1
                continue
            stepped[i] = True
            ep_len[i] += 1
            ep_ret[i] += res.reward
            reward[i], term[i], trunc[i] = res.reward, res.terminated, res.truncated
            cut = max_steps is not None and ep_len[i] >= max_steps and not (term[i] or trunc[i])
            trunc[i] |= cut
            if frames is not None and i == record_row and trial[i] == record_trial:
                if not (res.reset or term[i] or trunc[i]):
                    grab(i)
            if not (term[i] or trunc[i]):
                take_obs(i, res)
                continue
            rec = records[(i, int(trial[i]))]
            rec.episode_return, rec.length = float(ep_ret[i]), int(ep_len[i])
            rec.terminated, rec.truncated = bool(term[i]), bool(trunc[i])
            finished += 1
            ep_len[i], ep_ret[i] = 0, 0.0
            trial[i] += 1
            if trial[i] >= trials:
                active[i] = False
                continue
            new_record(i, int(trial[i]))
            begin[i] = True
            if res.reset:
                take_obs(i, res)
            else:  # the evaluator cut the episode: the env has not reset itself
                needs_reset.append(i)
        out.env_steps += int(stepped.sum())
        if needs_reset:
            te = time.perf_counter()
            extra = workers.reset(needs_reset, [ep_seeds[i][trial[i]] for i in needs_reset])
            out.env_s += time.perf_counter() - te
            for i in needs_reset:
                if extra[i].error is not None:
                    fail_row(i, int(trial[i]), extra[i].error)
                    active[i] = begin[i] = False
                else:
                    take_obs(i, extra[i])
        tp = time.perf_counter()
        policy.observe(reward, term, trunc, stepped)
        if begin.any():
            policy.begin_trial(begin)
        out.policy_s += time.perf_counter() - tp
        if (
            record_row is not None and begin[record_row] and trial[record_row] == record_trial
            and frames is None
        ):
            grab(record_row)
        if on_steps is not None:
            on_steps(int(stepped.sum()), finished)

    out.episodes = [records[key] for key in sorted(records)]
    out.frames = frames
    out.wall_s = time.perf_counter() - t_start
    return out
