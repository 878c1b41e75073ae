// `llmserve config config.yaml [--option value ...]`: validates a configuration without MPI ranks or a
// model load and prints the settings a launcher needs, one `key=value` per line (the YAML file first,
// then the command-line options, as `serve` applies them). scripts/launch.sh reads it before mpirun.
#include <cstdio>

#include "cli/commands/commands.h"
#include "common/error.h"
#include "config/config.h"

namespace llmserve {

int cmd_config(const std::vector<std::string>& args, MPI_Comm world) {
  int size = 1, rank = 0;
  MPI_Comm_size(world, &size);
  MPI_Comm_rank(world, &rank);
  if (size != 1) throw Error("llmserve config runs as one process (not under mpirun)");
  Config cfg;
  std::vector<std::string> rest = config_parse_args(cfg, args);
  config_take_model_argument(cfg, rest);
  if (!rest.empty()) throw Error(cat("unexpected argument '", rest[0], "'"));
  config_validate(cfg);
  const std::pair<const char*, std::string> rows[] = {
      {"model", cfg.model},
      {"backend", cfg.backend},
      {"dtype", cfg.dtype},
      {"tensor_parallel_size", cat(cfg.tensor_parallel_size)},
      {"pipeline_parallel_size", cat(cfg.pipeline_parallel_size)},
      {"data_parallel_size", cat(cfg.data_parallel_size)},
      {"world_size", cat(static_cast<int64_t>(cfg.data_parallel_size) * cfg.tensor_parallel_size * cfg.pipeline_parallel_size)},
      {"host", cfg.host},
      {"port", cat(cfg.port)},
      {"served_model_name", cfg.served_model_name.empty() ? cfg.model : cfg.served_model_name[0]},
      {"api_key_set", cfg.api_key.empty() ? "false" : "true"},
  };
  for (const auto& [k, v] : rows) {
    if (v.find('\n') != std::string::npos) throw Error(cat("config: ", k, " must not contain a line break"));
    std::printf("%s=%s\n", k, v.c_str());
  }
  return 0;
}

}  // namespace llmserve
