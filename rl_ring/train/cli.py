"""``rl-ring train``: train an agent on an offline dataset (a thin layer over ``train(cfg)``).

The agent and the preset are read first, because they decide which options exist and
where they start: ``rl-ring train --agent dt --preset tiny --help`` lists the DT options with
the tiny values as defaults. Every other option is a field of
:class:`~rl_ring.train.config.TrainConfig` or of the agent's ``Config``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import tyro

from rl_ring.train.config import TrainConfig

DESCRIPTION = (
    "Train an in-context RL agent (at, dt, bc, ad) on an offline dataset. The run resumes from "
    "its --workdir when a checkpoint is there. --agent and --preset (default, tiny, or a named "
    "preset: paper-at-exorl, d4rl-dt) choose the options below and their defaults."
)


def default_config(agent: str | None, preset: str) -> TrainConfig:
    """The starting TrainConfig for an agent and a preset (agent options filled in)."""
    from rl_ring.train.api import preset_agent_config
    from rl_ring.train.presets import SHAPES, train_preset

    if preset in SHAPES:
        return train_preset(preset, agent)
    agent = agent or "at"
    return TrainConfig(agent=agent, preset=preset,
                       agent_config=preset_agent_config(agent, preset))


def parse(argv: list[str]) -> TrainConfig:
    """Parses ``rl-ring train`` arguments into a TrainConfig (agent options included)."""
    from rl_ring.train.api import agent_module

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--agent", default=None)
    pre.add_argument("--preset", default="default")
    known, _ = pre.parse_known_args(argv)
    default = default_config(known.agent, known.preset)
    module = agent_module(default.agent)
    return tyro.cli(
        TrainConfig[module.Config],
        args=argv,
        default=default,
        prog="rl-ring train",
        description=DESCRIPTION,
        config=(tyro.conf.AvoidSubcommands,),
    )


def load_eval_hook(spec: str, cfg: TrainConfig):
    """The evaluation hook built by ``module:function`` (called with the config)."""
    module_name, sep, func = spec.partition(":")
    if not sep or not module_name or not func:
        raise ValueError(f"--eval-hook {spec!r}: expected 'package.module:function'")
    try:
        factory = getattr(importlib.import_module(module_name), func)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"--eval-hook {spec!r}: cannot load it ({err})") from None
    return factory(cfg)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rl-ring train``; returns the exit status."""
    from rl_ring.train.api import resolve_config, train
    from rl_ring.train.loop import NonFiniteError, check_workdir

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse(argv)
        check_workdir(Path(cfg.workdir), resume=cfg.resume, overwrite=cfg.overwrite)
        cfg = resolve_config(cfg)
        eval_fn = load_eval_hook(cfg.eval_hook, cfg) if cfg.eval_hook else None
        if cfg.eval_every and eval_fn is None:
            raise ValueError("--eval-every needs --eval-hook module:function (the evaluation hook)")
        result = train(cfg, eval_fn=eval_fn)
    except (ValueError, OSError) as err:
        print(f"rl-ring train: {err}", file=sys.stderr)
        return 2
    except NonFiniteError as err:
        print(f"rl-ring train: {err}", file=sys.stderr)
        return 3
    last = result.history[-1] if result.history else {}
    print(
        f"trained {cfg.agent} to step {result.step} (from {result.start_step}); "
        f"final loss {last.get('loss', float('nan')):.4g}; "
        f"{result.tokens_per_s:,.0f} tokens/s; workdir {result.workdir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
