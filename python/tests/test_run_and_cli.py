"""tessera.run (a job in this process) and the installed `tessera` command, against the CLI."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

import tessera
from tessera import ParameterError, TesseraError


def _files(root):
    """Every file under a directory (or the file itself) with its bytes, reports left out."""
    root = pathlib.Path(root)
    if root.is_file():
        return {"": root.read_bytes()}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _volume(path):
    v = (np.arange(24 * 40 * 36, dtype=np.uint16) % 997).reshape(24, 40, 36)
    np.save(path, v)
    return v


def test_a_pyramid_from_a_dict_is_the_cli_bytes(tmp_path, cli, monkeypatch):
    _volume(tmp_path / "v.npy")
    monkeypatch.chdir(tmp_path)
    table = {"input": "v.npy", "output": "api.zarr", "method": "mean", "factor": [2, 2, 2],
             "chunks": [8, 16, 16], "codec": "zstd"}
    report = tessera.run({"pyramid": table})
    assert report["command"].startswith("pyramid") or "pyramid" in json.dumps(report)
    (tmp_path / "job.toml").write_text(
        '[pyramid]\ninput = "v.npy"\noutput = "cli.zarr"\nmethod = "mean"\n'
        'factor = [2, 2, 2]\nchunks = [8, 16, 16]\ncodec = "zstd"\n')
    cli("run", tmp_path / "job.toml")
    api, ref = _files(tmp_path / "api.zarr"), _files(tmp_path / "cli.zarr")
    assert api.keys() == ref.keys() and len(api) > 3
    for name in api:
        if name.endswith("zarr.json"):
            continue  # names its own output path
        assert api[name] == ref[name], name


def test_a_job_file_and_toml_text_with_run_options(tmp_path, cli):
    image = np.random.default_rng(0).standard_normal((1, 1, 30, 30)).astype("float32")
    np.save(tmp_path / "x.npy", image)
    text = ('[unstitch]\ninput = "x.npy"\noutput = "p.npy"\n'
            '[unstitch.geometry]\nwindow = [8, 8]\nstep = [4, 4]\nborder = [1, 1]\n')
    (tmp_path / "u.toml").write_text(text)
    tessera.run(tmp_path / "u.toml")
    q = tessera.NCYXQuilt(30, 30, window=8, step=4, border=1)
    assert np.load(tmp_path / "p.npy").tobytes() == q.unstitch(image).tobytes()
    # Again: the output exists, so the CLI's refusal; then --overwrite as an argument.
    with pytest.raises(TesseraError) as e:
        tessera.run(str(tmp_path / "u.toml"))
    refused = cli("run", tmp_path / "u.toml", check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == f"error: {e.value}"
    tessera.run(str(tmp_path / "u.toml"), overwrite=True)
    # TOML text: paths from the working directory.
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert tessera.run(text.replace("p.npy", "q.npy"), dry_run=True) is None
        assert not (tmp_path / "q.npy").exists()
    finally:
        os.chdir(cwd)


def test_bad_jobs_carry_the_cli_message(tmp_path, cli):
    (tmp_path / "bad.toml").write_text('[pyramid]\ninput = "nothing.npy"\noutput = "o.zarr"\n'
                                       'colour = "blue"\n')
    with pytest.raises(ParameterError) as e:
        tessera.run(tmp_path / "bad.toml")
    done = cli("run", tmp_path / "bad.toml", check=False)
    assert done.stderr.strip().splitlines()[-1] == f"error: {e.value}"
    with pytest.raises(ParameterError, match="expected exactly one operation table"):
        tessera.run({"run": {"overwrite": True}})
    with pytest.raises(TypeError):
        tessera.run(42)
    with pytest.raises(TesseraError, match="nothing.npy"):
        tessera.run({"pyramid": {"input": str(tmp_path / "nothing.npy"),
                                 "output": str(tmp_path / "o.zarr")}})


def _command():
    exe = shutil.which("tessera", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("the package's tessera command is not installed beside this python")
    return exe


def test_the_installed_command_is_the_cli(tmp_path, cli):
    exe = _command()
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 16, 16), np.float32))
    for args in (["--version"], ["info", tmp_path / "x.npy"],
                 ["quilt", "unstitch", "--input", tmp_path / "x.npy"],
                 ["quilt", "unstitch", "--input", tmp_path / "x.npy", "--output",
                  tmp_path / "p.npy", "--window", "32", "--step", "4"]):
        mine = subprocess.run([exe, *map(str, args)], capture_output=True, text=True)
        ref = cli(*args, check=False)
        assert mine.returncode == ref.returncode, (args, mine.stderr)
        assert mine.stdout == ref.stdout
        if mine.returncode:
            assert mine.stderr.splitlines()[-1].replace(exe, "tessera") == \
                ref.stderr.splitlines()[-1].replace(str(ref.args[0]), "tessera")
    done = subprocess.run([exe, "quilt", "unstitch", "--input", tmp_path / "x.npy", "--output",
                           tmp_path / "p.npy", "--window", "8", "--step", "4"])
    assert done.returncode == 0 and np.load(tmp_path / "p.npy").shape == (9, 1, 8, 8)
