#include "model/memory_plan.h"

#include <cstdio>

#include "common/error.h"

namespace llmserve {

std::string gib(double bytes) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.2f", bytes / double(1ull << 30));
  return buf;
}

MemoryPlan plan_memory(size_t total_bytes, size_t free_bytes, double activation_peak_bytes, double utilization) {
  MemoryPlan p;
  p.total = static_cast<double>(total_bytes);
  p.used = free_bytes < total_bytes ? static_cast<double>(total_bytes - free_bytes) : 0.0;
  p.peak = activation_peak_bytes;
  p.utilization = utilization;
  p.kv = utilization * p.total - p.used - p.peak;
  return p;
}

std::string MemoryPlan::describe(long long profiled_tokens) const {
  return cat("memory plan: ", gib(total), " GiB device x gpu_memory_utilization ", utilization, " = ",
             gib(utilization * total), " GiB; in use after loading (weights, context, other processes) ", gib(used),
             " GiB; activation peak over ", profiled_tokens, " tokens ", gib(peak), " GiB; KV cache ",
             gib(kv > 0 ? kv : 0.0), " GiB");
}

std::string MemoryPlan::no_room() const {
  return cat("memory plan: no room for the KV cache (", gib(used), " GiB in use + ", gib(peak), " GiB activations > ",
             utilization, " x ", gib(total),
             " GiB); raise gpu_memory_utilization, lower max_num_batched_tokens, or spread the model (tp/pp)");
}

}  // namespace llmserve
