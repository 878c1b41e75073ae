// The sampler's draw on the GPU (counterpart of kernels/cpu/draw.cpp): one block per row; each thread
// scans a strided part of the row keeping its best (score, token), then the block reduces them with
// ties to the smaller token. Scores are doubles as on the host, so the draws are the host's.
#include <cfloat>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.cuh"

namespace llmserve::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    draw_rows_k(const float* logits, int64_t stride, int64_t L, int64_t token_offset, const RowDraw* rows, float* best,
                int32_t* idx) {
  const int64_t i = blockIdx.x;
  const float* row = logits + i * stride;
  const RowDraw r = rows[i];
  double bv = -INFINITY;
  int64_t bi = INT64_MAX;
  for (int64_t k = threadIdx.x; k < L; k += kThreads) {
    const float x = r.greedy ? row[k] : row[k] * r.inv_temperature;
    if (x == -INFINITY) continue;
    const double score = r.greedy ? static_cast<double>(x) : x + draw_gumbel(r.seed, r.position, token_offset + k);
    if (score > bv) bv = score, bi = k;
  }
  __shared__ double sv[kThreads];
  __shared__ int64_t si[kThreads];
  sv[threadIdx.x] = bv;
  si[threadIdx.x] = bi;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w /= 2) {
    if (threadIdx.x < w) {
      const double ov = sv[threadIdx.x + w];
      const int64_t oi = si[threadIdx.x + w];
      if (ov > sv[threadIdx.x] || (ov == sv[threadIdx.x] && oi < si[threadIdx.x])) {
        sv[threadIdx.x] = ov;
        si[threadIdx.x] = oi;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const bool found = si[0] != INT64_MAX;
    best[i] = found ? static_cast<float>(sv[0]) : -INFINITY;
    idx[i] = found ? static_cast<int32_t>(token_offset + si[0]) : INT32_MAX;
  }
}

}  // namespace

void draw_rows(const float* logits, int64_t n, int64_t stride, int64_t L, int64_t token_offset, const RowDraw* rows,
               float* best, int32_t* idx, cudaStream_t s) {
  if (n == 0) return;
  draw_rows_k<<<static_cast<unsigned>(n), kThreads, 0, s>>>(logits, stride, L, token_offset, rows, best, idx);
  check(cudaGetLastError(), "draw_rows");
}

}  // namespace llmserve::cuda
