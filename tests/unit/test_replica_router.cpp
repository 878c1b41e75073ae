// data_parallel_size's internal load balancing (server/replica_router.h): the choice of a replica, the
// merged metrics, a relayed answer's status. (The server suite runs two replicas behind one endpoint.)
#include <gtest/gtest.h>

#include <optional>
#include <vector>

#include "server/replica_router.h"

using namespace llmserve;

TEST(ReplicaRouter, FewestInFlightThenInTurn) {
  ReplicaRouter router({{"127.0.0.1", 1}, {"127.0.0.1", 2}});
  ASSERT_EQ(router.count(), 3u);
  EXPECT_EQ(router.address(2).port, 2);
  // Nothing in flight: each pick goes to the next replica in turn.
  std::vector<size_t> idle;
  for (int i = 0; i < 6; ++i) idle.push_back(router.pick().index());  // (each lease ends at once)
  EXPECT_EQ(idle, (std::vector<size_t>{0, 1, 2, 0, 1, 2}));
  EXPECT_EQ(router.in_flight(), (std::vector<int64_t>{0, 0, 0}));
  // Held leases: the next goes where fewest are in flight, whatever the turn.
  std::vector<ReplicaRouter::Lease> held;
  for (int i = 0; i < 3; ++i) held.push_back(router.pick());
  held.push_back(router.pick());
  EXPECT_EQ(router.in_flight(), (std::vector<int64_t>{2, 1, 1}));
  {
    const size_t freed = held[1].index();
    held.erase(held.begin() + 1);  // (a lease moved within the vector keeps counting once)
    std::vector<int64_t> expect{2, 1, 1};
    --expect[freed];
    EXPECT_EQ(router.in_flight(), expect);
    ReplicaRouter::Lease next = router.pick();
    EXPECT_EQ(next.index(), freed);  // the one replica with one request fewer
  }
  held.clear();
  EXPECT_EQ(router.in_flight(), (std::vector<int64_t>{0, 0, 0}));
  // A lease moved into another ends once.
  ReplicaRouter::Lease a = router.pick(), b = router.pick();
  b = std::move(a);
  EXPECT_EQ(router.in_flight()[0] + router.in_flight()[1] + router.in_flight()[2], 1);
}

TEST(ReplicaRouter, MetricsMergedByFamilyWithEngineLabels) {
  const std::string r0 =
      "# HELP vllm:num_requests_running Requests running.\n# TYPE vllm:num_requests_running gauge\n"
      "vllm:num_requests_running{model_name=\"m\"} 1\n"
      "# HELP vllm:e2e Latency.\n# TYPE vllm:e2e histogram\n"
      "vllm:e2e_bucket{model_name=\"m\",le=\"0.5\"} 2\nvllm:e2e_bucket{model_name=\"m\",le=\"+Inf\"} 3\n"
      "vllm:e2e_sum{model_name=\"m\"} 1.5\nvllm:e2e_count{model_name=\"m\"} 3\n";
  const std::string r1 =
      "# HELP vllm:num_requests_running Requests running.\n# TYPE vllm:num_requests_running gauge\n"
      "vllm:num_requests_running{model_name=\"m\"} 4\n"
      "# HELP vllm:e2e Latency.\n# TYPE vllm:e2e histogram\n"
      "vllm:e2e_bucket{model_name=\"m\",le=\"0.5\"} 0\nvllm:e2e_bucket{model_name=\"m\",le=\"+Inf\"} 1\n"
      "vllm:e2e_sum{model_name=\"m\"} 0.7\nvllm:e2e_count{model_name=\"m\"} 1\n"
      "# HELP only_here A family replica 0 lacks.\n# TYPE only_here counter\nonly_here 7\n";
  EXPECT_EQ(merge_replica_metrics({r0, r1}),
            "# HELP vllm:num_requests_running Requests running.\n# TYPE vllm:num_requests_running gauge\n"
            "vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 1\n"
            "vllm:num_requests_running{engine=\"1\",model_name=\"m\"} 4\n"
            "# HELP vllm:e2e Latency.\n# TYPE vllm:e2e histogram\n"
            "vllm:e2e_bucket{engine=\"0\",model_name=\"m\",le=\"0.5\"} 2\nvllm:e2e_bucket{engine=\"0\",model_name=\"m\",le=\"+Inf\"} 3\n"
            "vllm:e2e_sum{engine=\"0\",model_name=\"m\"} 1.5\nvllm:e2e_count{engine=\"0\",model_name=\"m\"} 3\n"
            "vllm:e2e_bucket{engine=\"1\",model_name=\"m\",le=\"0.5\"} 0\nvllm:e2e_bucket{engine=\"1\",model_name=\"m\",le=\"+Inf\"} 1\n"
            "vllm:e2e_sum{engine=\"1\",model_name=\"m\"} 0.7\nvllm:e2e_count{engine=\"1\",model_name=\"m\"} 1\n"
            "# HELP only_here A family replica 0 lacks.\n# TYPE only_here counter\nonly_here{engine=\"1\"} 7\n");
  // A replica that did not answer (empty text) adds nothing.
  EXPECT_EQ(merge_replica_metrics({"# TYPE x gauge\nx{} 1\n", ""}), "# TYPE x gauge\nx{engine=\"0\"} 1\n");
}

TEST(ReplicaRouter, AnswerStatus) {
  EXPECT_EQ(answer_status("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"), 200);
  EXPECT_EQ(answer_status("HTTP/1.1 400 Bad Request\r\n"), 400);
  EXPECT_EQ(answer_status("HTTP/1.1 200 O"), 0);  // (the line not all there yet)
  EXPECT_EQ(answer_status("garbage\r\n"), 0);
  EXPECT_EQ(answer_status("HTTP/1.1 2x0 OK\r\n"), 0);
}
