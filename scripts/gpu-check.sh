#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU and no Rust (the lent device machine). It runs
# what was built here and carried there in .carry/ (git-ignored):
#
#   cargo build --release --no-default-features --features cuda
#   cargo test --release --no-default-features --features cuda --test gpu --no-run
#   mkdir -p .carry && strip -o .carry/tessera target/release/tessera
#   strip -o .carry/gpu-tests "$(ls -t target/release/deps/gpu-* | grep -v '\.d$' | head -1)"
#
# then, there: scripts/gpu-check.sh. Steps: device and NVRTC info; every kernel compiled; the
# GPU tests (GPU == CPU bytes for quilt unstitch/stitch, the Debevec merge and pyramids, resume
# across devices); the kernel benchmarks (fraction of a device-to-device copy, bits = CPU);
# quilt stitch, hdr merge, pyramids and crop end to end on GPU and CPU (input and output in
# /dev/shm). The last thing
# printed is one table. The carried binary has no MPI: the 2-rank GPU tests run on a cluster
# build (cargo build --release) where there is MPI.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${TESSERA_BIN:-$PWD/.carry/tessera}
TESTS=${TESSERA_GPU_TESTS:-$PWD/.carry/gpu-tests}
# Results in a fresh folder under $OUT (the device machine's, or target/gpu-check), scratch
# data in a fresh folder in /dev/shm removed at the end: nothing that was there is touched.
mkdir -p "${OUT:=$PWD/target/gpu-check}"
OUT=$(mktemp -d "$OUT/run.XXXXXX")
WORK=$(mktemp -d /dev/shm/tessera-gpu-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
[ -x "$BIN" ] || { echo "gpu-check: no binary at $BIN (see the header of this script)"; exit 2; }

# The driver (libcuda.so.1) where ldconfig does not know it (containers mount it elsewhere).
if ! ldconfig -p 2>/dev/null | grep -q libcuda.so.1; then
  for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64 \
           /usr/local/cuda/compat /usr/local/cuda/lib64/stubs; do
    if [ -e "$d/libcuda.so.1" ]; then export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; break; fi
  done
fi
# NVRTC: the CUDA toolkit's, else a pip wheel's (it must not be newer than the driver). The
# folder also goes to the tests (TESSERA_NVRTC_DIR), whose NVRTC compile check needs it.
for d in $(ldconfig -p 2>/dev/null | awk '/libnvrtc.so.13 /{print $NF}' | xargs -r -n1 dirname) \
         /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
         $(python3 -c 'import site; print(" ".join(p + "/nvidia/cu13/lib" for p in site.getsitepackages()))' 2>/dev/null); do
  if [ -e "$d/libnvrtc.so.13" ]; then
    export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}" TESSERA_NVRTC_DIR="$d"; break
  fi
done

status=0
START=$SECONDS
# GPU_CHECK_BUDGET_S: steps that would start after this many seconds are skipped (the lent
# machine's time is short; the table is printed from whatever ran). STEP_LIMIT_S caps one step.
BUDGET=${GPU_CHECK_BUDGET_S:-100000}
STEP_LIMIT=${GPU_CHECK_STEP_LIMIT_S:-300}
step() { echo; echo "== $* == (at $((SECONDS - START)) s)"; }
over() { [ $((SECONDS - START)) -ge "$BUDGET" ] && { echo "skipped: past GPU_CHECK_BUDGET_S=$BUDGET"; return 0; }; return 1; }
# run [--to FILE] COMMAND...: runs it under the step limit, its output to the log (and FILE).
# Both are appended to: $OUT is a fresh folder.
run() {
  local to=/dev/null
  if [ "$1" = --to ]; then to=$2; shift 2; fi
  if over; then status=1; return 0; fi
  local t=$SECONDS
  timeout -k 5 "$STEP_LIMIT" "$@" 2>&1 | tee -a "$OUT/log.txt" "$to"; local rc=${PIPESTATUS[0]}
  echo "($((SECONDS - t)) s: $1 ${2:-} ${3:-})" >> "$OUT/times.txt"
  [ "$rc" = 0 ] || { echo "FAILED ($rc): $*"; status=1; }; return 0
}

# Same bytes: two output trees compared file by file (only where both were written).
same() {
  local what=$1 a=$2 b=$3 pattern=$4
  if [ ! -e "$a" ] || [ ! -e "$b" ]; then echo "$what: not compared (an output is missing)"; status=1; return 0; fi
  cmp -s <(cd "$a" && find . -type f -name "$pattern" -exec md5sum {} + | sort) \
         <(cd "$b" && find . -type f -name "$pattern" -exec md5sum {} + | sort) \
    && echo "$what: GPU and CPU outputs are identical" | tee -a "$OUT/same.txt" \
    || { echo "$what: GPU and CPU outputs DIFFER" | tee -a "$OUT/same.txt"; status=1; }
}

step "device"
run nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-} TESSERA_NVRTC_DIR=${TESSERA_NVRTC_DIR:-}; $(nproc) cores"
step "tessera gpu info"; run "$BIN" gpu info
step "compile";         run "$BIN" gpu compile

# Correctness first: the GPU tests (small random inputs, every type and method), then each
# kernel bench (which checks its bits against the CPU), then the operations end to end.
if [ -x "$TESTS" ]; then
  step "GPU tests";     TESSERA_BIN="$BIN" TESSERA_GPU_SKIP_MPI=1 TESSERA_REQUIRE_GPU=1 run "$TESTS" --test-threads=1 --nocapture
else
  echo "gpu-check: no GPU test binary at $TESTS: tests skipped"; status=1
fi
step "bench quilt (kernels)"; run --to "$OUT/bench-quilt.md" "$BIN" bench quilt --device cuda --repeat 10
step "bench hdr (kernel)";    run --to "$OUT/bench-hdr.md" "$BIN" bench hdr --device cuda --size 2048 --exposures 5 --repeat 10
# Pyramids: the kernels on a resident 1024^3 f32 volume (mean: the torch avg_pool3d yardstick;
# the others at 256^3, whose CPU bit check is slow at 1024^3), each followed by the bench's end
# to end run on the GPU. The 1024^3 Zarr the bench writes is the end-to-end input below.
step "bench pyramid (kernels, GPU)"
run --to "$OUT/bench-pyramid.md" "$BIN" bench pyramid --device cuda --size 1024 --chunk 128 --method mean --repeat 3 \
    --dir "$WORK/pyr"
for method in mode gaussian laplacian; do
  run --to "$OUT/bench-pyramid.md" "$BIN" bench pyramid --device cuda --size 256 --chunk 64 \
      --method "$method" --repeat 3 --dir "$WORK/pyr-small"
done
# Crop: 4000 synthetic 256x256 f32 Airy patterns (1 GiB, the CuPy comparison's size).
step "bench crop (kernel, GPU)"
run --to "$OUT/bench-crop.md" "$BIN" bench crop --device cuda --patterns 4000 --size 256 --repeat 3 --dir "$WORK/crop-bench"

# End to end, input and output in /dev/shm, on the GPU and on every core of this machine.
# Quilt stitch of (8,3,1024,1024) f32, window 128 step 64 (338 MiB of patches), raw Zarr.
step "stitch end to end"
python3 - "$WORK/image.npy" <<'PY'
import sys, numpy as np
rng = np.random.default_rng(1)
np.save(sys.argv[1], rng.random((8, 3, 1024, 1024), dtype=np.float32))
PY
run "$BIN" quilt unstitch --input "$WORK/image.npy" --output "$WORK/p.zarr" --window 128,128 \
    --step 64,64 --codec none --device cpu -q
for device in cuda cpu; do
  run "$BIN" quilt stitch --input "$WORK/p.zarr" --output "$WORK/stitch-$device.zarr" \
      --codec none --memory-limit 16G --device "$device" --report "$OUT/stitch-$device.json" -q
done
same stitch "$WORK/stitch-cuda.zarr" "$WORK/stitch-cpu.zarr" '*'
step "hdr merge end to end"
run "$BIN" hdr synthetic --output "$WORK/sky" --brackets 8 --size 2048 --exposures 5
run "$BIN" hdr calibrate --input "$WORK/sky" --recursive --response "$WORK/response.npz"
for device in cuda cpu; do
  run "$BIN" hdr merge --input "$WORK/sky" --recursive --response "$WORK/response.npz" \
      --output "$WORK/merge-$device" --format npy --device "$device" --report "$OUT/merge-$device.json" -q
done
same "hdr merge" "$WORK/merge-cuda" "$WORK/merge-cpu" '*.npy'
rm -rf "$WORK/sky" "$WORK/merge-cuda" "$WORK/merge-cpu" "$WORK/p.zarr" "$WORK"/stitch-*.zarr "$WORK/image.npy"
step "crop end to end"
run "$BIN" crop --test-mode --test-patterns 4000 --test-size 256 --output "$WORK/crop-seed.npy" \
    --device cpu --no-visualization -q
for device in cuda cpu; do
  mkdir -p "$WORK/crop-$device"
  run "$BIN" crop --input "$WORK/crop-seed_test_input.npy" --output "$WORK/crop-$device/c.npy" \
      --device "$device" --no-visualization --report "$OUT/crop-$device.json" -q
done
same crop "$WORK/crop-cuda" "$WORK/crop-cpu" '*.npy'
# `tessera pyramid` of the bench's 1024^3 Zarr (4 GiB).
step "pyramid end to end"
for method in mean laplacian; do
  for device in cuda cpu; do
    run "$BIN" pyramid --input "$WORK/pyr/pyramid-input-1024.zarr" --output "$WORK/$device/p-$method.zarr" \
        --method "$method" --chunks 128,128,128 --codec none --device "$device" \
        --report "$OUT/pyramid-$method-$device.json" -q
  done
  same "pyramid $method" "$WORK/cuda/p-$method.zarr" "$WORK/cpu/p-$method.zarr" '*'
  rm -rf "$WORK/cuda/p-$method.zarr" "$WORK/cpu/p-$method.zarr"
done

# The CPU kernels on every core, for the table's GPU / CPU column.
step "bench quilt (CPU, every core)"; run --to "$OUT/bench-quilt-cpu.md" "$BIN" bench quilt --repeat 3
step "bench hdr (CPU, every core)";   run --to "$OUT/bench-hdr-cpu.md" "$BIN" bench hdr --size 2048 --exposures 5 --repeat 5

step "table"
[ -e "$OUT/same.txt" ] && cat "$OUT/same.txt"
python3 - "$OUT" <<'PY' | tee "$OUT/table.md"
import json, sys, os, re
out = sys.argv[1]
print("| what | GPU | CPU | GPU / CPU | notes |")
print("|---|---|---|---|---|")
def rows(md):
    path = os.path.join(out, md)
    if not os.path.exists(path):
        return []
    return [[c.strip() for c in l.strip().strip("|").split("|")] for l in open(path) if l.startswith("|")]
# CPU kernel seconds by (kernel, case prefix).
cpu = {}
for c in rows("bench-quilt-cpu.md"):
    if len(c) == 7 and c[0][:2] in ("2d", "3d"):
        cpu[("unstitch", c[0][:2])] = float(c[3])
        cpu[("stitch", c[0][:2])] = float(c[5])
for c in rows("bench-hdr-cpu.md"):
    if len(c) == 4 and c[0] == "debevec":
        cpu[("debevec", "")] = float(c[2])
for md in ("bench-quilt.md", "bench-hdr.md", "bench-pyramid.md", "bench-crop.md"):
    for c in rows(md):
        if len(c) == 7 and re.match(r"^(unstitch|stitch|debevec|mean|mode|gaussian|laplacian|crop) ", c[0]):
            kind = c[0].split()[0]
            case = c[0].split()[1][:2] if kind in ("unstitch", "stitch") else ""
            g = float(c[3]) / 1e3
            k = cpu.get((kind, case))
            vs = f"{k:.4f} s | {g / k:.3f}" if k else " | "
            print(f"| kernel {c[0]} | {g:.5f} s | {vs} | {c[4]} of a d2d copy of {c[1]} MiB ({c[5]} GB/s); bits = CPU: {c[6]} |")
def load(name):
    p = os.path.join(out, name)
    return json.load(open(p)) if os.path.exists(p) else None
for op, unit in (("stitch", "patches"), ("merge", "brackets"), ("pyramid-mean", "base level"),
                 ("pyramid-laplacian", "base level"), ("crop", "patterns")):
    g, c = load(f"{op}-cuda.json"), load(f"{op}-cpu.json")
    if not g or not c:
        print(f"| {op} end to end | missing | missing | | |")
        continue
    rg, rc = g["runs"][0], c["runs"][0]
    gb = rg["bytes_read"] / 1e9
    dev = rg["per_rank"][0].get("device", {})
    ph = rg["per_rank"][0]["phases"]
    notes = (f"{gb / rg['seconds']:.1f} GB/s of {unit} read on the GPU; device: h2d {dev.get('h2d_seconds', 0):.3f} s "
             f"({dev.get('h2d_bytes', 0) / 1e9:.2f} GB), kernel {dev.get('kernel_seconds', 0):.3f} s, d2h {dev.get('d2h_seconds', 0):.3f} s, "
             f"compile {dev.get('compile_seconds', 0):.2f} s; host: read {ph.get('read', 0):.2f} s, compute {ph['compute']:.2f} s, write {ph['write']:.2f} s")
    print(f"| {op} end to end | {rg['seconds']:.2f} s | {rc['seconds']:.2f} s | {rg['seconds'] / rc['seconds']:.2f} | {notes} |")
PY
echo
[ "$status" = 0 ] && echo "gpu-check: all passed" || echo "gpu-check: FAILURES above"
exit "$status"
