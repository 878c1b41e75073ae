// llmserve subcommands. Each runs on every MPI rank and returns the process exit code.
#pragma once
#include <mpi.h>

#include <string>
#include <vector>

#include "config/config.h"

namespace llmserve {

int cmd_logits(const std::vector<std::string>& args, MPI_Comm world);
int cmd_generate(const std::vector<std::string>& args, MPI_Comm world);
int cmd_serve(const std::vector<std::string>& args, MPI_Comm world);
int cmd_tokenize(const std::vector<std::string>& args, MPI_Comm world);
int cmd_detokenize(const std::vector<std::string>& args, MPI_Comm world);
int cmd_config(const std::vector<std::string>& args, MPI_Comm world);

// False for a dummy model given by its config.json: there is no .h5 file (and no tokenizer) to open.
bool model_has_file(const Config& cfg);

// Writes `text` to `path` through a temporary file and a rename, so readers never see half a file.
void write_file_atomic(const std::string& path, const std::string& text);
// Throws unless write_file_atomic could write `path` (its temporary file can be made): checked before
// the model loads, which takes minutes on GPUs, so that a wrong output path fails at once.
void check_writable(const std::string& path, const char* command);

}  // namespace llmserve
