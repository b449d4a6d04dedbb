"""tessera.crop on patterns in memory, against `tessera crop` on the same patterns."""

import json

import numpy as np
import pytest

import tessera
from tessera import ParameterError


def _patterns(n=9, size=40, channel_axis=True):
    yy, xx = np.mgrid[:size, :size]
    out = []
    for i in range(n):
        cy, cx = size / 2 + (i % 3) - 1, size / 2 + (i % 4) * 0.5 - 0.75
        r = np.hypot(yy - cy, xx - cx)
        out.append(1000.0 * np.exp(-((r / (2.0 + 0.5 * (i % 2))) ** 2)) + (i % 3))
    a = np.array(out, np.float32)
    return a[:, None] if channel_axis else a


def test_crop_gives_the_cli_bytes_and_the_guide_results(tmp_path, cli):
    p = _patterns()
    np.save(tmp_path / "p.npy", p)
    cli("crop", "--input", tmp_path / "p.npy", "--output", tmp_path / "c.npy",
        "--target-retention", "0.97", "--no-visualization")
    cropped, results = tessera.crop(p, target_retention=0.97)
    want = np.load(tmp_path / "c.npy")
    assert cropped.dtype == want.dtype and cropped.shape == want.shape
    assert cropped.tobytes() == want.tobytes()
    assert cropped.shape[:2] == (9, 1)  # (N, 1, h, w) kept
    cli_results = json.loads((tmp_path / "c_results.json").read_text())
    for part in ("analysis", "validation"):
        assert set(results[part]) == set(cli_results[part])
        for key, value in cli_results[part].items():
            if isinstance(value, str) and value.endswith(".npy"):
                # The per-pattern arrays in place of the side files' names.
                side = np.load(tmp_path / value)
                assert results[part][key].tobytes() == side.tobytes(), key
            else:
                assert results[part][key] == value, key
    assert results["analysis"]["global_radius"] == cli_results["analysis"]["global_radius"]
    assert results["config"]["input"] is None and results["config"]["target_retention"] == 0.97
    assert 0.97 <= results["validation"]["min_retention"] <= 1.0


def test_crop_saves_where_asked_with_the_side_files(tmp_path):
    p = _patterns(channel_axis=False)
    cropped, results = tessera.crop(p, save_path=tmp_path / "out.npy", visualization=True)
    assert np.load(tmp_path / "out.npy").tobytes() == cropped.tobytes()
    assert (tmp_path / "out_results.json").is_file()
    assert (tmp_path / "out_visualization.png").is_file()
    assert results["config"]["output"] == str(tmp_path / "out.npy")
    with pytest.raises(tessera.TesseraError, match="exists"):
        tessera.crop(p, save_path=tmp_path / "out.npy")
    tessera.crop(p, save_path=tmp_path / "out.npy", overwrite=True)


def test_a_torch_tensor_comes_back_as_one():
    torch = pytest.importorskip("torch")
    p = torch.from_numpy(_patterns())
    cropped, _ = tessera.crop(p)
    assert isinstance(cropped, torch.Tensor) and cropped.shape[:2] == (9, 1)


@pytest.mark.parametrize("kwargs, message", [
    ({"target_retention": 1.5}, "target"),
    ({"center": "middle"}, "center"),
    ({"margin_pixels": -1}, "margin"),
])
def test_bad_parameters_raise(kwargs, message):
    with pytest.raises((ParameterError, ValueError, OverflowError), match=message):
        tessera.crop(_patterns(), **kwargs)


def test_bad_patterns_raise():
    with pytest.raises(ParameterError, match="2 axes"):
        tessera.crop(np.zeros((4, 4), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        tessera.crop(np.zeros((2, 8, 8), np.complex64))
