"""Crop diffraction patterns held in memory, as the cropping guide's ``process_dataset`` does.

The patterns go through ``tessera crop`` itself, in this process: they are written to a
scratch ``.npy`` (in ``$TMPDIR``, which may be a RAM disk), the crop job runs on them, and the
cropped array and the results are read back. So the cropped bytes and the results are the
CLI's for the same parameters by construction; the price is one write and one read of the
patterns, small beside the two passes over them.
"""

import json
import os
import shutil
import tempfile

import numpy as np

from ._arrays import like, to_numpy
from ._errors import ParameterError
from .jobs import run


def _inline_side_arrays(results, directory):
    """The per-pattern arrays the results JSON names (``cropped_radii.npy``...) put in place
    of their names, as numpy arrays: the guide's dict holds the values."""
    for part in ("analysis", "validation"):
        for key, value in results.get(part, {}).items():
            if isinstance(value, str) and value.endswith(".npy"):
                results[part][key] = np.load(os.path.join(directory, value))


def crop(patterns, *, target_retention=0.98, min_retention=0.95, margin_pixels=3,
         percentile=100.0, center="centroid", manual_center=None, recenter="each",
         chunk_size=1000, strict=False, save_path=None, visualization=False, threads=None,
         overwrite=False):
    """Crop diffraction patterns so that each keeps ``target_retention`` of its intensity.

    Args:
        patterns: (N, H, W), (N, 1, H, W) or a 4D-STEM scan (Sy, Sx, H, W); a numpy array or a
            CPU torch tensor of any of tessera's dtypes.
        target_retention: fraction of each pattern's intensity the crop must keep.
        min_retention: the lowest acceptable retention of any pattern (validation).
        margin_pixels: pixels added to the global radius.
        percentile: percentile of the per-pattern radii taken as the global radius (100: max).
        center: "centroid", "center" (the geometric centre) or "manual" (with manual_center).
        manual_center: (y, x) for center="manual".
        recenter: "each" (every pattern around its own centre) or "common" (the mean centre).
        chunk_size: patterns per unit of work.
        strict: raise when a pattern keeps less than min_retention.
        save_path: also write the cropped array there (any array address: ``x.pt``,
            ``x.npy``, ``x.zarr``...), with ``<stem>_results.json`` beside it (and
            ``<stem>_visualization.png`` with ``visualization=True``), as the CLI does (a
            second run of the crop, from the scratch copy).
        visualization: draw the plot (only with save_path).
        threads: this process's thread pool width (see ``tessera.run``).
        overwrite: replace save_path and its side files if they exist.

    Returns:
        (cropped, results): the cropped patterns (the input's leading axes kept, (H, W)
        replaced by the crop; the caller's kind, numpy or torch) and the results dict of the
        guide, the per-pattern values as numpy arrays: ``analysis`` (global_radius,
        retention_radii, retention_stats, centers,
        original_shape, cropped_shape, n_patterns, ...), ``validation`` (mean/min/max/std
        retention, passes_min_threshold, passes_target_threshold, n_patterns, retention),
        ``processing_time`` and ``config``.

    Raises:
        ParameterError: bad parameters or patterns (the CLI's message).
        TesseraError: the crop failed (with strict=True: a pattern below min_retention).
    """
    array, tensor = to_numpy(patterns, "patterns")
    if array.ndim not in (3, 4):
        raise ParameterError(
            f"patterns: has {array.ndim} axes {tuple(array.shape)}; expected (N, H, W), "
            "(N, 1, H, W) or a scan (Sy, Sx, H, W)")
    scratch = tempfile.mkdtemp(prefix="tessera-crop-")
    try:
        source = os.path.join(scratch, "patterns.npy")
        np.save(source, array)
        output = os.path.join(scratch, "cropped.npy")
        table = {
            "input": source,
            "output": output,
            "target_retention": float(target_retention),
            "min_retention": float(min_retention),
            "margin_pixels": int(margin_pixels),
            "percentile": float(percentile),
            "center": center,
            "recenter": recenter,
            "chunk_size": int(chunk_size),
            "strict": bool(strict),
            "no_visualization": True,
        }
        if manual_center is not None:
            table["manual_center"] = [float(v) for v in manual_center]
        run({"crop": table}, threads=threads)
        cropped = np.load(output)
        with open(os.path.join(scratch, "cropped_results.json"), encoding="utf-8") as f:
            results = json.load(f)
        _inline_side_arrays(results, scratch)
        if save_path is not None:
            # A second run of the same crop, written where the caller asked (any format).
            saved = dict(table, output=os.fspath(save_path),
                         no_visualization=not visualization)
            run({"crop": saved}, threads=threads, overwrite=overwrite)
        # The patterns came from memory; the scratch files are gone.
        results["config"]["input"] = None
        results["config"]["output"] = None if save_path is None else os.fspath(save_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return like(cropped, tensor), results
