// llmserve subcommands. Each runs on every MPI rank and returns the process exit code.
#pragma once
#include <mpi.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config/config.h"
#include "server/openai_api.h"
#include "tokenizer/tokenizer_docs.h"

namespace llmserve {

class ModelRunner;

int cmd_logits(const std::vector<std::string>& args, MPI_Comm world);
int cmd_generate(const std::vector<std::string>& args, MPI_Comm world);
int cmd_serve(const std::vector<std::string>& args, MPI_Comm world);
int cmd_tokenize(const std::vector<std::string>& args, MPI_Comm world);
int cmd_detokenize(const std::vector<std::string>& args, MPI_Comm world);
int cmd_config(const std::vector<std::string>& args, MPI_Comm world);
int cmd_run_batch(const std::vector<std::string>& args, MPI_Comm world);

// False for a dummy model given by its config.json: there is no .h5 file (and no tokenizer) to open.
bool model_has_file(const Config& cfg);
// The tokenizer documents text is served with: the tokenizer option's (a directory or a model file), else
// the model file's; none for a dummy model without the option. Throws Error when the option's path has no
// tokenizer.
std::optional<TokenizerDocs> served_tokenizer_docs(const Config& cfg);

// Rank 0's OpenAI front end for a loaded model (serve, run-batch): its tokenizer and chat template (when
// the model file has them, kept in tok and chat) and the ApiContext built on them and the configuration.
ApiContext api_context(const Config& cfg, const ModelRunner& runner, std::unique_ptr<Tokenizer>& tok,
                       std::unique_ptr<ChatTemplate>& chat);

// A batch command's arguments (generate, run-batch): its input and output file options (each under
// the names given: "--input", "-i", ...) and the configuration's options and model. Throws Error naming
// `command` for a missing value or file, and (rank 0) an input it cannot read or an output it cannot write.
void parse_batch_args(const std::vector<std::string>& args, const char* command, const std::vector<std::string>& input_names,
                      const std::vector<std::string>& output_names, bool rank0, Config& cfg, std::string& input,
                      std::string& output);

// Writes `text` to `path` through a temporary file and a rename, so readers never see half a file.
void write_file_atomic(const std::string& path, const std::string& text);
// Throws unless write_file_atomic could write `path` (its temporary file can be made): checked before
// the model loads, which takes minutes on GPUs, so that a wrong output path fails at once.
void check_writable(const std::string& path, const char* command);

}  // namespace llmserve
