#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this). Sets the machine up first.
#   - formatting and clippy (default features, and without MPI/HDF5);
#   - unit and integration tests with the default (MPI + HDF5) build, MPI tests under real
#     `mpirun` ranks, Python cross-checks with zarr-python and h5py;
#   - the Slurm test: every script in slurm/ submitted with sbatch to a one-node Slurm cluster
#     started here (tests/slurm/run.sh), outputs compared with single-process runs;
#   - every CUDA kernel compiled by NVRTC (the nvidia-cuda-nvrtc wheel; no GPU needed) and the
#     kernels' per-thread bodies checked on the CPU (tests/gpu.rs, src/gpu/harness.rs); the GPU
#     tests themselves skip here, saying why (scripts/gpu-check.sh runs them on a GPU);
#   - the single-process build (--no-default-features) and its tests;
#   - the Python package (python/) built into target/pyenv and its pytest tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --python --slurm --nvrtc
export PATH="$HOME/.cargo/bin:$PATH"   # where rustup puts cargo on a fresh machine

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export TESSERA_REQUIRE_MPI=1 TESSERA_REQUIRE_PYTHON=1 TESSERA_REQUIRE_MOUNT=1 TESSERA_REQUIRE_NVRTC=1
export TESSERA_PYTHON="$PWD/target/pyenv/bin/python"
export CARGO_TERM_COLOR=never
# One-shot builds: no incremental caches (they took ~8 GB of the build directory).
export CARGO_INCREMENTAL=0

step() { echo; echo "== $* =="; }
step "cargo fmt --check";                  cargo fmt --all -- --check
step "clippy (mpi + hdf5)";                cargo clippy --all-targets -- -D warnings
step "clippy (no default features)";       cargo clippy --all-targets --no-default-features -- -D warnings
step "clippy (python package)";            cargo clippy -p tessera-python -- -D warnings
step "tests (mpi + hdf5)";                 cargo test
step "slurm (sbatch on a one-node cluster)"; cargo build -q && tests/slurm/run.sh
step "tests (no default features)";        cargo test --no-default-features
# The Python package built into target/pyenv in the dev profile: it reuses the tessera lib the
# step above built (same features), so only the extension crate compiles; its tests compare
# the API with the binary that step built.
step "python package (maturin develop, pytest)"
(cd python && VIRTUAL_ENV="$PWD/../target/pyenv" ../target/pyenv/bin/maturin develop -q)
TESSERA_BIN="$PWD/target/debug/tessera" target/pyenv/bin/python -m pytest -q -p no:cacheprovider python/tests
step "demo";                               cargo run -q -- demo --dir target/ci-demo >/dev/null && echo "demo ok"
echo
echo "all tests passed"
