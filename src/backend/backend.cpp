#include "backend/backend.h"

namespace llmserve {

bool stacked_rows(const std::vector<const Tensor*>& parts) {
  if (parts.empty()) return false;
  const Tensor& first = *parts[0];
  const std::vector<int64_t> tail(first.shape.begin() + (first.shape.empty() ? 0 : 1), first.shape.end());
  const char* next = static_cast<const char*>(first.data);
  for (const Tensor* t : parts) {
    if (!t || !t->data || t->shape.empty() || t->dtype != first.dtype ||
        std::vector<int64_t>(t->shape.begin() + 1, t->shape.end()) != tail || t->data != next)
      return false;
    next += t->bytes();
  }
  return true;
}

Tensor stacked_view(const std::vector<const Tensor*>& parts) {
  if (!stacked_rows(parts)) throw std::invalid_argument("stacked_view: the tensors are not consecutive rows of one matrix");
  Tensor v = *parts[0];
  for (size_t i = 1; i < parts.size(); ++i) v.shape[0] += parts[i]->shape[0];
  return v;
}

}  // namespace llmserve
