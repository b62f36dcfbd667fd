// Kernel family `assignment`: batched exact linear assignment (min-cost injection of rows into
// columns). CPU: csrc/cpu/assignment_cpu.cpp (shortest augmenting paths, OpenMP over the batch).
// CUDA: csrc/cuda/assignment_cuda.cu (one block per problem: auction warm start + exact
// shortest augmenting paths). Dispatch: csrc/dispatch.cpp. Python: flowfast/ops/assignment.py.
#pragma once

#include "flowfast/common.h"

namespace ff {

/// Parameters of one batched assignment call.
/// \param[in]  cost         (B, n, m) float32/float64, n <= m, finite; last dim unit stride.
/// \param[out] col_for_row  (B, n) int64, contiguous: column assigned to each row.
/// \param[in]  maximize     maximize the total instead of minimizing it.
/// \param[in]  workspace    CUDA only: device scratch of assignment_workspace_bytes() bytes,
///                          allocated by the caller's framework (C++ never allocates device memory).
/// \param[in]  stream       CUDA only: the caller's cudaStream_t (e.g. torch's current stream).
struct AssignmentParams {
  TensorView cost;
  TensorView col_for_row;
  bool maximize = false;
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
  void* stream = nullptr;
};

/// Device scratch the CUDA path needs for a (B, n, m) problem (0 for CPU).
int64_t assignment_workspace_bytes(DeviceType device, int64_t B, int64_t n, int64_t m);

void assignment_cpu(const AssignmentParams& p);
#if defined(FLOWFAST_WITH_CUDA)
void assignment_cuda(const AssignmentParams& p);
int64_t assignment_cuda_workspace_bytes(int64_t B, int64_t n, int64_t m);
#endif

/// The one dispatch point of the family: validates and routes by device.
void assignment(const AssignmentParams& p);

}  // namespace ff
