#include "common/host_memory.h"

#include <unistd.h>

#include <fstream>
#include <sstream>

namespace llmserve {
namespace {

// The first whitespace-separated number of `path`, or false (missing file, "max", garbage).
bool read_number(const std::string& path, unsigned long long* v) {
  std::ifstream f(path);
  std::string s;
  if (!(f >> s) || s.empty() || s.find_first_not_of("0123456789") != std::string::npos) return false;
  std::istringstream(s) >> *v;
  return true;
}

}  // namespace

bool cgroup_memory_room(const std::string& proc_cgroup, const std::string& cgroup_root, unsigned long long* room) {
  bool found = false;
  auto visit = [&](const std::string& mount, std::string rel, const char* max_file, const char* used_file) {
    for (;;) {  // from the group up to the mount's root
      unsigned long long limit = 0, used = 0;
      if (read_number(mount + rel + "/" + max_file, &limit) && read_number(mount + rel + "/" + used_file, &used) &&
          limit < (1ull << 60)) {  // v1 writes "no limit" as a huge number
        const unsigned long long r = limit > used ? limit - used : 0;
        if (!found || r < *room) *room = r;
        found = true;
      }
      if (rel.empty() || rel == "/") break;
      rel = rel.substr(0, rel.find_last_of('/'));
    }
  };
  std::istringstream lines(proc_cgroup);
  std::string line;
  while (std::getline(lines, line)) {  // "id:controllers:path"
    const size_t a = line.find(':'), b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1), rel = line.substr(b + 1);
    if (controllers.empty())
      visit(cgroup_root, rel, "memory.max", "memory.current");  // v2
    else if (("," + controllers + ",").find(",memory,") != std::string::npos)
      visit(cgroup_root + "/memory", rel, "memory.limit_in_bytes", "memory.usage_in_bytes");  // v1
  }
  return found;
}

bool host_memory_available(size_t* bytes, std::string* source) {
  unsigned long long avail = 0;
  bool have = false;
  {
    std::ifstream f("/proc/meminfo");
    std::string key;
    unsigned long long kib = 0;
    std::string unit;
    while (f >> key >> kib) {
      std::getline(f, unit);
      if (key == "MemAvailable:") {
        avail = kib * 1024ull;
        have = true;
        break;
      }
    }
  }
  if (!have) {
    const long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0) return false;
    avail = static_cast<unsigned long long>(pages) * static_cast<unsigned long long>(page);
  }
  if (source) *source = "MemAvailable";
  std::string proc_cgroup;
  {
    std::ifstream f("/proc/self/cgroup");
    std::ostringstream text;
    text << f.rdbuf();
    proc_cgroup = text.str();
  }
  unsigned long long room = 0;
  if (cgroup_memory_room(proc_cgroup, "/sys/fs/cgroup", &room) && room < avail) {
    avail = room;
    if (source) *source = "cgroup limit";
  }
  *bytes = static_cast<size_t>(avail);
  return true;
}

}  // namespace llmserve
