#!/usr/bin/env bash
# The Slurm test: every script in slurm/ submitted with sbatch to a real one-node Slurm cluster
# started on this machine (scripts/slurm-local.sh), on small data. Each job's outputs must be
# byte-identical to the same command run as one plain process, its report must list every rank,
# and the daemons are stopped (by PID) however the test ends. Run by scripts/test.sh (CI).
#
#   tests/slurm/run.sh [path/to/tessera]      default: target/debug/tessera
#
# Needs root and Debian's slurm-wlm + munge (scripts/setup.sh --slurm). Without them it fails,
# unless TESSERA_SLURM_OPTIONAL=1, when it says why and skips.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
bin=$(realpath "${1:-target/debug/tessera}")
work=$repo/target/slurm-test

skip_or_fail() {
  if [ "${TESSERA_SLURM_OPTIONAL:-0}" = 1 ]; then echo "slurm test skipped: $*"; exit 0; fi
  echo "slurm test: $*" >&2
  exit 1
}
[ -x "$bin" ] || skip_or_fail "no tessera binary at $bin (cargo build first)"
command -v sbatch >/dev/null || skip_or_fail "sbatch not found (scripts/setup.sh --slurm)"
[ "$(id -u)" -eq 0 ] || skip_or_fail "needs root to run slurmd"

rm -rf "$work"
mkdir -p "$work/data" "$work/ref" "$work/out" "$work/logs"
cluster=$work/cluster
started=$(date +%s)

"$repo/scripts/slurm-local.sh" start "$cluster"
trap '"$repo/scripts/slurm-local.sh" stop "$cluster"' EXIT
export SLURM_CONF=$cluster/slurm.conf
# Open MPI refuses root without these; sbatch passes the environment on to the job.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export TESSERA=$bin

# ---- Inputs and single-process references (no Slurm, no MPI launcher) ----
t() { "$bin" -q "$@" >>"$work/logs/reference.log"; }
t demo --dir "$work/data/demo" >/dev/null
t hdr synthetic --output "$work/data/sky" --brackets 4 --size 64
t crop --test-mode --test-patterns 48 --test-size 64 --output "$work/data/stem.npy" --no-visualization
stem=$work/data/stem_test_input.npy
[ -f "$stem" ] || { echo "slurm test: crop --test-mode wrote no $stem" >&2; exit 1; }
slices=$work/data/demo/slices
volume=$work/data/demo/demo.zarr
nczyx=$work/data/demo/demo-nczyx.npy

t convert --input "$slices" --pattern '(.+)_(\d+)\.tif$' --output "$work/ref/convert.zarr" \
  --chunks 4,128,128 --codec zstd
cat >"$work/data/job.toml" <<EOF
[convert]
input = "demo/slices"
output = "../OUT/run.zarr"
chunks = [8, 64, 64]
codec = "gzip"
EOF
sed "s#OUT#ref#" "$work/data/job.toml" >"$work/data/job-ref.toml"
sed "s#OUT#out#" "$work/data/job.toml" >"$work/data/job-out.toml"
t run "$work/data/job-ref.toml"
t quilt unstitch --input "$nczyx" --output "$work/ref/patches.zarr" --window 32,64,64 \
  --step 16,32,32 --border 4,8,8 --border-weight 0.1 --codec zstd
t quilt stitch --input "$work/ref/patches.zarr" --output "$work/ref/stitched.zarr" --codec zstd \
  --weights "$work/ref/weights.npy"
t pyramid --input "$volume" --output "$work/ref/pyramid.zarr" --method gaussian --factor 2 \
  --codec zstd
t crop --input "$stem" --output "$work/ref/crop.npy" --target-retention 0.98 \
  --min-retention 0.95 --margin-pixels 3 --no-visualization
t hdr calibrate --input "$work/data/sky" --exposure-unit us --round-ts-to 30s --recursive \
  --response "$work/ref/sky.response.npz"
t hdr merge --input "$work/data/sky" --exposure-unit us --round-ts-to 30s --recursive \
  --response "$work/ref/sky.response.npz" --output "$work/ref/sky" --format npy
# Patch paths are relative to the data root: each run has its own root holding a copy of
# the volume, so that both write the same relative paths.
for side in ref out; do
  mkdir -p "$work/$side/ct"
  cp "$stem" "$work/$side/ct/stem.npy"
done
t patches --input "$work/ref/ct/stem.npy" --output "$work/ref/ct/patches" --patch-size 32 \
  --stride 16 --split-name stem

# ---- The same work as Slurm jobs ----
# More tasks than this machine's CPUs need --overcommit; one CPU per task keeps rayon at one
# thread per rank (the scripts set RAYON_NUM_THREADS from --cpus-per-task).
ids=()
names=()
submit() { # name ntasks [sbatch options...] script   (environment via env VAR=... before)
  local name=$1 ntasks=$2
  shift 2
  local id
  id=$(sbatch --parsable --job-name="$name" --ntasks="$ntasks" --cpus-per-task=1 --overcommit \
    --time=00:10:00 --output="$work/logs/%x-%j.out" "$@")
  id=${id%%;*}
  ids+=("$id")
  names+=("$name")
  last=$id
}
cd "$work"
out=$work/out
INPUT=$slices OUTPUT=$out/convert.zarr CHUNKS=4,128,128 \
  submit convert 2 "$repo/slurm/convert.sbatch"
LAUNCHER=mpirun JOB=$work/data/job-out.toml \
  submit run-mpirun 4 "$repo/slurm/run.sbatch"
QUILT=unstitch INPUT=$nczyx OUTPUT=$out/patches.zarr WINDOW=32,64,64 STEP=16,32,32 \
  BORDER=4,8,8 BORDER_WEIGHT=0.1 submit unstitch 4 "$repo/slurm/quilt.sbatch"
unstitch=$last
QUILT=stitch INPUT=$out/patches.zarr OUTPUT=$out/stitched.zarr EXTRA="--weights $out/weights.npy" \
  submit stitch 3 --dependency="afterok:$unstitch" "$repo/slurm/quilt.sbatch"
INPUT=$volume OUTPUT=$out/pyramid.zarr METHOD=gaussian FACTOR=2 \
  submit pyramid 2 "$repo/slurm/pyramid.sbatch"
INPUT=$stem OUTPUT=$out/crop.npy EXTRA=--no-visualization \
  submit crop 4 "$repo/slurm/crop.sbatch"
INPUT=$work/data/sky OUTPUT=$out/sky FORMAT=npy \
  submit hdr 2 "$repo/slurm/hdr.sbatch"
INPUT=$out/ct/stem.npy OUTPUT=$out/ct/patches PATCH_SIZE=32 STRIDE=16 SPLIT_NAME=stem \
  submit patches 4 "$repo/slurm/patches.sbatch"
cd "$repo"
echo "slurm test: submitted ${#ids[@]} jobs: ${ids[*]}"
squeue -o '%.6i %.12j %.3t %.4D %.4C %R' || true

# ---- Wait for every job to end (the job records stay for MinJobAge = 1 h) ----
state_of() { scontrol show job "$1" -o 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
exit_of() { scontrol show job "$1" -o 2>/dev/null | grep -o ' ExitCode=[0-9:]*' | cut -d= -f2; }
deadline=$(($(date +%s) + 300))
for id in "${ids[@]}"; do
  while :; do
    st=$(state_of "$id")
    case "$st" in
    PENDING | CONFIGURING | RUNNING | COMPLETING | "") ;;
    *) break ;;
    esac
    if [ "$(date +%s)" -gt "$deadline" ]; then
      echo "slurm test: job $id still '$st' after 5 min" >&2
      squeue >&2 || true
      scancel "${ids[@]}" || true
      exit 1
    fi
    sleep 0.5
  done
done

failed=0
for i in "${!ids[@]}"; do
  id=${ids[$i]} name=${names[$i]}
  st=$(state_of "$id") code=$(exit_of "$id")
  log=$work/logs/$name-$id.out
  scontrol show job "$id" -o | grep -o 'SubmitTime=[^ ]* \|StartTime=[^ ]* \|EndTime=[^ ]* \|RunTime=[^ ]* ' |
    tr -d '\n' | sed "s/^/slurm test: job $id ($name) $st: /"
  echo
  if [ "$st" != COMPLETED ] || [ "$code" != 0:0 ]; then
    echo "slurm test: job $id ($name) ended $st, exit $code; its output:" >&2
    cat "$log" >&2 || true
    failed=1
  fi
done
[ "$failed" = 0 ] || exit 1

# ---- Outputs: byte-identical to the single-process references; one report per job ----
# (.tessera-merge.json records a per-bracket merge's parameters, input paths included, which
# differ between the two runs by design.)
same() { # what ref out
  if ! diff -r -x .tessera-merge.json "$2" "$3" >/dev/null; then
    echo "slurm test: $1 differs from the single-process run:" >&2
    diff -rq -x .tessera-merge.json "$2" "$3" >&2 || true
    exit 1
  fi
}
same convert "$work/ref/convert.zarr" "$out/convert.zarr"
same "run (job file, mpirun)" "$work/ref/run.zarr" "$out/run.zarr"
same "quilt unstitch" "$work/ref/patches.zarr" "$out/patches.zarr"
same "quilt stitch" "$work/ref/stitched.zarr" "$out/stitched.zarr"
same "quilt stitch weights" "$work/ref/weights.npy" "$out/weights.npy"
same pyramid "$work/ref/pyramid.zarr" "$out/pyramid.zarr"
for f in crop.npy crop_radii.npy crop_centers.npy crop_retention.npy; do
  same "crop $f" "$work/ref/$f" "$out/$f"
done
same "hdr merge" "$work/ref/sky" "$out/sky"
# patch_meta.json differs only in `created`.
diff -r -x patch_meta.json "$work/ref/ct/patches" "$out/ct/patches" >/dev/null || {
  echo "slurm test: patches differ from the single-process run" >&2
  exit 1
}
diff <(grep -v '"created"' "$work/ref/ct/patches/patch_meta.json") \
  <(grep -v '"created"' "$out/ct/patches/patch_meta.json") >&2 || {
  echo "slurm test: patch_meta.json differs from the single-process run" >&2
  exit 1
}

# Each job wrote one report naming all its ranks (per-rank timings inside).
ranks_in() { # report expected-ranks
  python3 - "$1" "$2" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
want = int(sys.argv[2])
assert r["ranks"] == want, f"{sys.argv[1]}: ranks {r['ranks']}, expected {want}"
for run in r["runs"]:
    per = run["per_rank"]
    assert [p["rank"] for p in per] == list(range(want)), f"{sys.argv[1]}: per_rank {per}"
    assert all("phases" in p for p in per), f"{sys.argv[1]}: no phases"
EOF
}
ranks_in "$out/convert.zarr.report.json" 2
ranks_in "$out/run.zarr.report.json" 4
ranks_in "$out/patches.zarr.report.json" 4
ranks_in "$out/stitched.zarr.report.json" 3
ranks_in "$out/pyramid.zarr.report.json" 2
ranks_in "$out/crop.npy.report.json" 4
ranks_in "$out/sky.report.json" 2
ranks_in "$out/ct/patches.report.json" 4
grep -q "slurm_job_id" "$out/convert.zarr.report.json" || {
  echo "slurm test: the report does not name the Slurm job" >&2
  exit 1
}

echo "slurm test: ${#ids[@]} jobs ran under Slurm and match the single-process outputs" \
  "($(($(date +%s) - started)) s)"
