// 2-D convolutions on the CPU through oneDNN, as XLA FFI custom calls.
//
// Layouts are the model's: images NHWC, kernels HWIO (flax). oneDNN is asked
// for its own weight layout ("any"), which selects its blocked direct
// kernels; the activations stay NHWC so that no image is ever reordered. Each
// call reorders the (small) kernel between HWIO and the blocked layout.
//
// Three targets share one cache of primitives keyed by the problem's shape:
//   sslprune_onednn_conv_fwd          y  = conv(x, w)
//   sslprune_onednn_conv_bwd_data     dx = conv_transpose(dy, w)
//   sslprune_onednn_conv_bwd_weights  dw = correlate(x, dy)

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include <omp.h>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using Tag = dnnl::memory::format_tag;
using Dims = dnnl::memory::dims;

// N, H, W, C, KH, KW, O, OH, OW, stride h/w, padding top/left/bottom/right.
using Key = std::array<int64_t, 15>;

struct Conv {
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_backward_data::primitive_desc bwd_data_pd;
  dnnl::convolution_backward_weights::primitive_desc bwd_weights_pd;
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data bwd_data;
  dnnl::convolution_backward_weights bwd_weights;
  dnnl::memory::desc x_md, y_md, w_hwio_md;
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

std::unique_ptr<Conv> Build(const Key& k) {
  auto conv = std::make_unique<Conv>();
  const auto f32 = dnnl::memory::data_type::f32;
  const Dims x{k[0], k[3], k[1], k[2]}, w{k[6], k[3], k[4], k[5]},
      y{k[0], k[6], k[7], k[8]}, strides{k[9], k[10]}, pad_l{k[11], k[12]},
      pad_r{k[13], k[14]};
  conv->x_md = dnnl::memory::desc(x, f32, Tag::nhwc);
  conv->y_md = dnnl::memory::desc(y, f32, Tag::nhwc);
  conv->w_hwio_md = dnnl::memory::desc(w, f32, Tag::hwio);
  const auto w_any = dnnl::memory::desc(w, f32, Tag::any);
  const auto algo = dnnl::algorithm::convolution_direct;
  // Each call brings its own scratchpad: oneDNN's shared one would make
  // calls from several threads (one per simulated device) race.
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  conv->fwd_pd = dnnl::convolution_forward::primitive_desc(
      dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, algo,
                                      conv->x_md, w_any, conv->y_md, strides,
                                      pad_l, pad_r),
      attr, Engine());
  conv->bwd_data_pd = dnnl::convolution_backward_data::primitive_desc(
      dnnl::convolution_backward_data::desc(algo, conv->x_md, w_any,
                                            conv->y_md, strides, pad_l, pad_r),
      attr, Engine(), conv->fwd_pd);
  conv->bwd_weights_pd = dnnl::convolution_backward_weights::primitive_desc(
      dnnl::convolution_backward_weights::desc(
          algo, conv->x_md, w_any, conv->y_md, strides, pad_l, pad_r),
      attr, Engine(), conv->fwd_pd);
  conv->fwd = dnnl::convolution_forward(conv->fwd_pd);
  conv->bwd_data = dnnl::convolution_backward_data(conv->bwd_data_pd);
  conv->bwd_weights = dnnl::convolution_backward_weights(conv->bwd_weights_pd);
  return conv;
}

// Primitives are built once per shape; a step's convolutions then only look
// them up. With per-call scratchpads one primitive may run on several
// threads at once.
const Conv& Lookup(const Key& key) {
  static std::mutex mu;
  static std::map<Key, std::unique_ptr<Conv>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[key];
  if (!slot) slot = Build(key);
  return *slot;
}

Key MakeKey(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
            ffi::Span<const int64_t> y, int64_t stride_h, int64_t stride_w,
            int64_t pad_top, int64_t pad_left, int64_t pad_bottom,
            int64_t pad_right) {
  return {x[0],     x[1],     x[2],     x[3],       w[0],
          w[1],     w[3],     y[1],     y[2],       stride_h,
          stride_w, pad_top,  pad_left, pad_bottom, pad_right};
}

float* Data(ffi::AnyBuffer b) { return b.typed_data<float>(); }

// Runs `f` on `threads` OpenMP threads (0: one per core), trapping oneDNN's
// errors. The thread count is per calling thread, so it is set on each call.
template <typename F>
ffi::Error Guarded(int64_t threads, F&& f) {
  omp_set_num_threads(threads > 0 ? static_cast<int>(threads)
                                  : omp_get_num_procs());
  try {
    f();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

// Reorders between the caller's HWIO kernel and a primitive's layout.
void Reorder(dnnl::stream& s, const dnnl::memory& from,
             const dnnl::memory& to) {
  dnnl::reorder(from, to).execute(s, const_cast<dnnl::memory&>(from),
                                  const_cast<dnnl::memory&>(to));
}

#define CONV_ATTRS                                                        \
  int64_t stride_h, int64_t stride_w, int64_t pad_top, int64_t pad_left, \
      int64_t pad_bottom, int64_t pad_right, int64_t threads
#define CONV_ARGS stride_h, stride_w, pad_top, pad_left, pad_bottom, pad_right

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer w,
                   ffi::Result<ffi::AnyBuffer> y, CONV_ATTRS) {
  return Guarded(threads, [&] {
    const Conv& c = Lookup(MakeKey(x.dimensions(), w.dimensions(),
                                   y->dimensions(), CONV_ARGS));
    dnnl::stream s(Engine());
    dnnl::memory w_user(c.w_hwio_md, Engine(), Data(w));
    dnnl::memory w_prim(c.fwd_pd.weights_desc(), Engine());
    Reorder(s, w_user, w_prim);
    c.fwd.execute(s, {{DNNL_ARG_SRC, dnnl::memory(c.x_md, Engine(), Data(x))},
                      {DNNL_ARG_WEIGHTS, w_prim},
                      {DNNL_ARG_DST, dnnl::memory(c.y_md, Engine(), Data(*y))},
                      {DNNL_ARG_SCRATCHPAD,
                       dnnl::memory(c.fwd_pd.scratchpad_desc(), Engine())}});
    s.wait();
  });
}

ffi::Error BackwardData(ffi::AnyBuffer dy, ffi::AnyBuffer w,
                        ffi::Result<ffi::AnyBuffer> dx, CONV_ATTRS) {
  return Guarded(threads, [&] {
    const Conv& c = Lookup(MakeKey(dx->dimensions(), w.dimensions(),
                                   dy.dimensions(), CONV_ARGS));
    dnnl::stream s(Engine());
    dnnl::memory w_user(c.w_hwio_md, Engine(), Data(w));
    dnnl::memory w_prim(c.bwd_data_pd.weights_desc(), Engine());
    Reorder(s, w_user, w_prim);
    c.bwd_data.execute(
        s, {{DNNL_ARG_DIFF_DST, dnnl::memory(c.y_md, Engine(), Data(dy))},
            {DNNL_ARG_WEIGHTS, w_prim},
            {DNNL_ARG_DIFF_SRC, dnnl::memory(c.x_md, Engine(), Data(*dx))},
            {DNNL_ARG_SCRATCHPAD,
             dnnl::memory(c.bwd_data_pd.scratchpad_desc(), Engine())}});
    s.wait();
  });
}

ffi::Error BackwardWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy,
                           ffi::Result<ffi::AnyBuffer> dw, CONV_ATTRS) {
  return Guarded(threads, [&] {
    const Conv& c = Lookup(MakeKey(x.dimensions(), dw->dimensions(),
                                   dy.dimensions(), CONV_ARGS));
    dnnl::stream s(Engine());
    dnnl::memory dw_prim(c.bwd_weights_pd.diff_weights_desc(), Engine());
    c.bwd_weights.execute(
        s, {{DNNL_ARG_SRC, dnnl::memory(c.x_md, Engine(), Data(x))},
            {DNNL_ARG_DIFF_DST, dnnl::memory(c.y_md, Engine(), Data(dy))},
            {DNNL_ARG_DIFF_WEIGHTS, dw_prim},
            {DNNL_ARG_SCRATCHPAD,
             dnnl::memory(c.bwd_weights_pd.scratchpad_desc(), Engine())}});
    dnnl::memory dw_user(c.w_hwio_md, Engine(), Data(*dw));
    Reorder(s, dw_prim, dw_user);
    s.wait();
  });
}

}  // namespace

#define BIND_ATTRS(binding)     \
  binding.Attr<int64_t>("stride_h") \
      .Attr<int64_t>("stride_w")    \
      .Attr<int64_t>("pad_top")     \
      .Attr<int64_t>("pad_left")    \
      .Attr<int64_t>("pad_bottom")  \
      .Attr<int64_t>("pad_right")   \
      .Attr<int64_t>("threads")

XLA_FFI_DEFINE_HANDLER_SYMBOL(SslpruneOnednnConvFwd, Forward,
                              BIND_ATTRS(ffi::Ffi::Bind()
                                             .Arg<ffi::AnyBuffer>()
                                             .Arg<ffi::AnyBuffer>()
                                             .Ret<ffi::AnyBuffer>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SslpruneOnednnConvBwdData, BackwardData,
                              BIND_ATTRS(ffi::Ffi::Bind()
                                             .Arg<ffi::AnyBuffer>()
                                             .Arg<ffi::AnyBuffer>()
                                             .Ret<ffi::AnyBuffer>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SslpruneOnednnConvBwdWeights, BackwardWeights,
                              BIND_ATTRS(ffi::Ffi::Bind()
                                             .Arg<ffi::AnyBuffer>()
                                             .Arg<ffi::AnyBuffer>()
                                             .Ret<ffi::AnyBuffer>()));
