"""Writing files safely: atomic writes, the one ``jsonable``, output-target checks, CPU flags.

Every rl_ring command that writes goes through this module, so one set of rules holds:

- **Nothing half-written.** Files and dataset directories are written under a temporary
  name beside the target and renamed into place only when complete.
- **Nothing of someone else's lost.** A command refuses a target that already holds data
  unless the user says ``--overwrite`` (``overwrite=True``); even then it replaces only the
  entries that its own output consists of (a dataset format's files, a report's files) and
  carries every other entry of a directory over unchanged.

The fake-CPU-device flags live here too (:func:`device_flags`): every process that needs
several CPU devices sets them through this one helper.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

# A dataset or output directory: which of its files (paths relative to the directory) the
# writer's own output consists of. Everything else in the directory is someone else's.
Owned = Callable[[Path], Iterable[str]]


class OutputExistsError(FileExistsError):
    """A command was asked to write where data already is, without ``--overwrite``."""


# ---------------------------------------------------------------------------- JSON
def jsonable(x: Any) -> Any:
    """``x`` as plain JSON types: numpy scalars/arrays to Python, tuples to lists, paths and
    unknown objects to strings, NaN/inf to the strings ``"nan"``/``"inf"`` (JSON has none)."""
    if x is None or isinstance(x, str | bool | int):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    if isinstance(x, np.generic):
        return jsonable(x.item())
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if hasattr(x, "item") and callable(x.item) and getattr(x, "shape", None) == ():
        return jsonable(x.item())  # 0-d jax arrays
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple | set | frozenset):
        return [jsonable(v) for v in x]
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    return repr(x)


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Renames a finished temporary file into place with the usual permissions (mkstemp
    creates files readable by their owner only)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it to ``path`` on success, removes it
    on failure (``path`` is then left as it was)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(obj: Any, path: str | os.PathLike, *, indent: int = 1) -> Path:
    """Writes ``obj`` (made :func:`jsonable`) to ``path`` atomically."""
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(jsonable(obj), indent=indent, allow_nan=False))
    return path


def save_figure(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """Saves a matplotlib figure as PNG at ``path`` atomically."""
    path = Path(path)
    savefig_kwargs.setdefault("dpi", 100)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", **savefig_kwargs)
    return path


# ---------------------------------------------------------------------------- targets
def _files_under(root: Path) -> list[str]:
    """Every file (and symlink) under ``root``, as paths relative to it."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        names = list(filenames) + [d for d in dirnames if (base / d).is_symlink()]
        out.extend(str((base / n).relative_to(root)) for n in names)
    return sorted(out)


def _describe(entries: list[str], limit: int = 5) -> str:
    shown = ", ".join(entries[:limit])
    return shown + (f" and {len(entries) - limit} more" if len(entries) > limit else "")


def check_output_dir(path: str | os.PathLike, *, overwrite: bool, what: str,
                     flag: str = "--overwrite") -> None:
    """Refuses a directory target that holds anything, unless ``overwrite``.

    Call it before any long work, so a refused command costs nothing.

    Raises:
        OutputExistsError: ``path`` is a non-empty directory and ``overwrite`` is False.
        NotADirectoryError: ``path`` exists and is a file.
    """
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise NotADirectoryError(f"{path}: exists and is a file, expected a directory for {what}")
    entries = sorted(p.name for p in path.iterdir())
    if entries and not overwrite:
        raise OutputExistsError(
            f"{path}: already holds {_describe(entries)}; refusing to write {what} there. "
            f"Choose a new or empty directory, or pass {flag} to replace only the files that "
            f"{what} consists of (other files are kept)"
        )


def check_output_files(paths: Iterable[str | os.PathLike], *, overwrite: bool, what: str,
                       flag: str = "--overwrite") -> None:
    """Refuses to replace any existing file of ``paths`` unless ``overwrite``.

    Raises:
        OutputExistsError: one of ``paths`` exists and ``overwrite`` is False.
        IsADirectoryError: one of ``paths`` is a directory.
    """
    existing = []
    for p in map(Path, paths):
        if p.is_dir():
            raise IsADirectoryError(f"{p}: is a directory, expected a file path for {what}")
        if p.exists():
            existing.append(str(p))
    if existing and not overwrite:
        raise OutputExistsError(
            f"{_describe(existing)}: already exist(s); refusing to replace with {what}. "
            f"Choose another output path, or pass {flag} to replace them"
        )


@contextlib.contextmanager
def atomic_output(final: str | os.PathLike, *, directory: bool, overwrite: bool = False,
                  owned: Owned | None = None, what: str = "the output") -> Iterator[Path]:
    """Yields a temporary path beside ``final``; puts it in place only on success.

    A crash or an exception leaves ``final`` as it was (absent, or the previous version) and
    removes the temporary, so no reader ever sees a half-written output.

    Args:
        final: the file or directory to write.
        directory: ``final`` is a directory (the yielded temporary is one too).
        overwrite: allow replacing an existing ``final``. Without it an existing file, or a
            directory holding anything, raises :class:`OutputExistsError` before the body
            runs.
        owned: for a directory, ``owned(final)`` lists the files (relative paths) that the
            existing output consists of; they are replaced. Every other file of ``final`` is
            moved into the new directory unchanged (default: all files are someone else's).
        what: what is being written, for error messages.

    Raises:
        OutputExistsError: as above, or a file of someone else's has the same name as one
            the new output writes (nothing is changed then).
    """
    final = Path(final)
    if directory:
        check_output_dir(final, overwrite=overwrite, what=what)
    else:
        check_output_files([final], overwrite=overwrite, what=what)
    final.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory and final.exists():
            _swap_dir(final, tmp, set(owned(final)) if owned else set(), what)
        elif directory:
            tmp.rename(final)
        else:
            publish(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _swap_dir(final: Path, tmp: Path, owned: set[str], what: str) -> None:
    """Moves ``final``'s files that are not ``owned`` into ``tmp``, then swaps ``tmp`` in."""
    foreign = [f for f in _files_under(final) if f not in owned]
    clash = [f for f in foreign if (tmp / f).exists() or (tmp / f).is_symlink()]
    if clash:
        raise OutputExistsError(
            f"{final}: {_describe(clash)} is not part of the existing {what} and the new one "
            "would replace it; nothing was changed. Move it away or choose another directory"
        )
    moved: list[str] = []
    try:
        for rel in foreign:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            os.rename(final / rel, tmp / rel)
            moved.append(rel)
    except BaseException:
        for rel in moved:  # put everything back where it was
            (final / rel).parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp / rel, final / rel)
        raise
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------- CPU devices
def device_flags(n: int, flags: str = "", *, single_threaded_kernels: bool = True) -> str:
    """``XLA_FLAGS`` with ``n`` fake CPU devices for ring attention (other flags kept).

    Measured on a 2-core machine shared with other jobs: a training process whose 8 fake
    devices shared XLA:CPU's thread pool with multi-threaded Eigen kernels twice stopped at a
    collective with 6 of 8 devices arrived (XLA aborts after 40 s). Single-threaded kernels
    (no throughput lost at these sizes: 10.8K vs 9.2K tokens/s) keep the pool free for the
    devices, and the collective time limits are raised to 20 min for slow, loaded machines.
    Benchmarks that time the kernels themselves pass ``single_threaded_kernels=False``.
    """
    ours = ("--xla_force_host_platform_device_count", "--xla_cpu_collective_call",
            "--xla_cpu_multi_thread_eigen")
    keep = [f for f in flags.split() if not f.startswith(ours)]
    threads = ["--xla_cpu_multi_thread_eigen=false"] if single_threaded_kernels else []
    return " ".join([*keep, f"--xla_force_host_platform_device_count={n}", *threads,
                     "--xla_cpu_collective_call_terminate_timeout_seconds=1200",
                     "--xla_cpu_collective_call_warn_stuck_timeout_seconds=600"])


def device_env(n: int, env: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (default ``os.environ``) whose XLA_FLAGS give ``n`` CPU devices,
    for a child process."""
    env = dict(os.environ if env is None else env)
    env["XLA_FLAGS"] = device_flags(n, env.get("XLA_FLAGS", ""))
    return env


def setup_cpu_devices(n: int = 8) -> None:
    """Sets :func:`device_flags` and the CPU platform in this process; call it before JAX
    starts its backend (importing jax is fine)."""
    os.environ["XLA_FLAGS"] = device_flags(n, os.environ.get("XLA_FLAGS", ""))
    os.environ["JAX_PLATFORMS"] = "cpu"


_DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
try:
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: kept across exec
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):  # the parent died before: nobody to work for
    sys.exit(1)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def _dying_with_parent(cmd: list[str]) -> list[str]:
    """``cmd`` behind a trampoline that has it killed when the thread that started it exits
    (on Linux; elsewhere ``cmd`` unchanged), so that a job whose parent was killed leaves no
    orphan writing its run directory. (Not ``preexec_fn``: Python code in a forked child of
    a multithreaded process, which JAX's is, can deadlock.)"""
    if not sys.platform.startswith("linux"):
        return cmd
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *cmd]


def run_watched(cmd: list[str], *, progress: str | os.PathLike, name: str,
                env: dict[str, str] | None = None, stall_s: float = 300.0, restarts: int = 3,
                log: Callable[[str], None] = print) -> int:
    """Runs ``cmd`` (a resumable job) in a child process, restarting it when the file
    ``progress`` stops growing for ``stall_s`` seconds; the number of restarts used.

    Why: on a busy 2-core machine, training processes with 8 fake CPU devices stopped for
    good 3 times in ~20 runs, every device thread but one waiting in an all-reduce (XLA:CPU's
    in-process collectives). A run resumed from its checkpoint ends where an uninterrupted
    one would. The child dies with this process (Linux) or when this call raises.

    Raises:
        RuntimeError: the child failed (its exit status), or stalled ``restarts + 1`` times.
    """
    import subprocess

    progress = Path(progress)
    for attempt in range(restarts + 1):
        child = subprocess.Popen(_dying_with_parent(cmd), env=env)
        try:
            seen, last = -1, time.monotonic()
            while child.poll() is None:
                time.sleep(2.0)
                size = progress.stat().st_size if progress.exists() else 0
                if size != seen:
                    seen, last = size, time.monotonic()
                elif time.monotonic() - last > stall_s:
                    log(f"{name}: no progress for {stall_s:.0f} s; restarting from the last "
                        "checkpoint")
                    child.kill()
                    break
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
        if child.returncode == 0:
            return attempt
        if child.returncode != -9:
            raise RuntimeError(f"{name}: the job exited with status {child.returncode}")
    raise RuntimeError(f"{name}: the job stalled {restarts + 1} times")


def check_results(paths: Iterable[str | os.PathLike], *, workdir: str | os.PathLike | None,
                  overwrite: bool, what: str, flag: str = "--overwrite") -> None:
    """:func:`check_output_files` for a job's result files, except those inside its own
    claimed ``workdir`` (a resumed job rewrites its own results there)."""
    root = Path(workdir).absolute() if workdir is not None else None
    outside = [p for p in map(Path, paths)
               if root is None or not p.absolute().is_relative_to(root)]
    check_output_files(outside, overwrite=overwrite, what=what, flag=flag)


# ---------------------------------------------------------------------------- run dirs
RUN_MARKER = ".rl_ring_run.json"


def claim_run_dir(path: str | os.PathLike, *, kind: str, overwrite: bool,
                  flag: str = "--overwrite") -> Path:
    """Makes ``path`` the work directory of a resumable ``kind`` job (quickstart, an
    experiment) and returns it.

    A new or empty directory, or one this kind of job claimed before (it resumes there), is
    taken; a directory holding anything else is refused unless ``overwrite`` (its files are
    then kept, and the job's own files are written beside them). The claim is a small
    marker file, ``.rl_ring_run.json``.

    Raises:
        OutputExistsError: the directory holds files of someone else's.
    """
    path = Path(path)
    marker = path / RUN_MARKER
    if path.is_dir() and any(path.iterdir()):
        try:
            ours = json.loads(marker.read_text()).get("kind") == kind
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours and not overwrite:
            entries = sorted(p.name for p in path.iterdir())
            raise OutputExistsError(
                f"{path}: already holds {_describe(entries)}, which is not an earlier {kind} "
                f"run's work directory; choose a new or empty directory, or pass {flag} to "
                "write there anyway (other files are kept)"
            )
    elif path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path}: exists and is a file, expected a directory")
    path.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        write_json({"kind": kind}, marker)
    return path
