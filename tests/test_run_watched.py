"""``rl_ring.io.run_watched``: the watchdog the experiments train under. A stalled child is
restarted, a failed one reported, and no child outlives the process that started it."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from rl_ring.io import run_watched


def _job(tmp_path, body: str) -> list[str]:
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(body))
    return [sys.executable, str(script)]


def test_a_finished_job_needs_no_restart(tmp_path):
    cmd = _job(tmp_path, f"open({str(tmp_path / 'p')!r}, 'a').write('x')\n")
    assert run_watched(cmd, progress=tmp_path / "p", name="job", stall_s=30) == 0
    assert (tmp_path / "p").read_text() == "x"


def test_a_stalled_job_is_restarted(tmp_path):
    """First attempt: progress once, then hangs; the restart finishes."""
    cmd = _job(tmp_path, f"""
        import os, time
        p = {str(tmp_path / 'p')!r}
        first = not os.path.exists(p)
        open(p, 'a').write('x')
        if first:
            time.sleep(600)
    """)
    said = []
    assert run_watched(cmd, progress=tmp_path / "p", name="job", stall_s=1.0,
                       log=said.append) == 1
    assert (tmp_path / "p").read_text() == "xx"
    assert said and "job: no progress for 1 s" in said[0]


def test_a_failed_job_is_an_error(tmp_path):
    cmd = _job(tmp_path, "raise SystemExit(3)\n")
    with pytest.raises(RuntimeError, match="job: the job exited with status 3"):
        run_watched(cmd, progress=tmp_path / "p", name="job", stall_s=30)


def test_a_job_that_always_stalls_is_an_error(tmp_path):
    cmd = _job(tmp_path, "import time; time.sleep(600)\n")
    with pytest.raises(RuntimeError, match="stalled 2 times"):
        run_watched(cmd, progress=tmp_path / "p", name="job", stall_s=0.5, restarts=1,
                    log=lambda _: None)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_child_dies_with_its_parent(tmp_path):
    """A parent killed by its user (SIGTERM runs no cleanup) takes its child with it: no
    orphan keeps writing the run directory a restarted job would train too."""
    pid_file = tmp_path / "child.pid"
    child = _job(tmp_path, f"""
        import os, time
        open({str(pid_file)!r}, 'w').write(str(os.getpid()))
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", (
        "from rl_ring.io import run_watched; "
        f"run_watched({child!r}, progress={str(tmp_path / 'p')!r}, name='job', stall_s=600)")],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    pid = int(pid_file.read_text())
    os.kill(pid, 0)  # alive
    parent.send_signal(signal.SIGTERM)
    parent.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    pytest.fail(f"child {pid} outlived its parent")
