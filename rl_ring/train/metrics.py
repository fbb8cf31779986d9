"""Training metrics: one JSON line per logged step, TensorBoard events, a progress bar.

``<workdir>/metrics.jsonl`` gets one object per line: ``step``, ``loss``, ``lr``,
``grad_norm``, ``tokens_per_s``, ``wall_time`` (seconds since the run started, resumed runs
continue the count), plus the agent's own metrics; evaluation results are lines with an
``eval/`` prefix on every key but ``step``. TensorBoard events go to ``<workdir>/tb``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rl_ring.io import atomic_file, jsonable

METRICS_FILE = "metrics.jsonl"


class MetricsWriter:
    """Appends metrics to ``metrics.jsonl`` and TensorBoard (process 0 writes; others no-op).

    Args:
        workdir: the run's work directory.
        tensorboard: also write TensorBoard event files under ``<workdir>/tb``.
        enabled: False on non-zero processes of a multi-process run.
    """

    def __init__(
        self, workdir: str | os.PathLike, *, tensorboard: bool = True, enabled: bool = True,
        resume_step: int | None = None,
    ):
        self.enabled = enabled
        self.path = Path(workdir) / METRICS_FILE
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            truncate_metrics(self.path, resume_step)
        self._file = open(self.path, "a", buffering=1)  # noqa: SIM115 (closed in close())
        if tensorboard:
            from tensorboardX import SummaryWriter

            # purge_step hides the stopped run's events from resume_step + 1 on.
            purge = None if not resume_step else resume_step + 1
            self._tb = SummaryWriter(str(Path(workdir) / "tb"), purge_step=purge)

    def write(self, step: int, metrics: dict[str, Any], *, prefix: str = "") -> None:
        """Writes one line (and one TensorBoard scalar per numeric metric)."""
        if not self.enabled:
            return
        row = {"step": int(step)}
        row.update({f"{prefix}{k}": jsonable(v) for k, v in metrics.items()})
        self._file.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, int | float):
                    self._tb.add_scalar(k, v, global_step=int(step))

    def flush(self) -> None:
        if self.enabled:
            self._file.flush()
            if self._tb is not None:
                self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()


def truncate_metrics(path: str | os.PathLike, step: int) -> int:
    """Drops the rows of ``metrics.jsonl`` past ``step`` (a resumed run writes them again),
    atomically; returns how many were dropped. A torn last line is dropped too."""
    path = Path(path)
    if not path.exists():
        return 0
    keep, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            row_step = int(json.loads(line)["step"]) if line.strip() else None
        except (ValueError, KeyError, TypeError):
            row_step = step + 1  # a line cut by the kill
        if row_step is None:
            continue
        if row_step <= step:
            keep.append(line)
        else:
            dropped += 1
    if dropped:
        with atomic_file(path) as tmp:
            tmp.write_text("".join(f"{line}\n" for line in keep))
    return dropped


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """All lines of a run's ``metrics.jsonl`` (empty if there is none)."""
    path = Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Progress:
    """A tqdm bar over training steps showing loss and tokens/s (a no-op when disabled)."""

    def __init__(self, total: int, initial: int, *, enabled: bool = True):
        self._bar = (
            tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
            if enabled
            else None
        )

    def update(self, n: int, loss: float, tokens_per_s: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.4g}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
