"""Rollout workers: the environments of one evaluation, stepped together.

Two backends with one interface (:class:`Workers`):

- :class:`InProcessWorkers` owns every environment in the calling process;
- :class:`SubprocessWorkers` spreads the environments over worker processes; each step the
  main process sends every worker the actions of its rows at once, then collects the
  replies, so the workers step in parallel while the policy batches across all of them.

Neither backend raises because of an environment: an environment that raises, or a worker
process that dies (killed, out of memory) or stops answering, turns into a per-row error
string in the reply, and the evaluator reports that row's episode as failed while every
other row carries on. A dead worker is started afresh at the next :meth:`Workers.make`.

A step of a row that ends its episode also resets it when the evaluator passes the seed of
the row's next trial, so a trial boundary costs no extra round trip; the reply then holds
the first observation of the new episode.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from rl_ring.eval.env_spec import EnvSpec, make_env


@dataclass
class StepResult:
    """What one row's step produced; ``error`` is set (and the rest meaningless) on failure."""

    obs: Any = None
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    reset: bool = False
    """The episode ended and the environment was reset: ``obs`` is the next episode's first."""
    error: str | None = None


def _describe(err: BaseException) -> str:
    """Exception type, message and the innermost frames, short enough for a JSON report."""
    text = "".join(traceback.format_exception(err))
    return text if len(text) <= 4000 else "...\n" + text[-4000:]


class EnvGroup:
    """Some environments of an evaluation, by row index; every call catches per-row errors."""

    def __init__(self) -> None:
        self.envs: dict[int, Any] = {}

    def close(self) -> None:
        for env in self.envs.values():
            try:
                env.close()
            except Exception:  # closing a broken env must not stop the others
                pass
        self.envs.clear()

    def make(self, items: Sequence[tuple[int, EnvSpec, int]]) -> tuple[dict[int, str], Any]:
        """Builds fresh environments; returns ``({row: error}, (obs_space, act_space))``."""
        self.close()
        errors: dict[int, str] = {}
        spaces = None
        for idx, spec, seed in items:
            try:
                env = make_env(spec, seed)
                self.envs[idx] = env
                if spaces is None:
                    spaces = (env.observation_space, env.action_space)
            except Exception as err:
                errors[idx] = _describe(err)
        return errors, spaces

    def reset(self, items: Sequence[tuple[int, int]]) -> dict[int, StepResult]:
        out = {}
        for idx, seed in items:
            try:
                obs, _ = self.envs[idx].reset(seed=int(seed))
                out[idx] = StepResult(obs=np.asarray(obs), reset=True)
            except Exception as err:
                out[idx] = StepResult(error=_describe(err))
        return out

    def step(self, items: Sequence[tuple[int, Any, int | None]]) -> dict[int, StepResult]:
        out = {}
        for idx, action, next_seed in items:
            try:
                env = self.envs[idx]
                obs, reward, term, trunc, _ = env.step(action)
                res = StepResult(np.asarray(obs), float(reward), bool(term), bool(trunc))
                if (term or trunc) and next_seed is not None:
                    obs, _ = env.reset(seed=int(next_seed))
                    res.obs, res.reset = np.asarray(obs), True
                out[idx] = res
            except Exception as err:
                out[idx] = StepResult(error=_describe(err))
        return out

    def render(self, idx: int) -> np.ndarray:
        return np.asarray(self.envs[idx].render())


class Workers:
    """Interface of the backends; rows are ``0..num_envs-1``."""

    num_envs: int
    spaces: Any = None
    """``(observation_space, action_space)`` of the first environment that was built."""

    def make(self, specs: Sequence[EnvSpec], seeds: Sequence[int]) -> dict[int, str]:
        """Builds row ``i`` from ``specs[i]`` with constructor seed ``seeds[i]``; returns errors."""
        raise NotImplementedError

    def reset(self, rows: Sequence[int], seeds: Sequence[int]) -> dict[int, StepResult]:
        raise NotImplementedError

    def step(
        self, rows: Sequence[int], actions: Sequence[Any], next_seeds: Sequence[int | None]
    ) -> dict[int, StepResult]:
        """Steps ``rows``; a row whose episode ends is reset with its ``next_seeds`` entry
        unless that is ``None``."""
        raise NotImplementedError

    def render(self, row: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InProcessWorkers(Workers):
    """All environments in this process (the fastest choice on few cores)."""

    def __init__(self, num_envs: int):
        self.num_envs = num_envs
        self.group = EnvGroup()

    def make(self, specs, seeds):
        _check_rows(specs, seeds, self.num_envs)
        items = list(zip(range(self.num_envs), specs, seeds, strict=True))
        errors, self.spaces = self.group.make(items)
        return errors

    def reset(self, rows, seeds):
        return self.group.reset(list(zip(rows, seeds, strict=True)))

    def step(self, rows, actions, next_seeds):
        return self.group.step(list(zip(rows, actions, next_seeds, strict=True)))

    def render(self, row):
        return self.group.render(row)

    def close(self):
        self.group.close()


def _worker_main(conn: Connection) -> None:
    """Loop of a worker process: run commands on its EnvGroup until told to close."""
    group = EnvGroup()
    try:
        while True:
            cmd, payload = conn.recv()
            if cmd == "close":
                break
            try:
                if cmd == "make":
                    reply = group.make(payload)
                elif cmd == "reset":
                    reply = group.reset(payload)
                elif cmd == "step":
                    reply = group.step(payload)
                elif cmd == "render":
                    reply = group.render(payload)
                elif cmd == "pid":
                    reply = os.getpid()
                else:
                    raise ValueError(f"worker: unknown command {cmd!r}")
                conn.send(("ok", reply))
            except Exception as err:  # report, keep serving the other rows
                conn.send(("error", _describe(err)))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        group.close()
        conn.close()


class SubprocessWorkers(Workers):
    """Environments spread over worker processes, rows in contiguous blocks per worker.

    Args:
        num_envs: number of rows.
        num_workers: processes (at most ``num_envs``).
        start_method: ``"spawn"`` (safe next to JAX's threads), ``"forkserver"`` or ``"fork"``.
        timeout_s: a worker that does not answer a command within this many seconds is
            killed and its rows fail (``None``: wait forever).
    """

    def __init__(
        self,
        num_envs: int,
        num_workers: int,
        *,
        start_method: str = "spawn",
        timeout_s: float | None = 600.0,
    ):
        if num_envs < 1 or num_workers < 1:
            raise ValueError(
                f"num_envs and num_workers must be >= 1, got {num_envs}, {num_workers}"
            )
        self.num_envs = num_envs
        self.num_workers = min(num_workers, num_envs)
        self.timeout_s = timeout_s
        self._ctx = mp.get_context(start_method)
        bounds = np.linspace(0, num_envs, self.num_workers + 1).round().astype(int)
        self.owner = np.repeat(np.arange(self.num_workers), np.diff(bounds))
        self._procs: list[Any] = [None] * self.num_workers
        self._conns: list[Connection | None] = [None] * self.num_workers
        self._death: list[str | None] = [None] * self.num_workers
        for w in range(self.num_workers):
            self._start(w)

    # ------------------------------------------------------------------ processes
    def _start(self, w: int) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, args=(child,), daemon=True,
                                 name=f"rl_ring-eval-worker-{w}")
        proc.start()
        child.close()
        self._procs[w], self._conns[w], self._death[w] = proc, parent, None

    @property
    def pids(self) -> list[int | None]:
        """Process id of each worker (tests kill one)."""
        return [p.pid if p is not None else None for p in self._procs]

    def _mark_dead(self, w: int, why: str) -> None:
        proc = self._procs[w]
        if proc is not None and proc.is_alive():
            proc.kill()
        if proc is not None:
            proc.join(timeout=5)
            code = proc.exitcode
        else:
            code = None
        self._death[w] = f"worker process {w} (pid {proc.pid if proc else '?'}) {why} " \
                         f"(exit code {code})"
        conn = self._conns[w]
        if conn is not None:
            conn.close()
        self._conns[w] = None

    def _call(self, payloads: dict[int, tuple[str, Any]]) -> dict[int, tuple[str, Any]]:
        """Sends each worker its command, then gathers replies; dead workers reply ("dead", why)."""
        replies: dict[int, tuple[str, Any]] = {}
        waiting: dict[Connection, int] = {}
        for w, msg in payloads.items():
            conn = self._conns[w]
            if conn is None:
                replies[w] = ("dead", self._death[w])
                continue
            try:
                conn.send(msg)
                waiting[conn] = w
            except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
                self._mark_dead(w, "died")
                replies[w] = ("dead", self._death[w])
        while waiting:
            ready = wait(list(waiting), timeout=self.timeout_s)
            if not ready:  # every worker still waiting has hung
                for w in list(waiting.values()):
                    self._mark_dead(w, f"did not answer within {self.timeout_s} s and was killed")
                    replies[w] = ("dead", self._death[w])
                break
            for conn in ready:
                w = waiting.pop(conn)
                try:
                    replies[w] = conn.recv()
                except (EOFError, ConnectionResetError, OSError):
                    self._mark_dead(w, "died")
                    replies[w] = ("dead", self._death[w])
        return replies

    def _by_worker(self, items: Sequence[tuple]) -> dict[int, list[tuple]]:
        groups: dict[int, list[tuple]] = {}
        for item in items:
            groups.setdefault(int(self.owner[item[0]]), []).append(item)
        return groups

    def _row_results(self, cmd: str, items: Sequence[tuple]) -> dict[int, StepResult]:
        groups = self._by_worker(items)
        replies = self._call({w: (cmd, its) for w, its in groups.items()})
        out: dict[int, StepResult] = {}
        for w, its in groups.items():
            status, reply = replies[w]
            if status == "ok":
                out.update(reply)
            else:
                for item in its:
                    out[item[0]] = StepResult(error=reply)
        return out

    # ------------------------------------------------------------------ interface
    def make(self, specs, seeds):
        _check_rows(specs, seeds, self.num_envs)
        for w in range(self.num_workers):
            if self._conns[w] is None:
                self._start(w)
        groups = self._by_worker(list(zip(range(self.num_envs), specs, seeds, strict=True)))
        replies = self._call({w: ("make", its) for w, its in groups.items()})
        errors: dict[int, str] = {}
        self.spaces = None
        for w in sorted(groups):
            status, reply = replies[w]
            if status == "ok":
                errs, spaces = reply
                errors.update(errs)
                if self.spaces is None:
                    self.spaces = spaces
            else:
                errors.update({item[0]: reply for item in groups[w]})
        return errors

    def reset(self, rows, seeds):
        return self._row_results("reset", list(zip(rows, seeds, strict=True)))

    def step(self, rows, actions, next_seeds):
        return self._row_results("step", list(zip(rows, actions, next_seeds, strict=True)))

    def render(self, row):
        w = int(self.owner[row])
        status, reply = self._call({w: ("render", row)})[w]
        if status != "ok":
            raise RuntimeError(f"render of row {row} failed: {reply}")
        return reply

    def close(self):
        for w in range(self.num_workers):
            conn, proc = self._conns[w], self._procs[w]
            if conn is not None:
                try:
                    conn.send(("close", None))
                except (BrokenPipeError, OSError):
                    pass
            if proc is not None:
                proc.join(timeout=5)
                if proc.is_alive():
                    proc.kill()
                    proc.join(timeout=5)
            if conn is not None:
                conn.close()
            self._conns[w] = None


def _check_rows(specs: Sequence[EnvSpec], seeds: Sequence[int], num_envs: int) -> None:
    if len(specs) != num_envs or len(seeds) != num_envs:
        raise ValueError(
            f"make: expected {num_envs} specs and seeds, got {len(specs)} and {len(seeds)}"
        )


def make_workers(
    num_envs: int, mode: str = "inprocess", *, num_workers: int | None = None, **kwargs
) -> Workers:
    """Builds a backend: ``mode`` is ``"inprocess"`` or ``"subprocess"``.

    ``num_workers`` defaults to the number of CPU cores (never more than ``num_envs``).
    """
    if mode == "inprocess":
        return InProcessWorkers(num_envs)
    if mode == "subprocess":
        workers = num_workers or os.cpu_count() or 1
        return SubprocessWorkers(num_envs, workers, **kwargs)
    raise ValueError(f"mode must be 'inprocess' or 'subprocess', got {mode!r}")
