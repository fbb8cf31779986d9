"""``rl-ring train``: train an agent on an offline dataset (a thin layer over ``agents.run.train``).

The agent and the preset are read first, because they decide which options exist and
where they start: ``rl-ring train --agent dt --preset tiny --help`` lists the DT options with
the tiny values as defaults. Every other option is a field of
:class:`~rl_ring.train.config.TrainConfig` or of the agent's ``Config``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import tyro

import agents
import envs
from agents import presets
from agents.run import resolve_config, train
from rl_ring.plugins import load_plugin
from rl_ring.train.config import TrainConfig
from rl_ring.train.loop import NonFiniteError, TrainingInterrupted, check_workdir

DESCRIPTION = (
    "Train an in-context RL agent (at, dt, bc, ad, dpt; any case) on an offline dataset. The run "
    "resumes from its --workdir when a checkpoint is there. --agent and --preset (one of "
    f"{', '.join(presets.PRESETS)}: the names 'rl-ring plan' takes) choose the options below "
    "and their defaults."
)


def parse(argv: list[str]) -> TrainConfig:
    """Parses ``rl-ring train`` arguments into a TrainConfig (agent options included)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--agent", default=None)
    pre.add_argument("--preset", default="default")
    known, _ = pre.parse_known_args(argv)
    if known.preset not in presets.PRESETS:
        raise ValueError(f"unknown preset {known.preset!r}; known presets: "
                         f"{list(presets.PRESETS)}")
    default = presets.train_preset(known.preset, known.agent)
    module = agents.get(default.agent)
    return tyro.cli(
        TrainConfig[module.Config],
        args=argv,
        default=default,
        prog="rl-ring train",
        description=DESCRIPTION,
        config=(tyro.conf.AvoidSubcommands,),
    )


def check_env(env_id: str) -> None:
    """Raises the registry's UnknownEnvError (a ValueError) for an unknown ``--env`` id."""
    if env_id:
        envs.make(env_id).close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rl-ring train``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse(argv)
        check_workdir(Path(cfg.workdir), resume=cfg.resume, overwrite=cfg.overwrite)
        cfg = resolve_config(cfg)
        check_env(cfg.env)
        eval_fn = None
        if cfg.eval_hook:
            eval_fn = load_plugin(cfg.eval_hook, option="--eval-hook")(cfg)
        if cfg.eval_every and eval_fn is None:
            raise ValueError("--eval-every needs --eval-hook module:function (the evaluation hook)")
        result = train(cfg, eval_fn=eval_fn)
    except (ValueError, OSError) as err:
        print(f"rl-ring train: {err}", file=sys.stderr)
        return 2
    except NonFiniteError as err:
        print(f"rl-ring train: {err}", file=sys.stderr)
        return 3
    except TrainingInterrupted as err:
        print(f"rl-ring train: {err}", file=sys.stderr)
        return 128 + err.signal  # the shell's convention for a stop by a signal
    last = result.history[-1] if result.history else {}
    print(
        f"trained {cfg.agent} to step {result.step} (from {result.start_step}); "
        f"final loss {last.get('loss', float('nan')):.4g}; "
        f"{result.tokens_per_s:,.0f} tokens/s; workdir {result.workdir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
