#!/usr/bin/env bash
# Builds the test suites with a sanitizer (gcc, RelWithDebInfo, -DTOPSERVE_SANITIZE=...) in their own
# build directory and runs them with ctest. Slow; not part of scripts/test.sh.
#   scripts/test-sanitizers.sh                    # address,undefined (ASan + UBSan) -> build-asan-ubsan
#   scripts/test-sanitizers.sh address            # -> build-asan
#   scripts/test-sanitizers.sh undefined          # -> build-ubsan
#   scripts/test-sanitizers.sh thread             # -> build-tsan: batching + engine suites only
#   scripts/test-sanitizers.sh address -R Tokenizer   # extra arguments go to ctest
#   SUITES='^tokenizer_test$' scripts/test-sanitizers.sh address   # only these test executables
#   BUILD_TARGETS=tests/all scripts/test-sanitizers.sh address,undefined -L unit   # quicker: unit suites
# Environment: BUILD_DIR (see above), JOBS (2), CTEST_JOBS (JOBS), BUILD_TARGETS (default: everything
# but the benchmarks, since the e2e tests start the sanitized topserve-server, -client and -cli;
# "tests/all", the default under thread, builds only the test executables and what they link, enough
# for -L unit).
#
# Every sanitizer report is fatal (halt_on_error / -fno-sanitize-recover semantics), so a finding fails
# the test that triggered it. Under address/undefined every C++ suite runs; only the `deploy` label is
# left out (yamllint, promtool, node checks of deploy/ files: no topserve code runs, so a sanitizer
# build changes nothing there; scripts/test.sh runs them). Under thread:
#   - only the batching suites (batching_*_test) and the engine suites (tokenizer, safetensors,
#     model_config, bert_model, pruning) run, selected by executable (SUITES overrides): they are the
#     ones with threads of their own;
#   - one OpenMP thread: libgomp (Debian's oneDNN and our kernels use OpenMP) is not built with TSan,
#     so its barriers are invisible and every parallel region is reported as a race. The engine calls
#     omp_set_num_threads(AvailableCpus()) itself (CPU affinity and cgroup quota; OMP_NUM_THREADS is
#     overridden), so ctest runs under `taskset -c <one cpu>`, which makes that 1, plus
#     OMP_NUM_THREADS=1 for oneDNN. No OpenMP team is started; the threads the code under test
#     creates itself (std::thread, the batcher's workers) are still checked: TSan finds races from
#     happens-before, not from simultaneous execution.
#   - scripts/tsan.supp suppresses reports inside the uninstrumented runtimes (libgomp, oneDNN) in case
#     a team is started anyway (e.g. OMP_NUM_THREADS overridden); see the comments there.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/python-env.sh
source scripts/python-env.sh

san=address,undefined
if (($# > 0)) && [[ $1 != -* ]]; then
  san=$1
  shift
fi
case $san in
  address) default_dir="build-asan" ;;
  undefined) default_dir="build-ubsan" ;;
  address,undefined | undefined,address) san="address,undefined" default_dir="build-asan-ubsan" ;;
  thread) default_dir="build-tsan" ;;
  *)
    echo "usage: $0 [address|undefined|address,undefined|thread] [ctest args...]" >&2
    exit 2
    ;;
esac
build=${BUILD_DIR:-$default_dir}
jobs=${JOBS:-2}
ctest_jobs=${CTEST_JOBS:-$jobs}

export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
# Fatal reports with stack traces. detect_leaks: LeakSanitizer runs with ASan.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:suppressions=$PWD/scripts/tsan.supp}

cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTOPSERVE_SANITIZE="$san" \
  -DTOPSERVE_BUILD_TESTS=ON -DTOPSERVE_BUILD_BENCH=OFF
default_targets=all
[[ $san == thread ]] && default_targets=tests/all
read -r -a targets <<<"${BUILD_TARGETS:-$default_targets}"
cmake --build "$build" -j "$jobs" --target "${targets[@]}"

# SUITES (a regex over test executable names; ctest -R would match gtest names such as
# "SchedulerTest.X", which do not say which suite they belong to) narrows the run.
suites=${SUITES:-}
if [[ $san == thread ]]; then
  export OMP_NUM_THREADS=1
  suites=${SUITES:-'^(batching_[a-z_]*|tokenizer|safetensors|model_config|bert_model|pruning)_test$'}
fi
pin=()
if [[ $san == thread ]]; then
  cpu=$("$py" -c 'import os; print(min(os.sched_getaffinity(0)))')
  pin=(taskset -c "$cpu")
fi
filter=(-LE deploy)
if [[ -n $suites ]]; then
  # Test numbers whose command runs a matching executable (fixtures they need are added by ctest).
  numbers=$(ctest --test-dir "$build" --show-only=json-v1 | "$py" -c '
import json, os, re, sys
pattern = re.compile(sys.argv[1])
tests = json.load(sys.stdin)["tests"]
print(",".join(str(i) for i, t in enumerate(tests, 1)
               if t.get("command") and pattern.search(os.path.basename(t["command"][0]))))' "$suites")
  if [[ -z $numbers ]]; then
    echo "no test executable matches SUITES='$suites'" >&2
    exit 1
  fi
  filter=(-I "0,0,0,$numbers")
fi
# Sanitized code runs 2-20x slower than the Release suite: generous per-test timeout.
"${pin[@]}" ctest --test-dir "$build" --output-on-failure --no-tests=error -j "$ctest_jobs" --timeout 3600 "${filter[@]}" "$@"
