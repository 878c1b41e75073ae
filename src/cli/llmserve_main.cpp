// llmserve: one SPMD MPI program. `mpirun -np N llmserve config.yaml` (or `llmserve serve ...`)
// serves; `llmserve logits ...` runs prompts offline. Errors found at start-up are agreed by all
// ranks: rank 0 prints one message and every rank exits 1. Anything unexpected later aborts the job.
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cli/commands/commands.h"
#include "common/error.h"
#include "common/log.h"
#include "config/config.h"
#include "dist/collective_check.h"

namespace {

const char* kUsage =
    "usage: llmserve [serve] config.yaml [--option value ...]\n"
    "       llmserve [serve] MODEL.h5 [--option value ...]   (as vllm serve MODEL; `serve` needed for a config.json)\n"
    "       llmserve logits config.yaml|m.h5 (--prompt-ids 1,2,3 | --prompts p.jsonl)\n"
    "                (p.jsonl lines: {\"ids\": [...]}, {\"messages\": [...]} or {\"prompt\": \"text\"})\n"
    "                [--max-tokens N] [--stop-at-eos] [--top-k K] [--output out.jsonl] [--logits-output last.f32]\n"
    "       llmserve generate config.yaml|m.h5 --input requests.jsonl --output results.jsonl [--option value ...]\n"
    "       llmserve run-batch config.yaml|m.h5 -i batch.jsonl -o results.jsonl [--option value ...]\n"
    "                (OpenAI's batch lines: {\"custom_id\", \"method\": \"POST\", \"url\": \"/v1/chat/completions\", \"body\"})\n"
    "       llmserve tokenize config.yaml|--model m.h5 [--add-special-tokens | --messages] TEXT|-\n"
    "       llmserve detokenize config.yaml|--model m.h5 [--skip-special-tokens] 1,2,3|-\n"
    "       llmserve config config.yaml [--option value ...]   (validate; print the launch settings)\n"
    "       llmserve --help | --version\n"
    "Run under MPI for several ranks: mpirun -np <tp*pp> llmserve config.yaml\n\n";

}  // namespace

int main(int argc, char** argv) {
  // Started without mpirun (one process), Open MPI's singleton starts a supporting daemon for processes it
  // might spawn (~0.3 s of start-up); llmserve spawns none. A launcher's start is unaffected; a value the user
  // set is kept.
  setenv("OMPI_MCA_ess_singleton_isolated", "1", 0);
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  llmserve::log_set_rank(rank);
  std::vector<std::string> args(argv + 1, argv + argc);
  int rc = 0;
  try {
    if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
      if (rank == 0) std::printf("%s%s", kUsage, llmserve::config_help().c_str());
      rc = args.empty() ? 2 : 0;
    } else if (args[0] == "--version") {
      if (rank == 0) std::printf("llmserve 0.1.0\n");
    } else if (args[0] == "logits") {
      rc = llmserve::cmd_logits({args.begin() + 1, args.end()}, MPI_COMM_WORLD);
    } else if (args[0] == "generate") {
      rc = llmserve::cmd_generate({args.begin() + 1, args.end()}, MPI_COMM_WORLD);
    } else if (args[0] == "run-batch") {
      rc = llmserve::cmd_run_batch({args.begin() + 1, args.end()}, MPI_COMM_WORLD);
    } else if (args[0] == "tokenize") {
      rc = llmserve::cmd_tokenize({args.begin() + 1, args.end()}, MPI_COMM_WORLD);
    } else if (args[0] == "detokenize") {
      rc = llmserve::cmd_detokenize({args.begin() + 1, args.end()}, MPI_COMM_WORLD);
    } else if (args[0] == "config") {
      rc = llmserve::cmd_config({args.begin() + 1, args.end()}, MPI_COMM_WORLD);
    } else if (args[0] == "serve") {
      rc = llmserve::cmd_serve({args.begin() + 1, args.end()}, MPI_COMM_WORLD);
    } else if (args[0].rfind("-", 0) == 0 || args[0].ends_with(".yaml") || args[0].ends_with(".yml") ||
               args[0].ends_with(".h5") || args[0].ends_with(".hdf5")) {
      rc = llmserve::cmd_serve(args, MPI_COMM_WORLD);
    } else {
      if (rank == 0) std::fprintf(stderr, "llmserve: error: unknown command '%s'\n%s", args[0].c_str(), kUsage);
      rc = 2;
    }
  } catch (const llmserve::AgreedError& e) {
    if (rank == 0) std::fprintf(stderr, "llmserve: error: %s\n", e.what());
    rc = 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llmserve: error on rank %d: %s\n", rank, e.what());
    std::fflush(stderr);
    int size = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size > 1) MPI_Abort(MPI_COMM_WORLD, 1);
    rc = 1;
  }
  MPI_Finalize();
  return rc;
}
