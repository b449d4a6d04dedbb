"""The quilt objects give the bytes of `tessera quilt unstitch/stitch/border-mask` for the
same parameters (the CLI run on .npy files)."""

import numpy as np
import pytest

import tessera


def _flags(window, step, border, extra=()):
    j = lambda v: ",".join(map(str, v))
    out = ["--window", j(window), "--step", j(step)]
    if border:
        out += ["--border", j(border)]
    return out + list(extra)


CASES = [
    # (image shape, dtype, window, step, border, border_weight, blend)
    ((2, 3, 37, 29), "float32", (8, 8), (5, 5), (2, 2), 0.1, "border"),
    ((1, 1, 300, 20), "float32", (16, 10), (7, 4), (3, 2), 0.25, "border"),  # several bands
    ((2, 2, 12, 17, 15), "float64", (6, 6, 5), (4, 3, 3), (1, 1, 1), 0.1, "gaussian"),
    ((1, 2, 21, 23), "int16", (9, 9), (6, 4), (0, 0), 0.1, "hann"),
    ((3, 1, 16, 16), "uint8", (8, 8), (8, 8), (2, 2), 0.0, "border"),
]


@pytest.mark.parametrize("shape,dtype,window,step,border,bw,blend", CASES)
def test_unstitch_and_stitch_are_the_cli_bytes(tmp_path, cli, shape, dtype, window, step, border,
                                              bw, blend):
    rng = np.random.default_rng(7)
    if dtype.startswith("float"):
        image = (rng.standard_normal(shape) * 3).astype(dtype)
    else:
        image = rng.integers(0, 100, size=shape).astype(dtype)
    np.save(tmp_path / "x.npy", image)
    quilt_class = tessera.NCYXQuilt if len(shape) == 4 else tessera.NCZYXQuilt
    q = quilt_class(*shape[2:], window=window, step=step, border=border, border_weight=bw,
                    blend=blend)
    patches, positions = q.unstitch(image, return_positions=True)
    geometry = _flags(window, step, border, ["--border-weight", bw, "--blend", blend])
    cli("quilt", "unstitch", "--input", tmp_path / "x.npy", "--output", tmp_path / "p.npy",
        *geometry)
    expected = np.load(tmp_path / "p.npy")
    assert patches.dtype == expected.dtype and patches.shape == expected.shape
    assert patches.tobytes() == expected.tobytes()
    assert positions.tobytes() == np.load(tmp_path / "p_positions.npy").tobytes()

    # A model's output: the patches changed per window, so that overlaps disagree.
    model = (patches * 1.5 + np.arange(patches.shape[0]).reshape(-1, *[1] * (patches.ndim - 1)))
    model = model.astype(patches.dtype)
    np.save(tmp_path / "model.npy", model)
    mean, weights = q.stitch(model)
    cli("quilt", "stitch", "--input", tmp_path / "model.npy", "--output", tmp_path / "m.npy",
        "--weights", tmp_path / "w.npy", "--shape", ",".join(map(str, shape)), *geometry)
    for got, path in [(mean, "m.npy"), (weights, "w.npy")]:
        want = np.load(tmp_path / path)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes(), path


def test_stitch_with_variance_nan_and_chunk_rows_is_the_cli_bytes(tmp_path, cli):
    rng = np.random.default_rng(3)
    shape = (2, 2, 40, 33)
    q = tessera.NCYXQuilt(40, 33, window=(10, 9), step=(4, 5), border=2, border_weight=0.3)
    patches = q.unstitch(rng.standard_normal(shape).astype("float32"))
    patches[3, 1, 2, 2] = np.nan
    variance = rng.random(patches.shape).astype("float32")
    np.save(tmp_path / "p.npy", patches)
    np.save(tmp_path / "v.npy", variance)
    mean, weights, std = q.stitch(patches, variance=variance, chunk_rows=12)
    assert q.nan_values_left_out == 2
    cli("quilt", "stitch", "--input", tmp_path / "p.npy", "--variance", tmp_path / "v.npy",
        "--std", tmp_path / "s.npy", "--output", tmp_path / "m.npy", "--weights",
        tmp_path / "w.npy", "--shape", "2,2,40,33", "--chunks", "1,1,12,33",
        *_flags((10, 9), (4, 5), (2, 2), ["--border-weight", "0.3"]))
    for got, path in [(mean, "m.npy"), (weights, "w.npy"), (std, "s.npy")]:
        assert got.tobytes() == np.load(tmp_path / path).tobytes(), path


def test_border_tensor_is_the_cli_border_mask(tmp_path, cli):
    q = tessera.NCZYXQuilt(20, 20, 20, window=(8, 6, 10), step=4, border=(1, 2, 3))
    cli("quilt", "border-mask", "--output", tmp_path / "b.npy", "--window", "8,6,10",
        "--border", "1,2,3")
    mask = np.load(tmp_path / "b.npy")
    assert q.border_tensor().dtype == np.float32
    assert np.array_equal(q.border_tensor().astype(np.uint8), mask)


def test_results_do_not_depend_on_threads():
    rng = np.random.default_rng(1)
    image = rng.standard_normal((1, 2, 70, 50)).astype("float32")
    runs = []
    for threads in (1, 2, 3):
        q = tessera.NCYXQuilt(70, 50, window=12, step=5, border=2, threads=threads)
        patches = q.unstitch(image)
        runs.append(q.stitch(patches * 2)[0].tobytes())
    assert runs[0] == runs[1] == runs[2]
