"""Bad arguments raise Python exceptions carrying the CLI's message; nothing crashes."""

import numpy as np
import pytest

import tessera
from tessera import ParameterError, TesseraError


@pytest.mark.parametrize("kwargs,start", [
    (dict(window=-3, step=2), "--window: sizes must be non-negative"),
    (dict(window=8, step=-1), "--step: sizes must be non-negative"),
    (dict(window=8, step=4, border=-1), "--border: sizes must be non-negative"),
    (dict(window=50, step=2), "--window: 50 on axis y is larger than the image"),
    (dict(window=8, step=0), "--step:"),
    (dict(window=8, step=9), "--step:"),
    (dict(window=8, step=4, border=4), "--border:"),
])
def test_bad_geometry(kwargs, start):
    with pytest.raises(ParameterError) as e:
        q = tessera.NCYXQuilt(Y=32, X=32, **kwargs)
        q.stitch(q.unstitch(np.zeros((1, 1, 32, 32), np.float32)))
    assert str(e.value).startswith(start), str(e.value)
    assert isinstance(e.value, ValueError) and isinstance(e.value, TesseraError)


def test_bad_weights_name_their_flag():
    q = tessera.NCYXQuilt(16, 16, window=8, step=4, border_weight=2.0)
    with pytest.raises(ParameterError, match="^--border-weight: must be in"):
        q.unstitch(np.zeros((1, 1, 16, 16), np.float32))
    q = tessera.NCYXQuilt(16, 16, window=8, step=4, blend="cosine")
    with pytest.raises(ParameterError, match="^--blend"):
        q.unstitch(np.zeros((1, 1, 16, 16), np.float32))


def test_wrong_shapes_and_types():
    q = tessera.NCYXQuilt(16, 16, window=8, step=4)
    with pytest.raises(ParameterError, match="expected shape"):
        q.unstitch(np.zeros((16, 16), np.float32))
    with pytest.raises(ParameterError, match="expected shape"):
        q.unstitch(np.zeros((1, 1, 16, 15), np.float32))
    with pytest.raises(TypeError, match="dtype float16"):
        q.unstitch(np.zeros((1, 1, 16, 16), np.float16))
    with pytest.raises(TypeError, match="dtype bool"):
        q.unstitch(np.zeros((1, 1, 16, 16), bool))
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        q.unstitch([[1, 2]])
    patches = q.unstitch(np.zeros((1, 1, 16, 16), np.float32))
    with pytest.raises(ParameterError, match="number of patches"):
        q.stitch(patches[:-1])
    with pytest.raises(ParameterError, match="shape"):
        q.stitch(patches[:, :, :4])
    with pytest.raises(ParameterError, match="variance: shape"):
        q.stitch(patches, variance=patches[:, :, :4, :4])
    with pytest.raises(ParameterError, match="^--chunks"):
        q.stitch(patches, chunk_rows=0)
    with pytest.raises(ParameterError, match="^--threads: must be at least 1"):
        tessera.NCYXQuilt(16, 16, window=8, step=4, threads=0).unstitch(
            np.zeros((1, 1, 16, 16), np.float32))


def test_float64_values_the_sums_cannot_hold():
    q = tessera.NCYXQuilt(8, 8, window=4, step=2)
    patches = q.unstitch(np.zeros((1, 1, 8, 8), np.float64))
    patches[2, 0, 1, 1] = 1e308
    with pytest.raises(ParameterError, match="^--input: patch 2 holds"):
        q.stitch(patches)


def test_non_contiguous_and_big_endian_inputs():
    image = np.arange(2 * 1 * 20 * 20, dtype=">f4").reshape(2, 1, 20, 20)
    q = tessera.NCYXQuilt(20, 20, window=6, step=4)
    a = q.unstitch(image)
    b = q.unstitch(np.ascontiguousarray(image.astype("<f4")))
    assert a.tobytes() == b.tobytes()
    strided = np.zeros((2, 1, 20, 40), np.float32)[:, :, :, ::2]
    assert q.unstitch(strided).shape == a.shape
