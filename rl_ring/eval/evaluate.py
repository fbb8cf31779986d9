"""``evaluate(cfg, ...)``: seeds x rows x trials of in-context evaluation, written to a report.

What evaluation does not know is passed in: the env factory (``make_env``), the tasks the
rows cycle through (``tasks``) and the policy; ``rl-ring eval`` (:mod:`rl_ring.cli.eval`)
wires the env registry, its scripted controllers and trained checkpoints.

For each seed the same backend (in-process or worker processes) is rebuilt with that seed's
environments, and :func:`rl_ring.eval.rollout.run_seed` plays every row's trials. The
report (``report.json``), the return-against-trial plot (``returns.png``) and optionally a
video of one episode (``episode.gif``) go to ``cfg.out``. If anything stops the evaluation
half way (an exception, Ctrl-C), the seeds already finished are still written, with
``"complete": false``, before the error propagates.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rl_ring.eval.env_spec import Env, EnvSpec, assign_tasks
from rl_ring.eval.policy import Policy, RandomPolicy
from rl_ring.eval.report import build_report, plot_report, validate_report
from rl_ring.eval.rollout import SeedResult, run_seed
from rl_ring.eval.workers import Workers, make_workers
from rl_ring.io import atomic_file, check_output_dir, write_json
from rl_ring.plugins import load_plugin


@dataclass(frozen=True)
class EvalConfig:
    """Options of ``rl-ring eval``."""

    env: str
    """Environment id (the env registry's, or Gymnasium's such as CartPole-v1)."""
    out: str
    """Output directory for report.json, returns.png and episode.gif."""
    checkpoint: str | None = None
    """Trained agent to evaluate (a training workdir); overrides --policy."""
    policy: str = "random"
    """Policy without a checkpoint: 'random', 'scripted' (the env's scripted controller)
    or 'scripted:<env id>'; with --checkpoint, 'recompute' replaces the KV-cached decoder
    by recomputing the whole context every step (slow; the cache's oracle)."""
    policy_noise: float = 0.0
    """Action noise of a scripted policy (Gaussian std, or random-action probability)."""
    trials: int = 4
    """Episodes per row, played one after another in the same context."""
    envs: int = 16
    """Environment rows evaluated side by side (batch rows of the policy)."""
    seeds: int = 3
    """Number of evaluation seeds."""
    first_seed: int = 0
    """Seeds are first_seed .. first_seed + seeds - 1."""
    task_split: Literal["train", "test", "none"] = "test"
    """Tasks of multi-task envs to evaluate on ('none' for single-task envs)."""
    num_tasks: int = 0
    """Evaluate only this many tasks of the split: the first of a fixed shuffle, sorted, the
    same subset as the experiments' --eval-tasks (0: every task, in the split's order).
    Rows cycle through the tasks; --envs N --seeds 1 plays N tasks once each."""
    mode: Literal["inprocess", "subprocess"] = "inprocess"
    """Where environments run: in this process, or in worker processes."""
    workers: int = 0
    """Worker processes in subprocess mode (0: one per CPU core)."""
    max_steps: int = 0
    """Cut episodes after this many steps (0: the environment's own time limit)."""
    env_factory: str | None = None
    """Build environments with this 'module:callable' (called with task=, seed=) instead of
    the registries: custom environments."""
    score_name: str | None = None
    """Name for normalised scores (default: the env id)."""
    video: bool = False
    """Record one episode (row 0 of the first seed) to episode.gif."""
    video_trial: int = -1
    """Which trial of that row to record (-1: the last)."""
    x_label: str = "trial"
    """X axis label of the plot ('in-context episode' for AD)."""
    progress: bool = True
    """Show a progress bar with env steps/s."""
    sample: bool = False
    """With --checkpoint: sample discrete actions from the model (default: the checkpoint's
    evaluation setting, e.g. AD samples, AT/DT/BC take the argmax)."""
    greedy: bool = False
    """With --checkpoint: take the argmax action (default: the checkpoint's setting)."""
    temperature: float | None = None
    """With --checkpoint, sampled actions: draw from softmax(logits / temperature) (default
    1, the model's own distribution; below 1 sharper)."""
    slide_steps: int | None = None
    """With --checkpoint: steps that slide out of a full context at once (default: the
    checkpoint's: one episode for AD, 1 for the others; 0 = one episode)."""
    context_steps: int | None = None
    """With --checkpoint: steps of context per row (default: the checkpoint's, else the
    context the model was trained on)."""
    overwrite: bool = False
    """Allow --out to hold files already: replace only report.json, returns.png and
    episode.gif, keep every other file. Without it a non-empty --out is refused."""


def _specs(cfg: EvalConfig, factory: Callable[..., Env] | None, tasks: list[Any],
           seed_index: int) -> list[EnvSpec]:
    row_tasks = assign_tasks(tasks, seed_index, cfg.envs)
    specs = [EnvSpec(cfg.env, task=t, factory=factory) for t in row_tasks]
    if cfg.video and seed_index == 0:
        kwargs = _render_kwargs(cfg.env) if cfg.env_factory is None else {}
        specs[0] = dataclasses.replace(specs[0], kwargs=kwargs)
    return specs


def _render_kwargs(env_id: str) -> dict[str, Any]:
    """Constructor arguments that make ``env.render()`` return RGB frames."""
    del env_id  # the registry's envs and Gymnasium's take the same argument
    return {"render_mode": "rgb_array"}


def evaluate(
    cfg: EvalConfig,
    *,
    make_env: Callable[..., Env] | None = None,
    tasks: Sequence[Any] | None = None,
    policy: Policy | Callable[[Any], Policy] | None = None,
    workers: Workers | None = None,
) -> dict[str, Any]:
    """Runs the evaluation described by ``cfg`` and writes its files to ``cfg.out``.

    Args:
        cfg: the options.
        make_env: builds one row's env as ``make_env(task=..., seed=..., **kwargs)``;
            picklable for ``mode="subprocess"`` (see :class:`EnvSpec`). ``None``: the
            ``cfg.env_factory`` plugin if set, else ``cfg.env`` is a Gymnasium id.
        tasks: the tasks rows cycle through (:func:`assign_tasks`), e.g. the held-out tasks
            of ``cfg.task_split``; ``None`` means one task-less env. Required with
            ``make_env`` unless ``cfg.task_split == "none"``: a multi-task env built without
            a task would draw one at random, silently not the split asked for.
        policy: a policy or ``(action_space) -> Policy``; ``None`` is the random policy, the
            only one evaluation builds itself (``cfg.policy == "random"``, no checkpoint).
        workers: a backend to use instead of building one from ``cfg.mode`` (not closed here).

    Returns:
        The report (also in ``cfg.out/report.json``).

    Raises:
        ValueError: bad counts, an occupied ``cfg.out``, a policy or tasks that ``cfg``
            needs but that were not passed in (the message names the argument).
    """
    for name in ("trials", "envs", "seeds"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.sample and cfg.greedy:
        raise ValueError("--sample and --greedy: give at most one")
    if cfg.temperature is not None and not (math.isfinite(cfg.temperature)
                                            and cfg.temperature > 0):
        raise ValueError(f"--temperature must be a finite number > 0, got {cfg.temperature}")
    decoding = [n for n in ("sample", "greedy", "temperature", "slide_steps", "context_steps")
                if getattr(cfg, n) not in (False, None)]
    if decoding and cfg.checkpoint is None:
        raise ValueError(f"--{decoding[0].replace('_', '-')} applies to a trained agent: "
                         "give --checkpoint")
    check_output_dir(cfg.out, overwrite=cfg.overwrite, what="an evaluation report")
    factory = _factory(cfg, make_env)
    if policy is None:
        policy = _default_policy(cfg)
    if tasks is None:
        if make_env is not None and cfg.task_split != "none":
            raise ValueError(
                f"evaluate: task_split={cfg.task_split!r} needs tasks= (the env's task ids of "
                "that split; [None] for a single-task env), or task_split='none'"
            )
        tasks = [None]
    tasks = list(tasks) or [None]
    own_workers = workers is None
    if workers is None:
        workers = make_workers(cfg.envs, cfg.mode, num_workers=cfg.workers or None)
    out_dir = Path(cfg.out)
    results: list[SeedResult] = []
    frames: list[np.ndarray] | None = None
    video_error: str | None = None
    bar = _progress(cfg)
    complete = False
    report: dict[str, Any] = {}
    try:
        for s in range(cfg.seeds):
            res = run_seed(
                workers, policy, _specs(cfg, factory, tasks, s), seed=cfg.first_seed + s,
                trials=cfg.trials, max_steps=cfg.max_steps or None,
                record_row=0 if cfg.video and s == 0 else None, record_trial=cfg.video_trial,
                on_steps=bar.step if bar is not None else None,
            )
            results.append(res)
            if s == 0:
                frames, video_error = res.frames, res.video_error
        complete = True
    finally:
        if bar is not None:
            bar.close()
        if own_workers:
            workers.close()
        if results:
            report = _write(cfg, results, complete, out_dir, frames, video_error)
    return report


def _factory(cfg: EvalConfig, make_env: Callable[..., Env] | None) -> Callable[..., Env] | None:
    if cfg.env_factory is None:
        return make_env
    if make_env is not None:
        raise ValueError(f"evaluate: --env-factory {cfg.env_factory} and make_env= both given; "
                         "pass one")
    return load_plugin(cfg.env_factory, option="--env-factory")


def _default_policy(cfg: EvalConfig) -> Callable[[Any], Policy]:
    if cfg.checkpoint is not None:
        raise ValueError(f"evaluate: --checkpoint {cfg.checkpoint} needs policy= (the trained "
                         "agent as a Policy; rl-ring eval builds it from the checkpoint)")
    if cfg.policy != "random":
        raise ValueError(f"evaluate: --policy {cfg.policy!r} needs policy= (rl-ring eval builds "
                         "the scripted policies); evaluation itself builds only 'random'")
    return RandomPolicy


def _write(cfg, results, complete, out_dir, frames, video_error) -> dict[str, Any]:
    config = {k: v for k, v in dataclasses.asdict(cfg).items()
              if k not in ("progress", "overwrite")}
    config["env_id"] = cfg.env
    config["policy"] = f"checkpoint:{cfg.checkpoint}" if cfg.checkpoint else cfg.policy
    if cfg.checkpoint and cfg.policy == "recompute":
        config["policy"] += " (recompute)"
    report = build_report(
        results, config=config, num_envs=cfg.envs, trials=cfg.trials,
        score_name=cfg.score_name or cfg.env, complete=complete,
    )
    report["files"]["plot"] = plot_report(report, out_dir / "returns.png",
                                          x_label=cfg.x_label).name
    if cfg.video:
        if frames:
            report["files"]["video"] = write_video(frames, out_dir / "episode.gif").name
        else:
            report["files"]["video_error"] = video_error or "no frames were recorded"
    validate_report(report)
    write_json(report, out_dir / "report.json")
    return report


def write_video(frames: list[np.ndarray], path: Path, *, max_frames: int = 300,
                fps: int = 30) -> Path:
    """Writes frames as an animated GIF (evenly subsampled to at most ``max_frames``)."""
    import imageio.v3 as iio

    idx = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), max_frames)).astype(int))
    stack = np.stack([np.asarray(frames[i], dtype=np.uint8) for i in idx])
    with atomic_file(path) as tmp:
        iio.imwrite(tmp, stack, extension=".gif", duration=1000 / fps, loop=0)
    return path


class _Progress:
    """tqdm bar counting env steps (its rate is env steps/s) and finished episodes."""

    def __init__(self, cfg: EvalConfig):
        from tqdm import tqdm

        self.total_episodes = cfg.seeds * cfg.envs * cfg.trials
        self.episodes = 0
        self.bar = tqdm(desc=f"eval {cfg.env}", unit=" steps", unit_scale=True,
                        dynamic_ncols=True)
        self.bar.set_postfix_str(f"episodes 0/{self.total_episodes}")

    def step(self, steps: int, finished: int) -> None:
        self.bar.update(steps)
        if finished:
            self.episodes += finished
            self.bar.set_postfix_str(f"episodes {self.episodes}/{self.total_episodes}",
                                     refresh=False)

    def close(self) -> None:
        self.bar.close()


def _progress(cfg: EvalConfig) -> _Progress | None:
    return _Progress(cfg) if cfg.progress else None


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A few human-readable lines: last trial and best-of-n side by side."""
    lines = []
    for key in ("return", "normalized_score"):
        summ = report["summary"][key]
        if summ is None:
            continue
        per_trial = ", ".join("n/a" if v is None else f"{v:.4g}"
                              for v in summ["per_trial"]["mean"])
        lines.append(f"{key}: per trial [{per_trial}]")
        lines.append(
            f"{key}: last trial {_stat(summ['last'])} | best of {report['trials']} "
            f"{_stat(summ['best_of_n'])}  (mean +- std over {report['summary']['seeds_used']} "
            "seed means, ddof=1)"
        )
    t = report["timing"]
    render = f", rendering {t['render_s']:.1f} s" if t["render_s"] else ""
    lines.append(f"{t['env_steps']} env steps in {t['wall_s']:.1f} s "
                 f"({t['steps_per_s']:.0f} steps/s; policy {t['policy_s']:.1f} s, "
                 f"envs {t['env_s']:.1f} s{render})")
    if report["failures"]:
        lines.append(f"{len(report['failures'])} failed episode(s); see 'failures' in the report")
    return lines


def _stat(stat: dict[str, float | None]) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.4g}" + ("" if stat["std"] is None else f" +- {stat['std']:.3g}")
