// How much host memory this process may still take: the kernel's MemAvailable, capped by the memory
// limit of the process's cgroup (Slurm jobs and containers run under one) less what the cgroup uses.
#pragma once
#include <cstddef>
#include <string>

namespace llmserve {

// Bytes available, or false when neither /proc/meminfo nor sysconf answers. `source` (optional) says
// which bound applied ("MemAvailable" or "cgroup limit").
bool host_memory_available(size_t* bytes, std::string* source = nullptr);

// The room left under the memory limits of a process's cgroup and its ancestors (a Slurm job's limit
// sits on a parent of the step's group): the smallest limit less usage, from cgroup v2 (memory.max,
// memory.current) or v1 (memory.limit_in_bytes, memory.usage_in_bytes under <root>/memory).
// `proc_cgroup` is the text of /proc/self/cgroup, `cgroup_root` where the hierarchy is mounted
// (/sys/fs/cgroup). False when no level has a limit.
bool cgroup_memory_room(const std::string& proc_cgroup, const std::string& cgroup_root, unsigned long long* room);

}  // namespace llmserve
