#include "engine/cpu_info.h"

#include <cpuid.h>
#include <sched.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <string>

namespace topserve::engine {
namespace {

// Returns the quota in CPUs, or 0 when there is none.
double CgroupQuota() {
  {  // cgroup v2: "max 100000" or "200000 100000"
    std::ifstream f("/sys/fs/cgroup/cpu.max");
    std::string quota;
    double period = 0;
    if (f >> quota >> period && quota != "max" && period > 0) {
      try {
        return std::stod(quota) / period;
      } catch (...) {
        return 0;
      }
    }
  }
  {  // cgroup v1
    std::ifstream q("/sys/fs/cgroup/cpu/cpu.cfs_quota_us");
    std::ifstream p("/sys/fs/cgroup/cpu/cpu.cfs_period_us");
    double quota = 0, period = 0;
    if (q >> quota && p >> period && quota > 0 && period > 0) return quota / period;
  }
  return 0;
}

}  // namespace

int AvailableCpus() {
  int cpus = 0;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) cpus = CPU_COUNT(&set);
  if (cpus <= 0) cpus = 1;
  const double quota = CgroupQuota();
  if (quota > 0) cpus = std::min(cpus, std::max(1, static_cast<int>(std::ceil(quota))));
  return cpus;
}

}  // namespace topserve::engine

namespace topserve::engine {

std::string CpuModelName() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) {
        size_t b = line.find_first_not_of(" \t", colon + 1);
        return b == std::string::npos ? "unknown" : line.substr(b);
      }
    }
  }
  return "unknown";
}

const CpuFeatures& GetCpuFeatures() {
  static const CpuFeatures features = [] {
    CpuFeatures f;
    __builtin_cpu_init();
    f.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    f.avx512_bf16 = f.avx512 && __builtin_cpu_supports("avx512bf16");
    f.avx512_vnni = f.avx512 && __builtin_cpu_supports("avx512vnni");
    // CPUID leaf 7 (EDX bits 22, 24, 25: AMX-BF16, AMX-TILE, AMX-INT8) rather than
    // __builtin_cpu_supports, whose "amx-*" names clang 14 (the fuzz build) does not know. Whether
    // the kernel lets us use the tiles is oneDNN's business (it asks for them itself).
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) {
      constexpr unsigned kAmx = (1u << 22) | (1u << 24) | (1u << 25);
      f.amx = (edx & kAmx) == kAmx;
    }
    return f;
  }();
  return features;
}

}  // namespace topserve::engine
