// Argument checks and the per-call schedule shared by every backend (compiled once, host only).
#include "sequence.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <cstring>

namespace fused_rnn {

Mode parse_mode(c10::string_view mode) {
  if (mode == "LSTM") return Mode::LSTM;
  if (mode == "GRU") return Mode::GRU;
  if (mode == "RNN_TANH") return Mode::RNN_TANH;
  if (mode == "RNN_RELU") return Mode::RNN_RELU;
  TORCH_CHECK_VALUE(false, "Unrecognized RNN mode: ", mode);
}

Schedule make_schedule(const at::Tensor& input, const c10::optional<at::Tensor>& batch_sizes,
                       int64_t batch) {
  Schedule s;
  s.B = batch;
  if (!batch_sizes) {
    s.T = input.size(0);
    s.N = s.T * s.B;
    s.rows.assign(s.T, s.B);
    s.offset.resize(s.T);
    for (int64_t t = 0; t < s.T; ++t) s.offset[t] = t * s.B;
    return s;
  }
  const at::Tensor& bs = *batch_sizes;
  TORCH_CHECK(bs.device().is_cpu() && bs.scalar_type() == at::kLong && bs.dim() == 1,
              "fused_rnn: batch_sizes should be a 1-D int64 CPU tensor, got ", bs.dim(), "-D ",
              bs.scalar_type(), " on ", bs.device());
  const at::Tensor bsc = bs.contiguous();
  const int64_t* b = bsc.const_data_ptr<int64_t>();
  s.T = bsc.numel();
  s.rows.resize(s.T);
  s.offset.resize(s.T);
  int64_t prev = batch;
  for (int64_t t = 0; t < s.T; ++t) {
    TORCH_CHECK(b[t] >= 1 && b[t] <= prev,
                "fused_rnn: batch_sizes must be positive and non-increasing, starting at the batch "
                "size of hx (",
                batch, "); got ", b[t], " at step ", t);
    s.offset[t] = s.N;
    s.rows[t] = b[t];
    s.N += b[t];
    prev = b[t];
  }
  TORCH_CHECK(s.T == 0 || s.rows[0] == batch, "fused_rnn: batch_sizes[0] (", s.rows[0],
              ") must equal the batch size of hx (", batch, ")");
  TORCH_CHECK(s.N == input.size(0), "fused_rnn: batch_sizes sum to ", s.N,
              " but the packed input has ", input.size(0), " rows");
  return s;
}

std::vector<Part> split_rows(const Schedule& s, const LayerDims& d, int64_t parts) {
  parts = std::max<int64_t>(1, std::min(parts, s.B));
  if (parts == 1 || s.N == 0) return {Part{0, s.B, 0, d.H}};
  // Length of row b = number of steps with b < rows[t]; rows are sorted longest first.
  std::vector<int64_t> length(s.B, 0);
  for (int64_t t = 0; t < s.T; ++t) {
    if (s.rows[t] > 0) length[s.rows[t] - 1] += 1;
  }
  for (int64_t b = s.B - 2; b >= 0; --b) length[b] += length[b + 1];
  std::vector<Part> ranges;
  int64_t begin = 0, seen = 0;
  for (int64_t b = 0; b < s.B; ++b) {
    seen += length[b];
    const int64_t left = parts - int64_t(ranges.size()) - 1;  // ranges still to open after this
    const bool full = seen * parts >= s.N * int64_t(ranges.size() + 1);
    if (left > 0 && full && s.B - (b + 1) >= left) {
      ranges.push_back({begin, b + 1, 0, d.H, false, int64_t(ranges.size())});
      begin = b + 1;
    }
  }
  ranges.push_back({begin, s.B, 0, d.H, false, int64_t(ranges.size())});
  return ranges;
}

std::vector<Part> split_units(const Schedule& s, const LayerDims& d, int64_t parts,
                              int64_t align) {
  TORCH_INTERNAL_ASSERT(!d.proj, "fused_rnn: unit parts are not for projected LSTMs");
  const int64_t chunks = (d.H + align - 1) / align;
  parts = std::max<int64_t>(1, std::min(parts, chunks));
  if (parts == 1) return {Part{0, s.B, 0, d.H}};
  std::vector<Part> out;
  for (int64_t i = 0; i < parts; ++i) {
    const int64_t u0 = std::min(d.H, chunks * i / parts * align);
    const int64_t u1 = std::min(d.H, chunks * (i + 1) / parts * align);
    out.push_back({0, s.B, u0, u1, true, i});
  }
  return out;
}

LayerDims layer_dims(Mode mode, const at::Tensor& w_ih, const at::Tensor& w_hh,
                     const c10::optional<at::Tensor>& w_hr) {
  LayerDims d;
  d.mode = mode;
  TORCH_CHECK(w_ih.dim() == 2 && w_hh.dim() == 2, "fused_rnn: weights must be 2-D");
  d.G = w_ih.size(0);
  TORCH_CHECK(d.G % gates_of(mode) == 0, "fused_rnn: weight_ih has ", d.G,
              " rows, not a multiple of ", gates_of(mode));
  d.H = d.G / gates_of(mode);
  d.I = w_ih.size(1);
  d.proj = w_hr.has_value() && w_hr->defined();
  TORCH_CHECK(!d.proj || mode == Mode::LSTM, "fused_rnn: weight_hr is only for LSTM");
  d.P = d.proj ? w_hr->size(0) : d.H;
  TORCH_CHECK(w_hh.size(0) == d.G && w_hh.size(1) == d.P, "fused_rnn: weight_hh must be [", d.G,
              ", ", d.P, "], got ", w_hh.sizes());
  if (d.proj) {
    TORCH_CHECK(w_hr->dim() == 2 && w_hr->size(1) == d.H && d.P < d.H,
                "fused_rnn: weight_hr must be [proj_size, ", d.H, "] with proj_size < ", d.H,
                ", got ", w_hr->sizes());
  }
  return d;
}

at::Tensor input_bias(Mode mode, const c10::optional<at::Tensor>& b_ih,
                      const c10::optional<at::Tensor>& b_hh, int64_t H) {
  if (!b_ih && !b_hh) return at::Tensor();
  const at::Tensor& any = b_ih ? *b_ih : *b_hh;
  // b_hh's part: all of it, or GRU's r and z rows.
  const int64_t hh_rows = mode == Mode::GRU ? 2 * H : any.size(0);
  if (any.is_cpu()) {
    // A loop: ATen's add (and GRU's clone, narrow and add_) cost 1-3 us per call here, a tenth
    // of a small model's forward op. (contiguous(): a no-op for a module's parameters.)
    const at::Tensor ih_t = b_ih ? b_ih->contiguous() : at::Tensor();
    const at::Tensor hh_t = b_hh ? b_hh->contiguous() : at::Tensor();
    at::Tensor bias = at::empty({any.size(0)}, any.options());
    AT_DISPATCH_FLOATING_TYPES(any.scalar_type(), "fused_rnn input_bias", [&] {
      scalar_t* out = bias.data_ptr<scalar_t>();
      const scalar_t* ih = b_ih ? ih_t.const_data_ptr<scalar_t>() : nullptr;
      const scalar_t* hh = b_hh ? hh_t.const_data_ptr<scalar_t>() : nullptr;
      for (int64_t i = 0; i < bias.size(0); ++i) {
        out[i] = (ih ? ih[i] : scalar_t(0)) + (hh && i < hh_rows ? hh[i] : scalar_t(0));
      }
    });
    return bias;
  }
  // Other devices: ATen's ops.
  if (mode != Mode::GRU) {
    if (b_ih && b_hh) return at::add(*b_ih, *b_hh).contiguous();
    return any.contiguous();
  }
  at::Tensor bias = b_ih ? b_ih->clone(at::MemoryFormat::Contiguous)
                         : at::zeros({3 * H}, b_hh->options());
  if (b_hh) bias.narrow(0, 0, hh_rows).add_(b_hh->narrow(0, 0, hh_rows));
  return bias;
}

at::Tensor contiguous_copy(const at::Tensor& t) {
  if (!t.is_cpu() || !t.is_contiguous()) return t.clone(at::MemoryFormat::Contiguous);
  at::Tensor copy = at::empty(t.sizes(), t.options());
  std::memcpy(copy.data_ptr(), t.const_data_ptr(), t.nbytes());
  return copy;
}

at::Tensor time_major(const at::Tensor& input, const c10::optional<at::Tensor>& batch_sizes,
                      bool input_batch_first) {
  if (!input_batch_first) return input;
  TORCH_CHECK(!batch_sizes && input.dim() == 3,
              "fused_rnn: input_batch_first is for padded input [batch, T, input_size], got a ",
              input.dim(), "-D input", batch_sizes ? " with batch_sizes" : "");
  return input.transpose(0, 1);
}

std::tuple<Schedule, LayerDims> check_layer_args(const ForwardArgs& a) {
  const at::Tensor& x = a.input;
  LayerDims d = layer_dims(a.mode, a.w_ih, a.w_hh, a.w_hr);
  const int64_t want_dim = a.batch_sizes ? 2 : 3;
  TORCH_CHECK(x.dim() == want_dim, "input must have ", want_dim, " dimensions, got ", x.dim());
  TORCH_CHECK(x.size(-1) == d.I, "input.size(-1) must be equal to input_size. Expected ", d.I,
              ", got ", x.size(-1));
  TORCH_CHECK(a.batch_sizes || x.size(0) > 0, "Expected sequence length to be larger than 0 in RNN");
  // hx [B, P], or [1, B, P] (a one-layer, one-direction module's h_0 as given: no select
  // before, no unsqueeze after, and none of their autograd nodes); cx and hy, cy alike.
  const int64_t state_dim = a.hx.dim();
  TORCH_CHECK((state_dim == 2 || (state_dim == 3 && a.hx.size(0) == 1)) && a.hx.size(-1) == d.P,
              "fused_rnn: hx must be [batch, ", d.P, "] or [1, batch, ", d.P, "], got ",
              a.hx.sizes());
  const int64_t B = a.hx.size(-2);
  TORCH_CHECK(a.batch_sizes || x.size(1) == B, "Expected hidden size (", B, ", ", d.P,
              ") to match the batch of the input, got batch ", x.size(1));
  if (a.mode == Mode::LSTM) {
    TORCH_CHECK(a.cx && a.cx->defined() && a.cx->dim() == state_dim &&
                    a.cx->size(-2) == B && a.cx->size(-1) == d.H,
                "fused_rnn: cx must be shaped like hx, with ", d.H, " features: [",
                state_dim == 3 ? "1, " : "", B, ", ", d.H, "]");
  }
  auto same = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), "fused_rnn: ", name, " has dtype ",
                t.scalar_type(), " but input has ", x.scalar_type());
    TORCH_CHECK(t.device() == x.device(), "fused_rnn: ", name, " is on ", t.device(),
                " but input is on ", x.device());
  };
  same(a.hx, "hx");
  if (a.mode == Mode::LSTM) same(*a.cx, "cx");
  auto same_weight = [&](const at::Tensor& w, const char* name) {
    const bool half = w.scalar_type() == at::kHalf || w.scalar_type() == at::kBFloat16;
    if (a.half_weights && half && x.scalar_type() == at::kFloat) {
      TORCH_CHECK(w.device() == x.device(), "fused_rnn: ", name, " is on ", w.device(),
                  " but input is on ", x.device());
      return;
    }
    same(w, name);
  };
  same_weight(a.w_ih, "weight_ih");
  same_weight(a.w_hh, "weight_hh");
  if (a.b_ih) {
    same(*a.b_ih, "bias_ih");
    TORCH_CHECK(a.b_ih->dim() == 1 && a.b_ih->size(0) == d.G, "fused_rnn: bias_ih must be [", d.G, "]");
  }
  if (a.b_hh) {
    same(*a.b_hh, "bias_hh");
    TORCH_CHECK(a.b_hh->dim() == 1 && a.b_hh->size(0) == d.G, "fused_rnn: bias_hh must be [", d.G, "]");
  }
  if (d.proj) same(*a.w_hr, "weight_hr");
  TORCH_CHECK(!a.cell_states || a.mode == Mode::LSTM, "fused_rnn: cell_states is for LSTM only");
  return {make_schedule(x, a.batch_sizes, B), d};
}

}  // namespace fused_rnn
