#!/usr/bin/env bash
# Installs the system packages tessera's default (MPI + HDF5) build needs, idempotently:
# packages already present are skipped, and nothing is installed when all are present.
# Usage: scripts/setup.sh [--python]   (--python also installs zarr/h5py/numpy for the
# cross-checks in tests/python_readback.rs)
set -euo pipefail

packages=(openmpi-bin libopenmpi-dev libhdf5-openmpi-dev libhdf5-dev hdf5-tools libclang-dev pkg-config)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: system packages present"
fi

if [ "${1:-}" = "--python" ]; then
  if python3 -c 'import zarr, h5py, numpy' 2>/dev/null; then
    echo "setup: python zarr/h5py/numpy present"
  else
    echo "setup: installing python zarr/h5py/numpy"
    python3 -m pip install -q --disable-pip-version-check 'zarr>=3' h5py numpy
  fi
fi
