// Minimal logging to stderr. Ranks other than 0 log only warnings and errors unless
// LLMSERVE_LOG_ALL_RANKS=1, so an 8-rank job does not print everything eight times.
#pragma once
#include <string>

#include "common/error.h"

namespace llmserve {

enum class LogLevel { Debug = 0, Info = 1, Warn = 2, Error = 3 };

void log_set_rank(int rank);
void log_set_level(LogLevel level);
void log_write(LogLevel level, const std::string& msg);
// Whether a message of this level would be written on this rank (to skip building costly ones).
bool log_enabled(LogLevel level);

template <typename... Args> void log_info(const Args&... a) { log_write(LogLevel::Info, cat(a...)); }
template <typename... Args> void log_warn(const Args&... a) { log_write(LogLevel::Warn, cat(a...)); }
template <typename... Args> void log_debug(const Args&... a) { log_write(LogLevel::Debug, cat(a...)); }

}  // namespace llmserve
