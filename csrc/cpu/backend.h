// CPU backend of the time loop: at::cpublas GEMMs called directly (no ATen op dispatch per
// step), pointwise functors over rows with at::parallel_for.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/cpu/vec/vec_n.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <omp.h>
#if defined(__linux__)
#include <sched.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "../cells.h"
#include "buffer_pool.h"

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

// The gate math on SIMD lanes: cells.h's functors run on at::vec::Vectorized<T>. A lane is
// 16 floats / 8 doubles in an AVX-512 build (setup.py), 8 / 4 in an AVX2 one. fp32 on those:
// sigmoid_lane and tanh_lane below (one exp each, exp_u20's polynomial, a refined reciprocal
// estimate instead of a division). fp64 (and generic builds): at::vec's exp_u20 (SLEEF's 1-ulp
// exp in fp64) and tanh(x) = 2 sigmoid(2x) - 1, a third of a SLEEF tanh call, its absolute
// error at the level of the exp's.
// Always inlined: called out of line (as GCC chose for the masked-lane types) the lanes went
// through memory on every call, a third of the tiny models' forward time.
// (FR_ALWAYS_INLINE: the same for the lane types' members; perf found RowsVec::load called
// through the PLT, 11% of the toxic LSTM's forward+backward.)
#define FR_ALWAYS_INLINE __attribute__((always_inline))
#define FR_VEC_INLINE FR_ALWAYS_INLINE static inline

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
// x86 builds (setup.py: CPU_TIERS): the pieces below where at::vec's own are slow, written once
// over `simd`, a lane of the build's width (AVX2: 8 floats, AVX-512: 16) and the few intrinsics
// they use on it.
#define FR_X86_LANES 1
namespace simd {
#if defined(CPU_CAPABILITY_AVX512)
using F = __m512;
FR_VEC_INLINE F set1(float v) { return _mm512_set1_ps(v); }
FR_VEC_INLINE F bits(int v) { return _mm512_castsi512_ps(_mm512_set1_epi32(v)); }
FR_VEC_INLINE F max(F a, F b) { return _mm512_max_ps(a, b); }
FR_VEC_INLINE F min(F a, F b) { return _mm512_min_ps(a, b); }
FR_VEC_INLINE F add(F a, F b) { return _mm512_add_ps(a, b); }
FR_VEC_INLINE F sub(F a, F b) { return _mm512_sub_ps(a, b); }
FR_VEC_INLINE F mul(F a, F b) { return _mm512_mul_ps(a, b); }
FR_VEC_INLINE F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
FR_VEC_INLINE F fnmadd(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }
FR_VEC_INLINE F rcp(F d) { return _mm512_rcp14_ps(d); }  // (relative error < 2^-14)
FR_VEC_INLINE F shift_to_exponent(F v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_castps_si512(v), 23));
}
#else
using F = __m256;
FR_VEC_INLINE F set1(float v) { return _mm256_set1_ps(v); }
FR_VEC_INLINE F bits(int v) { return _mm256_castsi256_ps(_mm256_set1_epi32(v)); }
FR_VEC_INLINE F max(F a, F b) { return _mm256_max_ps(a, b); }
FR_VEC_INLINE F min(F a, F b) { return _mm256_min_ps(a, b); }
FR_VEC_INLINE F add(F a, F b) { return _mm256_add_ps(a, b); }
FR_VEC_INLINE F sub(F a, F b) { return _mm256_sub_ps(a, b); }
FR_VEC_INLINE F mul(F a, F b) { return _mm256_mul_ps(a, b); }
FR_VEC_INLINE F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
FR_VEC_INLINE F fnmadd(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }
FR_VEC_INLINE F rcp(F d) { return _mm256_rcp_ps(d); }  // (relative error < 1.5 * 2^-12)
FR_VEC_INLINE F shift_to_exponent(F v) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(v), 23));
}
#endif
}  // namespace simd

// The fp32 gates' sigmoid and tanh: about 17 operations each where exp_u20 and a division took
// 23 (the division alone one per 3.5 cycles). Forward LSTM cell 3.7 -> 2.9 ns per unit (AVX2).
//  * exp as exp_u20 computes it (the same polynomial on the same reduced argument), with
//    n = round(x log2(e)) from adding 1.5 * 2^23 + 127, whose low bits are then n + 127, the
//    exponent of 2^n (no floor, no conversion); x clamped to [-87, hi <= 88] so that 2^n is a
//    normal number.
//  * min and max with the constant first: they return their second operand, so a NaN passes
//    through to the result (as in torch.nn) with no compare and blend.
//  * 1 / d as the reciprocal estimate and one Newton step, e (1 + (1 - d e)), the residual exact
//    in one fused multiply-add: within about an ulp of the quotient.
FR_VEC_INLINE simd::F exp_clamped(simd::F x, float hi) {
  using namespace simd;
  const F log2e = bits(0x3fb8aa3b), ln2 = bits(0x3f317218);
  const F shift = set1(12582912.f + 127.f);  // 1.5 * 2^23 + the exponent bias
  x = max(set1(-87.f), min(set1(hi), x));
  const F biased = fmadd(x, log2e, shift);  // n + 127 in the low bits
  const F n = sub(biased, shift);
  const F r = fnmadd(n, ln2, x);
  F poly = fmadd(r, set1(0.00828929059f), set1(0.0418978221f));
  poly = fmadd(r, poly, set1(0.166676521f));
  poly = fmadd(r, poly, set1(0.499991506f));
  poly = fmadd(r, poly, set1(0.999999701f));
  poly = fmadd(r, poly, set1(1.f));
  return mul(poly, shift_to_exponent(biased));
}
FR_VEC_INLINE simd::F reciprocal(simd::F d) {
  const simd::F estimate = simd::rcp(d);
  return simd::fmadd(estimate, simd::fnmadd(d, estimate, simd::set1(1.f)), estimate);
}
// 1 / (1 + exp(-x)): 1 and 0 (or AVX-512's denormal estimate, within 2^-126 of torch's) beyond
// the clamps (1 + 2^-126 rounds to 1; AVX2's reciprocal estimate of anything above 2^126 is 0).
FR_VEC_INLINE simd::F sigmoid_lane(simd::F x) {
  return reciprocal(simd::add(simd::set1(1.f), exp_clamped(simd::sub(simd::set1(0.f), x), 88.f)));
}
// (1 - e) / (1 + e), e = exp(-2x): exactly 0 at 0 (2 sigmoid(2x) - 1 was not, the reciprocal
// of 2 being an ulp off); e at most exp(20), whose reciprocal is still normal, so -1 below -10.
FR_VEC_INLINE simd::F tanh_lane(simd::F x) {
  const simd::F one = simd::set1(1.f);
  const simd::F e = exp_clamped(simd::mul(simd::set1(-2.f), x), 20.f);
  return simd::mul(simd::sub(one, e), reciprocal(simd::add(one, e)));
}
#endif

// The sum of a lane's elements. at::vec's vec_reduce_all shuffles within registers for fp32
// only; for fp64 it goes through memory element by element (a store-forwarding stall each):
// dot_gemm's products in fp64 (one sum per output element) ran at a third of their fp32 rate
// per element, the forward pass of an LSTM at T 2, B 16, H 256 at 0.45x torch.nn.
template <class T>
FR_VEC_INLINE T lane_sum(at::vec::Vectorized<T> v) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, double>) return _mm512_reduce_add_pd(v);
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, double>) {
    const __m128d halves = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(halves, _mm_unpackhi_pd(halves, halves)));
  }
#endif
  return at::vec::vec_reduce_all(std::plus<at::vec::Vectorized<T>>(), v);
}

#if defined(FR_X86_LANES)
// Whether a lane holds whole rows of `count` elements, at most half a lane each: the columns of
// such layers run as RowsLane and TailVec, whose row slots make the step's recurrent product
// (RowSlotMath::kRowSlots, CPUBackend::lanes_hold_rows: one fact for both, so that a loop that
// hands the functors w_lanes always meets lanes that use them).
template <class T>
constexpr bool lane_holds_rows(int64_t count) {
  return count >= 1 && count <= at::vec::Vectorized<T>::size() / 2;
}

// Elements per row slot of a lane that holds several rows of `count` elements each (RowsLane:
// AVX-512 a quarter or half lane, AVX2 a 128-bit half).
template <class T>
constexpr int row_slot(int count) {
  constexpr int kLanes = at::vec::Vectorized<T>::size();
#if defined(CPU_CAPABILITY_AVX512)
  return count <= kLanes / 4 ? kLanes / 4 : kLanes / 2;
#else
  return (void)count, kLanes / 2;
#endif
}

// Element k of each slot of kSlot elements, broadcast over its slot (lane_product, cells.h: a
// row's h_{t-1}[k] over that row's units). AVX2 permutes within 128-bit halves, its slots.
template <class T, int kSlot>
FR_VEC_INLINE at::vec::Vectorized<T> slot_splat(at::vec::Vectorized<T> v, int k) {
  static_assert((kSlot & (kSlot - 1)) == 0, "slots of a power of two elements");
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    const __m512i base = _mm512_and_si512(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(~(kSlot - 1)));
    return _mm512_permutexvar_ps(_mm512_or_si512(base, _mm512_set1_epi32(k)), v);
  } else {
    const __m512i base = _mm512_and_si512(_mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7),
                                          _mm512_set1_epi64(~int64_t(kSlot - 1)));
    return _mm512_permutexvar_pd(_mm512_or_si512(base, _mm512_set1_epi64(k)), v);
  }
#else
  static_assert(kSlot == at::vec::Vectorized<T>::size() / 2, "AVX2 slots are 128-bit halves");
  if constexpr (std::is_same_v<T, float>) {
    return _mm256_permutevar_ps(v, _mm256_set1_epi32(k));
  } else {
    return _mm256_permutevar_pd(v, _mm256_set1_epi64x(int64_t(k) << 1));  // (bit 1 selects)
  }
#endif
}
#endif

template <class T, class V>
struct VecMath {
  static constexpr bool kRowSlots = false;  // (see RowSlotMath)
  FR_VEC_INLINE V splat(T v) { return V(v); }
  // exp_u20 clamps its input, which would turn NaN into a number: NaN is passed through, so it
  // propagates through the gates as it does in torch.nn.
  // (fp64: SLEEF's exp, a call; fp32 on x86 lanes uses exp_clamped instead.)
  FR_VEC_INLINE V exp(V x) { return V::blendv(x.exp_u20(), x, x != x); }
  FR_VEC_INLINE V sigmoid(V x) {
#if defined(FR_X86_LANES)
    if constexpr (std::is_same_v<T, float>) return lanes(x, [](simd::F v) { return sigmoid_lane(v); });
#endif
    return V(T(1)) / (V(T(1)) + exp(V(T(0)) - x));
  }
  FR_VEC_INLINE V tanh(V x) {
#if defined(FR_X86_LANES)
    if constexpr (std::is_same_v<T, float>) return lanes(x, [](simd::F v) { return tanh_lane(v); });
#endif
    return V(T(2)) * sigmoid(V(T(2)) * x) - V(T(1));
  }
#if defined(FR_X86_LANES)
  // fn on each lane of V.
  template <class Fn>
  FR_VEC_INLINE V lanes(V x, Fn fn) {
    using Lane = at::vec::Vectorized<T>;
    if constexpr (std::is_same_v<V, at::vec::VectorizedN<T, 2>>) {
      return V(Lane(fn(x[0])), Lane(fn(x[1])));
    } else {
      return V(Lane(fn(x)));
    }
  }
#endif
  // NaN compares false, so it passes through both, as in torch.relu / threshold_backward.
  FR_VEC_INLINE V relu(V x) { return V::blendv(x, V(T(0)), x < V(T(0))); }
  FR_VEC_INLINE V relu_backward(V g, V result) { return V::blendv(g, V(T(0)), result <= V(T(0))); }
};

template <class T>
struct Math<at::vec::Vectorized<T>> : VecMath<T, at::vec::Vectorized<T>> {
  using V = at::vec::Vectorized<T>;
  static V load(const T* p, int64_t /*ld*/) { return V::loadu(p); }
  static void store(T* p, int64_t /*ld*/, V v) { v.store(p); }
};

// Two lanes side by side (each operation on both before the next): a cell's chain of
// dependent operations (exp, a division, then c_t, tanh(c_t), another division) ran one lane at
// a time at about its latency, not the core's throughput; with two independent chains
// interleaved the out-of-order core overlaps them. Every element gets the same operations as
// with one lane, so results are bit-identical.
template <class T>
struct Math<at::vec::VectorizedN<T, 2>> : VecMath<T, at::vec::VectorizedN<T, 2>> {
  using V = at::vec::VectorizedN<T, 2>;
  static V load(const T* p, int64_t /*ld*/) { return V::loadu(p); }
  static void store(T* p, int64_t /*ld*/, V v) { v.store(p); }
};

#if defined(CPU_CAPABILITY_AVX2)
// Stores the first `count` elements of a 128-bit half: whole, 64-bit and 32-bit moves. AVX2's
// masked stores (vmaskmovps/pd) are microcoded on AMD Zen (one per ~12 cycles here), and the
// small models store a partial lane per row per step: they took a third of a step.
inline void store_partial(float* p, __m128 v, int count) {
  if (count >= 4) return _mm_storeu_ps(p, v);
  if (count >= 2) {
    _mm_storel_pi(reinterpret_cast<__m64*>(p), v);
    p += 2;
    count -= 2;
    v = _mm_movehl_ps(v, v);
  }
  if (count == 1) _mm_store_ss(p, v);
}
inline void store_partial(double* p, __m128d v, int count) {
  if (count >= 2) return _mm_storeu_pd(p, v);
  if (count == 1) _mm_store_sd(p, v);
}
// The first `count` (< 8 floats / 4 doubles) elements of a lane.
inline void store_partial(float* p, __m256 v, int count) {
  if (count >= 4) {
    _mm_storeu_ps(p, _mm256_castps256_ps128(v));
    return store_partial(p + 4, _mm256_extractf128_ps(v, 1), count - 4);
  }
  store_partial(p, _mm256_castps256_ps128(v), count);
}
inline void store_partial(double* p, __m256d v, int count) {
  if (count >= 2) {
    _mm_storeu_pd(p, _mm256_castpd256_pd128(v));
    return store_partial(p + 2, _mm256_extractf128_pd(v, 1), count - 2);
  }
  store_partial(p, _mm256_castpd256_pd128(v), count);
}
#endif

#if defined(CPU_CAPABILITY_AVX512)
// AVX-512's masked moves of a lane (bit i of `mask`: element i), which neither read (nor fault)
// nor write where the mask is off.
template <class T>
FR_VEC_INLINE at::vec::Vectorized<T> masked_load(uint32_t mask, const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_maskz_loadu_ps(__mmask16(mask), p);
  } else {
    return _mm512_maskz_loadu_pd(__mmask8(mask), p);
  }
}
template <class T>
FR_VEC_INLINE void masked_store(T* p, uint32_t mask, at::vec::Vectorized<T> v) {
  if constexpr (std::is_same_v<T, float>) {
    _mm512_mask_storeu_ps(p, __mmask16(mask), v);
  } else {
    _mm512_mask_storeu_pd(p, __mmask8(mask), v);
  }
}
#endif

// The first `count` elements of a lane, with a mask computed once per use: at::vec's
// loadu(p, count) goes through a stack buffer, which the small GEMMs' last columns (GRU's 3H
// with H = 4, say) paid on every multiply-add.
template <class T>
struct LaneMask {
  using Vec = at::vec::Vectorized<T>;
#if defined(CPU_CAPABILITY_AVX2)
  __m256i mask;
  int count;
  explicit LaneMask(int64_t c) : count(int(c)) {
    if constexpr (std::is_same_v<T, float>) {
      mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    } else {
      mask = _mm256_cmpgt_epi64(_mm256_set1_epi64x(count), _mm256_setr_epi64x(0, 1, 2, 3));
    }
  }
  Vec load(const T* p) const {
    if constexpr (std::is_same_v<T, float>) {
      return _mm256_maskload_ps(p, mask);
    } else {
      return _mm256_maskload_pd(p, mask);
    }
  }
  void store(T* p, Vec v) const {
    if constexpr (std::is_same_v<T, float>) {
      store_partial(p, __m256(v), count);
    } else {
      store_partial(p, __m256d(v), count);
    }
  }
#elif defined(CPU_CAPABILITY_AVX512)
  uint32_t mask;
  int count;
  explicit LaneMask(int64_t c) : mask((uint32_t(1) << c) - 1), count(int(c)) {}
  Vec load(const T* p) const { return masked_load(mask, p); }
  void store(T* p, Vec v) const { masked_store(p, mask, v); }
#else
  int64_t count;
  explicit LaneMask(int64_t c) : count(c) {}
  Vec load(const T* p) const { return Vec::loadu(p, count); }
  void store(T* p, Vec v) const { v.store(p, count); }
#endif
  // fp16 / bf16 elements (a weight kept in its dtype, kHalfWeights), widened through a buffer.
  template <class H, std::enable_if_t<!std::is_same_v<H, T>, int> = 0>
  Vec load(const H* p) const {
    T wide[Vec::size()] = {};
    for (int64_t i = 0; i < count; ++i) wide[i] = static_cast<T>(p[i]);
    return Vec::loadu(wide);
  }
};

// A lane of floats from W consecutive fp16 / bf16 elements: bf16 is fp32's upper half (a shift),
// fp16 F16C's (AVX-512F's) conversion (every AVX2 CPU has F16C; setup.py builds with it).
template <class H>
FR_VEC_INLINE at::vec::Vectorized<float> half_lane(const H* q) {
  static_assert(std::is_same_v<H, c10::Half> || std::is_same_v<H, c10::BFloat16>);
#if defined(CPU_CAPABILITY_AVX2)
  const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
  if constexpr (std::is_same_v<H, c10::BFloat16>) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
  } else {
    return _mm256_cvtph_ps(bits);
  }
#elif defined(CPU_CAPABILITY_AVX512)
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
  if constexpr (std::is_same_v<H, c10::BFloat16>) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
  } else {
    return _mm512_cvtph_ps(bits);
  }
#else
  constexpr int64_t W = at::vec::Vectorized<float>::size();
  float wide[W];
  for (int64_t i = 0; i < W; ++i) wide[i] = static_cast<float>(q[i]);
  return at::vec::Vectorized<float>::loadu(wide);
#endif
}

// A whole lane from p: T's own elements, or fp16 / bf16 ones widened (half_lane).
template <class T>
FR_VEC_INLINE at::vec::Vectorized<T> lane_of(const T* p) {
  return at::vec::Vectorized<T>::loadu(p);
}
FR_VEC_INLINE at::vec::Vectorized<float> lane_of(const c10::Half* p) { return half_lane(p); }
FR_VEC_INLINE at::vec::Vectorized<float> lane_of(const c10::BFloat16* p) { return half_lane(p); }

// The last, partial lane of a row (hidden sizes that are not a multiple of the lane width, and
// the seed models' 3-4 unit layers): loads and stores the first Count elements (LaneMask), the
// rest of the lane computes on zeros. Count is a template parameter so the mask is a constant
// (no per-element branches, no thread-local state).
template <class T, int Count>
struct TailVec : at::vec::Vectorized<T> {
  using Base = at::vec::Vectorized<T>;
  TailVec() = default;
  TailVec(Base v) : Base(v) {}  // NOLINT: results of Vectorized's operators convert back
  explicit TailVec(T v) : Base(v) {}

  static TailVec load(const T* p) { return Base(LaneMask<T>(Count).load(p)); }
  void store(T* p) const { LaneMask<T>(Count).store(p, *this); }
};

// Math of a lane of whole rows of Count elements each (Count the layer's H), with the ops of
// the recurrent product made in registers (lane_product, cells.h) on x86 builds: TailVec (one
// row) and RowsLane (several, in slots of kSlot elements).
template <class T, class V, int Count, int kSlot>
struct RowSlotMath : VecMath<T, V> {
#if defined(FR_X86_LANES)
  static constexpr int kLane = at::vec::Vectorized<T>::size();
  static constexpr bool kRowSlots = lane_holds_rows<T>(Count);
  static constexpr int kCount = Count;
  // A lane as CPUBackend::recurrent_lanes lays them out (each slot the same Count weights).
  FR_ALWAYS_INLINE static V lane(const T* p) { return V(at::vec::Vectorized<T>::loadu(p)); }
  FR_ALWAYS_INLINE static V slot_splat(V v, int k) { return V(fused_rnn::slot_splat<T, kSlot>(v, k)); }
  FR_ALWAYS_INLINE static V fmadd(V a, V b, V c) { return V(at::vec::fmadd(a, b, c)); }
#endif
};

#if defined(FR_X86_LANES)
// One row's slot: row_slot's where it holds Count elements (the lanes' layout), else the lane.
template <class T, int Count>
constexpr int kTailSlot =
    lane_holds_rows<T>(Count) ? row_slot<T>(Count) : at::vec::Vectorized<T>::size();
#else
template <class T, int Count>
constexpr int kTailSlot = 1;
#endif

template <class T, int Count>
struct Math<TailVec<T, Count>> : RowSlotMath<T, TailVec<T, Count>, Count, kTailSlot<T, Count>> {
  using V = TailVec<T, Count>;
  static V load(const T* p, int64_t /*ld*/) { return V::load(p); }
  static void store(T* p, int64_t /*ld*/, V v) { v.store(p); }
};

#if defined(CPU_CAPABILITY_AVX2)
// Two rows in one lane, for hidden sizes up to half a lane (the seed models' 3-4 unit layers:
// one row would leave half of every lane idle): the first Count elements of row b in the low
// 128 bits, those of row b + 1 (`ld` elements further) in the high 128 bits.
template <class T, int Count>
struct PairVec : at::vec::Vectorized<T> {
  using Base = at::vec::Vectorized<T>;
  static constexpr int kHalf = Base::size() / 2;
  static constexpr int kRows = 2;
  static constexpr int kSlot = row_slot<T>(Count);  // (kHalf)
  static_assert(lane_holds_rows<T>(Count), "PairVec holds up to half a lane per row");
  PairVec() = default;
  PairVec(Base v) : Base(v) {}  // NOLINT: results of Vectorized's operators convert back
  explicit PairVec(T v) : Base(v) {}

  FR_ALWAYS_INLINE static PairVec load(const T* p, int64_t ld) {
    if constexpr (std::is_same_v<T, float>) {
      return Base(_mm256_insertf128_ps(_mm256_castps128_ps256(half_load(p)), half_load(p + ld), 1));
    } else {
      return Base(_mm256_insertf128_pd(_mm256_castpd128_pd256(half_load(p)), half_load(p + ld), 1));
    }
  }
  FR_ALWAYS_INLINE void store(T* p, int64_t ld) const {
    if constexpr (std::is_same_v<T, float>) {
      half_store(p, _mm256_castps256_ps128(*this));
      half_store(p + ld, _mm256_extractf128_ps(*this, 1));
    } else {
      half_store(p, _mm256_castpd256_pd128(*this));
      half_store(p + ld, _mm256_extractf128_pd(*this, 1));
    }
  }

 private:
  static __m128i mask() {  // the first Count elements of a half
    if constexpr (std::is_same_v<T, float>) {
      return _mm_cmpgt_epi32(_mm_set1_epi32(Count), _mm_setr_epi32(0, 1, 2, 3));
    } else {
      return _mm_cmpgt_epi64(_mm_set1_epi64x(Count), _mm_set_epi64x(1, 0));
    }
  }
  static auto half_load(const T* p) {
    if constexpr (std::is_same_v<T, float>) {
      return Count == kHalf ? _mm_loadu_ps(p) : _mm_maskload_ps(p, mask());
    } else {
      return Count == kHalf ? _mm_loadu_pd(p) : _mm_maskload_pd(p, mask());
    }
  }
  template <class H>
  static void half_store(T* p, H v) {
    store_partial(p, v, Count);
  }
};
#endif

#if defined(CPU_CAPABILITY_AVX512)
// PairVec's idea on 16-float lanes: kRows rows in one lane, for hidden sizes up to half a lane
// (the toxic model's 4 units: four rows per lane, where one row would leave three quarters of
// every lane idle). Row r's first Count elements (the row `ld` elements after row r - 1) sit in
// the lane's slot r of kSlot elements, moved by masked loads and stores (slot r's load and store
// address the lane as if it began r * (kSlot - ld) elements before p: the elements outside the
// slot are masked off, neither read nor written).
template <class T, int Count>
struct RowsVec : at::vec::Vectorized<T> {
  using Base = at::vec::Vectorized<T>;
  static constexpr int kLanes = Base::size();
  static constexpr int kSlot = row_slot<T>(Count);
  static constexpr int kRows = kLanes / kSlot;
  static_assert(kRows == 2 || kRows == 4, "two or four rows per lane");
  static_assert(lane_holds_rows<T>(Count), "RowsVec holds up to half a lane per row");
  RowsVec() = default;
  RowsVec(Base v) : Base(v) {}  // NOLINT: results of Vectorized's operators convert back
  explicit RowsVec(T v) : Base(v) {}

  FR_ALWAYS_INLINE static RowsVec load(const T* p, int64_t ld) {
    // Rows that fill their slots back to back (the toxic model's [B, 4] states): one move.
    if (Count == kSlot && ld == kSlot) return Base::loadu(p);
    // Independent loads, then a tree of ors, written out: as loops over an array GCC kept the
    // array on the stack, each load stored there and read back (the toxic LSTM's step 2x
    // slower).
    auto row = [&](int r) { return masked_load(mask(r), at(p, ld, r)); };
    if constexpr (kRows == 2) {
      return row(0) | row(1);
    } else {
      return (row(0) | row(1)) | (row(2) | row(3));
    }
  }
  FR_ALWAYS_INLINE void store(T* p, int64_t ld) const {
    if (Count == kSlot && ld == kSlot) return Base::store(p);
    _Pragma("GCC unroll 4") for (int r = 0; r < kRows; ++r) {
      masked_store(at(p, ld, r), mask(r), Base(*this));
    }
  }

 private:
  static constexpr uint32_t mask(int r) { return ((uint32_t(1) << Count) - 1) << (r * kSlot); }
  template <class P>
  static P* at(P* p, int64_t ld, int r) {
    return reinterpret_cast<P*>(reinterpret_cast<uintptr_t>(p) +
                                uintptr_t(r * (ld - kSlot) * int64_t(sizeof(T))));
  }
};
#endif

// Several rows per lane for the partial lane's rows (apply_tail): kRows rows of Count elements.
#if defined(CPU_CAPABILITY_AVX512)
template <class T, int Count>
using RowsLane = RowsVec<T, Count>;
#elif defined(CPU_CAPABILITY_AVX2)
template <class T, int Count>
using RowsLane = PairVec<T, Count>;
#endif
#if defined(FR_X86_LANES)
template <class T, int Count>
struct Math<RowsLane<T, Count>>
    : RowSlotMath<T, RowsLane<T, Count>, Count, RowsLane<T, Count>::kSlot> {
  using V = RowsLane<T, Count>;
  FR_ALWAYS_INLINE static V load(const T* p, int64_t ld) { return V::load(p, ld); }
  FR_ALWAYS_INLINE static void store(T* p, int64_t ld, V v) { v.store(p, ld); }
};
#endif

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

// The loops over a product's R rows fully unrolled (R <= kGroupRows): GCC then keeps the
// accumulator arrays in registers; without it (once the reduction runs over several runs) it
// kept them on the stack, storing all twelve on every multiply-add step.
#define FR_UNROLL_ROWS _Pragma("GCC unroll 16")

// The reduction of a product repeated over `count` runs of k terms each, A and B advancing by
// a_step / b_step elements from one run to the next: C = sum over runs of A_run B_run, in
// registers throughout. (The weight gradients inside the backward loop: a part's rows of
// several steps, a step's batch apart in the time-major buffers.)
struct Runs {
  int64_t count = 1, a_step = 0, b_step = 0;
};

// A's R rows of a pass, addressed as GCC keeps them in registers: one base pointer per three
// rows and the offsets 0, a_rs, 2 a_rs (row r at bases[r / 3] + (r % 3) a_rs). With a pointer
// per row (what GCC made of A[r * a_rs + p * a_cs]) fourteen rows ran out of the 16 general
// registers: it reloaded the pointers from the stack on every multiply-add step.
template <int R, class T>
struct RowsOf {
  static constexpr int kBases = (R + 2) / 3;
  const T* bases[kBases];
  int64_t rs;
  RowsOf(const T* a, int64_t a_rs) : rs(a_rs) {
    for (int q = 0; q < kBases; ++q) bases[q] = a + 3 * q * a_rs;
  }
  T at(int r, int64_t offset) const { return bases[r / 3][(r % 3) * rs + offset]; }
};

// Row-major C[m, n] = A[m, k] B[k, n] (+ beta C) for the small products of the seed models
// (H = 3..128), where a BLAS call costs more in overhead and packing than the arithmetic: R rows
// x 2 lanes of accumulators, B's rows streamed from cache, a masked lane for the last columns.
// A is read through two strides (element (r, p) at A[r * a_rs + p * a_cs]), so A^T B needs no
// transposed copy.
// With beta == 0, `bias` (if not null) is added to every row: C = A B + bias.
// (kRuns false: one run, known at compile time, so the ordinary products keep their code.)
// B's elements may be fp16 / bf16 (TB) where T is float: a weight kept in its dtype
// (kHalfWeights), each lane widened as it is loaded (lane_of).
// `ahead` (if not null): a matrix laid out as B that the caller reads next; each row of it is
// requested into L2 (prefetch) as this pass reads the same row of B (gemm_weight: the next
// strip of a weight beyond L2). Groups of one or two rows (the odd/even loop) do not fetch.
template <int R, bool kRuns, class T, class TB = T>
void gemm_rows(int64_t n, int64_t k, const T* A, int64_t a_rs, int64_t a_cs, const TB* B,
               int64_t ldb, T beta, T* C, int64_t ldc, const T* bias, const Runs& runs,
               const TB* ahead) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t W = Vec::size();
  const int64_t run_count = kRuns ? runs.count : 1;
  // The accumulators start from zero (or the bias), and beta C is added to their sums at the
  // end: a sum over k that adds to C (a block of k, a chunk of steps' weight gradients) is
  // rounded as a sum of its own, not term by term onto the running total.
  auto init = [&](int64_t j, const auto& load) { return bias ? load(bias + j) : Vec(T(0)); };
  auto plus_c = [&](int r, int64_t j, Vec sum, const auto& load) {
    return sum + load(C + r * ldc + j) * Vec(beta);
  };
  const auto full = [](const T* p) { return Vec::loadu(p); };
  int64_t j = 0;
  for (; j + 2 * W <= n; j += 2 * W) {
    // C's lines requested now, while the multiply-adds run: the stores (and beta's loads) at
    // the end otherwise waited on memory where C is a large product's output (fastrnns' input
    // projection, [6400, 2048]: 171 -> 189 GFLOP/s in a standalone copy of this kernel).
    FR_UNROLL_ROWS
    for (int r = 0; r < R; ++r) {
      __builtin_prefetch(C + r * ldc + j, 1);
      __builtin_prefetch(C + r * ldc + j + W, 1);
    }
    Vec acc[R][2];
    FR_UNROLL_ROWS
    for (int r = 0; r < R; ++r) {
      acc[r][0] = init(j, full);
      acc[r][1] = init(j + W, full);
    }
    const TB* next = ahead ? ahead + j : nullptr;
    for (int64_t run = 0; run < run_count; ++run) {
      const RowsOf<R, T> a(A + run * runs.a_step, a_rs);
      const TB* b = B + run * runs.b_step + j;
      int64_t p = 0;
      if constexpr (R <= 2) {
        // 2R chains of dependent multiply-adds cannot hide the FMA latency (batch 1-2 rows per
        // step): a second set for odd p doubles them (14 of the 16 registers at R = 2).
        Vec odd[R][2];
        FR_UNROLL_ROWS
        for (int r = 0; r < R; ++r) odd[r][0] = odd[r][1] = Vec(T(0));
        for (; p + 2 <= k; p += 2) {
          const Vec b0 = lane_of(b + p * ldb), b1 = lane_of(b + p * ldb + W);
          const Vec c0 = lane_of(b + (p + 1) * ldb);
          const Vec c1 = lane_of(b + (p + 1) * ldb + W);
          FR_UNROLL_ROWS
          for (int r = 0; r < R; ++r) {
            const Vec a0(a.at(r, p * a_cs)), a1(a.at(r, (p + 1) * a_cs));
            acc[r][0] = at::vec::fmadd(a0, b0, acc[r][0]);
            acc[r][1] = at::vec::fmadd(a0, b1, acc[r][1]);
            odd[r][0] = at::vec::fmadd(a1, c0, odd[r][0]);
            odd[r][1] = at::vec::fmadd(a1, c1, odd[r][1]);
          }
        }
        FR_UNROLL_ROWS
        for (int r = 0; r < R; ++r) {
          acc[r][0] = acc[r][0] + odd[r][0];
          acc[r][1] = acc[r][1] + odd[r][1];
        }
      }
      const auto k_step = [&](int64_t p) {
        const Vec b0 = lane_of(b + p * ldb), b1 = lane_of(b + p * ldb + W);
        FR_UNROLL_ROWS
        for (int r = 0; r < R; ++r) {
          const Vec a0(a.at(r, p * a_cs));
          acc[r][0] = at::vec::fmadd(a0, b0, acc[r][0]);
          acc[r][1] = at::vec::fmadd(a0, b1, acc[r][1]);
        }
      };
      // Two loops, so that the products without `ahead` test nothing per step of k.
      if (next) {
        for (; p < k; ++p) {
          __builtin_prefetch(next + p * ldb, 0, 2);
          __builtin_prefetch(next + p * ldb + W, 0, 2);
          k_step(p);
        }
      }
      for (; p < k; ++p) k_step(p);
    }
    if (beta != T(0)) {
      FR_UNROLL_ROWS
      for (int r = 0; r < R; ++r) {
        acc[r][0] = plus_c(r, j, acc[r][0], full);
        acc[r][1] = plus_c(r, j + W, acc[r][1], full);
      }
    }
    FR_UNROLL_ROWS
    for (int r = 0; r < R; ++r) {
      acc[r][0].store(C + r * ldc + j);
      acc[r][1].store(C + r * ldc + j + W);
    }
  }
  for (; j < n; j += W) {  // one lane, full or masked
    // Two accumulators per row (even and odd p): with one lane there are only R chains of
    // dependent multiply-adds, too few to hide the FMA latency (the seed models' n = H <= 8).
    const LaneMask<T> lane(std::min<int64_t>(W, n - j));
    const auto masked = [&](const T* p) { return lane.load(p); };
    Vec acc[R], acc2[R];
    FR_UNROLL_ROWS
    for (int r = 0; r < R; ++r) {
      acc[r] = init(j, masked);
      acc2[r] = Vec(T(0));
    }
    for (int64_t run = 0; run < run_count; ++run) {
      const RowsOf<R, T> a(A + run * runs.a_step, a_rs);
      const TB* b = B + run * runs.b_step + j;
      int64_t p = 0;
      for (; p + 2 <= k; p += 2) {
        const Vec b0 = lane.load(b + p * ldb), b1 = lane.load(b + (p + 1) * ldb);
        FR_UNROLL_ROWS
        for (int r = 0; r < R; ++r) {
          acc[r] = at::vec::fmadd(Vec(a.at(r, p * a_cs)), b0, acc[r]);
          acc2[r] = at::vec::fmadd(Vec(a.at(r, (p + 1) * a_cs)), b1, acc2[r]);
        }
      }
      if (p < k) {
        const Vec b0 = lane.load(b + p * ldb);
        FR_UNROLL_ROWS
        for (int r = 0; r < R; ++r) {
          acc[r] = at::vec::fmadd(Vec(a.at(r, p * a_cs)), b0, acc[r]);
        }
      }
    }
    FR_UNROLL_ROWS
    for (int r = 0; r < R; ++r) acc[r] = acc[r] + acc2[r];
    if (beta != T(0)) {
      FR_UNROLL_ROWS
      for (int r = 0; r < R; ++r) acc[r] = plus_c(r, j, acc[r], masked);
    }
    FR_UNROLL_ROWS
    for (int r = 0; r < R; ++r) lane.store(C + r * ldc + j, acc[r]);
  }
}

// Six rows per pass over B (AVX2): 12 accumulators + 2 B lanes + a broadcast fill the 16 AVX
// registers. m rows in groups as even as they come where each keeps at least four (20 rows as
// 5 + 5 + 5 + 5, not 6 + 6 + 6 + 2): from four rows a group's 8+ chains of multiply-adds hide
// the FMA latency, so it runs at six rows' rate per row, where a group of 1-3 rows does not
// (7 rows stay 6 + 1: 4 + 3 was slower). Measured (per-step products over a packed W_hh^T,
// one thread, GFLOP/s, same build, 6-first -> even): 8 rows at H 128 82 -> 89, 16 at H 64
// 86-87 -> 89, 20 at H 650 87 -> 92, 32 at H 512 91-92 -> 95, 50 at H 128 91 -> 93; 100 rows
// 93 either way.
//
// k in chunks of kSumChunk terms, each chunk's sums added to C (gemm_rows adds beta C to its
// own): one chain of multiply-adds over all k terms lost accuracy as k grew, where a BLAS sums
// in blocks. Against an fp64 product ([150, K] x [K, 1024], fp32 randn, rms error): one chain
// 2.9e-7 at K 256, 5.8e-7 at 1024, 1.0e-6 at 3072; chunks of 256 2.9-3.0e-7 (MKL 2.1-2.6e-7;
// chunks of 128 2.1-2.2e-7, but 3% slower per step at K 256-650). A GRU at H 1024 (its backward
// sums 3H terms) had its weight gradients at 4x torch.nn's error against the fp64 oracle, past
// DESIGN.md's fp32 tolerance (tests/test_parity.py: test_fp32_long_sums).
constexpr int64_t kSumChunk = 256;

// AVX-512 has 32 registers: fourteen rows per pass (28 accumulators, 2 B lanes, a broadcast),
// B's lanes read from cache 3/7 as often per row as at six. (Twelve rows once ran at less than
// half the rate: FR_UNROLL_ROWS unrolled eight, the accumulators went to the stack; and with a
// pointer per row, see RowsOf, GCC reloaded A's row pointers from the stack.) Standalone copy
// of the kernel, [64 or 168, 512] x a packed [512, 2048], one thread, GFLOP/s (FMA peak 243):
// 8 rows 192-207, 12 rows 201-217, 14 rows 210-227; fastrnns' forward without autograd, one
// thread: 165.9 -> 151.9 ms (torch.nn 149.5 -> 141.6 in the same runs: this host is noisy).
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kGroupRows = 14;
#else
constexpr int kGroupRows = 6;
#endif
static_assert(kGroupRows <= 16, "FR_UNROLL_ROWS unrolls sixteen rows");

template <int R, bool kRuns, class T, class TB>
void gemm_rows_of(int rows, int64_t n, int64_t k, const T* A, int64_t a_rs, int64_t a_cs,
                  const TB* B, int64_t ldb, T beta, T* C, int64_t ldc, const T* bias,
                  const Runs& runs, const TB* ahead) {
  if constexpr (R > 1) {
    if (rows < R) {
      return gemm_rows_of<R - 1, kRuns>(rows, n, k, A, a_rs, a_cs, B, ldb, beta, C, ldc, bias,
                                        runs, ahead);
    }
  }
  gemm_rows<R, kRuns>(n, k, A, a_rs, a_cs, B, ldb, beta, C, ldc, bias, runs, ahead);
}

// The k chunks outermost, every group of rows inside: a chunk of B (kSumChunk x n) is read from
// L1/L2 by all the groups in turn, where each group running all of k streamed the whole of B
// (64 KB for a 512-row strip of 32 floats, past L1) once per group. Each element of C sums the
// same chunks in the same order either way. `ahead` (gemm_rows) is fetched by each chunk's
// first group alone: once per call.
template <bool kRuns, class T, class TB>
void small_gemm_rows(int64_t m, int64_t n, int64_t k, const T* A, int64_t a_rs, int64_t a_cs,
                     const TB* B, int64_t ldb, T beta, T* C, int64_t ldc, const T* bias,
                     const Runs& runs, const TB* ahead) {
  const int64_t groups = (m + kGroupRows - 1) / kGroupRows;
  const bool even = m > kGroupRows && m / groups >= 4;
  for (int64_t p0 = 0; p0 < std::max<int64_t>(k, 1); p0 += kSumChunk) {  // (k 0: C = bias)
    const int64_t kc = std::min(kSumChunk, k - p0);
    const T be = p0 == 0 ? beta : T(1);
    const T* bi = p0 == 0 ? bias : nullptr;
    for (int64_t g = 0, i = 0; i < m; ++g) {
      const int64_t rows = even ? m / groups + (g < m % groups ? 1 : 0)
                                : std::min<int64_t>(kGroupRows, m - i);
      gemm_rows_of<kGroupRows, kRuns>(int(rows), n, kc, A + i * a_rs + p0 * a_cs, a_rs, a_cs,
                                      B + p0 * ldb, ldb, be, C + i * ldc, ldc, bi, runs,
                                      ahead && g == 0 ? ahead + p0 * ldb : nullptr);
      i += rows;
    }
  }
}

// C = A B (+ beta C, + bias) for any m, its reduction over `runs` (one by default), the
// matrix `ahead` (if any) requested into L2 meanwhile (gemm_rows).
template <class T, class TB = T>
void small_gemm(int64_t m, int64_t n, int64_t k, const T* A, int64_t a_rs, int64_t a_cs,
                const TB* B, int64_t ldb, T beta, T* C, int64_t ldc, const T* bias = nullptr,
                const Runs& runs = Runs{}, const TB* ahead = nullptr) {
  if (runs.count != 1) {
    return small_gemm_rows<true>(m, n, k, A, a_rs, a_cs, B, ldb, beta, C, ldc, bias, runs,
                                 ahead);
  }
  small_gemm_rows<false>(m, n, k, A, a_rs, a_cs, B, ldb, beta, C, ldc, bias, runs, ahead);
}

// Row-major C[m, n] = A[m, k] B[k, n] (+ beta C, + bias) with B held transposed: column j of B
// is row j of Bt (`ldbt` apart), contiguous along k, as torch stores a weight [G, K] of which
// the forward pass takes x W^T. For products over a few rows (a batch-1 or T = 1 call), where
// packing the weight first (reading it strided, writing and reading the copy) cost more than
// the product: this reads every row of Bt once per R rows of A, sequentially, and sums each dot
// product along k in lanes. R rows x NC columns per pass: R * NC accumulators + NC rows of Bt
// + a row of A in the 16 AVX registers (R = 4, NC = 3).
// Bt's elements may be fp16 or bf16 (TB) where T is float: a fp16/bf16 layer's weights, read
// where they are and widened in registers (half_lane), not copied to fp32 first.
template <int R, int NC, class T, class TB = T>
void dot_block(int64_t k, const T* A, int64_t lda, const TB* Bt, int64_t ldbt, T beta, T* C,
               int64_t ldc, const T* bias) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t W = Vec::size();
  Vec acc[R][NC];
  FR_UNROLL_ROWS
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < NC; ++c) acc[r][c] = Vec(T(0));
  }
  auto step = [&](int64_t p, const auto& load) {
    Vec b[NC];
    for (int c = 0; c < NC; ++c) {
      // The next block's rows at the same place: a weight beyond the cache (16 MB) came in
      // at 21-37 GFLOP/s without, 28-53 with (1-8 rows of A, one thread).
      __builtin_prefetch(Bt + (NC + c) * ldbt + p);
      b[c] = load(Bt + c * ldbt + p);
    }
    FR_UNROLL_ROWS
    for (int r = 0; r < R; ++r) {
      const Vec a = load(A + r * lda + p);
      for (int c = 0; c < NC; ++c) acc[r][c] = at::vec::fmadd(a, b[c], acc[r][c]);
    }
  };
  int64_t p = 0;
  for (; p + W <= k; p += W) step(p, [](const auto* q) { return lane_of(q); });
  if (p < k) {
    const LaneMask<T> lane(k - p);
    step(p, [&](const auto* q) { return lane.load(q); });
  }
  FR_UNROLL_ROWS
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < NC; ++c) {
      T& out = C[r * ldc + c];
      const T s = lane_sum<T>(acc[r][c]);
      out = beta != T(0) ? s + beta * out : (bias ? s + bias[c] : s);
    }
  }
}

// fn(j, std::integral_constant<int, NB>) for [j, j + NB) of n (columns or rows): blocks of NC,
// then one block of the rest (its size a compile-time constant too).
template <int NC, class Fn, int... Rest>
void blocks_of(int64_t n, const Fn& fn, std::integer_sequence<int, Rest...>) {
  int64_t j = 0;
  for (; j + NC <= n; j += NC) fn(j, std::integral_constant<int, NC>{});
  const int rest = int(n - j);
  ((rest == Rest + 1 ? (fn(j, std::integral_constant<int, Rest + 1>{}), 0) : 0), ...);
}
template <int NC, class Fn>
void blocks_of(int64_t n, const Fn& fn) {
  blocks_of<NC>(n, fn, std::make_integer_sequence<int, NC - 1>{});
}

// dot_gemm's pass from three rows of A up: kDotRows rows x kDotCols columns of C. AVX2's 16
// registers hold 4 x 3 (12 accumulators, 3 rows of Bt, a row of A). AVX-512's 32 hold 6 x 4
// (24 + 4 + 1): per pass more multiply-adds for each row of A and of Bt read, and the rows of A
// (all of them pass every block of columns) read from L2 a third as often where they outgrow
// L1. Standalone copy, one thread, fp32 GFLOP/s, 4 x 3 -> 6 x 4: [m, 512] x [512, 512]^T m 4
// 122 -> 170, 8 127 -> 159, 16 108 -> 166, 40 92 -> 162, 63 92 -> 157; [40, 512] x
// [512, 2048]^T 89 -> 144, [20, 1024] x [1024, 4096]^T 81 -> 122, [8, 1024] x [1024, 4096]^T
// (16 MB, beyond L2) 76 -> 90; m 3 105 -> 114. (4 x 6: as fast in L2, slower beyond it.)
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kDotRows = 6, kDotCols = 4;
#else
constexpr int kDotRows = 4, kDotCols = 3;
#endif

// C = A B (+ beta C, + bias) with B as dot_block takes it. One or two rows (a batch-1 or -2
// step): more columns per pass, so that six or eight chains of multiply-adds hide the FMA
// latency (three, with one row of R = 4, NC = 3: a third of the rate). More rows: columns in
// blocks of kDotCols (whose rows of Bt stay in L1 while every row of A passes), then the rest;
// rows in passes of kDotRows, then the rest.
template <class T, class TB = T>
void dot_gemm(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const TB* Bt,
              int64_t ldbt, T beta, T* C, int64_t ldc, const T* bias = nullptr) {
  // Rows of A [r0, r0 + R) times the columns [j, j + NB).
  auto rows = [&](auto r, int64_t r0, int64_t j, auto cols) {
    constexpr int R = decltype(r)::value, NB = decltype(cols)::value;
    dot_block<R, NB, T, TB>(k, A + r0 * lda, lda, Bt + j * ldbt, ldbt, beta, C + r0 * ldc + j,
                            ldc, bias ? bias + j : nullptr);
  };
  using One = std::integral_constant<int, 1>;
  using Two = std::integral_constant<int, 2>;
  if (m == 1) return blocks_of<6>(n, [&](int64_t j, auto cols) { rows(One{}, 0, j, cols); });
  if (m == 2) return blocks_of<4>(n, [&](int64_t j, auto cols) { rows(Two{}, 0, j, cols); });
  blocks_of<kDotCols>(n, [&](int64_t j, auto cols) {
    blocks_of<kDotRows>(m, [&](int64_t i, auto r) { rows(r, i, j, cols); });
  });
}

// Threads of one parallel team meeting once per step (unit parts, sequence.h): each counts its
// arrivals in a line of its own and waits until every other thread's count has reached its
// own. A waiter reads one line per other thread, which its owner writes once a step, where a
// shared counter and generation number took a read-modify-write of the counter's line from
// each thread and a second write of the generation's by the last one. With request_others
// (bench, 2 threads, 3 alternating runs, fused best ms): the small-batch LSTM's forward 3.68 ->
// 3.55, forward+backward 11.47 -> 11.18 (median 1.16x -> 1.23x and 1.21x -> 1.24x torch.nn);
// a GRU at T 100, B 2, H 256 forward+backward 3.26 -> 3.11.
// Waiters spin (a step is a few microseconds), yielding now and then in case the machine is
// oversubscribed.
class StepBarrier {
 public:
  explicit StepBarrier(int count) : slots_(count) {}
  void wait(int me) {
    const int64_t step = slots_[me].arrived.load(std::memory_order_relaxed) + 1;
    slots_[me].arrived.store(step, std::memory_order_release);
    for (int other = 0; other < int(slots_.size()); ++other) {
      for (int spins = 1; slots_[other].arrived.load(std::memory_order_acquire) < step; ++spins) {
        if (spins % 4096 == 0) std::this_thread::yield();
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
      }
    }
  }

 private:
  struct alignas(64) Slot {
    std::atomic<int64_t> arrived{0};
  };
  std::vector<Slot> slots_;
};

struct CPUBackend {
  struct DeviceGuard {
    explicit DeviceGuard(c10::Device) {}
  };
  // The large buffers of a call (outputs, workspace, gradients, packed weights) come from the
  // pool (buffer_pool.h): reused memory instead of freshly faulted pages on every call.
  static at::Tensor empty(c10::IntArrayRef sizes, const c10::TensorOptions& options) {
    return pooled_empty(sizes, options);
  }

  // fp16 and bf16 layers compute in fp32 on fp32 copies of their arguments (rnn_cpu.cpp), except
  // the weights: those stay as they are, and the products that read them in place (few rows: a
  // decoder's step; dot_gemm forward, small_gemm backward, where the fp32 weight would go to
  // the BLAS) widen them in registers. A bf16 GRU's step at B 1, I = H = 1024 read 12.6 MB of
  // weights, where their fp32 copy wrote 25 MB and read it again.
  static constexpr bool kHalfWeights = true;
  template <class scalar_t>
  static bool is_half_of(const at::Tensor& w) {
    return std::is_same_v<scalar_t, float> &&
           (w.scalar_type() == at::kHalf || w.scalar_type() == at::kBFloat16);
  }
  // `t` in `dtype`: a contiguous one's copy in an empty() buffer (the pool; the fp16/bf16
  // arguments' fp32 copies and the results' are megabytes, whose pages from glibc faulted on
  // some calls and not others, by the heap's state: a bf16 GRU at T 1, B 8, H 512 took 1.0-3.3
  // ms forward in one process, 0.35 in another), a transposed view's as the same view of a
  // copy of its transpose.
  static at::Tensor converted(const at::Tensor& t, at::ScalarType dtype) {
    if (t.scalar_type() == dtype) return t;
    if (t.dim() == 2 && transposed_view(t) && t.t().is_contiguous()) {
      return converted(t.t(), dtype).t();
    }
    if (!t.is_contiguous()) return t.to(dtype);
    at::Tensor out = empty(t.sizes(), t.options().dtype(dtype));
    if (t.numel() == 0 || (t.numel() <= kDirectConvertMax && convert_direct(t, out))) return out;
    return out.copy_(t);
  }
  // Up to this many elements, fp32 <-> fp16 / bf16 in a loop here rather than ATen's copy_,
  // whose setup (~1-2 us) a small layer paid for each of its arguments and results: a fp16
  // bidirectional RNN at T 1, B 4, H 16 (eight conversions a direction) ran forward at
  // 0.98-1.00x torch.nn. The roundings are the same (to nearest even, c10's conversions).
  static constexpr int64_t kDirectConvertMax = 64 * 1024;
  template <class S, class D>
  static void convert_loop(const at::Tensor& from, at::Tensor& to) {
    const S* src = from.const_data_ptr<S>();
    D* dst = to.data_ptr<D>();
    for (int64_t i = 0, n = from.numel(); i < n; ++i) dst[i] = static_cast<D>(src[i]);
  }
  // Both contiguous; false where the dtypes are not a pair of these.
  static bool convert_direct(const at::Tensor& from, at::Tensor& to) {
    const auto s = from.scalar_type(), d = to.scalar_type();
    if (s == at::kFloat && d == at::kHalf) {
      convert_loop<float, c10::Half>(from, to);
    } else if (s == at::kFloat && d == at::kBFloat16) {
      convert_loop<float, c10::BFloat16>(from, to);
    } else if (s == at::kHalf && d == at::kFloat) {
      convert_loop<c10::Half, float>(from, to);
    } else if (s == at::kBFloat16 && d == at::kFloat) {
      convert_loop<c10::BFloat16, float>(from, to);
    } else {
      return false;
    }
    return true;
  }
  // w in scalar_t: itself, or a fp16/bf16 weight's fp32 copy (kHalfWeights).
  template <class scalar_t>
  static at::Tensor widened(const at::Tensor& w) {
    return converted(w, c10::CppTypeToScalarType<scalar_t>::value);
  }

  // `t` with contiguous elements, as the loop reads it: itself if it is, else a copy made here
  // row by row (a memcpy, a fill where a row is one broadcast element, else a gather), rows
  // shared out across threads. ATen's copy of the output gradient that `output.sum()` gives (a
  // broadcast) took ~375 us per MNIST-rows training step ([28, 100, 128]); a batch-first
  // model's is a transposed view.
  static at::Tensor contiguous(const at::Tensor& t) {
    if (t.is_contiguous()) return t;
    if (t.dim() < 2 || t.dim() > 3 ||
        (t.scalar_type() != at::kFloat && t.scalar_type() != at::kDouble)) {
      return t.contiguous();
    }
    at::Tensor out = empty(t.sizes(), t.options());
    const auto strides = t.strides();
    const bool broadcast =
        std::all_of(strides.begin(), strides.end(), [](int64_t s) { return s == 0; });
    const int64_t P = t.size(-1), sp = t.stride(-1);
    const int64_t inner = t.dim() == 3 ? t.size(1) : 1;
    const int64_t s0 = t.stride(0), s1 = t.dim() == 3 ? t.stride(1) : 0;
    const int64_t rows = P == 0 ? 0 : t.numel() / P;
    AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "fused_rnn contiguous", [&] {
      const scalar_t* src = t.const_data_ptr<scalar_t>();
      scalar_t* dst = out.data_ptr<scalar_t>();
      // One element broadcast to every position (the gradient that `output.sum()` gives): a
      // single fill, not a fill per row inside a parallel region (4800 rows of 4 on the toxic
      // model: its training step 0.4915 -> 0.4870 ms, min of 6 alternating processes).
      if (broadcast) {
        std::fill_n(dst, t.numel(), *src);
        return;
      }
      at::parallel_for(0, rows, std::max<int64_t>(1, kPointwiseGrain / std::max<int64_t>(P, 1)),
                       [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const scalar_t* row = src + r / inner * s0 + r % inner * s1;
          scalar_t* o = dst + r * P;
          if (sp == 1) {
            std::memcpy(o, row, sizeof(scalar_t) * P);
          } else if (sp == 0) {
            std::fill(o, o + P, *row);
          } else {
            for (int64_t k = 0; k < P; ++k) o[k] = row[k * sp];
          }
        }
      });
    });
    return out;
  }

  // Rows per parallel_for task are chosen so a task has at least this many elements: below it
  // the fork/join costs more than the work (seed-sized models have 4-128 hidden units).
  static constexpr int64_t kPointwiseGrain = 16384;

  // B (the recurrent weight) up to this many elements goes to small_gemm: it stays in L2.
  static constexpr int64_t kSmallGemmWeight = 64 * 1024;

  // With beta == 0, `bias` (if not null) is added to every row: C = A B + bias. B may be
  // fp16 / bf16 where the rest is float (kHalfWeights): small_gemm widens it, no BLAS.
  template <class scalar_t, class TB>
  static void gemm(int64_t m, int64_t n, int64_t k, const scalar_t* A, int64_t lda,
                   const TB* B, int64_t ldb, scalar_t beta, scalar_t* C, int64_t ldc,
                   const scalar_t* bias = nullptr) {
    if (m == 0 || n == 0) return;
    if constexpr (std::is_same_v<TB, scalar_t>) {
      if (k * n > kSmallGemmWeight) {
        if (bias && beta == scalar_t(0)) {  // the BLAS adds to C = bias
          for (int64_t r = 0; r < m; ++r) copy(C + r * ldc, bias, n);
          beta = scalar_t(1);
          bias = nullptr;
        }
        // Row-major C = A B is column-major C^T = B^T A^T: the operands swap, no transposes.
        if (blas_gemm('N', 'N', int(n), int(m), int(k), scalar_t(1), B, int(ldb), A, int(lda),
                      beta, C, int(ldc))) {
          return;
        }
      }
    }
    small_gemm(m, n, k, A, lda, int64_t(1), B, ldb, beta, C, ldc, bias);
  }

  // A weight (W_hh^T, W_hh; W_ih^T and W_ih for the products of all steps' rows) in column
  // strips of two lanes (16 floats / 8 doubles), each strip [K, strip] contiguous and
  // zero-padded at the end of a block: a product then reads it front to back (the prefetchers
  // follow; rows of the unpacked matrix are a page apart once N >= 1024), and a strip stays in
  // L1 while all the product's rows use it.
  template <class scalar_t>
  static constexpr int64_t strip_width() {
    return 2 * at::vec::Vectorized<scalar_t>::size();
  }

  // Weights that fit in L1 stay as they are; larger ones are packed by several threads from
  // 1 MB up.
  static constexpr int64_t kPackMinBytes = 16 * 1024;
  static constexpr int64_t kPackGrainBytes = 512 * 1024;
  static constexpr int64_t kPackRows = 8;
  // A transposed view (W^T of a weight W [N, K] as torch stores it: the forward pass's W_ih^T
  // and W_hh^T) multiplied by fewer rows than this in all is read in place by dot_gemm, not
  // packed: packing reads it strided and writes a copy that the products then read again, which
  // cost as much as a product over 30-70 rows (1-16 MB weights; 3 ms for W_ih^T of an LSTM at
  // I = H = 1024, where its product over 8 rows took 2). Measured (forward without autograd, 2
  // threads, min of 4 alternating processes, packed -> in place): GRU H 1024 at T 1 B 1
  // 5.5 -> 0.65 ms, T 3 B 16 9.6 -> 6.2; LSTM H 512 T 2 B 16 1.86 -> 1.45, T 6 B 8 2.67 -> 2.08,
  // H 256 T 1 B 48 0.61 -> 0.54; from 64 rows packing was as fast or faster at H <= 512 (LSTM
  // T 1 B 64 H 256 0.62 vs 0.70 ms, T 8 B 16 H 512 4.4 vs 5.6).
  static constexpr int64_t kDotMaxRows = 64;
  // Twice as many for weights of at least this size: beyond the cache, packing them cost ~0.7
  // ns per element (16 MB in 2.8 ms on one thread), against ~0.2 for a 4 MB one. GRU at
  // I = H = 1024, 128 rows: 16.5 ms packed, 14.9 in place (LSTM H 512, 4 MB: 4.4 vs 5.6).
  static constexpr int64_t kDotLargeWeightBytes = 8 << 20;
  // AVX-512 builds: twice as many also where the weight's products are several (W_hh^T's, one
  // a step) and sum K >= kDotLongK terms: there dot_gemm's 6 x 4 passes run at 140-170 GFLOP/s
  // a core, near the packed kernel over a step's few rows (at shorter K the sums' reduction and
  // each pass's set-up weigh more: 70-100 at K 64-128). Measured (forward without autograd, 2
  // threads, alternating processes, 4 rounds, packed -> in place): LSTM T 5 B 16 I 128 H 256
  // 0.422 -> 0.320 ms, T 7 B 16 H 256 0.556 -> 0.500, T 4 B 16 H 512 1.247 -> 1.191, T 12 B 10
  // I 256 H 512 1.620 -> 1.516; GRU T 3 B 24 H 512 1.192 -> 0.953; RNN T 5 B 20 H 512 0.513 ->
  // 0.396. One product (the input projection before the loop) stays packed from 64 rows: in
  // place it lost 2-14% at 64-112 rows (LSTM T 1 B 112 H 256 0.334 -> 0.381). From 128 rows
  // packing stays ahead (LSTM T 8 B 16 H 128 +19.6% in place); over large weights it does so
  // from 128 on (LSTM T 2 B 64 H 1024 +8.9% in place). AVX2's 4 x 3 passes (kDotRows) keep 64.
#if defined(CPU_CAPABILITY_AVX512)
  static constexpr int64_t kDotLongK = 256;
#else
  static constexpr int64_t kDotLongK = std::numeric_limits<int64_t>::max();
#endif
  // A row-major weight (the backward's W_ih and W_hh) under the same row counts from this size
  // on, multiplied in place by the BLAS (or small_gemm): a GRU's backward at T 1, B 1,
  // I = H = 1024 9.9 -> 4.8 ms; LSTM T 200 B 4 H 256 (packed, 1 MB) 14.1 -> 12.9 (the faster
  // packing). Smaller ones pack in microseconds, and their products per step on the packed
  // copy stay ahead: a batch-1 LSTM at H 128 (256 KB) took 0.42 ms in place, 0.35 packed.
  static constexpr int64_t kRowMajorInPlaceMinBytes = 1 << 20;
  // A large row-major weight (kDotLargeWeightBytes) is also read in place by the BLAS where
  // its products average kDotMaxRows rows or more (`products`: how many the call makes):
  // there the BLAS's own packing, product by product, costs less than our copy and its
  // products. Measured (backward op, I = H = 1024, 2 threads, min of 4 alternating runs,
  // packed -> in place): GRU T 1 B 128 31.3 -> 29.3 ms, T 4 B 64 64.9 -> 53.3; LSTM T 2 B 128
  // 92.7 -> 75.4, T 20 B 64 327 -> 293. With fewer rows per product packing stayed ahead (LSTM
  // T 8 B 32 90 vs 101, GRU T 16 B 16 55 vs 58): the BLAS packs again for every product.
  static bool read_in_place(const at::Tensor& w, int64_t element_size, int64_t rows,
                            int64_t products) {
    const int64_t bytes = w.size(0) * w.size(1) * element_size;
    const bool large = bytes >= kDotLargeWeightBytes;
    if (transposed_view(w)) {
      const bool long_sums = w.size(0) >= kDotLongK && products > 1;
      return rows < (large || long_sums ? 2 : 1) * kDotMaxRows;
    }
    const bool few_rows = rows < (large ? 2 : 1) * kDotMaxRows;
    if (!w.is_contiguous() || bytes < kRowMajorInPlaceMinBytes) return false;
    return few_rows || (large && rows >= products * kDotMaxRows);
  }

  static bool transposed_view(const at::Tensor& w) {
    return w.stride(0) == 1 && w.stride(1) != 1;
  }
  static bool large_weight(const at::Tensor& w, int64_t element_size) {
    return w.size(0) * w.size(1) * element_size >= kPackMinBytes;
  }

  // `w` [K, N] with any strides: W_hh^T is packed from the transposed view of W_hh (reading its
  // rows, no transposed copy: at batch 1 that copy and a memcpy per strip row were a fifth of
  // the forward pass).
  // `roll` (a row-major weight only): the rows packed as weight.roll(roll, 0) has them; an
  // unpacked one is read where it is (gemm_weight), no rolled copy either way.
  static constexpr bool kRollInPlace = true;
  template <class scalar_t>
  static at::Tensor pack_weight(const at::Tensor& given, int64_t block, int64_t rows,
                                int64_t products, int64_t roll) {
    constexpr int64_t SW = strip_width<scalar_t>();
    const int64_t K = given.size(0), N = given.size(1), blocks = N / block;
    if (!large_weight(given, sizeof(scalar_t))) return at::Tensor();
    // A fp16/bf16 weight (kHalfWeights): read where it is where the fp32 one would be (dot_gemm
    // or small_gemm widen it), else packed from its fp32 copy. The decisions are the fp32
    // weight's (its element size).
    const at::Tensor weight =
        is_half_of<scalar_t>(given) && !read_in_place(given, sizeof(scalar_t), rows, products)
            ? widened<scalar_t>(given)
            : given;
    const bool transposed = transposed_view(weight);
    TORCH_INTERNAL_ASSERT(roll == 0 || !transposed);
    if (read_in_place(weight, sizeof(scalar_t), rows, products)) {
      return at::Tensor();  // row_major keeps it
    }
    const at::Tensor w = transposed ? weight : weight.contiguous();
    const int64_t ld = transposed ? w.stride(1) : w.stride(0);
    const int64_t strips = (block + SW - 1) / SW;
    at::Tensor packed = empty({blocks * strips * K * SW}, w.options());
    const scalar_t* src = w.const_data_ptr<scalar_t>();
    scalar_t* dst = packed.data_ptr<scalar_t>();
    if (!transposed) {
      // Blocks of kPackRows rows of w, every strip of each: the block's rows are read front to
      // back, eight streams. Strip by strip down all K rows (a line from each row, a row of w
      // apart: a page once a row has 1024 floats; as many streams as rows) packed a 12 MB W_ih
      // (the backward's GRU at I = H = 1024) in 4.4-7.1 ms on one thread, 2.3-2.8 now (64-row
      // blocks: 4.4-4.7); 1 MB 83-91 -> 56 us, 16 MB 5.9-6.4 -> 2.9-3.1 ms.
      auto row = [&](int64_t k) {  // row k of weight.roll(roll, 0)
        const int64_t r = k - roll;
        return src + (r < 0 ? r + K : r) * ld;
      };
      const int64_t row_blocks = (K + kPackRows - 1) / kPackRows;
      const int64_t grain = std::max<int64_t>(
          1, kPackGrainBytes / (kPackRows * N * int64_t(sizeof(scalar_t))));
      at::parallel_for(0, row_blocks, grain, [&](int64_t r0, int64_t r1) {
        for (int64_t k0 = r0 * kPackRows; k0 < std::min(K, r1 * kPackRows); k0 += kPackRows) {
          const int64_t k1 = std::min(K, k0 + kPackRows);
          for (int64_t i = 0; i < blocks * strips; ++i) {
            const int64_t c0 = (i / strips) * block + (i % strips) * SW;
            const int64_t width = std::min(SW, block - (i % strips) * SW);
            scalar_t* panel = dst + i * K * SW;
            if (width == SW) {  // a copy of known size: inlined, no memcpy call per row
              for (int64_t k = k0; k < k1; ++k) {
                std::memcpy(panel + k * SW, row(k) + c0, sizeof(scalar_t) * SW);
              }
              continue;
            }
            for (int64_t k = k0; k < k1; ++k) {
              std::copy(row(k) + c0, row(k) + c0 + width, panel + k * SW);
              std::fill(panel + k * SW + width, panel + (k + 1) * SW, scalar_t(0));
            }
          }
        }
      });
      return packed;
    }
    // Strips shared out across threads (a fifth of a batch-16 forward's serial time at H = 512).
    const int64_t grain = std::max<int64_t>(1, kPackGrainBytes / (K * SW * int64_t(sizeof(scalar_t))));
    at::parallel_for(0, blocks * strips, grain, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / strips, st = i % strips;
        const int64_t c0 = b * block + st * SW, width = std::min(SW, block - st * SW);
        scalar_t* panel = dst + i * K * SW;
        // A transposed view: element (k, c0 + c) at src[(c0 + c) * ld + k].
        int64_t c = 0;
#if defined(FR_X86_LANES)
        // Lane x lane blocks transposed in registers (AVX2's 8 x 8: a 1 MB W^T in 40 us, 99
        // element by element).
        if constexpr (std::is_same_v<scalar_t, float>) {
          constexpr int64_t L = at::vec::Vectorized<float>::size();
          for (; c + L <= width; c += L) {
            const scalar_t* rows = src + (c0 + c) * ld;
            int64_t k = 0;
            for (; k + L <= K; k += L) {
              at::vec::transpose_mxn<float, L, L>(rows + k, ld, panel + k * SW + c, SW);
            }
            for (; k < K; ++k) {
              for (int64_t r = 0; r < L; ++r) panel[k * SW + c + r] = rows[r * ld + k];
            }
          }
        }
#endif
        for (; c < width; ++c) {
          const scalar_t* row = src + (c0 + c) * ld;
          for (int64_t k = 0; k < K; ++k) panel[k * SW + c] = row[k];
        }
        for (int64_t k = 0; k < K && width < SW; ++k) {  // the padding of a block's last strip
          for (int64_t j = width; j < SW; ++j) panel[k * SW + j] = scalar_t(0);
        }
      }
    });
    return packed;
  }

  // A weight that pack_weight left unpacked ([K, N], any strides) in row-major order: itself
  // if it is, or a large transposed view as it is (read by dot_gemm), else a copy made here
  // (ATen's contiguous() of a transposed 3 x 3 weight cost ~1.9 us, twice per forward call: a
  // seventh of the char-RNN's).
  template <class scalar_t>
  static at::Tensor row_major(const at::Tensor& w) {
    if (transposed_view(w) && large_weight(w, sizeof(scalar_t))) return w;
    // A fp16/bf16 weight (kHalfWeights): large ones left unpacked are read in place
    // (pack_weight); small ones get fp32 copies, made in the loop below with the rest.
    const bool half = is_half_of<scalar_t>(w);
    if (w.is_contiguous() && (!half || large_weight(w, sizeof(scalar_t)))) return w;
    const int64_t K = w.size(0), N = w.size(1), s0 = w.stride(0), s1 = w.stride(1);
    at::Tensor out =
        at::empty({K, N}, w.options().dtype(c10::CppTypeToScalarType<scalar_t>::value));
    scalar_t* dst = out.data_ptr<scalar_t>();
    auto copy = [&](const auto* src) {
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t n = 0; n < N; ++n) {
          dst[k * N + n] = static_cast<scalar_t>(src[k * s0 + n * s1]);
        }
      }
    };
    with_weight_data<CPUBackend, scalar_t>(w, copy);
    return out;
  }

  // The packed kernel takes products of more rows in blocks of at most this many, and of at
  // most 64K elements of A (256 KB in fp32), so that A's block stays in L2 while every strip of
  // the weight passes. Per step it runs at 96 GFLOP/s per core here from 4 rows up (K = 128 or
  // 512), where MKL's sgemm runs at 65-89 (it repacks the weight every call).
  static constexpr int64_t kPackedMaxRows = 128;
  static int64_t packed_block_rows(int64_t K) {
    return std::clamp<int64_t>(64 * 1024 / std::max<int64_t>(K, 1), 6, kPackedMaxRows);
  }

  // out[n] (row n as `out_rows` says) = row n of A (its rows as `rows` says) times w (+ bias) for
  // the N rows (out_rows: one block, or blocks of as many rows as A's), blocks of rows shared
  // out across threads, or strips of w's columns where there are too few rows for two blocks
  // (a few steps of a small batch) or the weight is a large packed one (kStripSplitMinBytes):
  // the products before and after the loop that multiply every step's rows by one weight
  // (x W_ih^T + bias, dgates W_ih).
  // On the packed kernel (at the peak of MKL's sgemm on large ones, 1.6x it at K = 20; no copy
  // of a strided A), with ATen's BLAS threads not woken for the small ones.
  template <class scalar_t>
  static void rows_product(const scalar_t* A, const RowBlocks& rows, int64_t N,
                           const Weight<scalar_t>& w, const scalar_t* bias, scalar_t* out,
                           const RowBlocks& out_rows) {
    TORCH_INTERNAL_ASSERT(out_rows.blocks == 1 || out_rows.rows == rows.rows);
    // Rows [r0, r1), columns [c0, c1).
    auto run = [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
      rows.segments(r0, r1, [&](int64_t n, int64_t off, int64_t count) {
        gemm_weight(count, c0, c1, A + off, rows.sb, w, scalar_t(0),
                    out + out_rows.offset_of(n), out_rows.sb, bias);
      });
    };
    const int64_t grain = std::max(packed_block_rows(w.K),
                                   kParallelWork / std::max<int64_t>(1, w.K * w.N));
    // Work as multiply-adds, a weight element over few rows counted as kStreamedWeightRows.
    const int64_t work_rows = std::max(N, kStreamedWeightRows);
    constexpr int64_t SW = strip_width<scalar_t>();
    const int64_t strips = (w.N + SW - 1) / SW;
    const bool large_packed = w.packed && w.bytes() >= kStripSplitMinBytes &&
                              strips >= 2 * at::get_num_threads();
    if ((N < 2 * grain || large_packed) && work_rows * w.K * w.N >= 2 * kParallelWork) {
      const int64_t strip_grain = std::max<int64_t>(1, kParallelWork / (work_rows * w.K * SW));
      at::parallel_for(0, strips, strip_grain, [&](int64_t s0, int64_t s1) {
        run(0, N, s0 * SW, std::min(w.N, s1 * SW));
      });
      return;
    }
    at::parallel_for(0, N, grain, [&](int64_t r0, int64_t r1) { run(r0, r1, 0, w.N); });
  }

  // With beta == 0, `bias` (if not null; indexed by column, like w's) is added to every row.
  template <class scalar_t>
  static void gemm_weight(int64_t m, int64_t c0, int64_t c1, const scalar_t* A, int64_t lda,
                          const Weight<scalar_t>& w, scalar_t beta, scalar_t* C, int64_t ldc,
                          const scalar_t* bias = nullptr) {
    if (m == 0 || c1 <= c0) return;
    const int64_t K = w.K;
    // The weight where it is (data, or fp16 / bf16 `half`): a transposed view (ldt), or
    // row-major, its rows rolled (roll).
    auto in_place = [&](const auto* data) {
      if (w.ldt) {
        dot_gemm(m, c1 - c0, K, A, lda, data + c0 * w.ldt, w.ldt, beta, C + c0, ldc,
                 bias ? bias + c0 : nullptr);
        return;
      }
      const int64_t r = w.roll;
      scalar_t be = beta;
      const scalar_t* bi = bias;
      if (r > 0) {  // rows [0, r) of the weight are data's last r rows, the rest its first
        gemm(m, c1 - c0, r, A, lda, data + (K - r) * w.N + c0, w.N, be, C + c0, ldc,
             bi ? bi + c0 : nullptr);
        be = scalar_t(1);
        bi = nullptr;
      }
      gemm(m, c1 - c0, K - r, A + r, lda, data + c0, w.N, be, C + c0, ldc,
           bi ? bi + c0 : nullptr);
    };
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (w.half) {  // kHalfWeights: a weight that pack_weight left in fp16 / bf16
        return w.half_type == at::kBFloat16 ? in_place(static_cast<const c10::BFloat16*>(w.half))
                                            : in_place(static_cast<const c10::Half*>(w.half));
      }
    }
    if (!w.packed) return in_place(w.data);
    const int64_t block_rows = packed_block_rows(K);
    if (m > block_rows) {  // blocks of rows, so that A's block stays in L2 for all strips
      for (int64_t r = 0; r < m; r += block_rows) {
        gemm_weight(std::min(block_rows, m - r), c0, c1, A + r * lda, lda, w, beta, C + r * ldc,
                    ldc, bias);
      }
      return;
    }
    constexpr int64_t SW = strip_width<scalar_t>();
    const int64_t strips = (w.block + SW - 1) / SW;
    // A weight beyond L2 is read from L3: each strip's product requests the next strip's lines
    // as it goes (`ahead`), so that the next product finds them in L2.
    const bool streamed = w.bytes() > kL2ResidentBytes;
    struct Strip {
      const scalar_t* panel;
      int64_t col, width;
    };
    Strip pending{nullptr, 0, 0};
    auto run_before = [&](const scalar_t* next_panel) {
      if (!pending.panel) return;
      small_gemm(m, pending.width, K, A, lda, int64_t(1), pending.panel, SW, beta,
                 C + pending.col, ldc, bias ? bias + pending.col : nullptr, Runs{},
                 streamed ? next_panel : nullptr);
    };
    // Blocks b0..b1, the strips of each in [begin, end) of the block: in order, or where the
    // weight is taken descending, both last to first. Each strip runs once the next is known.
    const bool descending = w.descending && streamed;
    const int64_t b0 = c0 / w.block, b1 = (c1 - 1) / w.block;
    for (int64_t i = 0; i <= b1 - b0; ++i) {
      const int64_t b = descending ? b1 - i : b0 + i;
      const int64_t begin = std::max<int64_t>(c0 - b * w.block, 0);
      const int64_t end = std::min(c1 - b * w.block, w.block);
      TORCH_INTERNAL_ASSERT(begin % SW == 0);
      const int64_t count = (end - begin + SW - 1) / SW;
      for (int64_t q = 0; q < count; ++q) {
        const int64_t j = begin + (descending ? count - 1 - q : q) * SW;
        const scalar_t* panel = w.packed + (b * strips + j / SW) * K * SW;
        run_before(panel);
        pending = {panel, b * w.block + j, std::min(SW, end - j)};
      }
    }
    run_before(nullptr);
  }

  // Packed weights up to this size (half a core's L2, 2 MB here) stay in L2 from one step's
  // product to the next. Larger ones are streamed from L3 on every step: gemm_weight requests
  // each next strip ahead (prefetch) and, on every other step of the loops' recurrent products,
  // takes the weight descending (in_step_order), so that the step starts on what the step
  // before read last.
  // Descending, measured (bench, 3 alternating processes each way, fused best ms, 2 threads):
  // LSTM T 50, I = H: B 32, H 512 forward 22.48 -> 21.67, forward+backward 67.8 -> 64.8; B 16,
  // H 512 12.19 -> 11.84 and 35.8 -> 34.9; B 32, H 384 12.31 -> 11.99; fastrnns forward 80.8 ->
  // 76.6; GRU B 32, H 512 17.4 -> 16.7; RNN B 32, H 1024 22.7 -> 22.3 and 65.3 -> 63.6; B 64,
  // H 768 (unit parts, 4.7 MB each) 92.9 -> 92.5.
  // The next strip ahead, measured (same process, 10 alternating rounds, 2 threads, min ms,
  // forward / forward+backward, without -> with): fastrnns (LSTM T 100, B 64, I = H = 512)
  // 82.7 -> 80.1 and 79.8 -> 78.2 / within noise (244-251); its step products alone (I 16)
  // 42.2 -> 37.8 / 133.0 -> 129.8; LSTM T 100, B 32, H 512 43.0 -> 39.2 / 127.5 -> 124.0;
  // LSTM T 50, H 512: B 32 22.6 -> 20.8 / 66.5 -> 63.9, B 16 11.7 -> 11.1 / 34.1 -> 33.7; GRU
  // T 50, B 32, H 512 17.3 -> 16.1 / 51.4 -> 49.1; GRU T 100, B 16, I 256, H 512 13.2 -> 12.1;
  // RNN T 50, B 32, H 1024 22.8 -> 21.5 / 67.2 -> 64.1; LSTM T 50, B 64, H 768 88.4 -> 87.1.
  // Ahead of weights of 1 MB and less as well, the small-batch LSTM (a 1 MB W_hh) lost 5.5%.
  static constexpr int64_t kL2ResidentBytes = 1024 * 1024;

  // The weight gradients after the loop, over all N time-major rows. Up to this many
  // gate-gradient elements (the seed models) the operands stay in cache and small_gemm beats
  // MKL, whose tall-skinny products cost 100-300 us here whatever their size. Beyond it, the
  // input projection moves into the loop (without training).
  static constexpr int64_t kSmallPostLoop = 256 * 1024;
  // And of at most this many multiply-adds for a weight gradient: beyond it the BLAS's rate
  // outweighs its overhead (backward op, 2 threads, min of 8 alternating runs, small_gemm ->
  // BLAS): RNN T 1 B 64 I = H 1024 (67M) 4.21 -> 3.63 ms, GRU T 10 B 32 H 256 (63M) 3.75 ->
  // 3.32, LSTM T 20 B 8 H 256 (42M) 2.43 -> 2.19, GRU T 1 B 32 H 512 (25M) 1.68 / 1.67; RNN
  // T 1 B 128 H 1024 9.7 -> 7.4 (4 runs).
  static constexpr int64_t kSmallPostLoopMacs = 16 << 20;
  // Multiply-adds per thread below which these products stay on one thread: waking the other
  // threads (and waiting for the last) cost more than 100-200 us of work here. With a 64K grain
  // the toxic model's training step took 25% longer on 2 threads than on 1.
  static constexpr int64_t kParallelWork = 1024 * 1024;
  // A product over a few rows (a T = 1 or batch-1 or -2 call's x W_ih^T, dgates W_ih) reads each
  // weight element once, from L2 or beyond (a second 512 KB weight already evicted the first
  // here), at about the time of this many multiply-adds: rows_product shares out the strips
  // of such a weight as if it had this many rows. Measured (forward without autograd, 2
  // threads, 2 alternating processes, fused us, 1 -> 16): T 1, B 2, I 256, bidirectional: RNN
  // H 512 100 -> 74, GRU H 256 126 -> 76; GRU T 1 B 8 H 256 bidirectional 207 -> 155, LSTM T 1
  // B 4 H 256 191 -> 128; GRU T 2 B 2 H 512 200 -> 130; smaller weights (RNN H 256, LSTM H 128)
  // the same; 32 no better than 16.
  static constexpr int64_t kStreamedWeightRows = 16;
  // A packed weight of at least this size is shared out by its column strips whatever the
  // rows: each thread reads only its share of the weight (of a transposed view, x W_ih^T's, the
  // share that pack_weight's same thread has just written into its cache; a row block per
  // thread had each stream all of it, half from the other core), and A from the shared cache.
  // At least two strips per thread. Measured
  // (2 threads, same-process A/B, 8 alternating rounds, min ms, rows -> strips, forward /
  // forward+backward): RNN T 2, B 64, I 1024, H 512 0.946 -> 0.779 / 2.471 -> 2.317; GRU T 8,
  // B 64, I 1024, H 256 3.24 -> 3.10 / 9.67 -> 9.13; GRU T 100, B 16, I 256, H 512 12.87 ->
  // 12.23 / 38.6 -> 36.6; LSTM T 35, B 20, I = H = 650 17.0 -> 16.2 / 48.9 -> 47.9; LSTM T 10,
  // B 64, I = H = 512 8.07 -> 7.67; the small-batch LSTM 3.23 -> 3.14 / 9.66 -> 9.42;
  // fastrnns and RNN T 100, B 32, I = H = 1024 within 1-2% both ways. Smaller weights lost:
  // from 64 KB on, RNN T 10, B 128, I = H = 128 0.283 -> 0.308 ms forward, LSTM T 28, B 100,
  // I 28, H 128 1.39 -> 1.48; at 512 KB within 2% both ways.
  static constexpr int64_t kStripSplitMinBytes = 1 << 20;

  // a() and b() (independent post-loop work: the input side's products, the recurrent side's)
  // one per thread, where each of their products would run on one thread anyway (`product`,
  // the multiply-adds of the largest, below 2 * kParallelWork) and they pay for the parallel
  // region (kConcurrentMin): the toxic model's backward spent a third of its time in them with
  // the other thread waiting. Larger products share themselves out across the threads.
  static constexpr int64_t kConcurrentMin = 32 * 1024;
  template <class A, class B>
  static void concurrently(int64_t product, const A& a, const B& b) {
    if (product >= 2 * kParallelWork || product < kConcurrentMin || at::get_num_threads() < 2 ||
        at::in_parallel_region()) {
      a();
      b();
      return;
    }
    // The tasks make ATen calls (allocations; ATen's products in fallbacks): on the worker thread
    // they run in the caller's grad mode and dispatch state (a backward op's products must not
    // record autograd nodes), which at::parallel_for does not carry over by itself.
    const at::ThreadLocalState state;
    at::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
      at::ThreadLocalStateGuard guard(state);
      for (int64_t i = begin; i < end; ++i) i == 0 ? a() : b();
    });
  }

  // The input projection inside the loop (StepProjection, sequence.h), on the packed kernel,
  // in chunks of kStepProjectionChunk elements per part (a quarter of a core's L2), for the
  // layers whose projection would be one MKL product over all steps. Not where W_ih reaches
  // kStepProjectionMaxWeightBytes: each chunk (a step or two of rows) then streams W_ih from L3
  // again, where one product before the loop streams it once per block of 128 rows. Measured
  // (forward without autograd, 2 threads, min of 4 alternating processes, in the loop -> before
  // it): LSTM T 32 B 48 I = H 768 93.4 -> 88.0 ms, fastrnns 168 -> 161, T 50 B 32 I = H 1024
  // 185 -> 176, T 50 B 16 I = H 512 21.8 -> 20.6, I = H 256 5.76 -> 5.52; below it the loop
  // stays ahead: B 64 I = H 128 6.18 vs 6.97, IMDB 6.72 vs 7.35, GRU I = H 256 7.71 vs 8.31.
  static constexpr bool kStepProjection = true;
  static constexpr int64_t kStepProjectionChunk = 64 * 1024;
  static constexpr int64_t kStepProjectionMaxWeightBytes = 1024 * 1024;
  static bool project_in_loop(const Schedule& s, const LayerDims& d, const at::Tensor& x) {
    return s.N * d.G > kSmallPostLoop &&
           d.I * d.G * int64_t(x.element_size()) < kStepProjectionMaxWeightBytes &&
           RowBlocks::of(x).has_value();
  }

  // LSTM's step product adds itself onto x_t's projection (folds_recurrent: C = xg, beta 1;
  // gemm_rows prefetches C): the pointwise step read xg from memory (the projection of all
  // steps, written long before; perf put half of its samples on those loads) and hg besides.
  // fastrnns forward without autograd, one thread, min of 12 alternating runs in one process:
  // 144.3 -> 141.0 ms (2 threads 78.8 -> 76.4); `bench`, 3 runs each, fused fwd+bwd best ms:
  // toxic 0.384 -> 0.354, IMDB 10.48 -> 9.90, IMDB packed 8.43 -> 7.80, fastrnns 232.5 -> 227.7.
  static constexpr bool kFoldRecurrent = true;

  // Tiny layers (H up to half a lane, x86 builds) make the step's recurrent product inside the
  // pointwise step (lane_recurrent, sequence.h; lane_product, cells.h): there every lane holds
  // whole rows (TailVec, RowsLane), so the product is H broadcasts of each row's h_{t-1}[k]
  // within its slot, each times a lane of weights, in registers.
  static constexpr bool kLaneRecurrent = true;
  template <class scalar_t>
  static bool lanes_hold_rows(int64_t H) {
#if defined(FR_X86_LANES)
    return lane_holds_rows<scalar_t>(H);
#else
    return (void)H, false;
#endif
  }
  // w [K, N] (any strides, its dtype or fp16 / bf16) as lanes: lane k * (N / width) + q holds
  // w[k, q * width + e] at element e of each slot (row_slot(width) elements apart), zeros
  // between.
  template <class scalar_t>
  static at::Tensor recurrent_lanes(const at::Tensor& w, int64_t width) {
#if defined(FR_X86_LANES)
    constexpr int64_t L = at::vec::Vectorized<scalar_t>::size();
    const at::Tensor m = w.to(c10::CppTypeToScalarType<scalar_t>::value);
    const int64_t blocks = m.size(1) / width;
    const int64_t slot = row_slot<scalar_t>(int(width));
    at::Tensor lanes = empty({m.size(0) * blocks * L}, m.options());
    scalar_t* out = lanes.data_ptr<scalar_t>();
    std::fill(out, out + lanes.numel(), scalar_t(0));
    const auto src = m.accessor<scalar_t, 2>();
    for (int64_t k = 0; k < m.size(0); ++k) {
      for (int64_t q = 0; q < blocks; ++q) {
        scalar_t* lane = out + (k * blocks + q) * L;
        for (int64_t at = 0; at < L; at += slot) {
          for (int64_t e = 0; e < width; ++e) lane[at + e] = src[k][q * width + e];
        }
      }
    }
    return lanes;
#else
    return (void)width, w;
#endif
  }

  // The loops run here, part by part (for_each_part).
  template <class scalar_t>
  static bool fused_forward(const Schedule&, const LayerDims&, bool, bool,
                            const ForwardBuffers<scalar_t>&) {
    return false;
  }
  template <class scalar_t>
  static bool fused_backward(const Schedule&, const LayerDims&, bool,
                             const BackwardBuffers<scalar_t>&) {
    return false;
  }

  // first_state_zero (sequence.h): its scan reads the other factor once (`bytes`), where the
  // product it may leave out makes `reuse` multiply-adds per element. From 8 that pays where the
  // factor is in cache; one over 1 MB may come from memory, where a scan of W_hh costs about what
  // a step's product over 8-16 rows does (LSTM T 50, B 8, I = H = 1024 was 6% slower forward
  // with it), so there from 64, or at T = 1 (W_hh's only use: its packing is left out too).
  static constexpr bool kZeroFirstState = true;
  static constexpr int64_t kZeroStateMinReuse = 8;
  static constexpr int64_t kZeroStateCachedBytes = 1 << 20;
  static constexpr int64_t kZeroStateMemoryReuse = 64;
  static bool zero_state_pays(int64_t reuse, int64_t steps, int64_t bytes) {
    return reuse >= kZeroStateMinReuse &&
           (steps == 1 || bytes <= kZeroStateCachedBytes || reuse >= kZeroStateMemoryReuse);
  }
  // Whether p[0, n) are all zeros (either sign), stopping at the first row-sized run that is not.
  template <class scalar_t>
  static bool all_zero(const scalar_t* p, int64_t n) {
    constexpr int64_t kRun = 256;
    for (int64_t i = 0; i < n; i += kRun) {
      int nonzero = 0;  // (an OR of compares over a run: vectorised)
      for (int64_t j = i; j < std::min(n, i + kRun); ++j) nonzero |= p[j] != scalar_t(0);
      if (nonzero) return false;
    }
    return true;
  }
  // Whether the [rows, cols] elements (rows `ld` apart) are all finite. fp16 / bf16 (a weight
  // read in place, kHalfWeights): whether no exponent field is all ones, on the bits.
  // Rows shared out across threads from kParallelScanBytes on (the other threads would wait
  // for the scan otherwise).
  static constexpr int64_t kParallelScanBytes = 256 * 1024;
  template <class scalar_t>
  static bool all_finite(const scalar_t* p, int64_t rows, int64_t cols, int64_t ld) {
    auto rows_finite = [&](int64_t r0, int64_t r1) {
      int bad = 0;
      if constexpr (std::is_same_v<scalar_t, c10::Half> ||
                    std::is_same_v<scalar_t, c10::BFloat16>) {
        constexpr uint16_t kExponent = std::is_same_v<scalar_t, c10::Half> ? 0x7C00 : 0x7F80;
        const auto* bits = reinterpret_cast<const uint16_t*>(p);
        for (int64_t r = r0; r < r1; ++r) {
          for (int64_t c = 0; c < cols; ++c) bad |= (bits[r * ld + c] & kExponent) == kExponent;
        }
      } else {
        constexpr scalar_t kMax = std::numeric_limits<scalar_t>::max();
        for (int64_t r = r0; r < r1; ++r) {
          const scalar_t* row = p + r * ld;
          for (int64_t c = 0; c < cols; ++c) bad |= !(std::abs(row[c]) <= kMax);  // inf, NaN
        }
      }
      return !bad;
    };
    const int64_t row_bytes = std::max<int64_t>(1, cols * int64_t(sizeof(scalar_t)));
    if (rows * row_bytes < kParallelScanBytes) return rows_finite(0, rows);
    std::atomic<bool> finite{true};
    at::parallel_for(0, rows, (kParallelScanBytes / 2 + row_bytes - 1) / row_bytes,
                     [&](int64_t r0, int64_t r1) {
      if (!rows_finite(r0, r1)) finite.store(false, std::memory_order_relaxed);
    });
    return finite.load();
  }

  // The input projection of every step before the loop, out [N, G] = x W_ih^T (+ bias [G],
  // contiguous), x being the layer's input ([T, B, I], possibly a view, or packed [N, I]), read
  // in place.
  template <class scalar_t>
  static void project_input(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& bias,
                            at::Tensor& out) {
    const auto rb = RowBlocks::of(x);
    if (!rb) return aten_project_input(x, widened<scalar_t>(w_ih), bias, out);
    const int64_t G = w_ih.size(0), N = out.size(0);
    const auto w_t = hold_weight<CPUBackend, scalar_t>(w_ih.t(), G, N, 1);
    rows_product<scalar_t>(x.const_data_ptr<scalar_t>(), *rb, N, w_t.view(),
                           bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr,
                           out.data_ptr<scalar_t>(), RowBlocks{1, N, 0, G});
  }

  // Column sums of dgates [N, G] (a column block of a wider matrix): the bias gradients. Small
  // ones summed here in lanes (ATen's sum(0) cost ~15 us on the toxic model's [4800, 16]).
  template <class scalar_t>
  static at::Tensor column_sums(const at::Tensor& dgates) {
    const int64_t N = dgates.size(0), G = dgates.size(1);
    if (N * G > kSmallPostLoop || dgates.stride(1) != 1) return dgates.sum(0);
    at::Tensor sums = at::zeros({G}, dgates.options());
    add_column_sums<scalar_t>(G, GradientRun{1, N, 0, 0, 0, 0},
                              dgates.const_data_ptr<scalar_t>(), dgates.stride(0),
                              sums.data_ptr<scalar_t>());
    return sums;
  }

  // The share of the lanes that a row of n elements fills (gemm_rows runs whole lanes).
  template <class scalar_t>
  static double lane_fill(int64_t n) {
    constexpr int64_t W = at::vec::Vectorized<scalar_t>::size();
    return double(n) / double((n + W - 1) / W * W);
  }

  // The lanes of a weight gradient's product run along the rows of its result: dW [G, K] itself,
  // or dW^T = inputs^T dgates where G fills them better (the seed models' K = 3-4 inputs), then
  // transposed. (Transposing a [128, 512] result cost ~65 us here, half a batch-16, 5-step
  // LSTM's backward kernel.)
  template <class scalar_t>
  static bool grad_weight_transposed(int64_t G, int64_t K) {
    return lane_fill<scalar_t>(G) > lane_fill<scalar_t>(K);
  }

  // out [G, K] (contiguous: rows of a larger one) = dgates^T [G, N] inputs [N, K]: inputs as
  // project_input's x (or [N, K]); dgates may be a column block of a wider matrix.
  template <class scalar_t>
  static void grad_weight(const at::Tensor& dgates, const at::Tensor& inputs, at::Tensor out) {
    const int64_t N = dgates.size(0), G = dgates.size(1), K = inputs.size(-1);
    const auto rb = RowBlocks::of(inputs);
    if (N * G > kSmallPostLoop || N * G * K > kSmallPostLoopMacs || dgates.stride(1) != 1 ||
        !rb) {
      return aten_grad_weight(dgates, inputs, std::move(out));
    }
    if (N == 0) {
      out.zero_();
      return;
    }
    const bool transposed = grad_weight_transposed<scalar_t>(G, K);
    const int64_t rows = transposed ? K : G, cols = transposed ? G : K;
    const at::Tensor result = transposed ? empty({rows, cols}, dgates.options()) : out;
    const scalar_t* x = inputs.const_data_ptr<scalar_t>();
    const scalar_t* dg = dgates.const_data_ptr<scalar_t>();
    scalar_t* o = result.data_ptr<scalar_t>();
    const int64_t ld = dgates.stride(0);
    // Rows of the result shared out across threads once each has kParallelWork multiply-adds;
    // each sums its rows over every run of input rows (the first run initialises them), in
    // runs of at most kSumChunk rows: small_gemm takes its row groups one by one, each over all
    // of a run's k rows, so a longer run streamed its rows of B (up to 1.6 MB: the seed RNN's
    // 6400 input rows) from L3 once per group; a chunk stays in L2 for all of them. The sums
    // are the same (small_gemm adds kSumChunk terms at a time to C either way). Seed RNN
    // (T 200, B 32, I 64, H 32, 2 layers) forward+backward 2.23-2.29 -> 2.16-2.20 ms (min of 4
    // alternating processes, 2 threads).
    const int64_t grain = std::max<int64_t>(1, kParallelWork / std::max<int64_t>(1, N * cols));
    at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
      rb->segments(0, N, [&](int64_t n0, int64_t off0, int64_t count0) {
        for (int64_t c = 0; c < count0; c += kSumChunk) {
          const int64_t n = n0 + c, off = off0 + c * rb->sb;
          const int64_t count = std::min(kSumChunk, count0 - c);
          const scalar_t beta(n == 0 ? 0 : 1);
          if (transposed) {
            small_gemm<scalar_t>(r1 - r0, G, count, x + off + r0, 1, rb->sb, dg + n * ld, ld,
                                 beta, o + r0 * G, G);
          } else {
            small_gemm<scalar_t>(r1 - r0, K, count, dg + n * ld + r0, 1, ld, x + off, rb->sb,
                                 beta, o + r0 * K, K);
          }
        }
      });
    });
    if (transposed) out.copy_(result.t());
  }

  // dx = dgates [N, G] w [G, K], contiguous and shaped like `input` (project_input's x), or with
  // `batch_first` like the [B, T, K] tensor that `input` is the transposed view of: its strides
  // must not depend on the input's, which torch.compile may lay out differently at run time than
  // when it traced. dgates may be a column block of a wider matrix.
  template <class scalar_t>
  static at::Tensor grad_input(const at::Tensor& dgates, const at::Tensor& weight,
                               const at::Tensor& input, bool batch_first) {
    const int64_t N = dgates.size(0), K = weight.size(1), ld = dgates.stride(0);
    if (dgates.stride(1) != 1) {
      return aten_grad_input(dgates, widened<scalar_t>(weight), input, batch_first);
    }
    const auto w = hold_weight<CPUBackend, scalar_t>(weight, K, N, 1);
    at::Tensor grad = empty(input_grad_shape(input, batch_first), input.options());
    // dgates' rows read in their (time-major) order; batch-first, a step at a time, each step's
    // written where the gradient has them (reading them batch by batch instead, 2 KB apart on
    // the toxic model's backward, cost it 15%).
    const RowBlocks out_rows = input_grad_rows(grad, batch_first);
    const RowBlocks rows{out_rows.blocks, out_rows.rows, out_rows.rows * ld, ld};
    rows_product<scalar_t>(dgates.const_data_ptr<scalar_t>(), rows, N, w.view(), nullptr,
                           grad.data_ptr<scalar_t>(), out_rows);
    return grad;
  }

  // The weight, bias and input gradients inside the backward loop (StepGradients, sequence.h)
  // where the gate gradients outgrow both cores' L2 (kStepGradientMinElements: after the loop
  // MKL's products and ATen's column sums would stream them from L3 or memory, four times), on
  // row parts (a unit part has only its units' gate gradients), while a part's partial sums of
  // dW_ih, dW_hh and the biases (kStepGradientMaxSumsBytes at most) stay in its core's L2
  // beside a chunk of kStepGradientChunk gate-gradient elements, the same steps' inputs and the
  // packed weights. Measured (backward op, best of 4-6 runs each, alternating builds): IMDB's
  // LSTM 14.2-14.5 -> 13.2-13.5 ms on 2 threads, 25-30 -> 22-23 on 1; its GRU 14.3 -> 12.0-12.8.
  // Where the gate gradients fit in cache MKL after the loop was as fast or faster (an RNN at
  // T 50, B 64, H 128: 2.9-3.0 vs 3.3 ms; MNIST-rows' second layer, 33K partial sums: 10%).
  // From kSmallPostLoop elements up, layers of at most kStepGradientSmallInputs inputs (whose dx
  // and dW_ih fill MKL's products poorly) gain too (2 threads, min of 6 alternating processes,
  // post-loop -> in-loop): MNIST-rows' first layer (I 28) 1.81 -> 1.71 ms (1 thread 3.37 ->
  // 2.96), LSTM T 100 B 32 I 20 H 64 2.53 -> 2.25, its GRU 2.02 -> 1.81, GRU T 40 B 64 I 16
  // 1.46 -> 1.19, RNN T 100 B 64 I 32 H 64 1.34 -> 1.25; wider inputs do not (RNN I 64 H 128
  // 2.25 -> 2.59, I = H = 100 1.95 -> 2.02, GRU I = H = 64 2.36 / 2.33).
  // The partial sums' limit, 640 KB (160K fp32 elements), is a third of a core's 2 MB L2 on the
  // Xeon host (32K elements, set on the EPYC host with 512 KB, had kept every H = 128 LSTM or GRU
  // out). Forward+backward, 2 threads, same-process A/B, min of 8-10 alternating rounds, fp32,
  // 32K -> 160K elements (the sums' size in K elements): LSTM T 28 B 100 I 28 H 128 (82K) 5.65
  // -> 4.74 ms, GRU T 50 B 128 I = H = 128 (100K) 12.8 -> 11.9, GRU T 100 B 32 (100K) 7.33 ->
  // 6.82, GRU H 160 B 64 (155K) 10.63 -> 10.08, LSTM T 50 I = H = 128 (133K) B 64 8.31 -> 7.90,
  // B 256 34.5 -> 33.2, B 512 72.3 / 73.2; RNN H 256 B 256 (132K), LSTM I 100 H 150 (152K) and
  // the MNIST-rows RNN's second layer (33K) within 0.5%. Beyond it they lost: LSTM H 192 (298K)
  // +2.9%, GRU H 256 (396K) +6.1%, LSTM H 256 (528K) +9.6%, LSTM I 64 H 256 (332K) +20%. In
  // bytes, so fp64 keeps half the elements: in fp64 (160K -> 32K elements) LSTM H 128 B 64
  // (1.06 MB) 20.9 -> 20.2 ms and GRU H 128 (800 KB) 32.2 -> 31.8 ran better after the loop,
  // LSTM I 28 H 128 (640 KB) 12.2 -> 11.5 inside it.
  static constexpr bool kStepGradients = true;
  static constexpr int64_t kStepGradientMinElements = 1024 * 1024;
  static constexpr int64_t kStepGradientSmallInputs = 32;
  static constexpr int64_t kStepGradientChunk = 16 * 1024;
  static constexpr int64_t kStepGradientMaxSumsBytes = 640 * 1024;
  static bool gradients_in_loop(const Schedule& s, const LayerDims& d,
                                const std::vector<Part>& parts, const at::Tensor& x) {
    const int64_t elements = s.N * d.saved_cols();
    const bool large = elements >= kStepGradientMinElements ||
                       (elements > kSmallPostLoop && d.I <= kStepGradientSmallInputs);
    return large && !parts[0].units_split &&
           step_gradients_size(d) * int64_t(x.element_size()) <= kStepGradientMaxSumsBytes &&
           RowBlocks::of(x).has_value();
  }
  // A part's partial sums: dW_ih | dW_hh (each [G, K] or [K, G], grad_weight_transposed) |
  // the input side's column sums | the recurrent side's | their compensations (add_column_sums).
  static int64_t step_gradients_size(const LayerDims& d) { return d.G * (d.I + d.P + 4); }

  // One run of a part's steps (gradient_chunk): its share of dW_ih, dW_hh and the column sums
  // added to the part's partial sums, and its rows of dx = dgates_x W_ih.
  template <class scalar_t>
  static void run_gradients(const LayerDims& d, const Part& part,
                            const BackwardBuffers<scalar_t>& b, const GradientRun& run) {
    const StepGradients<scalar_t>& g = *b.step_grads;
    const int64_t G = d.G, S = d.saved_cols(), I = d.I, P = d.P;
    scalar_t* sums = g.sums + part.index * g.sums_size;
    const scalar_t* dg_h = b.dgates + run.off * S;
    const scalar_t* dg_x = dg_h + (S - G);
    add_grad_weight(G, I, run, dg_x, S, g.x + run.x_off, g.rows.sb, run.d_x, sums);
    add_grad_weight(G, P, run, dg_h, S, b.ws.h_prev + run.off * P, P, run.d_off * P,
                    sums + G * I);
    if (g.sum_x) add_column_sums(G, run, dg_x, S, sums + G * (I + P), sums + G * (I + P + 2));
    if (g.sum_h) add_column_sums(G, run, dg_h, S, sums + G * (I + P + 1), sums + G * (I + P + 3));
    if (!g.grad_input) return;
    for (int64_t c = 0; c < run.steps; ++c) {
      const int64_t off = run.off + c * run.d_off;
      gemm_weight(run.rows, 0, I, dg_x + c * run.d_off * S, S, g.w_ih, scalar_t(0),
                  g.grad_input + g.gi_rows.offset_of(off), g.gi_rows.sb);
    }
  }

  // dW [G, K] (or dW^T [K, G]) += the run's gate gradients^T (rows of `ld`) times its inputs
  // (rows of ld_in, each step's in_step elements on from the last's): the reduction over all
  // the run's rows in registers (Runs).
  template <class scalar_t>
  static void add_grad_weight(int64_t G, int64_t K, const GradientRun& run, const scalar_t* dg,
                              int64_t ld, const scalar_t* in, int64_t ld_in, int64_t in_step,
                              scalar_t* out) {
    const int64_t dg_step = run.d_off * ld;
    if (grad_weight_transposed<scalar_t>(G, K)) {
      small_gemm<scalar_t>(K, G, run.rows, in, 1, ld_in, dg, ld, scalar_t(1), out, G, nullptr,
                           Runs{run.steps, in_step, dg_step});
    } else {
      small_gemm<scalar_t>(G, K, run.rows, dg, 1, ld, in, ld_in, scalar_t(1), out, K, nullptr,
                           Runs{run.steps, dg_step, in_step});
    }
  }

  // out [G] += the column sums of the run's rows of dg (rows of `ld`), summed on their own and
  // then added. With `comp` [G] (zeros at first) added with Kahan's compensation, comp holding
  // what each add lost: the sum is then out - comp. The step gradients add a chunk's bias sums
  // to a part's running sums hundreds of times; added term by term onto one running total (as
  // they were) their fp32 error against the fp64 oracle was 2-4x torch.nn's.
  // The rows themselves in blocks of kSumChunk, each block's sum added with compensation too:
  // summed in two chains over all rows, the bias gradients of narrow layers over many rows
  // (RNN_TANH at H 1, T 1000, B 128, fp32) were 2.8e-5 off the fp64 oracle's, relative to their
  // largest, where torch.nn's were 3e-7 (now 4.8e-7; tests/test_parity.py:
  // test_fp32_bias_sums_narrow_rows).
  template <class scalar_t>
  static void add_column_sums(int64_t G, const GradientRun& run, const scalar_t* dg, int64_t ld,
                              scalar_t* out, scalar_t* comp = nullptr) {
    using Vec = at::vec::Vectorized<scalar_t>;
    constexpr int64_t W = Vec::size();
    // y added to sum, what the add lost kept in lost: none where the sum is not finite (inf -
    // inf would make it NaN, and an infinite gradient NaN, where torch.nn's is infinite).
    auto kahan_add = [](Vec& sum, Vec& lost, Vec y) {
      y = y - lost;
      const Vec t = sum + y;
      lost = (t - sum) - y;
      lost = Vec::blendv(lost, Vec(scalar_t(0)), lost != lost);
      sum = t;
    };
    for (int64_t j = 0; j < G; j += W) {
      const LaneMask<scalar_t> lane(std::min<int64_t>(W, G - j));
      Vec sum(scalar_t(0)), lost(scalar_t(0)), acc0(scalar_t(0)), acc1(scalar_t(0));
      int64_t in_block = 0;
      for (int64_t c = 0; c < run.steps; ++c) {
        const scalar_t* rows = dg + c * run.d_off * ld + j;
        for (int64_t r0 = 0; r0 < run.rows; r0 += kSumChunk) {
          const int64_t r1 = std::min(run.rows, r0 + kSumChunk);
          int64_t r = r0;
          for (; r + 2 <= r1; r += 2) {
            acc0 = acc0 + lane.load(rows + r * ld);
            acc1 = acc1 + lane.load(rows + (r + 1) * ld);
          }
          if (r < r1) acc0 = acc0 + lane.load(rows + r * ld);
          in_block += r1 - r0;
          if (in_block >= kSumChunk) {
            kahan_add(sum, lost, acc0 + acc1);
            acc0 = acc1 = Vec(scalar_t(0));
            in_block = 0;
          }
        }
      }
      kahan_add(sum, lost, acc0 + acc1);
      const Vec total = sum - lost;
      if (!comp) {
        lane.store(out + j, lane.load(out + j) + total);
        continue;
      }
      Vec running = lane.load(out + j), running_lost = lane.load(comp + j);
      kahan_add(running, running_lost, total);
      lane.store(comp + j, running_lost);
      lane.store(out + j, running);
    }
  }

  // The parts' partial sums added: dW_ih [G, I], dW_hh [G, P] and the column sums of the input
  // and recurrent sides' gate gradients (undefined where StepGradients did not want them).
  template <class scalar_t>
  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> finish_gradients(
      const LayerDims& d, const StepGradients<scalar_t>& g, const at::Tensor& sums) {
    const int64_t G = d.G;
    auto total = [&](int64_t begin, int64_t size) { return sums.narrow(1, begin, size).sum(0); };
    auto weight = [&](int64_t begin, int64_t K) {
      const at::Tensor w = total(begin, G * K);
      return grad_weight_transposed<scalar_t>(G, K) ? w.view({K, G}).t().contiguous()
                                                    : w.view({G, K});
    };
    const int64_t sums_at = G * (d.I + d.P);
    auto column_sum = [&](int64_t i) {  // the sum less what its adds lost
      return total(sums_at + i * G, G).sub(total(sums_at + (i + 2) * G, G));
    };
    return {weight(0, d.I), weight(G * d.I, d.P), g.sum_x ? column_sum(0) : at::Tensor(),
            g.sum_h ? column_sum(1) : at::Tensor()};
  }

  template <class scalar_t>
  static void copy(scalar_t* dst, const scalar_t* src, int64_t count) {
    std::memcpy(dst, src, sizeof(scalar_t) * count);
  }

  // Columns [col_begin, col_end) of rows x ld.
  template <class scalar_t>
  static void copy_cols(scalar_t* dst, const scalar_t* src, int64_t rows, int64_t col_begin,
                        int64_t col_end, int64_t ld) {
    for (int64_t b = 0; b < rows; ++b) {
      std::memcpy(dst + b * ld + col_begin, src + b * ld + col_begin,
                  sizeof(scalar_t) * (col_end - col_begin));
    }
  }

  // Each functor reads and writes row b at base + b * ld + j, so lanes j..j+7 are contiguous.
  // Columns [col_begin, col_end); col_begin is a multiple of the lane width (split_units).
  template <class F>
  static void pointwise(const F& f, int64_t rows, int64_t col_begin, int64_t col_end) {
    using T = typename F::scalar_type;
    using Vec = at::vec::Vectorized<T>;
    const int64_t cols = col_end - col_begin;
    const int64_t vec_end = col_end - cols % Vec::size();
    const int64_t grain = std::max<int64_t>(1, kPointwiseGrain / std::max<int64_t>(cols, 1));
    const int tail = int(col_end - vec_end);
    auto rows_range = [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        int64_t j = col_begin;
        for (; j + 2 * Vec::size() <= vec_end; j += 2 * Vec::size()) {
          f.template apply<at::vec::VectorizedN<T, 2>>(b, j);
        }
        for (; j < vec_end; j += Vec::size()) f.template apply<Vec>(b, j);
      }
      if (tail > 0) apply_tail(f, begin, end, vec_end, tail, std::make_integer_sequence<int, Vec::size()>{});
    };
    if (rows <= grain) {
      rows_range(0, rows);  // small steps: no parallel region at all
    } else {
      at::parallel_for(0, rows, grain, rows_range);
    }
  }

  // Unit parts pay one barrier per step to read 1/threads of W_hh each, where row parts each
  // stream all of it every step: worth it once W_hh outgrows a core's L2 (512 KB here; the
  // threshold counts W_hh in fp32 whatever the dtype), every thread keeps at least
  // kMinUnitsPerPart units, and a row part would have too few rows per step to pay for
  // streaming all of W_hh: fewer than kMinRowsPerPart, or than one per kUnitSplitWeightBytes of
  // W_hh. Not for projected LSTMs. Measured (same-process A/B, 2 threads, LSTM fwd+bwd): row
  // parts 3-8% faster at B >= 16 with H = 128-256 and at B >= 32 with H = 512; unit parts 8-25%
  // at B <= 4 (H = 256), B = 16 (H = 512), B = 64 (H = 1024).
  static constexpr int64_t kUnitSplitWeightBytes = 256 * 1024;
  static constexpr int64_t kMinUnitsPerPart = 32;
  static constexpr int64_t kMinRowsPerPart = 4;

  // The CPUs this process may run on.
  static int64_t cpu_count() {
    static const int64_t cpus = [] {
#if defined(__linux__)
      cpu_set_t set;
      if (sched_getaffinity(0, sizeof(set), &set) == 0) return int64_t(CPU_COUNT(&set));
#endif
      return std::max<int64_t>(1, std::thread::hardware_concurrency());
    }();
    return cpus;
  }

  static std::vector<Part> plan(const Schedule& s, const LayerDims& d) {
    // No more parts than CPUs, and no unit parts at all where torch has more threads than CPUs:
    // those spin at a barrier every step, and there a thread of theirs (or an idle OpenMP thread
    // of torch's, spinning) holds the CPU that the others wait on. torch.set_num_threads(4) on
    // this 2-CPU machine made the small-batch LSTM 0.61x torch.nn's speed and a batch-1 LSTM's
    // forward 9x slower than on 2 threads.
    const int64_t torch_threads = at::in_parallel_region() ? 1 : at::get_num_threads();
    const bool oversubscribed = torch_threads > cpu_count();
    const int64_t threads = std::min(torch_threads, cpu_count());
    const int64_t weight_bytes = d.P * d.G * int64_t(sizeof(float));
    const bool few_rows =
        s.B / threads < std::max(kMinRowsPerPart, weight_bytes / kUnitSplitWeightBytes);
    if (threads > 1 && !oversubscribed && !d.proj && d.H >= kMinUnitsPerPart * threads &&
        weight_bytes >= kUnitSplitWeightBytes && few_rows) {
      return split_units(s, d, threads, strip_width<float>());  // (a strip of either dtype)
    }
    return split_rows(s, d, threads);
  }

  // Row parts: one per thread, each running the whole time loop for its rows with no
  // synchronisation per step; the BLAS and pointwise calls inside then run single-threaded.
  // Unit parts: one OpenMP team of exactly that many threads, meeting at a barrier each step;
  // if the runtime gives a smaller team, one thread runs the whole layer instead.
  template <class Fn>
  static void for_each_part(const std::vector<Part>& parts, const Fn& fn) {
    auto no_sync = [](const auto&) {};
    if (parts.size() == 1) {
      fn(parts[0], no_sync);
      return;
    }
    if (!parts[0].units_split) {
      at::parallel_for(0, int64_t(parts.size()), 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) fn(parts[i], no_sync);
      });
      return;
    }
    const int team = int(parts.size());
    StepBarrier barrier(team);
#pragma omp parallel num_threads(team)
    {
      const int me = omp_get_thread_num();
      if (omp_get_num_threads() == team) {
        const Part& part = parts[me];
        auto sync = [&](const auto& shared) {
          barrier.wait(me);
          request_others(shared, part.u_begin, part.u_end);
        };
        fn(part, sync);
      } else if (me == 0) {
        fn(Part{parts[0].begin, parts[0].end, 0, parts.back().u_end}, no_sync);
      }
    }
  }

  // After a unit part's barrier: the lines of `shared` that the other parts wrote (all columns
  // but this part's units [u0, u1) of each block; the boundaries are whole strips) requested at
  // once. The step's product would otherwise meet them one at a time as its k loop reached
  // them, each a transfer from another core's cache.
  template <class scalar_t>
  static void request_others(const SharedUnits<scalar_t>& shared, int64_t u0, int64_t u1) {
    constexpr int64_t kLine = 64 / sizeof(scalar_t);
    for (int64_t r = 0; r < shared.rows; ++r) {
      const scalar_t* row = shared.data + r * shared.ld;
      for (int64_t c = 0; c < shared.cols; c += kLine) {
        const int64_t u = c % shared.block;
        if (u < u0 || u >= u1) __builtin_prefetch(row + c);
      }
    }
  }

  // Runs the partial lane of rows [begin, end) with the TailVec<T, tail> instantiation, two
  // rows per lane (PairVec; AVX-512: two or four, RowsVec) where the tail fits in half a lane.
  template <class F, int... Counts>
  static void apply_tail(const F& f, int64_t begin, int64_t end, int64_t j, int tail,
                         std::integer_sequence<int, Counts...>) {
    using T = typename F::scalar_type;
    constexpr int L = at::vec::Vectorized<T>::size();
    // Groups of `rows` rows from b0 on: in order where `overhang` is false; else every other
    // group, then the rest. A masked move addresses a whole lane, which may reach past its own
    // rows into the next group's, and a load of those waits for the store to them to retire (no
    // forwarding from masked stores): an LSTM at H 6, B 256 ran its forward 1.5x slower than at
    // H 8. Done in this order, the next group's rows were written a group earlier.
    auto groups = [&](int64_t b0, int64_t count, int rows, bool overhang, const auto& apply) {
      const int64_t stride = overhang && count > 2 ? 2 : 1;
      for (int64_t first = 0; first < stride; ++first) {
        for (int64_t g = first; g < count; g += stride) apply(b0 + g * rows);
      }
    };
    auto run = [&](auto count) {
      constexpr int C = decltype(count)::value;
      int64_t b = begin;
#if defined(FR_X86_LANES)
      if constexpr (lane_holds_rows<T>(C)) {
        using Rows = RowsLane<T, C>;
        const int64_t n = (end - begin) / Rows::kRows;
        // (Rows that fill their slots reach no further than their own.)
        groups(b, n, Rows::kRows, C != Rows::kSlot,
               [&](int64_t row) { f.template apply<Rows>(row, j); });
        b += n * Rows::kRows;
      }
#endif
      // One row's lane reaches into the next row's tail where j + L passes the row's end.
      groups(b, end - b, 1, j < L - C, [&](int64_t row) { f.template apply<TailVec<T, C>>(row, j); });
    };
    ((tail == Counts ? (run(std::integral_constant<int, Counts>{}), 0) : 0), ...);
  }

  template <class Fn>
  static void dispatch(at::ScalarType dtype, Fn&& fn) {
    AT_DISPATCH_FLOATING_TYPES(dtype, "fused_rnn (CPU)", [&] { fn(static_cast<scalar_t*>(nullptr)); });
  }
};

}  // namespace fused_rnn
