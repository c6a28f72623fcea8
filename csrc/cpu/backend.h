// CPU backend of the time loop: at::cpublas GEMMs called directly (no ATen op dispatch per
// step), pointwise functors over rows with at::parallel_for.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

#include "../cells.h"

// The BLAS inside libtorch_cpu (MKL on x86-64, OpenBLAS elsewhere), called directly: the per-step
// GEMMs are small and ATen's dispatch would cost more than they do. ATen does not export its
// own float/double cpublas::gemm, only this Fortran interface. Weak, so a torch build without
// it still loads (and runs a plain loop instead).
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc) __attribute__((weak));
}

namespace fused_rnn {

// Column-major BLAS gemm; false where this torch has no BLAS to call.
inline bool blas_gemm(char ta, char tb, int m, int n, int k, float alpha, const float* a, int lda,
                      const float* b, int ldb, float beta, float* c, int ldc) {
  if (!sgemm_) return false;
  sgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
  return true;
}
inline bool blas_gemm(char ta, char tb, int m, int n, int k, double alpha, const double* a,
                      int lda, const double* b, int ldb, double beta, double* c, int ldc) {
  if (!dgemm_) return false;
  dgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
  return true;
}

struct CPUBackend {
  struct DeviceGuard {
    explicit DeviceGuard(c10::Device) {}
  };
  // Rows per parallel_for task are chosen so a task has at least this many elements: below it
  // the fork/join costs more than the work (seed-sized models have 4-128 hidden units).
  static constexpr int64_t kPointwiseGrain = 16384;

  template <class scalar_t>
  static void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, scalar_t alpha,
                   const scalar_t* A, int64_t lda, const scalar_t* B, int64_t ldb, scalar_t beta,
                   scalar_t* C, int64_t ldc) {
    if (m == 0 || n == 0) return;
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T.
    if (k > 0 && blas_gemm(tb ? 'T' : 'N', ta ? 'T' : 'N', int(n), int(m), int(k), alpha, B,
                           int(ldb), A, int(lda), beta, C, int(ldc))) {
      return;
    }
    // No BLAS in this torch: a plain loop (correct, not fast).
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        scalar_t acc = 0;
        for (int64_t p = 0; p < k; ++p) {
          acc += (ta ? A[p * lda + i] : A[i * lda + p]) * (tb ? B[j * ldb + p] : B[p * ldb + j]);
        }
        C[i * ldc + j] = alpha * acc + (beta == scalar_t(0) ? scalar_t(0) : beta * C[i * ldc + j]);
      }
    }
  }

  template <class scalar_t>
  static void copy(scalar_t* dst, const scalar_t* src, int64_t count) {
    std::memcpy(dst, src, sizeof(scalar_t) * count);
  }

  template <class F>
  static void pointwise(const F& f, int64_t rows, int64_t cols) {
    using V = typename F::scalar_type;
    const int64_t grain = std::max<int64_t>(1, kPointwiseGrain / std::max<int64_t>(cols, 1));
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        for (int64_t j = 0; j < cols; ++j) f.template apply<V>(b, j);
      }
    });
  }

  template <class Fn>
  static void dispatch(at::ScalarType dtype, Fn&& fn) {
    AT_DISPATCH_FLOATING_TYPES(dtype, "fused_rnn (CPU)", [&] { fn(static_cast<scalar_t*>(nullptr)); });
  }
};

}  // namespace fused_rnn
