"""HDR on brackets in memory: the Debevec response calibration (``calibrate``, the numbers of
``tessera hdr calibrate``), the radiance merge with a response curve and Mertens fusion
(``merge``, the bytes of ``tessera hdr merge``). A response file the CLI wrote (``.npz``) is
read by ``read_response`` or passed to ``merge`` by its path.
"""

import os

import numpy as np

from . import _tessera
from ._arrays import is_tensor, like
from ._errors import ParameterError


def load(path):
    """One exposure decoded as ``tessera hdr`` decodes it (JPEG, PNG, TIFF): (Y, X, 3) for RGB,
    (Y, X) for grey, uint8 or uint16 (an alpha channel dropped)."""
    planes = _tessera.hdr_load(os.fspath(path))
    return planes[0] if planes.shape[0] == 1 else np.ascontiguousarray(planes.transpose(1, 2, 0))


def read_response(path):
    """A response file of ``tessera hdr calibrate`` (``.npz``) as (256, C) float64: g(z), the
    log exposure of value z, per channel."""
    return _tessera.hdr_read_response(os.fspath(path))


def _planes(exposures, name="exposures"):
    """Exposures (a sequence of (Y, X[, C]) images or one (K, Y, X[, C]) array) as (K, C, Y, X)
    planes, and whether they were torch tensors."""
    tensor = is_tensor(exposures) or (
        isinstance(exposures, (list, tuple)) and len(exposures) > 0 and is_tensor(exposures[0]))
    if is_tensor(exposures):
        exposures = exposures.detach().cpu().numpy()
    if isinstance(exposures, np.ndarray):
        exposures = list(exposures)
    if not isinstance(exposures, (list, tuple)) or len(exposures) == 0:
        raise ParameterError(f"{name}: expected a sequence of images, got none")
    images = [np.asarray(e.detach().cpu().numpy() if is_tensor(e) else e) for e in exposures]
    first = images[0]
    for i, im in enumerate(images):
        if im.shape != first.shape or im.dtype != first.dtype:
            raise ParameterError(f"{name}: exposure {i} is {im.dtype} {im.shape}, exposure 0 is "
                                 f"{first.dtype} {first.shape}; a bracket's exposures must agree")
    if first.ndim == 2:
        images = [im[..., None] for im in images]
    elif first.ndim != 3 or first.shape[2] not in (1, 3):
        raise ParameterError(f"{name}: an exposure of shape {first.shape}; expected (Y, X) or "
                             "(Y, X, C) with C = 1 or 3")
    planes = np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))
    return planes, tensor


def merge(exposures, exposure_times=None, response=None, *, method="debevec",
          weight="triangle", threads=None, return_unusable=False):
    """Merge one bracket, as ``tessera hdr merge`` merges each bracket of an archive.

    Args:
        exposures: the bracket's images, each (Y, X, 3) or (Y, X), uint8 for Debevec (uint8 or
            uint16 for Mertens), as a list or one (K, Y, X[, 3]) array; numpy or CPU torch.
        exposure_times: seconds, one per exposure (Debevec); any order: the exposures are
            taken shortest first, as the CLI does.
        response: (256, C) float64 from ``read_response``, or the path of the ``.npz`` that
            ``tessera hdr calibrate`` wrote (Debevec).
        method: "debevec" (radiance, needs times and response) or "mertens" (fusion).
        weight: "triangle" or "sine", the Debevec weighting of pixel values.
        threads: this call's thread pool width (default: the CLI's).
        return_unusable: also return how many (pixel, channel) values had no usable exposure.

    Returns:
        (Y, X, C) float32 (radiance, or Mertens' display values), as numpy or torch like the
        input; with return_unusable, (image, count).
    """
    planes, tensor = _planes(exposures)
    if method == "mertens":
        if planes.dtype not in (np.uint8, np.uint16):
            raise TypeError(f"exposures: {planes.dtype}; Mertens fusion takes uint8 or uint16")
        out, unusable = _tessera.hdr_merge_mertens(planes, threads), 0
    elif method == "debevec":
        if planes.dtype != np.uint8:
            raise TypeError(f"exposures: {planes.dtype}; the Debevec merge takes 8-bit images")
        if exposure_times is None or response is None:
            raise ParameterError("the Debevec merge needs exposure_times and response "
                                 "(or method='mertens')")
        times = _seconds(exposure_times, planes.shape[0], "exposure_times")
        order = np.argsort(times, kind="stable")
        if isinstance(response, (str, os.PathLike)):
            response = read_response(response)
        response = np.ascontiguousarray(response, dtype=np.float64)
        out, unusable = _tessera.hdr_merge_debevec(
            np.ascontiguousarray(planes[order]), [float(t) for t in times[order]], response,
            weight, threads)
    else:
        raise ParameterError(f"method: {method!r} is not 'debevec' or 'mertens'")
    out = like(out, tensor)
    return (out, unusable) if return_unusable else out


def calibrate(brackets, exposure_times, *, threads=None, **options):
    """The Debevec & Malik camera response of brackets in memory, as ``tessera hdr calibrate``
    computes it from an archive of the same brackets in the same order.

    Args:
        brackets: a sequence of brackets, each as ``merge`` takes its exposures (8-bit).
        exposure_times: a sequence of the brackets' exposure times in seconds (any order
            within a bracket: each is taken shortest first, as the CLI does).
        threads: this call's thread pool width (default: the CLI's).
        **options: ``tessera hdr calibrate``'s flags, with their CLI defaults when left out:
            samples_per_image (1000), sample_technique ("random" or "histogram"),
            max_processed_groups (10, spread over the brackets), smoothness (50.0),
            weight_type ("triangle" or "sine"), low_clip (5), high_clip (250), seed (0).

    Returns:
        (256, C) float64: g(z), the log exposure of value z, per channel (what ``merge`` takes
        as its response).
    """
    allowed = {"samples_per_image", "sample_technique", "max_processed_groups", "smoothness",
               "weight_type", "low_clip", "high_clip", "seed"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ParameterError(f"calibrate: unknown option(s) {', '.join(unknown)} (known: "
                             f"{', '.join(sorted(allowed))})")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    if len(brackets) != len(exposure_times):
        raise ParameterError(f"brackets: {len(brackets)} brackets but {len(exposure_times)} "
                             "lists of exposure times")
    planes, seconds = [], []
    for i, (bracket, times) in enumerate(zip(brackets, exposure_times)):
        p, _ = _planes(bracket, f"brackets[{i}]")
        if p.dtype != np.uint8:
            raise TypeError(f"brackets[{i}]: {p.dtype}; the Debevec calibration takes 8-bit "
                            "images")
        t = _seconds(times, p.shape[0], f"exposure_times[{i}]")
        order = np.argsort(t, kind="stable")
        planes.append(np.ascontiguousarray(p[order]))
        seconds.append([float(x) for x in t[order]])
    return _tessera.hdr_calibrate(planes, seconds, flags, threads)


def _seconds(times, count, name):
    """Exposure times as positive finite float64 seconds, one per exposure."""
    t = np.asarray(times, dtype=np.float64).ravel()
    if t.size != count or not np.all(np.isfinite(t) & (t > 0)):
        raise ParameterError(f"{name}: {t.size} values where {count} positive finite seconds "
                             "are needed, one per exposure")
    return t
