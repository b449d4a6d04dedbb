#!/usr/bin/env python3
"""Issue 32's Python targets, each against its peer measured in the same run on this machine.

1. unstitch + stitch of (8, 3, 1024, 1024) float32, window 128, step 64, border 8 (weight 0.1),
   called from Python: tessera.NCYXQuilt against qlty's NCYXQuilt (target: >= 5x faster).
2. The crop of a 1000 x 256 x 256 float32 `.pt` from Python: `tessera.run` of a crop job
   against the cropping guide's algorithm written plainly in numpy (centroid, pixels sorted by
   distance, the radius where the running sum reaches the target, the global radius, the
   crops, the retention) (target: >= 15x faster).

Not part of the test suite: it needs torch and qlty (`pip install torch qlty`) beside the
tessera package in one venv. Each figure is the best of `--repeat` runs (default 3); the
outputs are compared so that a fast wrong answer cannot pass.

    python scripts/bench-python-peers.py [--repeat 3] [--quick] [--threads N]
"""
import argparse
import os
import tempfile
import time

import numpy as np


def best(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def quilt_case(args):
    import torch
    import qlty.qlty2D
    import tessera

    n = 2 if args.quick else 8
    g = torch.Generator().manual_seed(0)
    data = torch.rand(n, 3, 1024, 1024, generator=g)
    theirs = qlty.qlty2D.NCYXQuilt(1024, 1024, (128, 128), (64, 64), border=(8, 8), border_weight=0.1)
    ours = tessera.NCYXQuilt(1024, 1024, (128, 128), (64, 64), border=(8, 8), border_weight=0.1,
                             threads=args.threads)

    def run_theirs():
        p = theirs.unstitch(data)
        return p, theirs.stitch(p)[0]

    def run_ours():
        p = ours.unstitch(data)
        return p, ours.stitch(p)[0]

    t_theirs, (p_theirs, s_theirs) = best(run_theirs, args.repeat)
    t_ours, (p_ours, s_ours) = best(run_ours, args.repeat)
    assert torch.equal(p_theirs, p_ours), "patches differ from qlty's"
    err = (s_theirs - s_ours).abs().max().item()
    assert err < 1e-5, f"stitched image differs from qlty's by {err}"
    print(f"quilt unstitch+stitch ({n},3,1024,1024) f32, window 128, step 64:")
    print(f"  qlty {qlty.__version__ if hasattr(qlty, '__version__') else ''}: {t_theirs:.3f} s")
    print(f"  tessera: {t_ours:.3f} s  ->  {t_theirs / t_ours:.1f}x qlty (target >= 5x); "
          f"largest difference of the stitched images {err:.1e}")


def reference_crop(patterns, target=0.98, margin=3):
    """The cropping guide's two passes, plainly in numpy (float64 sums)."""
    n, h, w = patterns.shape
    yy, xx = np.mgrid[:h, :w]
    radii, centres = np.empty(n), np.empty((n, 2))
    for i in range(n):
        p = patterns[i].astype(np.float64)
        total = p.sum()
        cy, cx = (p * yy).sum() / total, (p * xx).sum() / total
        d = np.hypot(yy - cy, xx - cx).ravel()
        order = np.argsort(d, kind="stable")
        running = np.cumsum(p.ravel()[order])
        k = np.searchsorted(running, target * total)
        radii[i], centres[i] = d[order[min(k, d.size - 1)]], (cy, cx)
    radius = int(np.ceil(radii.max())) + margin
    size = min(2 * radius + 1, h, w)
    cropped = np.empty((n, size, size), patterns.dtype)
    retention = np.empty(n)
    for i in range(n):
        y0 = int(np.clip(round(centres[i, 0]) - size // 2, 0, h - size))
        x0 = int(np.clip(round(centres[i, 1]) - size // 2, 0, w - size))
        cropped[i] = patterns[i, y0:y0 + size, x0:x0 + size]
        retention[i] = cropped[i].sum(dtype=np.float64) / patterns[i].sum(dtype=np.float64)
    return cropped, radius, retention


def crop_case(args):
    import torch
    import tessera

    n = 100 if args.quick else 1000
    yy, xx = np.mgrid[:256, :256]
    rng = np.random.default_rng(1)
    pats = np.empty((n, 256, 256), np.float32)
    for i in range(n):
        cy, cx = 128 + rng.normal(0, 3), 128 + rng.normal(0, 3)
        r = np.hypot(yy - cy, xx - cx)
        pats[i] = 1000 * np.exp(-((r / 6.0) ** 2)) + rng.poisson(0.002, (256, 256))
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "patterns.pt")
        torch.save(torch.from_numpy(pats)[:, None], src)  # (N, 1, H, W), as the guide keeps them

        def run_reference():
            data = torch.load(src).numpy()[:, 0]
            return reference_crop(data)

        k = [0]

        def run_ours():
            k[0] += 1
            out = os.path.join(tmp, f"cropped{k[0]}.pt")
            tessera.run({"crop": {"input": src, "output": out, "no_visualization": True}},
                        threads=args.threads)
            return torch.load(out, weights_only=True)

        t_ref, (ref_cropped, ref_radius, ref_ret) = best(run_reference, args.repeat)
        t_ours, ours = best(run_ours, args.repeat)
    print(f"crop of a {n} x 256 x 256 f32 .pt:")
    print(f"  numpy reference: {t_ref:.3f} s (radius {ref_radius}, crop {ref_cropped.shape[1:]}, "
          f"mean retention {ref_ret.mean():.4f})")
    print(f"  tessera.run: {t_ours:.3f} s (crop {tuple(ours.shape[2:])})  ->  "
          f"{t_ref / t_ours:.1f}x the reference (target >= 15x)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smaller cases, to try the script")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", choices=["quilt", "crop"])
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs; best of {args.repeat}")
    if args.only in (None, "quilt"):
        quilt_case(args)
    if args.only in (None, "crop"):
        crop_case(args)


if __name__ == "__main__":
    main()
