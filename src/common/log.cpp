#include "common/log.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <mutex>

namespace llmserve {
namespace {
int g_rank = 0;
LogLevel g_level = [] {
  const char* e = std::getenv("LLMSERVE_LOG_LEVEL");
  if (!e) return LogLevel::Info;
  std::string s(e);
  if (s == "debug") return LogLevel::Debug;
  if (s == "warn" || s == "warning") return LogLevel::Warn;
  if (s == "error") return LogLevel::Error;
  return LogLevel::Info;
}();
bool g_all_ranks = std::getenv("LLMSERVE_LOG_ALL_RANKS") != nullptr;
std::mutex g_mu;
}  // namespace

void log_set_rank(int rank) { g_rank = rank; }
void log_set_level(LogLevel level) { g_level = level; }

bool log_enabled(LogLevel level) {
  return level >= g_level && (g_rank == 0 || level >= LogLevel::Warn || g_all_ranks);
}

void log_write(LogLevel level, const std::string& msg) {
  if (!log_enabled(level)) return;
  static const char* names[] = {"DEBUG", "INFO", "WARN", "ERROR"};
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char ts[32];
  std::strftime(ts, sizeof ts, "%H:%M:%S", &tm);
  std::lock_guard<std::mutex> lock(g_mu);
  std::fprintf(stderr, "%s %s [rank %d] %s\n", names[static_cast<int>(level)], ts, g_rank, msg.c_str());
}

}  // namespace llmserve
