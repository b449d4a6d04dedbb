"""Small cases checked by hand: window placement, weights and means."""

import numpy as np

import tessera


def test_tiles_without_overlap_are_the_blocks():
    image = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    q = tessera.NCYXQuilt(4, 4, window=2, step=2)
    patches = q.unstitch(image)
    assert q.get_times() == (2, 2)
    assert patches.shape == (4, 1, 2, 2)
    assert patches[1, 0].tolist() == [[2, 3], [6, 7]]
    assert patches[2, 0].tolist() == [[8, 9], [12, 13]]
    mean, weights = q.stitch(patches)
    assert np.array_equal(mean, image)
    assert np.array_equal(weights, np.ones((1, 4, 4), np.float32))


def test_the_last_window_is_flush_with_the_far_edge():
    # D=10, W=4, S=3: full = 2, 2*3+4 = 10 is not < 10, so 3 windows at 0, 3, 6.
    # D=11: 4 windows at 0, 3, 6, 7.
    q = tessera.NCYXQuilt(10, 11, window=4, step=3)
    assert q.get_times() == (3, 4)
    _, positions = q.unstitch(np.zeros((1, 1, 10, 11), np.uint8), return_positions=True)
    assert positions[:4].tolist() == [[0, 0, 0], [0, 0, 3], [0, 0, 6], [0, 0, 7]]
    assert positions[-1].tolist() == [0, 6, 7]


def test_border_weights_and_the_weighted_mean():
    # Window 4 with a border of 1 at weight 0.5: the inner 2x2 weighs 1, the ring 0.5.
    q = tessera.NCYXQuilt(4, 6, window=4, step=2, border=1, border_weight=0.5)
    w = q.weights()
    assert w.tolist() == [[0.5] * 4, [0.5, 1, 1, 0.5], [0.5, 1, 1, 0.5], [0.5] * 4]
    assert q.border_tensor().tolist() == [[0] * 4, [0, 1, 1, 0], [0, 1, 1, 0], [0] * 4]
    # Two windows (x at 0 and 2) with constant values 1 and 4: at column 2 (row 1) the first
    # window's inner pixel (w=1) meets the second's border pixel (w=0.5): (1*1 + 0.5*4)/1.5 = 2.
    patches = np.stack([np.full((1, 4, 4), 1, np.float64), np.full((1, 4, 4), 4, np.float64)])
    mean, weights = q.stitch(patches)
    assert mean.dtype == np.float64
    assert mean[0, 0, 1, 2] == 2.0
    assert weights[0, 1, 2] == 1.5
    assert mean[0, 0, 1, 0] == 1.0 and mean[0, 0, 1, 5] == 4.0


def test_a_pixel_only_nan_covered_is_nan_and_nan_does_not_spread():
    q = tessera.NCYXQuilt(2, 4, window=2, step=2)
    patches = np.ones((2, 1, 2, 2), np.float32)
    patches[0, 0, 0, 0] = np.nan
    mean, weights = q.stitch(patches)
    assert np.isnan(mean[0, 0, 0, 0]) and weights[0, 0, 0] == 0
    assert np.count_nonzero(np.isnan(mean)) == 1
    assert q.nan_values_left_out == 1


def test_warnings_reach_python_logging(caplog):
    q = tessera.NCYXQuilt(2, 4, window=2, step=2)
    patches = np.ones((2, 1, 2, 2), np.float32)
    patches[1, 0, 1, 1] = np.nan
    with caplog.at_level("WARNING", logger="tessera"):
        q.stitch(patches)
    assert any(r.name == "tessera" and r.levelname == "WARNING"
               and "1 NaN patch values were left out" in r.getMessage() for r in caplog.records)
