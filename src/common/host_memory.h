// How much host memory this process may still take: the kernel's MemAvailable, capped by the memory
// limit of the process's cgroup (Slurm jobs and containers run under one) less what the cgroup uses.
#pragma once
#include <cstddef>
#include <string>

namespace llmserve {

// Bytes available, or false when neither /proc/meminfo nor sysconf answers. `source` (optional) says
// which bound applied ("MemAvailable" or "cgroup limit").
bool host_memory_available(size_t* bytes, std::string* source = nullptr);

}  // namespace llmserve
