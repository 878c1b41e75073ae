// The server's Prometheus histograms (server/histogram.h): cumulative buckets, sum and count, and vLLM's
// 1-2-5 buckets of a count.
#include <gtest/gtest.h>

#include "server/histogram.h"

using namespace llmserve;

TEST(Histogram, CumulativeBucketsSumAndCount) {
  Histogram h({0.5, 1, 2.5});
  for (double v : {0.1, 0.5, 0.7, 3.0}) h.observe(v);
  EXPECT_EQ(h.text("x", "An x.", "m"),
            "# HELP x An x.\n# TYPE x histogram\n"
            "x_bucket{model_name=\"m\",le=\"0.5\"} 2\nx_bucket{model_name=\"m\",le=\"1\"} 3\n"
            "x_bucket{model_name=\"m\",le=\"2.5\"} 3\nx_bucket{model_name=\"m\",le=\"+Inf\"} 4\n"
            "x_sum{model_name=\"m\"} 4.3\nx_count{model_name=\"m\"} 4\n");
}

TEST(Histogram, SumKeepsEveryDigit) {
  Histogram h({1});
  h.observe(274.0);
  h.observe(0.828512);
  EXPECT_NE(h.text("x", "An x.", "m").find("x_sum{model_name=\"m\"} 274.828512\n"), std::string::npos);
  h.observe(99999.171488);
  EXPECT_NE(h.text("x", "An x.", "m").find("x_sum{model_name=\"m\"} 100274\n"), std::string::npos);
}

TEST(Histogram, OneTwoFiveBuckets) {
  EXPECT_EQ(buckets_1_2_5(512), (std::vector<double>{1, 2, 5, 10, 20, 50, 100, 200, 500}));
  EXPECT_EQ(buckets_1_2_5(1000), (std::vector<double>{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000}));
  EXPECT_EQ(buckets_1_2_5(1), (std::vector<double>{1}));
}
