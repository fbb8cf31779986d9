"""The ``rl-ring`` dispatcher: every command wired, clear errors, no display warnings."""

import os
import subprocess
import sys

from rl_ring import cli


def test_usage_lists_every_command(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in ("quickstart", "data", "collect", "train", "plan", "eval", "bench"):
        assert f"  {name}" in out


def test_unknown_command_is_an_error(capsys):
    assert cli.main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_every_command_answers_help():
    for name, (run, _) in cli.COMMANDS.items():
        try:
            code = run(["--help"])
        except SystemExit as exit_:  # tyro / argparse exit after printing help
            code = exit_.code
        assert code in (0, None), name


def test_no_glfw_display_warning_on_a_headless_machine(tmp_path):
    """dm_control picks its GL backend on import; the dispatcher sets a headless one first."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MUJOCO_GL")}
    proc = subprocess.run(
        [sys.executable, "-m", "rl_ring.cli", "collect", "dmc:cartpole-swingup", "--episodes",
         "1", "--out", str(tmp_path / "d"), "--quiet"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "GLFW" not in proc.stderr and "DISPLAY" not in proc.stderr, proc.stderr[-2000:]


def test_orbax_read_only_warning_is_silenced_and_others_are_not(caplog):
    """Opening a checkpoint read only (every evaluation) logged orbax's "Given directory is
    read only" warning each time; rl_ring drops that one message, nothing else."""
    import logging

    from absl import logging as absl_logging

    import rl_ring.train.checkpoint  # noqa: F401  (installs the filter)

    with caplog.at_level(logging.WARNING):
        absl_logging.warning("Given directory is read only=%s", "/some/run/checkpoints")
        absl_logging.warning("another warning %s", "kept")
    messages = [r.getMessage() for r in caplog.records]
    assert "another warning kept" in messages
    assert not any("read only" in m for m in messages)
