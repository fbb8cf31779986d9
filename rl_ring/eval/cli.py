"""``rl-ring eval``: evaluate a checkpoint (or a baseline policy), several trials in context.

Example::

    rl-ring eval --env CartPole-v1 --policy random --trials 4 --envs 16 --seeds 3 --out runs/eval
    rl-ring eval --checkpoint runs/at --env dmc:cartpole-swingup --trials 4 --out runs/at/eval
"""

from __future__ import annotations

import sys

import tyro

from rl_ring.eval.env_spec import headless_gl_default
from rl_ring.eval.evaluate import EvalConfig, evaluate, summary_lines


def main(argv: list[str]) -> int:
    """Parses ``argv`` into an :class:`EvalConfig`, evaluates, prints the summary."""
    headless_gl_default()
    cfg = tyro.cli(EvalConfig, args=argv, prog="rl-ring eval",
                   description="Evaluate a policy in its environment, several trials in context.")
    try:
        report = evaluate(cfg)
    except (ValueError, NotImplementedError, OSError) as err:
        print(f"rl-ring eval: {err}", file=sys.stderr)
        return 2
    for line in summary_lines(report):
        print(line)
    print(f"report: {cfg.out}/report.json")
    return 0
