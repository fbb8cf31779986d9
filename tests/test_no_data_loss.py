"""No command deletes or overwrites data it did not write: every writer and every command
that takes --out / --workdir refuses a target holding someone else's file, and with
--overwrite replaces only what its own output consists of, keeping the foreign file."""

import json
from pathlib import Path

import pytest

from envs.collect import collect_random
from envs.collect import main as collect_main
from rl_ring import io
from rl_ring.cli.data import main as data_main
from rl_ring.data import EpisodeStore, load, read_exorl, write_d4rl, write_exorl, write_minari

FOREIGN = "my_notes.txt"
TEXT = "precious data that rl_ring did not write\n"


def _foreign(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    f = d / FOREIGN
    f.write_text(TEXT)
    return f


def _untouched(f: Path) -> None:
    assert f.read_text() == TEXT


@pytest.fixture(scope="module")
def small_store() -> EpisodeStore:
    return collect_random("darkroom", 3, seed=0)


@pytest.fixture(scope="module")
def dmc_store() -> EpisodeStore:
    return collect_random("dmc:cartpole-swingup", 2, seed=0)


# ------------------------------------------------------------------ the primitives
def test_atomic_output_refuses_then_keeps_foreign_files(tmp_path):
    target = tmp_path / "out"
    foreign = _foreign(target)
    with pytest.raises(io.OutputExistsError, match="my_notes.txt.*--overwrite"):
        with io.atomic_output(target, directory=True, what="a thing"):
            raise AssertionError("the body must not run on a refused target")
    _untouched(foreign)
    (target / "old.bin").write_bytes(b"old")
    (target / "sub").mkdir()
    (target / "sub" / "keep.txt").write_text("k")
    with io.atomic_output(target, directory=True, overwrite=True,
                          owned=lambda d: ["old.bin"]) as tmp:
        (tmp / "new.bin").write_bytes(b"new")
    assert sorted(io._files_under(target)) == ["my_notes.txt", "new.bin", "sub/keep.txt"]
    _untouched(foreign)
    assert (target / "sub" / "keep.txt").read_text() == "k"


def test_atomic_output_clash_and_failure_change_nothing(tmp_path):
    target = tmp_path / "out"
    foreign = _foreign(target)
    before = io._files_under(target)
    with pytest.raises(io.OutputExistsError, match="not part of the existing"):
        with io.atomic_output(target, directory=True, overwrite=True) as tmp:
            (tmp / FOREIGN).write_text("a new file with the foreign file's name")
    _untouched(foreign)
    with pytest.raises(RuntimeError, match="boom"):
        with io.atomic_output(target, directory=True, overwrite=True) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("boom")
    assert io._files_under(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left behind


def test_single_file_refused_without_overwrite(tmp_path):
    f = tmp_path / "x.hdf5"
    f.write_text(TEXT)
    with pytest.raises(io.OutputExistsError, match="x.hdf5"):
        with io.atomic_output(f, directory=False):
            pass
    assert f.read_text() == TEXT
    io.check_output_files([tmp_path / "new.json"], overwrite=False, what="w")  # absent: fine


def test_claim_run_dir_takes_its_own_dir_back_and_refuses_others(tmp_path):
    d = tmp_path / "run"
    io.claim_run_dir(d, kind="a", overwrite=False)
    (d / "result.json").write_text("{}")
    io.claim_run_dir(d, kind="a", overwrite=False)  # resumes its own
    with pytest.raises(io.OutputExistsError, match="not an earlier b run"):
        io.claim_run_dir(d, kind="b", overwrite=False)
    other = tmp_path / "other"
    foreign = _foreign(other)
    with pytest.raises(io.OutputExistsError, match="my_notes.txt"):
        io.claim_run_dir(other, kind="a", overwrite=False)
    io.claim_run_dir(other, kind="a", overwrite=True)
    _untouched(foreign)


# ------------------------------------------------------------------ library writers
@pytest.mark.parametrize("fmt", ["store", "minari", "exorl"])
def test_dataset_writers_refuse_and_keep_foreign_files(tmp_path, fmt, small_store, dmc_store):
    store = dmc_store if fmt == "exorl" else small_store
    write = {"store": lambda s, p, **kw: s.save(p, **kw),
             "minari": lambda s, p, **kw: write_minari(s, p, **kw),
             "exorl": lambda s, p, **kw: write_exorl(s, p, **kw)}[fmt]
    target = tmp_path / "ds"
    foreign = _foreign(target)
    with pytest.raises(io.OutputExistsError):
        write(store, target)
    assert sorted(p.name for p in target.iterdir()) == [FOREIGN]
    write(store, target, overwrite=True)
    _untouched(foreign)
    back = load(target)
    assert back.num_episodes == store.num_episodes
    # Overwriting the dataset with a smaller one replaces exactly the old dataset's files.
    write(store.select([0]), target, overwrite=True)
    _untouched(foreign)
    assert load(target).num_episodes == 1
    assert sorted(p.name for p in target.iterdir() if p.name.endswith(".npz")) == (
        [] if fmt != "exorl" else [p.name for p in target.glob("*_0_*.npz")])


def test_d4rl_writer_refuses_an_existing_file(tmp_path, small_store):
    f = tmp_path / "data.hdf5"
    f.write_text(TEXT)
    with pytest.raises(io.OutputExistsError):
        write_d4rl(small_store, f)
    assert f.read_text() == TEXT
    write_d4rl(small_store, f, overwrite=True)
    assert load(f).num_episodes == small_store.num_episodes


# ------------------------------------------------------------------ commands
def test_collect_into_an_exorl_buffer_refuses_and_keeps_it(tmp_path, dmc_store, capsys):
    """The reported loss: 5 Dark Room episodes collected into a folder holding an ExoRL
    buffer and an unrelated file deleted both."""
    buf = tmp_path / "buffer"
    write_exorl(dmc_store, buf)
    foreign = _foreign(buf)
    before = sorted(p.name for p in buf.iterdir())
    rc = collect_main(["darkroom", "--episodes", "5", "--out", str(buf), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(buf) in err and "--overwrite" in err
    assert sorted(p.name for p in buf.iterdir()) == before
    assert read_exorl(buf).num_episodes == dmc_store.num_episodes
    _untouched(foreign)
    # With --overwrite, a store is written beside them: the ExoRL episodes and the foreign
    # file are not part of an EpisodeStore, so they stay.
    rc = collect_main(["darkroom", "--episodes", "5", "--out", str(buf), "--quiet",
                       "--overwrite"])
    assert rc == 0
    _untouched(foreign)
    assert EpisodeStore.load(buf).num_episodes == 5
    assert len(list(buf.glob("*.npz"))) == dmc_store.num_episodes


@pytest.mark.parametrize("fmt", ["store", "minari", "d4rl"])
def test_collect_every_format_refuses_a_dir_with_a_foreign_file(tmp_path, fmt, capsys):
    out = tmp_path / "out"
    foreign = _foreign(out)
    target = out / "data.hdf5" if fmt == "d4rl" else out
    if fmt == "d4rl":
        (out / "data.hdf5").write_text(TEXT)
    args = ["darkroom", "--episodes", "2", "--out", str(target), "--format", fmt, "--quiet"]
    assert collect_main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    _untouched(foreign)
    assert collect_main([*args, "--overwrite"]) == 0
    _untouched(foreign)
    assert load(target).num_episodes == 2


def test_data_convert_refuses_a_dir_with_a_foreign_file(tmp_path, small_store, capsys):
    src = small_store.save(tmp_path / "src")
    dst = tmp_path / "dst"
    foreign = _foreign(dst)
    assert data_main(["convert", str(src), str(dst), "--to", "minari"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in dst.iterdir()) == [FOREIGN]
    assert data_main(["convert", str(src), str(dst), "--to", "minari", "--overwrite"]) == 0
    _untouched(foreign)
    assert load(dst).num_episodes == small_store.num_episodes
    assert data_main(["convert", str(src), str(src), "--overwrite"]) == 2


def test_eval_out_refuses_a_dir_with_a_foreign_file(tmp_path, capsys):
    from rl_ring.cli.eval import main as eval_main

    out = tmp_path / "eval"
    foreign = _foreign(out)
    args = ["--env", "darkroom", "--policy", "random", "--trials", "1", "--envs", "2",
            "--seeds", "1", "--no-progress", "--out", str(out)]
    assert eval_main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [FOREIGN]
    assert eval_main([*args, "--overwrite"]) == 0
    _untouched(foreign)
    assert json.loads((out / "report.json").read_text())["summary"]


def test_train_workdir_refuses_a_dir_that_is_not_a_run(tmp_path, small_store, capsys):
    from rl_ring.cli.train import main as train_main

    data = small_store.save(tmp_path / "data")
    work = tmp_path / "work"
    foreign = _foreign(work)
    args = ["--agent", "bc", "--preset", "tiny", "--data", str(data), "--env", "darkroom",
            "--workdir", str(work), "--steps", "2", "--no-progress", "--no-tensorboard",
            "--devices", "1"]
    assert train_main(args) == 2
    assert "not a training run" in capsys.readouterr().err
    assert sorted(p.name for p in work.iterdir()) == [FOREIGN]
    assert train_main([*args, "--overwrite"]) == 0
    _untouched(foreign)
    # Its own run directory resumes without --overwrite; starting afresh over it does not.
    assert train_main([*args, "--steps", "3"]) == 0
    assert train_main([*args, "--steps", "3", "--no-resume"]) == 2
    assert "would overwrite" in capsys.readouterr().err


def test_quickstart_refuses_a_dir_with_a_foreign_file(tmp_path, capsys):
    from experiments.quickstart import main as quickstart_main

    out = tmp_path / "qs"
    foreign = _foreign(out)
    assert quickstart_main(["--tiny", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [FOREIGN]
    _untouched(foreign)


def test_experiments_refuse_foreign_workdirs_and_results(tmp_path, capsys):
    from experiments.ad_darkroom import main as ad_main
    from experiments.at_exorl_small import main as at_main

    work = tmp_path / "work"
    foreign = _foreign(work)
    out = tmp_path / "results"
    assert ad_main(["--tiny", "--workdir", str(work), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert at_main(["--tiny", "--workdir", str(work), "--out", str(out / "s.json")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in work.iterdir()) == [FOREIGN]
    # A result file that is already there is not replaced without --overwrite either.
    out.mkdir()
    (out / "ad_darkroom_tiny.json").write_text(TEXT)
    res = out / "ad_darkroom.json"
    res.write_text(TEXT)
    assert ad_main(["--tiny", "--workdir", str(tmp_path / "new"), "--out", str(out)]) == 2
    assert "ad_darkroom.json" in capsys.readouterr().err
    assert res.read_text() == TEXT
    _untouched(foreign)
    assert not (tmp_path / "new").exists()
