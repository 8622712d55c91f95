#!/usr/bin/env bash
# The container, proven: builds the Dockerfile with podman and checks from the host that the image
# serves as the docs and the Kubernetes manifests say (slow: a few minutes; .ci/run runs it).
#
#   scripts/test-container.sh               # uses ./build (BUILD_DIR=... for another)
#   KEEP_BASE=0 scripts/test-container.sh   # also rebuild the cached debian:12-slim tarball
#
# 1. Installs podman, runc and debootstrap with scripts/install-deps.sh --container.
# 2. Makes the debian:12-slim base with debootstrap --variant=minbase (no registry needed; the
#    tarball is cached as $BUILD_DIR/container/debian-12-slim.tar) and imports it.
#    In it, scripts/install-deps.sh --runtime runs as a user with sudo (it elevates itself; twice:
#    idempotent).
# 3. Builds the image (podman build --network host, so apt in the build reaches Debian's archive).
# 4. Runs it as the image's own non-root user with a read-only root file system and a /tmp tmpfs,
#    with its built-in config plus a generated QA model mounted, and checks from the host
#    (tests/deploy/container_check.py): the gRPC health names the Deployment's probes use,
#    Classify and Answer with both clients, a metrics scrape, reflection; then SIGTERM -> exit 0
#    within the Deployment's terminationGracePeriodSeconds.
# 5. Runs it again the way deploy/k8s/deployment.yaml does: the ConfigMap's config.yaml mounted at
#    /etc/topserve, the Deployment's args, user and security settings, and the same checks.
# Every container and image it makes is removed at the end (also on failure or Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
build=${BUILD_DIR:-build}
case "$build" in /*) ;; *) build=$repo/$build ;; esac
me=test-container
start=$(date +%s)

bash scripts/install-deps.sh --container
# shellcheck source=scripts/python-env.sh
source scripts/python-env.sh
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
podman=("${sudo[@]}" podman)

client=$build/server/topserve-client
if [ ! -x "$client" ]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$build" -j "${JOBS:-$(nproc)}" --target topserve-client
fi

work=$build/container
mkdir -p "$work"
run_id="$(date +%Y%m%d%H%M%S)-$$"
base_tag=localhost/topserve-test-base:$run_id
image_tag=localhost/topserve-test:$run_id
containers=()
images=()
cleanup() {
  local rc=$?
  for c in "${containers[@]}"; do "${podman[@]}" rm -f -t 0 "$c" >/dev/null 2>&1 || true; done
  for i in "${images[@]}"; do "${podman[@]}" rmi -f "$i" >/dev/null 2>&1 || true; done
  # The build stage's image (untagged, labelled with this run) goes too.
  "${podman[@]}" images -q --filter "label=topserve.test-run=$run_id" 2>/dev/null |
    xargs -r "${podman[@]}" rmi -f >/dev/null 2>&1 || true
  # A failed run keeps its logs (build, server, manifests' values), if it got as far as any.
  if [ "$rc" -ne 0 ] && [ -n "$(ls -A "$work/run-$run_id" 2>/dev/null)" ]; then
    echo "$me: FAILED; logs in $work/run-$run_id" >&2
  else
    rm -rf "$work/run-$run_id"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
runtmp=$work/run-$run_id
mkdir -p "$runtmp"

# 2. The base image.
base_tar=$work/debian-12-slim.tar
if [ "${KEEP_BASE:-1}" = 0 ] || [ ! -s "$base_tar" ]; then
  echo "$me: debootstrap --variant=minbase bookworm (cached as $base_tar)"
  root=$work/debootstrap
  "${sudo[@]}" rm -rf "$root"
  mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
  if ! "${sudo[@]}" debootstrap --variant=minbase bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1; then
    echo "$me: debootstrap from $mirror failed (log: $work/debootstrap.log): $(tail -1 "$work/debootstrap.log")" >&2
    exit 1
  fi
  # Like Docker's debian:12-slim: updates and security in the sources, no apt lists or caches.
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' \
    "$mirror" "$mirror" "${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}" |
    "${sudo[@]}" tee "$root/etc/apt/sources.list" >/dev/null
  "${sudo[@]}" rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
  "${sudo[@]}" tar -C "$root" -cf "$base_tar.part" . && "${sudo[@]}" mv "$base_tar.part" "$base_tar"
  "${sudo[@]}" rm -rf "$root"
fi
# podman and its runtime must be able to start a container at all; otherwise one line, not a
# stack of errors.
cannot_run() {
  echo "$me: the container runtime cannot start a container here ($1: $(echo "$2" | tail -1))" >&2
  exit 1
}
out=$("${podman[@]}" info 2>&1) || cannot_run "podman info" "$out"
images+=("$base_tag")
out=$("${podman[@]}" import -q "$base_tar" "$base_tag" 2>&1) || cannot_run "podman import" "$out"
out=$("${podman[@]}" run --rm --network none "$base_tag" true 2>&1) || cannot_run "podman run" "$out"

# The README's set-up command as a user with sudo: install-deps.sh elevates itself, installs, and
# is idempotent. (As root without sudo it runs in the image build below: the minbase base has no
# sudo.) --runtime keeps this to a minute; the elevation path is the same for every mode.
echo "$me: install-deps.sh as a user with sudo, in the base image"
cname=topserve-test-$run_id-sudo
containers+=("$cname")
# shellcheck disable=SC2016  # the script runs inside the container: $ expands there
if ! out=$("${podman[@]}" run --rm --name "$cname" --network host -v "$repo/scripts:/src/scripts:ro" \
     "$base_tag" bash -euc '
       apt-get update -qq && apt-get install -y -qq --no-install-recommends sudo >/dev/null
       useradd -m dev && echo "dev ALL=(ALL) NOPASSWD: ALL" >/etc/sudoers.d/dev
       cd /src && su dev -c "scripts/install-deps.sh --runtime" && su dev -c "scripts/install-deps.sh --runtime"
       dpkg-query -W -f="\${Status}\n" libgrpc++1.51' 2>&1) ||
   ! grep -q "already installed" <<<"$out" || ! grep -q "install ok installed" <<<"$out"; then
  echo "$out" | tail -10 >&2
  echo "$me: scripts/install-deps.sh failed as a user with sudo (output above)" >&2
  exit 1
fi

# 3. The image.
echo "$me: podman build (log: $runtmp/build.log)"
t0=$(date +%s)
if ! "${podman[@]}" build --network host --build-arg "BASE=$base_tag" \
     --label "topserve.test-run=$run_id" -t "$image_tag" -f Dockerfile . >"$runtmp/build.log" 2>&1; then
  tail -20 "$runtmp/build.log" >&2
  echo "$me: podman build failed (last lines above)" >&2
  exit 1
fi
images+=("$image_tag")
build_s=$(($(date +%s) - t0))
size=$("${podman[@]}" image inspect --format '{{.Size}}' "$image_tag")
echo "$me: image built in ${build_s}s, $((size / 1000000)) MB"
user=$("${podman[@]}" image inspect --format '{{.Config.User}}' "$image_tag")
case "$user" in ""|0|root|0:*|root:*) echo "$me: the image runs as root (USER '$user')" >&2; exit 1 ;; esac

# What the manifests say: probe names, args, user, grace periods, the ConfigMap's config.
"$py" tests/deploy/container_check.py k8s --k8s deploy/k8s --out "$runtmp/k8s" >/dev/null
k8s_uid=$(cat "$runtmp/k8s/uid")
k8s_grace=$(cat "$runtmp/k8s/termination_grace")

# A QA model for Answer (random weights; the plumbing is what is tested), readable by any user.
qa_model=$work/models/random-qa
[ -f "$qa_model/model.safetensors" ] || "$py" tools/gen_model.py --out "$qa_model" --preset tiny --task qa >/dev/null
chmod -R a+rX "$work/models"

free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# run_and_check NAME CONTAINER_GRPC_PORT CONTAINER_METRICS_PORT CHECK_ARGS... -- PODMAN_RUN_ARGS...
# (the host side of both ports is a free loopback port)
run_and_check() {
  local name=$1 cgport=$2 cmport=$3 gport mport; shift 3
  gport=$(free_port); mport=$(free_port)
  local check=()
  while [ "$1" != -- ]; do check+=("$1"); shift; done
  shift
  local cname=topserve-test-$run_id-$name
  containers+=("$cname")
  echo "$me: [$name] podman run $*"
  "${podman[@]}" run -d --name "$cname" --read-only --tmpfs /tmp:rw,size=64m \
    -p "127.0.0.1:$gport:$cgport" -p "127.0.0.1:$mport:$cmport" "$@" >/dev/null
  local uid
  if ! "$py" tests/deploy/container_check.py serve --grpc "127.0.0.1:$gport" \
       --metrics "http://127.0.0.1:$mport/metrics" --client "$client" --python "$py" \
       --container "$cname" --podman "${podman[*]}" "${check[@]}"; then
    "${podman[@]}" logs "$cname" 2>&1 | tail -20 >&2
    echo "$me: [$name] checks failed (server log above)" >&2
    return 1
  fi
  uid=$("${podman[@]}" exec "$cname" id -u)
  [ "$uid" = "${user%%:*}" ] || { echo "$me: [$name] server runs as uid $uid, the image says $user" >&2; return 1; }
  if "${podman[@]}" exec "$cname" touch /opt/topserve/written 2>/dev/null; then
    echo "$me: [$name] the root file system is writable" >&2; return 1
  fi
  # SIGTERM: drain, exit 0, within the Deployment's termination grace period.
  local t0 t1 rc
  t0=$(date +%s.%N)
  "${podman[@]}" kill --signal TERM "$cname" >/dev/null
  rc=$(timeout "$((k8s_grace + 5))" "${podman[@]}" wait "$cname" || echo timeout)
  t1=$(date +%s.%N)
  local took
  took=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  if [ "$rc" != 0 ]; then
    "${podman[@]}" logs "$cname" 2>&1 | tail -20 >&2
    echo "$me: [$name] after SIGTERM: exit status '$rc' after ${took}s (want 0)" >&2; return 1
  fi
  if awk -v t="$took" -v g="$k8s_grace" 'BEGIN { exit !(t >= g) }'; then
    echo "$me: [$name] SIGTERM -> exit took ${took}s, not within the ${k8s_grace}s grace period" >&2; return 1
  fi
  "${podman[@]}" logs "$cname" >"$runtmp/$name.log" 2>&1 || true
  echo "$me: [$name] ok: uid $uid, read-only root, SIGTERM -> exit 0 in ${took}s (grace ${k8s_grace}s)"
}

# 4. The image as `docker run` starts it (its own config, deploy/config.example.yaml) plus a QA
#    model.
image_default_budget=$("$py" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["models"][0].get("default_budget", 1.0))' deploy/config.example.yaml)
run_and_check image 8500 9100 \
  --health "" --health sst2 --health squad --health topserve.v1.Inference \
  --classify sst2 --answer squad --default-budget "$image_default_budget" -- \
  -v "$qa_model:/models/squad:ro" "$image_tag" \
  --config /etc/topserve/config.yaml --model squad=/models/squad

# 5. The image as the Deployment starts it: the ConfigMap's config, the Deployment's args and env,
#    its user and security context, and the health names its probes ask for.
mapfile -t probe_args < <(sed 's/^/--health=/' "$runtmp/k8s/probe_services")
mapfile -t k8s_args <"$runtmp/k8s/args"
mapfile -t k8s_env < <(sed 's/^/--env=/' "$runtmp/k8s/env")
run_and_check configmap "$(cat "$runtmp/k8s/grpc_port")" "$(cat "$runtmp/k8s/metrics_port")" \
  "${probe_args[@]}" --classify "$(cat "$runtmp/k8s/first_model")" \
  --default-budget "$(cat "$runtmp/k8s/first_model_default_budget")" -- \
  --user "$k8s_uid:$(cat "$runtmp/k8s/gid")" --cap-drop ALL --security-opt no-new-privileges \
  "${k8s_env[@]}" -v "$runtmp/k8s/config:/etc/topserve:ro" "$image_tag" "${k8s_args[@]}"

echo "$me: passed in $(($(date +%s) - start))s (image build ${build_s}s, image $((size / 1000000)) MB)"
