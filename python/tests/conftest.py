"""Shared fixtures: the tessera CLI to compare the API with, and a scratch directory.

The CLI is $TESSERA_BIN when set (scripts/test.sh points it at the binary the suite built),
else target/debug/tessera of this checkout, else the `tessera` command on PATH (the
package's own)."""

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _cli():
    if os.environ.get("TESSERA_BIN"):
        return os.environ["TESSERA_BIN"]
    built = ROOT / "target" / "debug" / "tessera"
    if built.exists():
        return str(built)
    found = shutil.which("tessera")
    if found:
        return found
    pytest.skip("no tessera CLI to compare with (set TESSERA_BIN)")


@pytest.fixture
def cli():
    """Runs the tessera CLI with string arguments; returns the completed process (stderr
    text); `check=False` to look at failures."""
    exe = _cli()

    def run(*args, check=True):
        done = subprocess.run([exe, *map(str, args)], capture_output=True, text=True)
        if check and done.returncode != 0:
            raise AssertionError(f"tessera {' '.join(map(str, args))} failed: {done.stderr}")
        return done

    return run
