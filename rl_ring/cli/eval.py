"""``rl-ring eval``: evaluate a checkpoint (or a baseline policy), several trials in context.

Example::

    rl-ring eval --env CartPole-v1 --policy random --trials 4 --envs 16 --seeds 3 --out runs/eval
    rl-ring eval --checkpoint runs/at --env dmc:cartpole-swingup --trials 4 --out runs/at/eval

The composition root of evaluation: ``rl_ring.eval`` gets the env registry's factory and
task list and the scripted controllers from ``envs``, and a trained checkpoint's policy from
``agents``, all passed in (:func:`wiring`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tyro

from envs.evaluation import baseline_policy, env_factory, episode_steps, eval_tasks
from rl_ring.eval.env_spec import headless_gl_default
from rl_ring.eval.evaluate import EvalConfig, evaluate, summary_lines
from rl_ring.eval.policy import Policy


def checkpoint_policy(checkpoint: str, *, recompute: bool = False,
                      **options: Any) -> Callable[[Any], Policy]:
    """A training work directory's agent as ``(action_space) -> Policy``
    (``agents.eval_policy_from_checkpoint``); ``recompute`` drops the KV cache (its oracle).
    ``options`` (greedy, temperature, slide_steps, context_steps, episode_steps) override the
    checkpoint's evaluation defaults where not None.

    Raises:
        ValueError: ``checkpoint`` holds no ``checkpoints/`` directory.
    """
    ckpt = Path(checkpoint)
    if not (ckpt / "checkpoints").is_dir():
        found = "no such directory" if not ckpt.exists() else "no checkpoints/ directory inside"
        raise ValueError(
            f"--checkpoint {checkpoint}: expected a training work directory holding "
            f"checkpoints/ (as written by rl-ring train), found {found}"
        )
    from agents import eval_policy_from_checkpoint

    def factory(action_space: Any) -> Policy:
        return eval_policy_from_checkpoint(checkpoint, action_space=action_space,
                                           cached=not recompute, **options)

    return factory


def wiring(cfg: EvalConfig) -> dict[str, Any]:
    """``make_env=``, ``tasks=`` and ``policy=`` for ``evaluate(cfg, **wiring(cfg))``: the env
    registry's factory and ``cfg.task_split`` tasks (``cfg.num_tasks`` of them, if given), the
    checkpoint's or baseline policy.

    Raises:
        ValueError: an unknown env id or policy name, a checkpoint with another policy.
    """
    if cfg.checkpoint is not None:
        if cfg.policy not in ("checkpoint", "random", "recompute"):
            raise ValueError(f"--checkpoint {cfg.checkpoint} and --policy {cfg.policy}: give one "
                             "of them (with a checkpoint, --policy may only be 'recompute')")
        greedy = True if cfg.greedy else False if cfg.sample else None
        policy = checkpoint_policy(
            cfg.checkpoint, recompute=cfg.policy == "recompute", greedy=greedy,
            slide_steps=cfg.slide_steps, context_steps=cfg.context_steps,
            **({} if cfg.temperature is None else {"temperature": cfg.temperature}),
            episode_steps=cfg.max_steps or episode_steps(cfg.env))
    else:
        policy = baseline_policy(cfg.policy, cfg.env, noise=cfg.policy_noise)
    # a user's --env-factory is loaded by evaluate itself (through rl_ring.plugins)
    make_env = None if cfg.env_factory is not None else env_factory(cfg.env)
    tasks = eval_tasks(cfg.env, cfg.task_split, cfg.num_tasks)
    return {"make_env": make_env, "tasks": tasks, "policy": policy}


def main(argv: list[str]) -> int:
    """Parses ``argv`` into an :class:`EvalConfig`, evaluates, prints the summary."""
    headless_gl_default()
    cfg = tyro.cli(EvalConfig, args=argv, prog="rl-ring eval",
                   description="Evaluate a policy in its environment, several trials in context.")
    try:
        report = evaluate(cfg, **wiring(cfg))
    except (ValueError, NotImplementedError, OSError) as err:
        print(f"rl-ring eval: {err}", file=sys.stderr)
        return 2
    for line in summary_lines(report):
        print(line)
    print(f"report: {cfg.out}/report.json")
    return 0
