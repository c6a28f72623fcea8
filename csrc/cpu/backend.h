// CPU backend of the time loop: at::cpublas GEMMs called directly (no ATen op dispatch per
// step), pointwise functors over rows with at::parallel_for.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstring>
#include <vector>

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

// The gate math on SIMD lanes: cells.h's functors run on at::vec::Vectorized<T>, whose exp and
// tanh are SLEEF's (1 ulp). With an AVX2 build (setup.py) a lane is 8 floats / 4 doubles.
template <class T, class V>
struct VecMath {
  static V splat(T v) { return V(v); }
  static V exp(V x) { return x.exp(); }
  static V tanh(V x) { return x.tanh(); }
  static V sigmoid(V x) { return V(T(1)) / (V(T(1)) + (V(T(0)) - x).exp()); }
  // NaN compares false, so it passes through both, as in torch.relu / threshold_backward.
  static V relu(V x) { return V::blendv(x, V(T(0)), x < V(T(0))); }
  static V relu_backward(V g, V result) { return V::blendv(g, V(T(0)), result <= V(T(0))); }
};

template <class T>
struct Math<at::vec::Vectorized<T>> : VecMath<T, at::vec::Vectorized<T>> {
  using V = at::vec::Vectorized<T>;
  static V load(const T* p) { return V::loadu(p); }
  static void store(T* p, V v) { v.store(p); }
};

// The last, partial lane of a row (hidden sizes that are not a multiple of the lane width, and
// the seed models' 3-4 unit layers, which would otherwise run on scalar libm tanh/exp):
// loads and stores `count` elements, the rest of the lane computes on zeros.
template <class T>
struct TailVec : at::vec::Vectorized<T> {
  using Base = at::vec::Vectorized<T>;
  TailVec() = default;
  TailVec(Base v) : Base(v) {}  // NOLINT: results of Vectorized's operators convert back
  explicit TailVec(T v) : Base(v) {}
  static inline thread_local int count = 0;
};

template <class T>
struct Math<TailVec<T>> : VecMath<T, TailVec<T>> {
  using V = TailVec<T>;
  static V load(const T* p) { return V(V::Base::loadu(p, V::count)); }
  static void store(T* p, V v) { v.store(p, V::count); }
};

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

  // Each functor reads and writes row b at base + b * ld + j, so lanes j..j+7 are contiguous.
  template <class F>
  static void pointwise(const F& f, int64_t rows, int64_t cols) {
    using T = typename F::scalar_type;
    using Vec = at::vec::Vectorized<T>;
    const int64_t vec_end = cols - cols % Vec::size();
    const int64_t grain = std::max<int64_t>(1, kPointwiseGrain / std::max<int64_t>(cols, 1));
    auto rows_range = [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        for (int64_t j = 0; j < vec_end; j += Vec::size()) f.template apply<Vec>(b, j);
        if (vec_end < cols) {
          TailVec<T>::count = int(cols - vec_end);
          f.template apply<TailVec<T>>(b, vec_end);
        }
      }
    };
    if (rows <= grain) {
      rows_range(0, rows);  // small steps: no parallel region at all
    } else {
      at::parallel_for(0, rows, grain, rows_range);
    }
  }

  // One range of rows per thread: each thread runs the whole time loop for its rows, with no
  // synchronisation per step. The BLAS and pointwise calls inside then run single-threaded.
  static int64_t max_row_ranges(int64_t batch) {
    return std::min<int64_t>(at::get_num_threads(), batch);
  }

  template <class Range, class Fn>
  static void for_each_range(const std::vector<Range>& ranges, const Fn& fn) {
    if (ranges.size() == 1) {
      fn(ranges[0]);
      return;
    }
    at::parallel_for(0, int64_t(ranges.size()), 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) fn(ranges[i]);
    });
  }

  template <class Fn>
  static void dispatch(at::ScalarType dtype, Fn&& fn) {
    AT_DISPATCH_FLOATING_TYPES(dtype, "fused_rnn (CPU)", [&] { fn(static_cast<scalar_t*>(nullptr)); });
  }
};

}  // namespace fused_rnn
