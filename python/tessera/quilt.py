"""Quilting in memory, with qlty's shapes and meanings: cut (N, C, Y, X) or (N, C, Z, Y, X)
images into overlapping windows for a model, and stitch its per-window outputs back with
border-downweighted averaging. The bytes are those of ``tessera quilt unstitch`` / ``tessera
quilt stitch`` for the same parameters (the same kernels, summed in the same order)."""

import operator

from . import _arrays, _log, _tessera


def _sizes(name, value, ndim, allow_none=False):
    """One size for every axis, or one per axis, as a list of ints."""
    if value is None:
        if allow_none:
            return []
        raise TypeError(f"{name}: required")
    if not isinstance(value, (list, tuple)):
        value = (value,)
    try:
        out = [operator.index(v) for v in value]
    except TypeError:
        raise TypeError(f"{name}: expected an int or a tuple of {ndim} ints, got {value!r}") from None
    if len(out) not in (1, ndim) and not (allow_none and len(out) == 0):
        raise ValueError(f"{name}: expected 1 or {ndim} values, got {len(out)}")
    return out * ndim if len(out) == 1 else out


class _Quilt:
    """What the 2-D and 3-D quilts share; see NCYXQuilt and NCZYXQuilt."""

    _axes = ()

    def __init__(self, spatial, window, step, border=None, border_weight=0.1, blend="border",
                 sigma=0.125, allow_gaps=False, threads=None):
        ndim = len(self._axes)
        self.spatial = [operator.index(d) for d in spatial]
        self.window = _sizes("window", window, ndim)
        self.step = _sizes("step", step, ndim)
        self.border = _sizes("border", border, ndim, allow_none=True)
        self.border_weight = float(border_weight)
        self.blend = str(blend)
        self.sigma = float(sigma)
        self.allow_gaps = bool(allow_gaps)
        self.threads = None if threads is None else operator.index(threads)
        self.nan_values_left_out = 0
        # Checked now, as qlty's constructor does: a bad window or step fails here.
        self._counts = _tessera.window_counts(self.spatial, self.window, self.step,
                                              self.allow_gaps)

    def _geometry(self):
        return (self.window, self.step, self.border, self.border_weight, self.blend, self.sigma,
                self.allow_gaps)

    def get_times(self):
        """Windows per spatial axis, as qlty's ``get_times``: a tuple of ints."""
        return tuple(self._counts)

    def unstitch(self, data, return_positions=False):
        """Cut every window of every image.

        Args:
            data: numpy array or CPU torch tensor of shape (N, C, *spatial), any of tessera's
                types (uint8..uint64, int8..int64, float32, float64); spatial must be the
                quilt's.
            return_positions: also return the (M, 1 + ndim) int64 array of each patch's
                ``[n, (z,) y, x]`` start (``quilt unstitch``'s positions array).

        Returns:
            patches (M, C, *window) in the input's type and kind (numpy or torch), M = N x
            windows per image, image-major then row-major window order; with
            ``return_positions``, ``(patches, positions)``.

        Raises:
            ParameterError: wrong shape, window larger than the image, bad step or border.
            TypeError: an unsupported dtype or object.
        """
        array, tensor = _arrays.to_numpy(data, "data")
        if array.ndim != 2 + len(self._axes) or list(array.shape[2:]) != self.spatial:
            from ._errors import ParameterError

            raise ParameterError(
                f"--input: expected shape (N, C, {', '.join(map(str, self.spatial))}) for this "
                f"quilt, got {tuple(array.shape)}")
        _log.sync_level()
        patches, positions = _tessera.unstitch(array, self._geometry(), self.threads)
        patches = _arrays.like(patches, tensor)
        if return_positions:
            return patches, _arrays.like(positions, tensor)
        return patches

    def stitch(self, patches, variance=None, chunk_rows=None):
        """Stitch per-window values back into images: the weighted mean and the weights.

        Each pixel is the mean of the windows covering it, weighted by ``weights()`` (1 inside,
        ``border_weight`` in the border band by default); NaN patch values are left out (value
        and weight, in every channel) and counted in ``self.nan_values_left_out``.

        Args:
            patches: (M, C, *window) numpy array or CPU torch tensor in unstitch's order; M
                must be a multiple of the windows per image (N = M / that).
            variance: optional per-patch variances, same shape: then the weighted standard
                deviation of the mixture is returned too.
            chunk_rows: the output chunk rows of ``tessera quilt stitch --chunks 1,1,R,...``,
                which fix the summation bands (the last bits of pixels two bands share);
                None gives the CLI's default. Only needed to match a CLI run given --chunks.

        Returns:
            ``(mean, weights)``: mean (N, C, *spatial) float32 (float64 for float64 patches),
            weights (N, *spatial) the per-pixel weight sums (qlty's ``norma``, one per image);
            with ``variance``, ``(mean, weights, std)``. Same kind as the patches.

        Raises:
            ParameterError: a shape that does not match the quilt, float64 values the sums
                cannot hold, bad chunk rows.
        """
        array, tensor = _arrays.to_numpy(patches, "patches")
        var = None
        if variance is not None:
            var, _ = _arrays.to_numpy(variance, "variance")
        rows = None if chunk_rows is None else operator.index(chunk_rows)
        _log.sync_level()
        mean, weights, std, nan = _tessera.stitch(array, var, self.spatial, self._geometry(),
                                                  rows, self.threads)
        self.nan_values_left_out = nan
        out = (_arrays.like(mean, tensor), _arrays.like(weights, tensor))
        if variance is not None:
            out += (_arrays.like(std, tensor),)
        return out

    def border_tensor(self):
        """qlty's border tensor: float32 of the window's shape, 1 inside and 0 in the border
        band (all ones without a border); ``tessera quilt border-mask`` writes the same values
        as uint8."""
        return _tessera.border_mask(self.window, self.border).astype("float32")

    def weights(self):
        """The weight of every pixel of a window when stitching (float64, the window's
        shape): ``border``/``gaussian``/``hann`` blending, never below 1e-8."""
        return _tessera.window_weights(self.spatial, self._geometry())

    def __repr__(self):
        dims = ", ".join(f"{a}={d}" for a, d in zip(self._axes, self.spatial))
        return (f"{type(self).__name__}({dims}, window={tuple(self.window)}, "
                f"step={tuple(self.step)}, border={tuple(self.border) or None}, "
                f"border_weight={self.border_weight}, blend={self.blend!r})")


class NCYXQuilt(_Quilt):
    """Quilt of 2-D images (N, C, Y, X), as qlty's ``NCYXQuilt``.

    Args:
        Y, X: the image size.
        window: window size (int or (y, x)).
        step: step between windows (int or (y, x)); at most the window unless allow_gaps.
        border: border band width downweighted when stitching (int, (y, x), None or 0: none);
            less than half the window.
        border_weight: weight of border-band pixels, in [0, 1] (raised to 1e-8).
        blend: "border" (qlty's), "gaussian" (sigma x window) or "hann".
        sigma: Gaussian sigma as a fraction of the window.
        allow_gaps: accept steps larger than the window.
        threads: threads per call (default: the CLI's, the CPUs this process may use, or
            RAYON_NUM_THREADS); the result does not depend on it.

    Windows per axis of extent D: ``full = (D - W) // S``, then ``full + 2`` windows if
    ``D > full*S + W`` else ``full + 1``; window i starts at ``min(i*S, D - W)``, so the last
    is flush with the far edge: nothing is padded or dropped.
    """

    _axes = ("Y", "X")

    def __init__(self, Y, X, window, step, border=None, border_weight=0.1, blend="border",
                 sigma=0.125, allow_gaps=False, threads=None):
        super().__init__((Y, X), window, step, border, border_weight, blend, sigma, allow_gaps,
                         threads)


class NCZYXQuilt(_Quilt):
    """Quilt of 3-D volumes (N, C, Z, Y, X), as qlty's ``NCZYXQuilt``; arguments as
    NCYXQuilt's, with ``Z, Y, X`` and 3-value windows, steps and borders."""

    _axes = ("Z", "Y", "X")

    def __init__(self, Z, Y, X, window, step, border=None, border_weight=0.1, blend="border",
                 sigma=0.125, allow_gaps=False, threads=None):
        super().__init__((Z, Y, X), window, step, border, border_weight, blend, sigma,
                         allow_gaps, threads)
