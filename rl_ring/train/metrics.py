"""Training metrics: one JSON line per logged step, TensorBoard events, a progress bar.

``<workdir>/metrics.jsonl`` gets one object per line: ``step``, ``loss``, ``lr``,
``grad_norm``, ``tokens_per_s``, ``wall_time`` (seconds since the run started, resumed runs
continue the count), plus the agent's own metrics; evaluation results are lines with an
``eval/`` prefix on every key but ``step``. TensorBoard events go to ``<workdir>/tb``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from tqdm import tqdm

METRICS_FILE = "metrics.jsonl"


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep them readable rather than invalid
    return v


class MetricsWriter:
    """Appends metrics to ``metrics.jsonl`` and TensorBoard (process 0 writes; others no-op).

    Args:
        workdir: the run's work directory.
        tensorboard: also write TensorBoard event files under ``<workdir>/tb``.
        enabled: False on non-zero processes of a multi-process run.
    """

    def __init__(
        self, workdir: str | os.PathLike, *, tensorboard: bool = True, enabled: bool = True
    ):
        self.enabled = enabled
        self.path = Path(workdir) / METRICS_FILE
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)  # noqa: SIM115 (closed in close())
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(workdir) / "tb"))

    def write(self, step: int, metrics: dict[str, Any], *, prefix: str = "") -> None:
        """Writes one line (and one TensorBoard scalar per numeric metric)."""
        if not self.enabled:
            return
        row = {"step": int(step)}
        row.update({f"{prefix}{k}": _jsonable(v) for k, v in metrics.items()})
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
