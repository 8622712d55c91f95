// What CPU this process runs on: how many CPUs it may use, the model name, and the instruction-set
// features our own kernels dispatch on at run time (oneDNN dispatches its own).
#pragma once

#include <string>

namespace topserve::engine {

// At least 1. Reads sched_getaffinity and cgroup v2 cpu.max / v1 cfs_quota (rounded up).
int AvailableCpus();

// /proc/cpuinfo's "model name" (e.g. "AMD EPYC 9R14"), or "unknown".
std::string CpuModelName();

// What this CPU offers our own kernels (the binary's baseline is x86-64-v3: AVX2 + FMA).
struct CpuFeatures {
  bool avx512 = false;       // AVX-512 F/BW/DQ/VL
  bool avx512_bf16 = false;  // AVX512-BF16 (Zen 4, Cooper Lake, Sapphire Rapids)
  bool avx512_vnni = false;  // AVX512-VNNI (Cascade Lake and later, Zen 4)
  bool amx = false;          // AMX tiles with bf16 and int8 (Sapphire Rapids)
};
const CpuFeatures& GetCpuFeatures();

}  // namespace topserve::engine
