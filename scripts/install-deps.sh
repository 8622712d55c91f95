#!/usr/bin/env bash
# Installs everything topserve needs on Debian 12: build toolchain, C++ libraries,
# the Python reference stack (Debian's /usr/bin/python3) and validation tools.
# Non-interactive, idempotent, meant to run as root (README, .ci/run and Dockerfile all call it).
#
#   scripts/install-deps.sh            # build + test + tools (default; README, CI)
#   scripts/install-deps.sh --build    # only what compiling the server needs (Docker build stage)
#   scripts/install-deps.sh --runtime  # only the shared libraries the server needs (Docker runtime stage)
#   scripts/install-deps.sh --bench    # the default set plus ONNX Runtime (npm) for bench/peers
set -euo pipefail

mode=full
bench=0
case "${1:-}" in
  --runtime) mode=runtime ;;
  --build) mode=build ;;
  --bench) bench=1 ;;
  ""|--full) ;;
  *) echo "usage: $0 [--full|--build|--runtime|--bench]" >&2; exit 2 ;;
esac

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then exec sudo -E "$0" "$@"; fi
  echo "install-deps.sh: must run as root (or with sudo available)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive

runtime_pkgs=(
  libgrpc++1.51 libprotobuf32 libdnnl2 libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0
  libyaml-cpp0.7 libutf8proc2 libabsl20220623 libgomp1 ca-certificates
)

build_pkgs=(
  build-essential cmake ninja-build pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libdnnl-dev libeigen3-dev prometheus-cpp-dev libyaml-cpp-dev
  libgtest-dev libgmock-dev libbenchmark-dev libutf8proc-dev nlohmann-json3-dev
  libcli11-dev libabsl-dev
  # Debian's oneDNN CMake package config calls find_package(OpenCL REQUIRED).
  ocl-icd-opencl-dev opencl-headers
)

full_pkgs=(
  "${build_pkgs[@]}"
  python3 python3-torch python3-numpy python3-grpcio python3-grpc-tools python3-onnx
  python3-yaml python3-matplotlib libopenblas0-pthread
  prometheus yamllint shellcheck clang-14 libfuzzer-14-dev libclang-rt-14-dev
)
# Node.js + npm validate the deployment manifests. Machines that already have a Node (for example
# from NodeSource) keep it: Debian's npm conflicts with such a Node.
if [ "$mode" = full ] && ! command -v npm >/dev/null 2>&1; then full_pkgs+=(nodejs npm); fi

case "$mode" in
  runtime) pkgs=("${runtime_pkgs[@]}") ;;
  build) pkgs=("${build_pkgs[@]}") ;;
  *) pkgs=("${full_pkgs[@]}") ;;
esac

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages already installed"
else
  echo "install-deps: installing ${#missing[@]} packages: ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# npm packages that validate the deployment manifests (package-lock.json pins them).
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "$mode" = full ] && [ -f "$repo/package-lock.json" ]; then
  (cd "$repo" && npm ci --no-audit --no-fund --loglevel=error)
fi
# ONNX Runtime for the same-run peer benchmark (bench/peers/package-lock.json pins it; ~300 MB,
# so only with --bench). ONNXRUNTIME_NODE_INSTALL=skip: the CPU library ships inside the package.
if [ "$bench" = 1 ]; then
  (cd "$repo/bench/peers" && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --loglevel=error)
fi
echo "install-deps: done"
