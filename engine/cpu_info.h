// How many CPUs this process may use: the affinity mask, capped by a cgroup CPU quota.
#pragma once

namespace topserve::engine {

// At least 1. Reads sched_getaffinity and cgroup v2 cpu.max / v1 cfs_quota (rounded up).
int AvailableCpus();

}  // namespace topserve::engine
