#!/usr/bin/env bash
# Installs llmserve's build and test dependencies from Debian/Ubuntu packages. Idempotent:
# packages already present are left alone, and apt is not touched when nothing is missing.
set -euo pipefail

pkgs=(build-essential cmake pkg-config
      libopenmpi-dev openmpi-bin
      libhdf5-dev
      libyaml-cpp-dev nlohmann-json3-dev
      libboost-dev libssl-dev openssl
      libgtest-dev
      python3 python3-pip python3-numpy unzip curl
      shellcheck)

missing=()
for p in "${pkgs[@]}"; do
  # (no `| grep -q` under pipefail: its early exit can fail the pipeline of an installed package)
  [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" == *"install ok installed"* ]] || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
else
  echo "install-deps: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# The python3 first on PATH (a pyenv or virtualenv one does not see Debian's python3-numpy) needs
# numpy for bench/reference/bf16_rounding.py and its tests.
if ! python3 -c "import numpy" 2>/dev/null; then
  echo "install-deps: pip install numpy (for $(command -v python3))"
  python3 -m pip install --quiet numpy 2>/dev/null || python3 -m pip install --quiet --break-system-packages numpy
fi
