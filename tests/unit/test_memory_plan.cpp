// vLLM's memory plan (src/model/memory_plan.h): the KV cache gets gpu_memory_utilization x the device
// less what is in use after loading and less the profiled activation peak.
#include <gtest/gtest.h>

#include "model/memory_plan.h"

using namespace llmserve;

namespace {
constexpr double GiB = double(1ull << 30);
}

TEST(MemoryPlan, KvCacheGetsWhatIsLeftOfTheUtilizedShare) {
  // The H100 start-up of docs/performance.md: 80 GiB device, 76.5 GiB free after loading, 1 GiB peak.
  const MemoryPlan p = plan_memory(size_t(80) << 30, size_t(765) * (size_t(1) << 30) / 10, 1.0 * GiB, 0.9);
  EXPECT_DOUBLE_EQ(p.used, 3.5 * GiB);
  EXPECT_DOUBLE_EQ(p.kv, 0.9 * 80 * GiB - 3.5 * GiB - 1.0 * GiB);
  EXPECT_EQ(p.describe(8192),
            "memory plan: 80.00 GiB device x gpu_memory_utilization 0.9 = 72.00 GiB; in use after loading (weights, "
            "context, other processes) 3.50 GiB; activation peak over 8192 tokens 1.00 GiB; KV cache 67.50 GiB");
}

TEST(MemoryPlan, NoRoomSaysWhatToChange) {
  // Another process holds most of the device: nothing is left under a 0.5 share.
  const MemoryPlan p = plan_memory(size_t(80) << 30, size_t(40) << 30, 2.0 * GiB, 0.5);
  EXPECT_LT(p.kv, 0);
  EXPECT_NE(p.describe(2048).find("KV cache 0.00 GiB"), std::string::npos);
  const std::string why = p.no_room();
  EXPECT_NE(why.find("40.00 GiB in use + 2.00 GiB activations > 0.5 x 80.00 GiB"), std::string::npos) << why;
  EXPECT_NE(why.find("raise gpu_memory_utilization"), std::string::npos);
}

TEST(MemoryPlan, FreeAboveTotalCountsNothingInUse) {
  // A free figure above the total (an odd report) is not taken as negative use.
  const MemoryPlan p = plan_memory(size_t(16) << 30, (size_t(16) << 30) + 4096, 0.0, 0.9);
  EXPECT_DOUBLE_EQ(p.used, 0.0);
  EXPECT_DOUBLE_EQ(p.kv, 0.9 * 16 * GiB);
}
