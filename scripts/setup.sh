#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (as root, or with sudo) for building and testing tessera,
# idempotently: what is already present is skipped.
#
#   scripts/setup.sh            system packages (Open MPI, parallel HDF5, libclang) + Rust
#   scripts/setup.sh --python   also a Python venv (target/pyenv) with numpy, zarr, h5py and
#                               pandas, used by tests/python_readback.rs and tests/patches.rs
#                               to cross-check outputs, and maturin + pytest for the Python
#                               package (python/)
#   scripts/setup.sh --nvrtc    also NVRTC (the PyPI wheel nvidia-cuda-nvrtc, into target/pyenv;
#                               implies --python), so that CI compiles every CUDA kernel
#                               without a GPU (tests/gpu.rs)
#   scripts/setup.sh --slurm    also Slurm and munge (slurm-wlm, munge), for a one-node cluster
#                               on this machine (scripts/slurm-local.sh, tests/slurm/run.sh)
# Options combine: scripts/setup.sh --python --slurm
set -euo pipefail
cd "$(dirname "$0")/.."

python=0
slurm=0
nvrtc=0
for arg in "$@"; do
  case "$arg" in
  --python) python=1 ;;
  --slurm) slurm=1 ;;
  --nvrtc) nvrtc=1; python=1 ;;
  *) echo "setup: unknown option $arg (expected --python, --slurm, --nvrtc)" >&2; exit 2 ;;
  esac
done

packages=(openmpi-bin libopenmpi-dev libhdf5-openmpi-dev libhdf5-dev hdf5-tools libclang-dev
          pkg-config build-essential curl ca-certificates)
if [ "$python" = 1 ]; then
  packages+=(python3 python3-venv)
fi
if [ "$slurm" = 1 ]; then
  # Installing these does not start any daemon here (no systemd in containers and CI);
  # scripts/slurm-local.sh starts them by hand.
  packages+=(slurm-wlm munge)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    # A tool that is already on PATH from elsewhere (pyenv's python3, rustup's cc) is enough.
    case "$p" in
      python3) command -v python3 >/dev/null && continue ;;
      python3-venv) python3 -c 'import venv, ensurepip' 2>/dev/null && continue ;;
      build-essential) command -v cc >/dev/null && command -v make >/dev/null && continue ;;
      curl) command -v curl >/dev/null && continue ;;
    esac
    missing+=("$p")
  fi
done

sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "setup: system packages present"
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    echo "setup: Rust is in ~/.cargo/bin (run: . \"\$HOME/.cargo/env\")"
  else
    echo "setup: installing Rust with rustup"
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy >/dev/null
  fi
fi

if [ "$python" = 1 ]; then
  venv=target/pyenv
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import numpy, zarr, h5py, ome_zarr_models, pandas' 2>/dev/null; then
    echo "setup: python venv $venv has numpy, zarr, h5py, ome-zarr-models, pandas"
  else
    echo "setup: python venv $venv with numpy, zarr, h5py, ome-zarr-models (OME-Zarr validation), pandas (patch manifests)"
    mkdir -p target
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check 'zarr>=3' h5py numpy ome-zarr-models pandas
  fi
  # The Python package's build and tests (python/; scripts/test.sh builds it into this venv).
  if [ -x "$venv/bin/maturin" ] && "$venv/bin/python" -c 'import pytest' 2>/dev/null; then
    echo "setup: python venv $venv has maturin, pytest"
  else
    echo "setup: maturin and pytest into $venv, for the Python package (python/)"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check 'maturin>=1.9,<2' pytest
  fi
fi

if [ "$nvrtc" = 1 ]; then
  venv=target/pyenv
  # 13.0 to match the CUDA 13.0 driver of the GPU machines (PTX from a newer NVRTC is refused).
  if "$venv/bin/python" -c 'import importlib.metadata as m; assert m.version("nvidia-cuda-nvrtc") == "13.0.88"' 2>/dev/null; then
    echo "setup: NVRTC 13.0.88 (nvidia-cuda-nvrtc) in $venv"
  else
    echo "setup: NVRTC 13.0.88 (nvidia-cuda-nvrtc) into $venv, for compiling the CUDA kernels in tests"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check 'nvidia-cuda-nvrtc==13.0.88'
  fi
fi
