#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/) with clang in build-fuzz/ and runs each for a fixed time.
# Not part of scripts/test.sh or ctest.
#   scripts/fuzz.sh                 # 120 s per target
#   scripts/fuzz.sh 60              # 60 s per target
#   FUZZERS="fuzz_tokenizer" scripts/fuzz.sh 600
# Environment: BUILD_DIR (build-fuzz, relative or absolute), JOBS (2, build parallelism), FUZZERS (all six), CLANG_VERSION
# (14), FUZZ_TIMEOUT (30: seconds one input may take before it counts as a hang), FUZZ_ARGS (extra
# libFuzzer flags, e.g. "-jobs=2 -workers=2"), TOPSERVE_FUZZ_VOCAB (vocab for fuzz_tokenizer and the
# fuzz_request models, which are generated into $BUILD_DIR/fuzz-models/ with tools/gen_model.py).
#
# Each target first replays its regression inputs (fuzz/regressions/<target>/, inputs that once
# crashed), then fuzzes starting from the checked-in seeds (fuzz/corpus/<target>/, read only) and the
# working corpus kept in $BUILD_DIR/fuzz-corpus/<target>/ between runs. A crash, sanitizer report,
# leak, hang or out-of-memory fails the run; the input is saved to $BUILD_DIR/fuzz-artifacts/<target>/
# and the full log to $BUILD_DIR/fuzz-logs/<target>.log. One summary line per target is printed.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-120}
if ! [[ $seconds =~ ^[0-9]+$ ]] || ((seconds < 1)); then
  echo "usage: $0 [seconds-per-target]" >&2
  exit 2
fi
build=${BUILD_DIR:-build-fuzz}
jobs=${JOBS:-2}
clang_version=${CLANG_VERSION:-14}
timeout_per_input=${FUZZ_TIMEOUT:-30}
read -r -a fuzzers <<<"${FUZZERS:-fuzz_tokenizer fuzz_tokenizer_json fuzz_safetensors fuzz_model_config fuzz_server_config fuzz_request}"
read -r -a extra_args <<<"${FUZZ_ARGS:-}"
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER="clang-$clang_version" -DCMAKE_CXX_COMPILER="clang++-$clang_version" \
  -DTOPSERVE_BUILD_FUZZERS=ON -DTOPSERVE_BUILD_TESTS=OFF -DTOPSERVE_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" -j "$jobs" --target "${fuzzers[@]}"

root=$PWD
# Absolute from here on: BUILD_DIR may be given either way.
case $build in /*) ;; *) build=$root/$build ;; esac

# fuzz_request serves two tiny generated models (the paths compiled into it).
if [[ " ${fuzzers[*]} " == *" fuzz_request "* ]]; then
  # shellcheck source=scripts/python-env.sh
  source scripts/python-env.sh
  vocab=${TOPSERVE_FUZZ_VOCAB:-$root/../shared/data/bert-base-uncased/vocab.txt}
  for task in cls qa; do
    if [[ ! -f $build/fuzz-models/$task/config.json ]]; then
      rm -rf "$build/fuzz-models/$task"
      "$py" tools/gen_model.py --preset tiny --task "$task" --seed 7 --vocab "$vocab" \
        --out "$build/fuzz-models/$task" >/dev/null
    fi
  done
fi
failed=0
summary=()
for target in "${fuzzers[@]}"; do
  bin=$build/fuzz/$target
  seeds=$root/fuzz/corpus/$target
  regressions=$root/fuzz/regressions/$target
  corpus=$build/fuzz-corpus/$target
  artifacts=$build/fuzz-artifacts/$target
  log=$build/fuzz-logs/$target.log
  dict_name=${target#fuzz_}
  dict=$root/fuzz/dict/$dict_name.dict
  mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
  dict_args=()
  [[ -f $dict ]] && dict_args=("-dict=$dict")

  # 1. Regression inputs: each must run clean.
  regression_note=""
  if [[ -d $regressions ]] && compgen -G "$regressions/*" >/dev/null; then
    mapfile -t inputs < <(find "$regressions" -type f ! -name '*.md' | sort)
    if ! "$bin" "-timeout=$timeout_per_input" "${inputs[@]}" >"$log.regressions" 2>&1; then
      failed=1
      regression_note=" REGRESSION FAILED (see $log.regressions)"
    else
      regression_note=", ${#inputs[@]} regression inputs pass"
    fi
  fi

  # 2. Fuzz. The first corpus directory (the working one) receives new inputs; the seeds stay as they are.
  echo "== $target: fuzzing for $seconds s (log: $log)"
  status=0
  (cd "$artifacts" && "$bin" "$corpus" "$seeds" "${dict_args[@]}" \
    "-max_total_time=$seconds" "-timeout=$timeout_per_input" -print_final_stats=1 \
    "-artifact_prefix=$artifacts/" "${extra_args[@]}") >"$log" 2>&1 || status=$?

  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2 || true)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2 || true)
  units=$(find "$corpus" -type f | wc -l)
  if ((status == 0)); then
    result="OK"
  else
    failed=1
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    reason=$(grep -m 1 -E '^(==[0-9]+==ERROR|SUMMARY|.*runtime error|.*invariant failed|==[0-9]+== ERROR: libFuzzer)' "$log" || true)
    result="FAILED (exit $status): ${reason:-see log}; input: ${artifact:-none}"
  fi
  summary+=("$target: $result; ${execs:-?} execs (${rate:-?}/s), cov ${cov:-?}, ft ${ft:-?}, corpus $units, peak RSS ${rss:-?} MB$regression_note")
done

echo
echo "fuzz summary ($seconds s per target; logs in $build/fuzz-logs/):"
printf '  %s\n' "${summary[@]}"
exit "$failed"
