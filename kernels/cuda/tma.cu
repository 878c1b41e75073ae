// Host side of tma.cuh: tensor maps, encoded through the driver's cuTensorMapEncodeTiled, reached by
// the runtime's entry-point query (so nothing links libcuda directly).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/tma.cuh"

#include <cudaTypedefs.h>

#include <string>

namespace llmserve::cuda {

CUtensorMap cache_rows_map(const void* base, int64_t rows, int64_t heads, int64_t D, uint32_t box_rows) {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    const cudaError_t e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found);
    if (e != cudaSuccess || found != cudaDriverEntryPointSuccess || !fn)
      check(e != cudaSuccess ? e : cudaErrorNotSupported, "cuTensorMapEncodeTiled entry point");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  CUtensorMap map{};
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(D), static_cast<cuuint64_t>(heads), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(D) * 2, static_cast<cuuint64_t>(heads * D) * 2};  // bytes
  const cuuint32_t box[3] = {64, 1, box_rows}, step[3] = {1, 1, 1};
  const CUresult r = encode(&map, CU_TENSOR_MAP_DATA_TYPE_UINT16, 3, const_cast<void*>(base), dims, strides, box, step,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    check(cudaErrorInvalidValue, ("cuTensorMapEncodeTiled: error " + std::to_string(static_cast<int>(r))).c_str());
  return map;
}

}  // namespace llmserve::cuda
