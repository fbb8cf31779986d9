"""``rl-ring data``: inspect and convert offline datasets.

Examples::

    rl-ring data info datasets/walker/proto/buffer --task walker_run
    rl-ring data info hopper-medium-v2.hdf5
    rl-ring data convert datasets/walker/proto/buffer data/walker_run --task walker_run
    rl-ring data convert data/walker_run walker_run.hdf5 --to d4rl
    rl-ring data tasks
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import tyro

from envs.relabel import RELABELLER, task_names
from rl_ring.data.formats import DatasetError, check_dataset_target, detect_format, load
from rl_ring.data.scores import has_reference, normalized_score
from rl_ring.data.store import EpisodeStore


@dataclass(frozen=True)
class InfoConfig:
    """Print episodes, steps and return statistics of any supported dataset."""

    path: tyro.conf.Positional[str]
    """EpisodeStore dir, D4RL or XLand .hdf5 file, ExoRL buffer dir or Minari dataset dir."""
    task: str | None = None
    """ExoRL only: relabel rewards for this task (e.g. walker_run) before the statistics."""
    bins: int = 10
    """Bins of the text histogram of episode returns."""
    skip_bad: bool = False
    """Skip bad episodes instead of stopping at the first one."""
    workers: int | None = None
    """Processes for relabelling (default: all cores for large datasets)."""
    name: str | None = None
    """Dataset name for normalised scores (default: the file name, e.g. hopper-medium-v2)."""


@dataclass(frozen=True)
class ConvertConfig:
    """Convert a dataset (any supported format) to an EpisodeStore dir or another format."""

    src: tyro.conf.Positional[str]
    """Source dataset (any supported format)."""
    dst: tyro.conf.Positional[str]
    """Destination path (a directory, or a .hdf5 file for --to d4rl)."""
    to: Literal["store", "d4rl", "exorl", "minari"] = "store"
    """Output format."""
    task: str | None = None
    """ExoRL only: relabel rewards for this task (e.g. walker_run)."""
    skip_bad: bool = False
    """Skip bad episodes instead of stopping at the first one."""
    workers: int | None = None
    """Processes for relabelling."""
    dataset_id: str | None = None
    """Minari only: the dataset id (default: the destination directory's name)."""
    overwrite: bool = False
    """Allow the destination to hold data already: replace only the files a dataset of --to
    consists of, keep every other file. Without it an occupied destination is refused."""


@dataclass(frozen=True)
class TasksConfig:
    """List the tasks the ExoRL reward relabeller knows."""


def main(argv: list[str]) -> int:
    """Runs ``rl-ring data info|convert|tasks``."""
    cfg = tyro.extras.subcommand_cli_from_dict(
        {
            "info": Annotated[InfoConfig, tyro.conf.arg(name="info")],
            "convert": Annotated[ConvertConfig, tyro.conf.arg(name="convert")],
            "tasks": Annotated[TasksConfig, tyro.conf.arg(name="tasks")],
        },
        args=argv,
        prog="rl-ring data",
        description="Inspect and convert offline datasets (D4RL, ExoRL, Minari, EpisodeStore).",
    )
    try:
        if isinstance(cfg, InfoConfig):
            return _info(cfg)
        if isinstance(cfg, ConvertConfig):
            return _convert(cfg)
        print("\n".join(task_names()))
        return 0
    except (DatasetError, OSError, KeyError, ValueError) as err:
        print(f"rl-ring data: {err}", file=sys.stderr)
        return 2


def _options(fmt: str, task, skip_bad, workers) -> dict:
    if task is not None and fmt != "exorl":
        raise ValueError(f"--task relabels ExoRL data; this dataset is {fmt!r}")
    if fmt in ("store", "xland"):
        return {}
    opts: dict = {"skip_bad": skip_bad}
    if fmt == "exorl":
        opts.update(task=task, workers=workers)
        if task is not None:
            opts["relabel"] = RELABELLER
    return opts


def _info(cfg: InfoConfig) -> int:
    fmt = detect_format(cfg.path)
    if fmt == "xland":  # learning histories too large to load: read the metadata and dones
        from rl_ring.data.xland import XLandDataset

        with XLandDataset(cfg.path) as data:
            print("\n".join(data.info_lines()))
        return 0
    store = load(cfg.path, **_options(fmt, cfg.task, cfg.skip_bad, cfg.workers))
    name = cfg.name or store.metadata.get("dataset_id") or Path(cfg.path.rstrip("/")).stem
    for line in info_lines(store, fmt, cfg.path, bins=cfg.bins, name=name):
        print(line)
    return 0


def info_lines(store: EpisodeStore, fmt: str, path: str, *, bins: int = 10,
               name: str | None = None) -> list[str]:
    """The report ``rl-ring data info`` prints, as lines."""
    returns = store.episode_returns
    lengths = store.episode_lengths
    lines = [f"path: {path}", f"format: {fmt}"]
    task = store.metadata.get("reward_task")
    if task:
        lines.append(f"rewards: relabelled for {task}")
    if store.discrete_actions:
        act = f"discrete ({store.act_dim} actions)"
    else:
        act = f"continuous ({store.act_dim})"
    lines += [
        f"episodes: {store.num_episodes}",
        f"steps: {store.num_steps}",
        f"observation dim: {store.obs_dim}",
        f"actions: {act}",
        f"terminals: {int(np.sum(store.terminals))}  timeouts: {int(np.sum(store.timeouts))}  "
        f"truncated episodes: {int(np.sum(store.episode_extras.get('truncated', 0)))}",
        "episode length: " + _stats(lengths, "{:.0f}"),
        "return: " + _stats(returns, "{:.3f}") + f"  mean {np.mean(returns):.3f}",
    ]
    if name and has_reference(name):
        lines.append(f"normalised score ({name}): " + _stats(normalized_score(name, returns),
                                                              "{:.2f}"))
    if store.extras:
        lines.append("extras: " + ", ".join(
            f"{k} {tuple(v.shape[1:])}" for k, v in sorted(store.extras.items())))
    if store.episode_extras:
        lines.append("episode extras: " + ", ".join(sorted(store.episode_extras)))
    lines.append(f"skipped: {store.metadata.get('skipped', 0)}")
    lines.append(f"return histogram ({bins} bins):")
    lines += return_histogram(returns, bins)
    return lines


def _stats(x: np.ndarray, fmt: str) -> str:
    return (f"min {fmt.format(np.min(x))}  median {fmt.format(np.median(x))}  "
            f"max {fmt.format(np.max(x))}")


def return_histogram(returns: np.ndarray, bins: int = 10, width: int = 40) -> list[str]:
    """A text histogram: one ``[lo, hi) bar count`` line per bin (the last bin is closed)."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    counts, edges = np.histogram(np.asarray(returns, np.float64), bins=bins)
    top = max(int(counts.max()), 1)
    lines = []
    for i, c in enumerate(counts):
        close = "]" if i == bins - 1 else ")"
        bar = "#" * int(round(width * c / top))
        lines.append(f"  [{edges[i]:10.3f}, {edges[i + 1]:10.3f}{close} {bar:<{width}} {c}")
    return lines


def _convert(cfg: ConvertConfig) -> int:
    if Path(cfg.dst).absolute() == Path(cfg.src).absolute():
        raise ValueError(f"convert: the destination {cfg.dst} is the source; choose another")
    check_dataset_target(cfg.dst, cfg.to, overwrite=cfg.overwrite)  # before reading anything
    fmt = detect_format(cfg.src)
    store = load(cfg.src, **_options(fmt, cfg.task, cfg.skip_bad, cfg.workers))
    if cfg.to == "store":
        store.save(cfg.dst, overwrite=cfg.overwrite)
    elif cfg.to == "d4rl":
        from rl_ring.data.d4rl import write_d4rl

        write_d4rl(store, cfg.dst, overwrite=cfg.overwrite)
    elif cfg.to == "exorl":
        from rl_ring.data.exorl import write_exorl

        write_exorl(store, cfg.dst, overwrite=cfg.overwrite)
    else:
        from rl_ring.data.minari import write_minari

        write_minari(store, cfg.dst, cfg.dataset_id, overwrite=cfg.overwrite)
    skipped = store.metadata.get("skipped", 0)
    print(f"wrote {cfg.dst} ({cfg.to}): {store.num_episodes} episodes, {store.num_steps} steps"
          + (f", skipped {skipped}" if skipped else ""))
    return 0
