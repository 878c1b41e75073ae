#include "dist/collective_check.h"

#include <exception>
#include <string>
#include <vector>

#include "common/error.h"

namespace llmserve {

void agree(MPI_Comm comm, const std::function<void()>& fn) {
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  std::string msg;
  bool failed = false;
  try {
    fn();
  } catch (const std::exception& e) {
    msg = e.what();
    failed = true;
  }
  int first_failed = failed ? rank : size;
  MPI_Allreduce(MPI_IN_PLACE, &first_failed, 1, MPI_INT, MPI_MIN, comm);
  if (first_failed == size) return;
  unsigned long len = msg.size();
  MPI_Bcast(&len, 1, MPI_UNSIGNED_LONG, first_failed, comm);
  std::vector<char> buf(len);
  if (rank == first_failed) buf.assign(msg.begin(), msg.end());
  MPI_Bcast(buf.data(), static_cast<int>(len), MPI_CHAR, first_failed, comm);
  std::string text(buf.begin(), buf.end());
  // Messages that do not depend on the rank (config errors) read the same from every rank; say which
  // rank failed only when it is not the rank that prints.
  if (first_failed != 0 && size > 1) text = cat(text, " (on rank ", first_failed, ")");
  throw AgreedError(text);
}

}  // namespace llmserve
