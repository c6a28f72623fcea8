// The gate math of every cell type, written once for the CPU and the GPU.
//
// Each functor below handles one (row b, hidden unit j) element of one time step. The time
// loop (sequence.h) runs the GEMMs; a backend runs a functor over rows x units:
//   * CPU (cpu/backend.h): apply<V> with V = the scalar, or at::vec::Vectorized lanes;
//   * CUDA (cuda/backend.cuh): apply<opmath_t> in one thread per element.
// Storage type `scalar_t` (float, double, Half, BFloat16) is read into the compute type V
// through Math<V>::load, so fp16/bf16 math runs in fp32.
//
// Conventions (torch.nn's): gate order LSTM i,f,g,o; GRU r,z,n. All matrices are row-major,
// one row per batch element. `xg` is the precomputed input projection W_ih x + biases for the
// step, `hg` the recurrent projection W_hh h_{t-1} (for GRU without b_hh's n part, which
// must sit inside r * (...), so it is passed separately as `b_hn`).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FR_HD __host__ __device__ __forceinline__
// The time loops (sequence.h): run by the host, or inside one CUDA kernel per layer
// (cuda/block_loop.cuh), where a thread block runs the whole loop on its rows; inlined there, so
// that a weight held in the threads' registers stays in registers.
#define FR_LOOP __host__ __device__ __forceinline__
#else
#define FR_HD inline
#define FR_LOOP
#endif

namespace fused_rnn {

enum class Mode : int { LSTM = 0, GRU = 1, RNN_TANH = 2, RNN_RELU = 3 };

// Gates per hidden unit in the weight matrices (torch.nn's gate_size / hidden_size).
FR_HD constexpr int gates_of(Mode mode) {
  return mode == Mode::LSTM ? 4 : mode == Mode::GRU ? 3 : 1;
}
// Values per hidden unit saved by the forward pass for the backward pass:
// LSTM i,f,g,o; GRU r,z,n and hn = W_hn h + b_hn; RNN the output h itself.
FR_HD constexpr int saved_of(Mode mode) {
  return mode == Mode::RNN_TANH || mode == Mode::RNN_RELU ? 1 : 4;
}

// Elementwise math on a compute type V. Specialised for float/double here, for
// at::vec::Vectorized in the CPU backend.
template <class V>
struct Math;

template <class T>
struct ScalarMath {
  // `ld`: the row stride of the array, for compute types that hold several rows (the CPU's
  // row pairs for hidden sizes up to half a lane); here, one element of one row.
  template <class S>
  static FR_HD T load(const S* p, int64_t /*ld*/) { return static_cast<T>(*p); }
  template <class S>
  static FR_HD void store(S* p, int64_t /*ld*/, T v) { *p = static_cast<S>(v); }
  static FR_HD T splat(T v) { return v; }
  static constexpr bool kRowSlots = false;  // (lane_product: CPU lanes only)
  static FR_HD T exp(T x);
  static FR_HD T tanh(T x);
  static FR_HD T sigmoid(T x) { return T(1) / (T(1) + exp(-x)); }
  // relu that propagates NaN, as torch.relu does.
  static FR_HD T relu(T x) { return x < T(0) ? T(0) : x; }
  // d relu: torch's threshold_backward keeps the gradient where the result is > 0.
  static FR_HD T relu_backward(T g, T result) { return result <= T(0) ? T(0) : g; }
};
template <>
FR_HD float ScalarMath<float>::exp(float x) { return ::expf(x); }
template <>
FR_HD float ScalarMath<float>::sigmoid(float x) {
#if defined(__CUDA_ARCH__)
  // The correctly rounded reciprocal: the same value as 1 / y, without the division's slow path.
  return __frcp_rn(1.0f + ::expf(-x));
#else
  return 1.0f / (1.0f + ::expf(-x));
#endif
}
template <>
FR_HD float ScalarMath<float>::tanh(float x) { return ::tanhf(x); }
template <>
FR_HD double ScalarMath<double>::exp(double x) { return ::exp(x); }
template <>
FR_HD double ScalarMath<double>::tanh(double x) { return ::tanh(x); }

template <>
struct Math<float> : ScalarMath<float> {};
template <>
struct Math<double> : ScalarMath<double> {};

// The step's recurrent product made in registers, where Math<V>::kRowSlots (the CPU's tiny
// layers: CPUBackend::lanes_hold_rows): each of V's row slots holds one row's whole state, its
// kCount elements the layer's H units, and `lanes` holds the rows of a weight as lanes
// (CPUBackend::recurrent_lanes: lane k * N + q is row k's q-th block of H weights, repeated in
// every slot). acc[q] += the sum over k of (each row's element k of x) times lane k * N + q.
template <class V, int N, class T>
FR_HD void lane_product(V x, const T* lanes, V (&acc)[N]) {
  using M = Math<V>;
  for (int k = 0; k < M::kCount; ++k) {
    const V xk = M::slot_splat(x, k);
    for (int q = 0; q < N; ++q) {
      acc[q] = M::fmadd(xk, M::lane(lanes + (k * N + q) * M::kLane), acc[q]);
    }
  }
}

// The backward's dh_{t-1} = dgates W_hh with lane_product: d[q], gate q's gradients, meets the
// q-th block of H lanes (W_hh's rows as lanes, one per row), a chain of multiply-adds per gate
// from zero, the chains added pairwise at the end.
template <class V, int N, class T>
FR_HD V lane_rows_product(const V (&d)[N], const T* lanes, int64_t H) {
  using M = Math<V>;
  V acc[N][1];
  for (int q = 0; q < N; ++q) {
    acc[q][0] = M::splat(0);
    lane_product(d[q], lanes + q * H * M::kLane, acc[q]);
  }
  if constexpr (N == 1) {
    return acc[0][0];
  } else {
    V sum = acc[0][0] + acc[1][0];
    int q = 2;
    for (; q + 1 < N; q += 2) sum = sum + (acc[q][0] + acc[q + 1][0]);
    if (q < N) sum = sum + acc[q][0];
    return sum;
  }
}

// ---------------------------------------------------------------------------------------------
// Forward. `Train` decides whether what backward needs is saved (haste's <T, Training>).

template <class scalar_t, bool Train>
struct LSTMForward {
  using scalar_type = scalar_t;
  const scalar_t* xg;  // [n, 4H]  (may be the same memory as `gates`: read before written)
  const scalar_t* hg;  // [n, 4H], or null: the step's product was added onto xg (folds_recurrent)
  scalar_t* c_state;   // [B, H]  c_{t-1} in, c_t out
  scalar_t* h_out;     // [n, ld_h] h_t (or o*tanh(c_t) when projected)
  scalar_t* h_state;   // [B, H] or nullptr (projected: the loop writes W_hr r instead)
  scalar_t* gates;     // [n, 4H] saved i, f, g, o
  scalar_t* c_prev;    // [n, H]  saved c_{t-1}
  scalar_t* c_all;     // [n, H]  c_t, when the caller asked for every step's cell state
  int64_t H, ld_h;
  // W_hh^T [H, 4H] as lanes (lane_product), or null. Not null: the step's h_{t-1} W_hh^T is
  // made here from h_state (hg is null and the loop makes no product).
  const scalar_t* w_lanes = nullptr;

  template <class V>
  FR_HD void apply(int64_t b, int64_t j) const {
    using M = Math<V>;
    const int64_t G = 4 * H, g0 = b * G + j;
    // Every load first, so that a GPU thread waits for them once, not once per gate.
    V x[4] = {M::load(xg + g0, G), M::load(xg + g0 + H, G), M::load(xg + g0 + 2 * H, G),
              M::load(xg + g0 + 3 * H, G)};
    if (hg) {
      for (int q = 0; q < 4; ++q) x[q] = x[q] + M::load(hg + g0 + q * H, G);
    }
    if constexpr (M::kRowSlots) {
      if (w_lanes) lane_product(M::load(h_state + b * H, H), w_lanes, x);
    }
    const V xi = x[0], xf = x[1], xc = x[2], xo = x[3];
    const V cp = M::load(c_state + b * H + j, H);
    const V i = M::sigmoid(xi);
    const V f = M::sigmoid(xf);
    const V g = M::tanh(xc);
    const V o = M::sigmoid(xo);
    const V c = f * cp + i * g;
    const V h = o * M::tanh(c);
    M::store(c_state + b * H + j, H, c);
    if (c_all) M::store(c_all + b * H + j, H, c);
    M::store(h_out + b * ld_h + j, ld_h, h);
    if (h_state) M::store(h_state + b * H + j, H, h);
    if (Train) {
      M::store(gates + g0, G, i);
      M::store(gates + g0 + H, G, f);
      M::store(gates + g0 + 2 * H, G, g);
      M::store(gates + g0 + 3 * H, G, o);
      M::store(c_prev + b * H + j, H, cp);
    }
  }
};

template <class scalar_t, bool Train>
struct GRUForward {
  using scalar_type = scalar_t;
  const scalar_t* xg;   // [n, 3H]  W_ih x + b_ih + (b_hr, b_hz, 0)
  const scalar_t* hg;   // [n, 3H]  W_hh h
  const scalar_t* b_hn; // [H] or nullptr
  scalar_t* h_state;    // [B, H]  h_{t-1} in, h_t out
  scalar_t* h_out;      // [n, H]
  scalar_t* gates;      // [n, 4H] saved r, z, n, hn
  int64_t H;
  const scalar_t* w_lanes = nullptr;  // W_hh^T as lanes, or null (LSTMForward's; hg null)

  template <class V>
  FR_HD void apply(int64_t b, int64_t j) const {
    using M = Math<V>;
    const int64_t G = 3 * H, g0 = b * G + j;
    // Every load first (see LSTMForward).
    const V xr = M::load(xg + g0, G), xz = M::load(xg + g0 + H, G);
    const V xn = M::load(xg + g0 + 2 * H, G);
    const V hp = M::load(h_state + b * H + j, H);
    V h3[3];  // W_hh h_{t-1}: r, z, n
    if constexpr (M::kRowSlots) {
      if (w_lanes) {
        h3[0] = h3[1] = h3[2] = M::splat(0);
        lane_product(hp, w_lanes, h3);
      }
    }
    if (hg) {
      for (int q = 0; q < 3; ++q) h3[q] = M::load(hg + g0 + q * H, G);
    }
    const V hr = h3[0], hz = h3[1];
    V hn = h3[2];
    if (b_hn) hn = hn + M::load(b_hn + j, 0);  // the same for every row
    const V r = M::sigmoid(xr + hr);
    const V z = M::sigmoid(xz + hz);
    const V n = M::tanh(xn + r * hn);
    const V h = n + z * (hp - n);  // (1 - z) * n + z * h_{t-1}
    M::store(h_state + b * H + j, H, h);
    M::store(h_out + b * H + j, H, h);
    if (Train) {
      const int64_t S = 4 * H, s0 = b * S + j;
      M::store(gates + s0, S, r);
      M::store(gates + s0 + H, S, z);
      M::store(gates + s0 + 2 * H, S, n);
      M::store(gates + s0 + 3 * H, S, hn);
    }
  }
};

template <class scalar_t, bool Train, bool Relu>
struct RNNForward {
  using scalar_type = scalar_t;
  const scalar_t* xg;  // [n, H]
  const scalar_t* hg;  // [n, H], or null (w_lanes)
  scalar_t* h_state;   // [B, H]
  scalar_t* h_out;     // [n, H]
  scalar_t* gates;     // [n, H] saved h_t (the activation's derivative is a function of it)
  int64_t H;
  const scalar_t* w_lanes = nullptr;  // W_hh^T as lanes, or null (LSTMForward's)

  template <class V>
  FR_HD void apply(int64_t b, int64_t j) const {
    using M = Math<V>;
    V pre[1] = {M::load(xg + b * H + j, H)};
    if (hg) pre[0] = pre[0] + M::load(hg + b * H + j, H);
    if constexpr (M::kRowSlots) {
      if (w_lanes) lane_product(M::load(h_state + b * H, H), w_lanes, pre);
    }
    const V h = Relu ? M::relu(pre[0]) : M::tanh(pre[0]);
    M::store(h_state + b * H + j, H, h);
    M::store(h_out + b * H + j, H, h);
    if (Train) M::store(gates + b * H + j, H, h);
  }
};

// ---------------------------------------------------------------------------------------------
// Backward, one step. dh = dh_state + dout (dout may be nullptr: projected LSTM, where the loop
// has already formed dr = (dh_state + dout) W_hr). Each functor writes the gradient of the
// pre-activations (dgates, [n, saved_of * H], laid out so that it may overwrite the saved gates
// in place) and the part of d(state_{t-1}) that does not go through W_hh.

template <class scalar_t>
struct LSTMBackward {
  using scalar_type = scalar_t;
  const scalar_t* gates;   // [n, 4H]
  const scalar_t* c_prev;  // [n, H]
  scalar_t* dh;            // [n, ld_dh]  dh_t in (with w_lanes: dh_{t-1} out)
  const scalar_t* dout;    // [n, ld_dh] or nullptr
  const scalar_t* dc_all;  // [n, H] gradient of the returned c_t, or nullptr
  scalar_t* dc_state;      // [B, H]  dc_t in, dc_{t-1} out
  scalar_t* dgates;        // [n, 4H] (may be the same memory as `gates`)
  int64_t H, ld_dh;
  // W_hh [4H, H] as lanes (lane_product), or null. Not null: dh_{t-1} = dgates W_hh is made
  // here, over dh (not projected: the loop's dh state) and the loop makes no product.
  const scalar_t* w_lanes = nullptr;

  template <class V>
  FR_HD void apply(int64_t b, int64_t j) const {
    using M = Math<V>;
    const V one = M::splat(1);
    const int64_t G = 4 * H, g0 = b * G + j;
    const V i = M::load(gates + g0, G), f = M::load(gates + g0 + H, G);
    const V g = M::load(gates + g0 + 2 * H, G), o = M::load(gates + g0 + 3 * H, G);
    const V cp = M::load(c_prev + b * H + j, H);
    V dht = M::load(dh + b * ld_dh + j, ld_dh);
    if (dout) dht = dht + M::load(dout + b * ld_dh + j, ld_dh);
    const V tc = M::tanh(f * cp + i * g);
    V dc = M::load(dc_state + b * H + j, H) + dht * o * (one - tc * tc);
    if (dc_all) dc = dc + M::load(dc_all + b * H + j, H);
    const V di = dc * g * i * (one - i), df = dc * cp * f * (one - f);
    const V dg = dc * i * (one - g * g), d_o = dht * tc * o * (one - o);
    M::store(dgates + g0, G, di);
    M::store(dgates + g0 + H, G, df);
    M::store(dgates + g0 + 2 * H, G, dg);
    M::store(dgates + g0 + 3 * H, G, d_o);
    M::store(dc_state + b * H + j, H, dc * f);
    if constexpr (M::kRowSlots) {
      if (w_lanes) {
        const V d[4] = {di, df, dg, d_o};
        M::store(dh + b * ld_dh, ld_dh, lane_rows_product(d, w_lanes, H));
      }
    }
  }
};

template <class scalar_t>
struct GRUBackward {
  using scalar_type = scalar_t;
  const scalar_t* gates;   // [n, 4H] r, z, n, hn
  const scalar_t* h_prev;  // [n, H]
  scalar_t* dh_state;      // [B, H]  dh_t in; dh_{t-1} minus the W_hh part out
  const scalar_t* dout;    // [n, H]
  // [n, 4H] dn*r, dr, dz, dn (may be the same memory as `gates`: read before written). Columns
  // [0, 3H) are the gradient of W_hh h + b_hh in the gate order n, r, z (the loop multiplies
  // them by W_hh's rows rolled to that order), columns [H, 4H) that of W_ih x + b_ih in
  // torch.nn's order r, z, n: the two share dr and dz, so 4H columns hold both.
  scalar_t* dgates;
  int64_t H;
  // W_hh [3H, H] (rows r, z, n, not rolled) as lanes, or null. Not null: all of dh_{t-1} is
  // made here, its W_hh part too (LSTMBackward's).
  const scalar_t* w_lanes = nullptr;

  template <class V>
  FR_HD void apply(int64_t b, int64_t j) const {
    using M = Math<V>;
    const V one = M::splat(1);
    const int64_t S = 4 * H, s0 = b * S + j;
    const V r = M::load(gates + s0, S), z = M::load(gates + s0 + H, S);
    const V n = M::load(gates + s0 + 2 * H, S), hn = M::load(gates + s0 + 3 * H, S);
    const V hp = M::load(h_prev + b * H + j, H);
    V dht = M::load(dh_state + b * H + j, H);
    if (dout) dht = dht + M::load(dout + b * H + j, H);
    // dht - dht z, not dht (1 - z): torch.nn's autograd adds the gradients of h = n + z (h_prev
    // - n) that way, so an infinite dh_t gives NaN (inf - inf) there too, not inf.
    const V dn = (dht - dht * z) * (one - n * n);
    const V dz = dht * (hp - n) * z * (one - z);
    const V dr = dn * hn * r * (one - r);
    M::store(dgates + s0, S, dn * r);
    M::store(dgates + s0 + H, S, dr);
    M::store(dgates + s0 + 2 * H, S, dz);
    M::store(dgates + s0 + 3 * H, S, dn);
    V dh_prev[1] = {dht * z};
    if constexpr (M::kRowSlots) {
      if (w_lanes) {  // the gradients of W_hh h's r, z and n parts, each times its rows
        const V parts[3] = {dr, dz, dn * r};
        dh_prev[0] = dh_prev[0] + lane_rows_product(parts, w_lanes, H);
      }
    }
    M::store(dh_state + b * H + j, H, dh_prev[0]);
  }
};

template <class scalar_t, bool Relu>
struct RNNBackward {
  using scalar_type = scalar_t;
  const scalar_t* gates;  // [n, H] h_t
  scalar_t* dh;           // [n, H]  dh_t in (with w_lanes: dh_{t-1} out)
  const scalar_t* dout;   // [n, H]
  scalar_t* dgates;       // [n, H] (may be the same memory as `gates`)
  int64_t H;
  const scalar_t* w_lanes = nullptr;  // W_hh as lanes, or null (LSTMBackward's)

  template <class V>
  FR_HD void apply(int64_t b, int64_t j) const {
    using M = Math<V>;
    const V h = M::load(gates + b * H + j, H);
    V dht = M::load(dh + b * H + j, H);
    if (dout) dht = dht + M::load(dout + b * H + j, H);
    const V dpre = Relu ? M::relu_backward(dht, h) : dht * (M::splat(1) - h * h);
    M::store(dgates + b * H + j, H, dpre);
    if constexpr (M::kRowSlots) {
      if (w_lanes) {
        const V d[1] = {dpre};
        M::store(dh + b * H, H, lane_rows_product(d, w_lanes, H));
      }
    }
  }
};

// dst = a + b, elementwise over [n, ld]: the projected LSTM's dh_t before it meets W_hr.
template <class scalar_t>
struct AddInto {
  using scalar_type = scalar_t;
  const scalar_t* a;
  const scalar_t* b;
  scalar_t* dst;
  int64_t ld;

  template <class V>
  FR_HD void apply(int64_t row, int64_t j) const {
    using M = Math<V>;
    M::store(dst + row * ld + j, ld, M::load(a + row * ld + j, ld) + M::load(b + row * ld + j, ld));
  }
};

}  // namespace fused_rnn
