"""tessera.hdr on brackets in memory, against `tessera hdr merge` on the same files."""

import subprocess

import numpy as np
import pytest
from conftest import _cli

import tessera
from tessera import ParameterError


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Two synthetic brackets and their response, made once (calibration is the slow part)."""
    exe, tmp = _cli(), tmp_path_factory.mktemp("hdr")
    for args in (["synthetic", "--output", tmp / "in", "--brackets", "2", "--exposures", "3",
                  "--size", "40", "--format", "png"],
                 ["calibrate", "--input", tmp / "in", "--response", tmp / "r.npz"]):
        subprocess.run([exe, "hdr", *map(str, args)], check=True, capture_output=True)
    return tmp


def _bracket(directory, stamp):
    """The exposures of one bracket (names: <stamp>_<microseconds>.png), in a scrambled order,
    and their times in seconds."""
    files = sorted(directory.glob(f"{stamp}_*.png"))[::-1]
    times = [int(f.stem.split("_")[1]) * 1e-6 for f in files]
    return [tessera.hdr.load(f) for f in files], times


def test_debevec_merge_is_the_cli_bytes(archive, cli):
    cli("hdr", "merge", "--input", archive / "in", "--response", archive / "r.npz",
        "--output", archive / "out", "--format", "npy", "--overwrite")
    for stamp in ("20240601120000", "20240601120030"):
        exposures, times = _bracket(archive / "in", stamp)
        assert exposures[0].shape == (40, 40, 3) and exposures[0].dtype == np.uint8
        want = np.load(archive / "out" / f"{stamp}.npy")
        got = tessera.hdr.merge(exposures, times, archive / "r.npz")
        assert got.dtype == np.float32 and got.shape == want.shape
        assert got.tobytes() == want.tobytes()
        # The response as an array, the bracket as one (K, Y, X, 3) array: the same.
        again = tessera.hdr.merge(np.stack(exposures), times,
                                  tessera.hdr.read_response(archive / "r.npz"), threads=1)
        assert again.tobytes() == want.tobytes()


def test_mertens_fusion_is_the_cli_bytes(archive, cli):
    cli("hdr", "merge", "--input", archive / "in", "--method", "mertens", "--output",
        archive / "fused", "--format", "npy", "--overwrite")
    exposures, times = _bracket(archive / "in", "20240601120000")
    order = np.argsort(times)
    got = tessera.hdr.merge([exposures[i] for i in order], method="mertens")
    want = np.load(archive / "fused" / "20240601120000.npy")
    assert got.tobytes() == want.tobytes()


def test_bad_brackets_raise(archive):
    exposures, times = _bracket(archive / "in", "20240601120000")
    response = archive / "r.npz"
    with pytest.raises(ParameterError, match="one per exposure"):
        tessera.hdr.merge(exposures, times[:2], response)
    with pytest.raises(ParameterError, match="positive"):
        tessera.hdr.merge(exposures, [0.0, 1.0, 2.0], response)
    with pytest.raises(ParameterError, match="must agree"):
        tessera.hdr.merge([exposures[0], exposures[1][:20]], times[:2], response)
    with pytest.raises(TypeError, match="8-bit"):
        tessera.hdr.merge([e.astype(np.float32) for e in exposures], times, response)
    with pytest.raises(ParameterError, match="needs exposure_times"):
        tessera.hdr.merge(exposures)
    with pytest.raises(ParameterError, match=r"\(256, 3\)"):
        tessera.hdr.merge(exposures, times, np.zeros((255, 3)))
    with pytest.raises(ParameterError, match="triangle or sine"):
        tessera.hdr.merge(exposures, times, response, weight="flat")
    with pytest.raises(tessera.TesseraError, match="nope.npz"):
        tessera.hdr.merge(exposures, times, archive / "nope.npz")


def test_calibration_is_the_cli_response(archive):
    brackets, times = zip(*(_bracket(archive / "in", stamp)
                            for stamp in ("20240601120000", "20240601120030")))
    got = tessera.hdr.calibrate(brackets, times)
    want = tessera.hdr.read_response(archive / "r.npz")
    assert got.shape == (256, 3) and got.tobytes() == want.tobytes()
    other = tessera.hdr.calibrate(brackets, times, samples_per_image=200, seed=3, threads=1)
    assert other.shape == (256, 3) and other.tobytes() != want.tobytes()


def test_bad_calibrations_raise(archive):
    brackets, times = zip(*(_bracket(archive / "in", stamp)
                            for stamp in ("20240601120000", "20240601120030")))
    with pytest.raises(ParameterError, match="low-clip"):
        tessera.hdr.calibrate(brackets, times, low_clip=200, high_clip=100)
    with pytest.raises(ParameterError, match="unknown option"):
        tessera.hdr.calibrate(brackets, times, sample_count=5)
    with pytest.raises(ParameterError, match="sample-technique"):
        tessera.hdr.calibrate(brackets, times, sample_technique="best")
    with pytest.raises(ParameterError, match="2 brackets but 1"):
        tessera.hdr.calibrate(brackets, times[:1])
