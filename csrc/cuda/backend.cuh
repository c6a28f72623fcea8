// CUDA backend of the time loop: cuBLAS GEMMs (ATen's handle, bound to the current stream), one
// kernel launch per pointwise functor, device-to-device copies on the current stream. Nothing
// here allocates or synchronises with the host, so the loop in sequence.h only enqueues work.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <cublas_v2.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../cells.h"
#include "block_loop.cuh"

namespace fused_rnn {

template <class F>
__global__ void pointwise_kernel(F f, int64_t rows, int64_t col_begin, int64_t cols) {
  using V = at::opmath_type<typename F::scalar_type>;  // fp16/bf16 math runs in fp32
  const int64_t total = rows * cols;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    f.template apply<V>(idx / cols, col_begin + idx % cols);
  }
}

// cuBLAS, column-major, on ATen's handle (which getCurrentCUDABlasHandle binds to the current
// stream). ATen does not export its own at::cuda::blas::gemm specialisations.
inline void check_cublas(cublasStatus_t status) {
  TORCH_CHECK(status == CUBLAS_STATUS_SUCCESS, "fused_rnn: cuBLAS call failed with status ",
              static_cast<int>(status));
}

inline void cublas_gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                        float alpha, const float* a, int lda, const float* b, int ldb, float beta,
                        float* c, int ldc) {
  check_cublas(cublasSgemm(at::cuda::getCurrentCUDABlasHandle(), ta, tb, m, n, k, &alpha, a, lda,
                           b, ldb, &beta, c, ldc));
}
inline void cublas_gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                        double alpha, const double* a, int lda, const double* b, int ldb,
                        double beta, double* c, int ldc) {
  check_cublas(cublasDgemm(at::cuda::getCurrentCUDABlasHandle(), ta, tb, m, n, k, &alpha, a, lda,
                           b, ldb, &beta, c, ldc));
}
// fp16/bf16 storage, fp32 accumulation.
template <class scalar_t>
inline void cublas_gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                        float alpha, const scalar_t* a, int lda, const scalar_t* b, int ldb,
                        float beta, scalar_t* c, int ldc) {
  constexpr cudaDataType_t type =
      std::is_same<scalar_t, at::Half>::value ? CUDA_R_16F : CUDA_R_16BF;
  check_cublas(cublasGemmEx(at::cuda::getCurrentCUDABlasHandle(), ta, tb, m, n, k, &alpha, a, type,
                            lda, b, type, ldb, &beta, c, type, ldc, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT));
}

struct CUDABackend {
  using DeviceGuard = c10::cuda::CUDAGuard;
  static constexpr int kThreads = 256;

  template <class scalar_t>
  static void gemm(int64_t m, int64_t n, int64_t k, const scalar_t* A, int64_t lda,
                   const scalar_t* B, int64_t ldb, scalar_t beta, scalar_t* C, int64_t ldc) {
    if (m == 0 || n == 0) return;
    using opmath_t = at::opmath_type<scalar_t>;
    // Row-major C = A B is column-major C^T = B^T A^T: the operands swap, no transposes.
    cublas_gemm(CUBLAS_OP_N, CUBLAS_OP_N, int(n), int(m), int(k), opmath_t(1), B, int(ldb), A,
                int(lda), opmath_t(beta), C, int(ldc));
  }

  // The input projection is one GEMM before the loop (project_input): the GPU runs it at its peak.
  static constexpr bool kStepProjection = false;
  // The step's product writes hg and the pointwise kernel adds xg (not measured folded on a GPU).
  static constexpr bool kFoldRecurrent = false;
  // The step's products stay cuBLAS's or the block loop's (no lanes: lane_recurrent).
  static constexpr bool kLaneRecurrent = false;
  // The weight gradients are GEMMs after the loop (cuBLAS), not partial sums inside it.
  static constexpr bool kStepGradients = false;
  // No check that h0 is zeros (first_state_zero): reading its answer would wait for the device.
  static constexpr bool kZeroFirstState = false;

  // Small layers run their whole loop in one kernel (block_loop.cuh); the others step by step
  // from the host, cuBLAS and a pointwise kernel per step.
  template <class scalar_t>
  static bool fused_forward(const Schedule& s, const LayerDims& d, bool reverse, bool train,
                            const ForwardBuffers<scalar_t>& b) {
    return block_forward<scalar_t>(s, d, reverse, train, b);
  }
  template <class scalar_t>
  static bool fused_backward(const Schedule& s, const LayerDims& d, bool reverse,
                             const BackwardBuffers<scalar_t>& b) {
    return block_backward<scalar_t>(s, d, reverse, b);
  }

  // cuBLAS reads the recurrent weight as it is; GRU's backward gets W_hh's rows rolled in a
  // copy (hold_weight), which the block loop's kernels read like any weight.
  static constexpr bool kRollInPlace = false;
  static constexpr bool kHalfWeights = false;  // fp16/bf16 layers are native here
  template <class scalar_t>
  static at::Tensor pack_weight(const at::Tensor&, int64_t, int64_t, int64_t, int64_t) {
    return at::Tensor();
  }

  static at::Tensor empty(c10::IntArrayRef sizes, const c10::TensorOptions& options) {
    return at::empty(sizes, options);  // the CUDA caching allocator's
  }

  static at::Tensor contiguous(const at::Tensor& t) { return t.contiguous(); }

  template <class A, class B>
  static void concurrently(int64_t, const A& a, const B& b) {
    a();
    b();
  }

  template <class scalar_t>
  static at::Tensor row_major(const at::Tensor& w) {
    return w.contiguous();
  }

  template <class scalar_t>
  static void gemm_weight(int64_t m, int64_t c0, int64_t c1, const scalar_t* A, int64_t lda,
                          const Weight<scalar_t>& w, scalar_t beta, scalar_t* C, int64_t ldc) {
    gemm(m, c1 - c0, w.K, A, lda, w.data + c0, w.N, beta, C + c0, ldc);
  }

  template <class scalar_t>
  static void copy(scalar_t* dst, const scalar_t* src, int64_t count) {
    if (count == 0) return;
    C10_CUDA_CHECK(cudaMemcpyAsync(dst, src, sizeof(scalar_t) * count, cudaMemcpyDeviceToDevice,
                                   at::cuda::getCurrentCUDAStream()));
  }

  // Columns [col_begin, col_end) of rows x cols, as a [rows, ld] matrix.
  template <class scalar_t>
  static void copy_cols(scalar_t* dst, const scalar_t* src, int64_t rows, int64_t col_begin,
                        int64_t col_end, int64_t ld) {
    if (rows == 0 || col_end <= col_begin) return;
    const size_t pitch = sizeof(scalar_t) * ld;
    C10_CUDA_CHECK(cudaMemcpy2DAsync(dst + col_begin, pitch, src + col_begin, pitch,
                                     sizeof(scalar_t) * (col_end - col_begin), rows,
                                     cudaMemcpyDeviceToDevice, at::cuda::getCurrentCUDAStream()));
  }

  template <class F>
  static void pointwise(const F& f, int64_t rows, int64_t col_begin, int64_t col_end) {
    const int64_t cols = col_end - col_begin, total = rows * cols;
    if (total <= 0) return;
    const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, 65535);
    pointwise_kernel<<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(f, rows, col_begin,
                                                                                  cols);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // The input projection of all steps, and dW [G, K] = dgates^T inputs and dx [N, K] = dgates w
  // after the loop: cuBLAS through ATen.
  // x, inputs: the layer's input ([T, B, I], possibly a view, or packed [N, I]) or an [N, K]
  // matrix; the gradient of the input comes back shaped like it, contiguous.
  template <class scalar_t>
  static void project_input(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& bias,
                            at::Tensor& out) {
    aten_project_input(x, w_ih, bias, out);
  }

  template <class scalar_t>
  static at::Tensor column_sums(const at::Tensor& dgates) {
    return dgates.sum(0);
  }

  template <class scalar_t>
  static void grad_weight(const at::Tensor& dgates, const at::Tensor& inputs, at::Tensor out) {
    aten_grad_weight(dgates, inputs, std::move(out));
  }
  template <class scalar_t>
  static at::Tensor grad_input(const at::Tensor& dgates, const at::Tensor& weight,
                               const at::Tensor& input, bool batch_first) {
    return aten_grad_input(dgates, weight, input, batch_first);
  }

  // The whole layer in one part: parallelism comes from the kernels.
  static std::vector<Part> plan(const Schedule& s, const LayerDims& d) {
    return {Part{0, s.B, 0, d.H}};
  }

  template <class Fn>
  static void for_each_part(const std::vector<Part>& parts, const Fn& fn) {
    auto no_sync = [](const auto&) {};
    for (const Part& part : parts) fn(part, no_sync);
  }

  template <class Fn>
  static void dispatch(at::ScalarType dtype, Fn&& fn) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fused_rnn (CUDA)",
                                    [&] { fn(static_cast<scalar_t*>(nullptr)); });
  }
};

}  // namespace fused_rnn
