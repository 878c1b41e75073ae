// vLLM's GPU memory plan: of gpu_memory_utilization x the device's memory, what is not already in use
// after loading (weights, CUDA context, workspaces, other processes) and not needed by the activation
// peak of a profiling forward at the largest batch goes to the KV cache.
#pragma once
#include <cstddef>
#include <string>

namespace llmserve {

struct MemoryPlan {
  double total = 0, used = 0, peak = 0, utilization = 0;  // bytes (utilization: a fraction)
  double kv = 0;                                          // bytes for the KV cache; <= 0: no room
  // "memory plan: 79.18 GiB device x gpu_memory_utilization 0.9 = ..." (the start-up log line).
  std::string describe(long long profiled_tokens) const;
  // Why there is no room, with what to change (when kv <= 0).
  std::string no_room() const;
};

// Bytes as GiB with two decimals ("3.08").
std::string gib(double bytes);

MemoryPlan plan_memory(size_t total_bytes, size_t free_bytes, double activation_peak_bytes, double utilization);

}  // namespace llmserve
