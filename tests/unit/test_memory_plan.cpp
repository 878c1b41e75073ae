// vLLM's memory plan (src/model/memory_plan.h): the KV cache gets gpu_memory_utilization x the device
// less what is in use after loading and less the profiled activation peak.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "common/host_memory.h"
#include "model/memory_plan.h"
#include "test_util.h"

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

namespace {
void write_text(const std::filesystem::path& p, const std::string& text) {
  std::filesystem::create_directories(p.parent_path());
  std::ofstream(p) << text;
}
}  // namespace

// The cgroup bound of the weights check: the tightest limit less usage of the process's group and its
// ancestors, for cgroup v2 and v1 layouts as a Slurm step sees them (the job's limit on a parent).
TEST(HostMemory, CgroupRoomIsTheTightestAncestorLimit) {
  namespace fs = std::filesystem;
  const fs::path root = llmserve::testing::temp_dir("cgroup");
  // v2: the job has 1000 bytes with 300 used; the step below it has no limit ("max").
  write_text(root / "v2/job/memory.max", "1000\n");
  write_text(root / "v2/job/memory.current", "300\n");
  write_text(root / "v2/job/step/memory.max", "max\n");
  write_text(root / "v2/job/step/memory.current", "100\n");
  unsigned long long room = 0;
  ASSERT_TRUE(cgroup_memory_room("0::/job/step\n", (root / "v2").string(), &room));
  EXPECT_EQ(room, 700u);
  // A tighter limit lower down wins.
  write_text(root / "v2/job/step/memory.max", "150\n");
  ASSERT_TRUE(cgroup_memory_room("0::/job/step\n", (root / "v2").string(), &room));
  EXPECT_EQ(room, 50u);
  // v1 (memory controller line among others): "no limit" is a huge number; usage over the limit is 0 room.
  write_text(root / "v1/memory/a/memory.limit_in_bytes", "2000\n");
  write_text(root / "v1/memory/a/memory.usage_in_bytes", "500\n");
  write_text(root / "v1/memory/a/b/memory.limit_in_bytes", "9223372036854771712\n");
  write_text(root / "v1/memory/a/b/memory.usage_in_bytes", "100\n");
  const std::string v1 = "9:name=systemd:/\n4:cpu,memory:/a/b\n2:cpuacct:/\n";
  ASSERT_TRUE(cgroup_memory_room(v1, (root / "v1").string(), &room));
  EXPECT_EQ(room, 1500u);
  write_text(root / "v1/memory/a/memory.usage_in_bytes", "2500\n");
  ASSERT_TRUE(cgroup_memory_room(v1, (root / "v1").string(), &room));
  EXPECT_EQ(room, 0u);
  // No limit anywhere, or no memory controller: no bound.
  EXPECT_FALSE(cgroup_memory_room("4:memory:/a/b\n", (root / "none").string(), &room));
  EXPECT_FALSE(cgroup_memory_room("2:cpuacct:/\n", (root / "v1").string(), &room));
  // The real machine: whatever it says, host_memory_available answers.
  size_t avail = 0;
  EXPECT_TRUE(host_memory_available(&avail));
  EXPECT_GT(avail, 0u);
}
