#!/usr/bin/env python3
"""The cost model of docs/scaling.md: predicted parallel efficiency of tessera's operations at
64, 512 and 4096 ranks, from per-rank rates measured on the development machine and the way
each operation splits, synchronises and exchanges. Standard library only.

    python3 docs/scaling_model.py            # the tables in docs/scaling.md
    python3 docs/scaling_model.py --cv 0.02  # another unit-time jitter

Every number below is either measured (and says where) or an assumption about the cluster
(and says so); change them to match a site.
"""

import argparse
import math
from statistics import NormalDist

GiB = 1024**3
MiB = 1024**2

# ---- Measured here (2-core VM, one rank with 2 rayon threads, page cache warm) ----
# README "Scaling" table, 1-rank rows (run seconds, bytes from the run reports):
UNSTITCH_RATE = 112.5 * MiB / 0.182   # patch bytes written per second per rank
PYRAMID_RATE = 64 * MiB / 0.204       # level-0 bytes per second per rank (mean, 4 levels)
CROP_PASS1 = 0.08 / (250 * MiB)       # seconds per input byte, analysis (issue 5 note)
CROP_PASS2 = 0.198 / (250 * MiB)      # seconds per input byte, crop + write (scaling table)
HDR_BRACKET_512 = 0.188 / 8           # seconds per 5 x 512x512 RGB bracket, decode..write
# quilt stitch end to end (read the Zarr patches of (8,1,1024,1024) w128 s64, accumulate, write;
# codec none, 2 threads): 112.5 MiB of patches in 0.11-0.15 s (docs/scaling.md).
STITCH_RATE_DEFAULT = 112.5 * MiB / 0.138
# Spread of one round's time (the slowest of compute and write of a unit): quilt unstitch of a
# (1,1,512,512,512) f32 volume, w64 s32, 53 units of 64 MiB, one rank, `tessera -vv` round
# lines: coefficient of variation 0.17 and 0.24 in two runs (docs/scaling.md).
CV_MEASURED = 0.2

# ---- Assumptions about the cluster (change for a site) ----
ALPHA = 2e-6            # s per message hop (InfiniBand HDR/NDR small-message latency)
MD_CREATES = 20_000     # files created per second by the parallel file system (one MDS)
MD_OPENS = 50_000       # small-file opens/reads per second (metadata + first block)
LISTING = 100_000       # directory entries listed per second (readdir, no stat)
FS_CASES = [("unlimited", math.inf), ("100 GB/s", 100e9), ("1 TB/s", 1e12)]
RANKS = [1, 64, 512, 4096]


def expected_max_factor(p, cv):
    """E[max of p unit times] / mean, for normal unit times with coefficient of variation cv
    (Blom's approximation of the largest order statistic)."""
    if p <= 1 or cv == 0:
        return 1.0
    z = NormalDist().inv_cdf((p - 0.375) / (p + 0.25))
    return 1.0 + cv * z


def allreduce(p, nbytes=16, bw=10e9):
    """Seconds for one small all_reduce (recursive doubling): log2 p hops each way."""
    if p <= 1:
        return 0.0
    return 2 * math.ceil(math.log2(p)) * (ALPHA + nbytes / bw)


class Op:
    """One operation as the model sees it: a unit of work and what the run does around it."""

    def __init__(self, name, t_unit, fs_bytes, files, lockstep=False, stages=None, serial=None):
        self.name = name
        self.t_unit = t_unit          # seconds of one unit on one rank (measured rate)
        self.fs_bytes = fs_bytes      # bytes one unit reads + writes on the file system
        self.files = files            # output files one unit creates
        # A collective after every unit (exec's rounds: now only parallel HDF5 output), else
        # ranks run their units independently and wait for each other at the end of a stage.
        self.lockstep = lockstep
        self.stages = stages or (lambda u: [u])
        self.serial = serial or (lambda u, p: 0.0)


def model(op, p, units, fs_bw, cv):
    """Seconds of a p-rank run of `units` units, and where the time above u*t/p goes."""
    t_compute = 0.0
    parts = dict.fromkeys(["granularity", "jitter", "file-system bandwidth", "collectives",
                           "file creates", "setup", "serial"], 0.0)
    for u in op.stages(units):
        active = min(p, u)
        rounds = math.ceil(u / p)
        t_fs = active * op.fs_bytes / fs_bw  # the file system's share per busy rank and unit
        t_each = max(op.t_unit, t_fs)
        if op.lockstep:
            # Every round ends in collectives: a round lasts as long as its slowest rank.
            jitter = expected_max_factor(active, cv) - 1
            coll = rounds * allreduce(p)
        else:
            # One run of `rounds` units per rank, then the end of the stage: the jitter averages
            # out. The non-blocking sums between units overlap the work (one per unit, cheap).
            jitter = (expected_max_factor(active, cv) - 1) / math.sqrt(rounds)
            coll = allreduce(p)
        t_stage = rounds * t_each * (1 + jitter) + coll
        parts["granularity"] += (rounds - u / p) * op.t_unit
        parts["file-system bandwidth"] += rounds * (t_each - op.t_unit)
        parts["jitter"] += rounds * t_each * jitter
        parts["collectives"] += coll
        t_compute += t_stage
    # Creating the output's files is spread over the run; the metadata server caps its rate.
    t_md = units * op.files / MD_CREATES if p > 1 else 0.0
    parts["file creates"] = max(0.0, t_md - t_compute)
    parts["setup"] = p / MD_OPENS if p > 1 else 0.0  # every rank opens the input's metadata
    parts["serial"] = op.serial(units, p)
    total = max(t_compute, t_md) + parts["setup"] + parts["serial"]
    return total, parts


def pyramid_stages(u):
    """A unit holds 2 levels (4^3 chunks of 64^3 f32 = 64 MiB); the next stage starts from the
    last level built, 1/64 of the data, until one unit is left."""
    out = [u]
    while u > 1:
        u = math.ceil(u / 64)
        out.append(u)
    return out


def crop_serial(units, p):
    n = units * 256  # patterns
    gather = 0.0 if p == 1 else n * 32 / 10e9 + 2 * math.ceil(math.log2(p)) * ALPHA
    # The plot and results (measured, 0.015 s) + the per-pattern arrays rank 0 writes (1 GB/s).
    return gather + 0.015 + n * 32 / 1e9


def hdr_serial(units, p):
    files = 5 * units
    listing = files / LISTING  # rank 0 lists the archive
    bcast = 0.0 if p == 1 else files * 60 / 10e9 * math.ceil(math.log2(p))
    return listing + bcast


def operations(stitch_rate):
    unit = 64 * MiB
    frame = 3000 * 3000 * 3
    return [
        # unit: 8 patches of 128^3 f32; reads about 1/8 of what it writes (step w/2)
        Op("quilt unstitch", unit / UNSTITCH_RATE, unit * 9 / 8, files=8),
        # one chunk file per unit instead of one per patch
        Op("quilt unstitch, --patches-per-chunk 8", unit / UNSTITCH_RATE, unit * 9 / 8, files=1),
        # unit: a z-slab; reads the patches that cover it (64 MiB), writes 1/6 of that
        Op("quilt stitch", unit / stitch_rate, unit * (1 + 1 / 6), files=4),
        # unit: 4^3 chunks of 64^3 f32 -> 2 levels per stage; mean. It reads the unit and writes
        # level 0 (the input in the output's chunks) and levels 1-2: 64 + 8 + 1 chunk files.
        Op("pyramid", unit / PYRAMID_RATE, unit * (2 + 9 / 64), files=73,
           stages=pyramid_stages),
        # one shard per unit and level
        Op("pyramid, --shards", unit / PYRAMID_RATE, unit * (2 + 9 / 64), files=3,
           stages=pyramid_stages),
        # pass 2 (exec) per unit of 256 patterns of 256x256 f32; pass 1 below
        Op("crop pass 2 + results", unit * CROP_PASS2, unit * 0.54, files=0.256, serial=crop_serial),
        # analysis: no collective until the end
        Op("crop pass 1", unit * CROP_PASS1, unit, files=0),
        # unit: one bracket of 5 x 3000x3000 RGB; rank 0 lists the archive
        Op("hdr merge", HDR_BRACKET_512 * frame / (512 * 512 * 3), 5 * frame + 4 * frame,
           files=1, serial=hdr_serial),
    ]


def efficiency(op, p, per_rank, fs_bw, cv, weak):
    units_p = per_rank * (p if weak else 64)
    units_1 = per_rank * (1 if weak else 64)
    t1, _ = model(op, 1, units_1, math.inf, cv)
    tp, parts = model(op, p, units_p, fs_bw, cv)
    work = t1 * units_p / units_1  # one rank doing the p-rank job
    return work / (p * tp), tp, parts


def table(ops, per_rank, fs_name, fs_bw, cv, weak):
    print("| operation | s per rank, 1 rank | 64 | 512 | 4096 | where the time above ideal goes at 4096 |")
    print("|---|---|---|---|---|---|")
    for op in ops:
        effs = []
        for p in RANKS[1:]:
            e, tp, parts = efficiency(op, p, per_rank, fs_bw, cv, weak)
            effs.append(e)
        over = {k: v for k, v in parts.items() if v > 0.01 * tp}
        why = ", ".join(f"{k} {100 * v / tp:.0f}%" for k, v in
                        sorted(over.items(), key=lambda kv: -kv[1])[:3]) or "-"
        t1 = model(op, 1, per_rank, math.inf, cv)[0]
        cells = " | ".join(f"{e:.2f}" for e in effs)
        print(f"| {op.name} | {t1:.1f} | {cells} | {why} |")
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cv", type=float, default=CV_MEASURED,
                    help="coefficient of variation of one unit's time (default: measured here)")
    ap.add_argument("--fs", choices=["all", "unlimited", "100 GB/s", "1 TB/s"], default="all",
                    help="which file-system case to print")
    ap.add_argument("--mode", choices=["both", "weak", "strong"], default="both")
    ap.add_argument("--stitch-rate", type=float, default=STITCH_RATE_DEFAULT,
                    help="stitch: patch bytes per second per rank")
    ap.add_argument("--units-per-rank", type=int, default=64,
                    help="weak scaling: units per rank (64 MiB each, one bracket for hdr)")
    args = ap.parse_args()
    ops = operations(args.stitch_rate)
    print(f"(unit-time CV {args.cv}, alpha {ALPHA * 1e6:.0f} us, {MD_CREATES} creates/s, "
          f"{MD_OPENS} opens/s, {LISTING} entries/s listed, {args.units_per_rank} units per rank)")
    print()
    for weak in (True, False):
        if args.mode != "both" and weak != (args.mode == "weak"):
            continue
        for fs_name, fs_bw in FS_CASES:
            if args.fs not in ("all", fs_name):
                continue
            kind = "Weak scaling" if weak else "Strong scaling (the 64-rank job)"
            print(f"#### {kind}, file system: {fs_name}\n")
            table(ops, args.units_per_rank, fs_name, fs_bw, args.cv, weak)


if __name__ == "__main__":
    main()
