// CPU backend of the time loop: at::cpublas GEMMs called directly (no ATen op dispatch per
// step), pointwise functors over rows with at::parallel_for.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "../cells.h"

// The BLAS inside libtorch_cpu (MKL on x86-64, OpenBLAS elsewhere), called directly: the per-step
// GEMMs are small and ATen's dispatch would cost more than they do. ATen does not export its
// own float/double cpublas::gemm, only this Fortran interface. Weak, so a torch build without
// it still loads (and runs small_gemm below instead).
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc) __attribute__((weak));
}

namespace fused_rnn {

// The gate math on SIMD lanes: cells.h's functors run on at::vec::Vectorized<T>. With an AVX2
// build (setup.py) a lane is 8 floats / 4 doubles. exp is at::vec's inlined exp_u20 (within 2
// ulp in fp32; SLEEF's 1-ulp exp in fp64); tanh(x) = 2 sigmoid(2x) - 1 costs one exp, a third
// of a SLEEF tanh call, and its absolute error stays at the level of the exp's.
template <class T, class V>
struct VecMath {
  static V splat(T v) { return V(v); }
  // exp_u20 clamps its input, which would turn NaN into a number: NaN is passed through, so it
  // propagates through the gates as it does in torch.nn.
  static V exp(V x) { return V::blendv(x.exp_u20(), x, x != x); }
  static V sigmoid(V x) { return V(T(1)) / (V(T(1)) + exp(V(T(0)) - x)); }
  static V tanh(V x) { return V(T(2)) * sigmoid(V(T(2)) * x) - V(T(1)); }
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
// the seed models' 3-4 unit layers): loads and stores the first Count elements with masked
// AVX2 moves, the rest of the lane computes on zeros. Count is a template parameter so the
// masks are constants (no per-element branches, no thread-local state).
template <class T, int Count>
struct TailVec : at::vec::Vectorized<T> {
  using Base = at::vec::Vectorized<T>;
  TailVec() = default;
  TailVec(Base v) : Base(v) {}  // NOLINT: results of Vectorized's operators convert back
  explicit TailVec(T v) : Base(v) {}

  static TailVec load(const T* p) {
#if defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<T, float>) {
      return Base(_mm256_maskload_ps(p, mask_ps()));
    } else if constexpr (std::is_same_v<T, double>) {
      return Base(_mm256_maskload_pd(p, mask_pd()));
    }
#endif
    return Base::loadu(p, Count);
  }
  void store(T* p) const {
#if defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<T, float>) {
      return _mm256_maskstore_ps(p, mask_ps(), *this);
    } else if constexpr (std::is_same_v<T, double>) {
      return _mm256_maskstore_pd(p, mask_pd(), *this);
    }
#endif
    Base::store(p, Count);
  }

 private:
#if defined(CPU_CAPABILITY_AVX2)
  static __m256i mask_ps() {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(Count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static __m256i mask_pd() {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(Count), _mm256_setr_epi64x(0, 1, 2, 3));
  }
#endif
};

template <class T, int Count>
struct Math<TailVec<T, Count>> : VecMath<T, TailVec<T, Count>> {
  using V = TailVec<T, Count>;
  static V load(const T* p) { return V::load(p); }
  static void store(T* p, V v) { v.store(p); }
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

// Row-major C[m, n] = A[m, k] B[k, n] (+ beta C) for the small products of the seed models
// (H = 3..128), where a BLAS call costs more in overhead and packing than the arithmetic: R rows
// x 2 lanes of accumulators, B's rows streamed from cache, a masked lane for the last columns.
// A is read through two strides (element (r, p) at A[r * a_rs + p * a_cs]), so A^T B needs no
// transposed copy.
template <int R, class T>
void gemm_rows(int64_t n, int64_t k, const T* A, int64_t a_rs, int64_t a_cs, const T* B,
               int64_t ldb, T beta, T* C, int64_t ldc) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t W = Vec::size();
  auto init = [&](int r, int64_t j, int64_t count) {
    return beta == T(0) ? Vec(T(0)) : Vec::loadu(C + r * ldc + j, count) * Vec(beta);
  };
  int64_t j = 0;
  for (; j + 2 * W <= n; j += 2 * W) {
    Vec acc[R][2];
    for (int r = 0; r < R; ++r) {
      acc[r][0] = init(r, j, W);
      acc[r][1] = init(r, j + W, W);
    }
    for (int64_t p = 0; p < k; ++p) {
      const Vec b0 = Vec::loadu(B + p * ldb + j), b1 = Vec::loadu(B + p * ldb + j + W);
      for (int r = 0; r < R; ++r) {
        const Vec a(A[r * a_rs + p * a_cs]);
        acc[r][0] = at::vec::fmadd(a, b0, acc[r][0]);
        acc[r][1] = at::vec::fmadd(a, b1, acc[r][1]);
      }
    }
    for (int r = 0; r < R; ++r) {
      acc[r][0].store(C + r * ldc + j);
      acc[r][1].store(C + r * ldc + j + W);
    }
  }
  for (; j < n; j += W) {  // one lane, full or masked
    const int64_t count = std::min<int64_t>(W, n - j);
    Vec acc[R];
    for (int r = 0; r < R; ++r) acc[r] = init(r, j, count);
    for (int64_t p = 0; p < k; ++p) {
      const Vec b0 = Vec::loadu(B + p * ldb + j, count);
      for (int r = 0; r < R; ++r) acc[r] = at::vec::fmadd(Vec(A[r * a_rs + p * a_cs]), b0, acc[r]);
    }
    for (int r = 0; r < R; ++r) acc[r].store(C + r * ldc + j, count);
  }
}

// Six rows per pass over B: 12 accumulators + 2 B lanes + a broadcast fill the 16 AVX registers.
template <class T>
void small_gemm(int64_t m, int64_t n, int64_t k, const T* A, int64_t a_rs, int64_t a_cs,
                const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  int64_t i = 0;
  for (; i + 6 <= m; i += 6) {
    gemm_rows<6>(n, k, A + i * a_rs, a_rs, a_cs, B, ldb, beta, C + i * ldc, ldc);
  }
  const T* a = A + i * a_rs;
  T* c = C + i * ldc;
  switch (m - i) {
    case 5: return gemm_rows<5>(n, k, a, a_rs, a_cs, B, ldb, beta, c, ldc);
    case 4: return gemm_rows<4>(n, k, a, a_rs, a_cs, B, ldb, beta, c, ldc);
    case 3: return gemm_rows<3>(n, k, a, a_rs, a_cs, B, ldb, beta, c, ldc);
    case 2: return gemm_rows<2>(n, k, a, a_rs, a_cs, B, ldb, beta, c, ldc);
    case 1: return gemm_rows<1>(n, k, a, a_rs, a_cs, B, ldb, beta, c, ldc);
    default: return;
  }
}

struct CPUBackend {
  struct DeviceGuard {
    explicit DeviceGuard(c10::Device) {}
  };
  // Rows per parallel_for task are chosen so a task has at least this many elements: below it
  // the fork/join costs more than the work (seed-sized models have 4-128 hidden units).
  static constexpr int64_t kPointwiseGrain = 16384;

  // B (the recurrent weight) up to this many elements goes to small_gemm: it stays in L2.
  static constexpr int64_t kSmallGemmWeight = 64 * 1024;

  template <class scalar_t>
  static void gemm(int64_t m, int64_t n, int64_t k, const scalar_t* A, int64_t lda,
                   const scalar_t* B, int64_t ldb, scalar_t beta, scalar_t* C, int64_t ldc) {
    if (m == 0 || n == 0) return;
    // Row-major C = A B is column-major C^T = B^T A^T: the operands swap, no transposes.
    if (k * n > kSmallGemmWeight && blas_gemm('N', 'N', int(n), int(m), int(k), scalar_t(1), B,
                                              int(ldb), A, int(lda), beta, C, int(ldc))) {
      return;
    }
    small_gemm(m, n, k, A, lda, int64_t(1), B, ldb, beta, C, ldc);
  }

  // The weight and input gradients after the loop, over all N time-major rows. Up to this many
  // gate-gradient elements (the seed models) the operands stay in cache and small_gemm beats
  // MKL, whose tall-skinny products cost 100-300 us here whatever their size.
  static constexpr int64_t kSmallPostLoop = 256 * 1024;

  // dW [G, K] = dgates^T [G, N] inputs [N, K]; dgates may be a column block of a wider matrix.
  template <class scalar_t>
  static at::Tensor grad_weight(const at::Tensor& dgates, const at::Tensor& inputs) {
    const int64_t N = dgates.size(0), G = dgates.size(1), K = inputs.size(1);
    if (N * G > kSmallPostLoop || dgates.stride(1) != 1 || inputs.stride(1) != 1) {
      return at::mm(dgates.t(), inputs);
    }
    // Computed transposed, dW^T = inputs^T dgates, so the lanes run along G.
    at::Tensor grad_t = at::empty({K, G}, dgates.options());
    small_gemm<scalar_t>(K, G, N, inputs.const_data_ptr<scalar_t>(), 1, inputs.stride(0),
                         dgates.const_data_ptr<scalar_t>(), dgates.stride(0), scalar_t(0),
                         grad_t.data_ptr<scalar_t>(), G);
    return grad_t.t().contiguous();
  }

  // dx [N, K] = dgates [N, G] w [G, K]; dgates may be a column block of a wider matrix.
  template <class scalar_t>
  static at::Tensor grad_input(const at::Tensor& dgates, const at::Tensor& weight) {
    const int64_t N = dgates.size(0), G = dgates.size(1), K = weight.size(1);
    if (N * G > kSmallPostLoop || dgates.stride(1) != 1) return at::mm(dgates, weight);
    const at::Tensor w = weight.contiguous();
    const int64_t ld = dgates.stride(0);
    at::Tensor grad = at::empty({N, K}, dgates.options());
    at::parallel_for(0, N, 2048, [&](int64_t begin, int64_t end) {
      small_gemm<scalar_t>(end - begin, K, G, dgates.const_data_ptr<scalar_t>() + begin * ld, ld,
                           1, w.const_data_ptr<scalar_t>(), K, scalar_t(0),
                           grad.data_ptr<scalar_t>() + begin * K, K);
    });
    return grad;
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
    const int tail = int(cols - vec_end);
    auto rows_range = [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        for (int64_t j = 0; j < vec_end; j += Vec::size()) f.template apply<Vec>(b, j);
      }
      if (tail > 0) apply_tail(f, begin, end, vec_end, tail, std::make_integer_sequence<int, Vec::size()>{});
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

  // Runs the partial lane of rows [begin, end) with the TailVec<T, tail> instantiation.
  template <class F, int... Counts>
  static void apply_tail(const F& f, int64_t begin, int64_t end, int64_t j, int tail,
                         std::integer_sequence<int, Counts...>) {
    using T = typename F::scalar_type;
    auto run = [&](auto count) {
      for (int64_t b = begin; b < end; ++b) f.template apply<TailVec<T, decltype(count)::value>>(b, j);
    };
    ((tail == Counts ? (run(std::integral_constant<int, Counts>{}), 0) : 0), ...);
  }

  template <class Fn>
  static void dispatch(at::ScalarType dtype, Fn&& fn) {
    AT_DISPATCH_FLOATING_TYPES(dtype, "fused_rnn (CPU)", [&] { fn(static_cast<scalar_t*>(nullptr)); });
  }
};

}  // namespace fused_rnn
