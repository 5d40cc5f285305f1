// 2-D convolutions for XLA:CPU through oneDNN, as XLA FFI handlers.
//
// Three handlers, one per pass of a convolution's training step, each taking and returning
// XLA's row-major arrays (images [batch, height, width, channels], kernels
// [kh, kw, in_channels, out_channels]):
//   bagtricks_onednn_conv_forward:          y  = conv(x, w)
//   bagtricks_onednn_conv_backward_data:    dx = conv_transpose(dy, w)
//   bagtricks_onednn_conv_backward_weights: dw = Σ_{n,h,w} patches(x) ⊗ dy
// The images stay in XLA's layout (oneDNN's nhwc), for which oneDNN has direct kernels as fast
// as those for its channel-blocked layouts; only the kernel is reordered into the layout the
// primitive chose (and its gradient back). Where oneDNN has no direct kernel for nhwc (it would
// fall back to im2col + GEMM or reference code) the images are reordered too. Primitives are
// built once per shape and cached; reordered operands and scratch space live in per-thread
// buffers that grow and are reused, so a train step neither rebuilds kernels nor page-faults
// fresh memory.

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;
using Tag = memory::format_tag;

enum class Pass : int64_t { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

// Everything a primitive depends on: the pass and the convolution's geometry.
struct Geometry {
  int64_t pass, batch, height, width, in_channels, out_channels, kernel_h, kernel_w;
  int64_t out_h, out_w, stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right;

  std::string Key() const {
    const int64_t fields[] = {pass, batch, height, width, in_channels, out_channels,
                              kernel_h, kernel_w, out_h, out_w, stride_h, stride_w,
                              pad_top, pad_bottom, pad_left, pad_right};
    return std::string(reinterpret_cast<const char*>(fields), sizeof(fields));
  }
};

dnnl::engine& Engine() {
  static dnnl::engine* engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

// A primitive with the layouts of its operands. Operand order per pass:
//   forward: (x, w) -> y;  backward data: (dy, w) -> dx;  backward weights: (x, dy) -> dw.
struct Plan {
  dnnl::primitive primitive;
  int input_args[2];
  int output_arg;
  memory::desc user_inputs[2], user_output;  // XLA's row-major layouts.
  memory::desc inputs[2], output;            // The primitive's chosen layouts.
  // Reorders from the user's layouts to the chosen ones (and back for the output), where
  // they differ.
  dnnl::reorder input_reorders[2], output_reorder;
  memory::desc scratchpad;     // The primitive's scratch memory.
  std::string implementation;  // oneDNN's name of the kernel, e.g. "brgconv:avx512_core".
};

// A plan whose images (x and y, or their gradients) have the layouts `image_tag` and whose
// kernel has the layout oneDNN prefers.
Plan MakePlanWithLayout(const Geometry& g, Tag image_tag) {
  const memory::dims src_dims = {g.batch, g.in_channels, g.height, g.width};
  const memory::dims weight_dims = {g.out_channels, g.in_channels, g.kernel_h, g.kernel_w};
  const memory::dims dst_dims = {g.batch, g.out_channels, g.out_h, g.out_w};
  const memory::dims strides = {g.stride_h, g.stride_w};
  const memory::dims pad_lo = {g.pad_top, g.pad_left}, pad_hi = {g.pad_bottom, g.pad_right};
  const auto f32 = memory::data_type::f32;
  const memory::desc src(src_dims, f32, Tag::nhwc), weights(weight_dims, f32, Tag::hwio),
      dst(dst_dims, f32, Tag::nhwc);
  const memory::desc src_any(src_dims, f32, image_tag), weights_any(weight_dims, f32, Tag::any),
      dst_any(dst_dims, f32, image_tag);
  auto& engine = Engine();
  // The scratch memory a primitive needs comes from this library's per-thread buffers.
  dnnl::primitive_attr attributes;
  attributes.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  // The backward passes need the forward pass's description as a hint.
  dnnl::convolution_forward::primitive_desc forward(
      engine, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      src_any, weights_any, dst_any, strides, pad_lo, pad_hi, attributes);
  Plan plan;
  switch (static_cast<Pass>(g.pass)) {
    case Pass::kForward:
      plan.primitive = dnnl::convolution_forward(forward);
      plan.scratchpad = forward.scratchpad_desc();
      plan.implementation = forward.impl_info_str();
      plan.input_args[0] = DNNL_ARG_SRC;
      plan.input_args[1] = DNNL_ARG_WEIGHTS;
      plan.output_arg = DNNL_ARG_DST;
      plan.user_inputs[0] = src;
      plan.user_inputs[1] = weights;
      plan.user_output = dst;
      plan.inputs[0] = forward.src_desc();
      plan.inputs[1] = forward.weights_desc();
      plan.output = forward.dst_desc();
      break;
    case Pass::kBackwardData: {
      dnnl::convolution_backward_data::primitive_desc pd(
          engine, dnnl::algorithm::convolution_direct, src_any, weights_any, dst_any, strides,
          pad_lo, pad_hi, forward, attributes);
      plan.primitive = dnnl::convolution_backward_data(pd);
      plan.scratchpad = pd.scratchpad_desc();
      plan.implementation = pd.impl_info_str();
      plan.input_args[0] = DNNL_ARG_DIFF_DST;
      plan.input_args[1] = DNNL_ARG_WEIGHTS;
      plan.output_arg = DNNL_ARG_DIFF_SRC;
      plan.user_inputs[0] = dst;
      plan.user_inputs[1] = weights;
      plan.user_output = src;
      plan.inputs[0] = pd.diff_dst_desc();
      plan.inputs[1] = pd.weights_desc();
      plan.output = pd.diff_src_desc();
      break;
    }
    case Pass::kBackwardWeights: {
      dnnl::convolution_backward_weights::primitive_desc pd(
          engine, dnnl::algorithm::convolution_direct, src_any, weights_any, dst_any, strides,
          pad_lo, pad_hi, forward, attributes);
      plan.primitive = dnnl::convolution_backward_weights(pd);
      plan.scratchpad = pd.scratchpad_desc();
      plan.implementation = pd.impl_info_str();
      plan.input_args[0] = DNNL_ARG_SRC;
      plan.input_args[1] = DNNL_ARG_DIFF_DST;
      plan.output_arg = DNNL_ARG_DIFF_WEIGHTS;
      plan.user_inputs[0] = src;
      plan.user_inputs[1] = dst;
      plan.user_output = weights;
      plan.inputs[0] = pd.src_desc();
      plan.inputs[1] = pd.diff_dst_desc();
      plan.output = pd.diff_weights_desc();
      break;
    }
  }
  for (int i = 0; i < 2; ++i) {
    if (!(plan.inputs[i] == plan.user_inputs[i])) {
      plan.input_reorders[i] = dnnl::reorder(
          dnnl::reorder::primitive_desc(engine, plan.user_inputs[i], engine, plan.inputs[i]));
    }
  }
  if (!(plan.output == plan.user_output)) {
    plan.output_reorder = dnnl::reorder(
        dnnl::reorder::primitive_desc(engine, plan.output, engine, plan.user_output));
  }
  return plan;
}

// oneDNN's direct kernels for images in XLA's own layout (nhwc) are as fast as those for
// channel-blocked copies (measured on AVX-512: 430-620 GFLOP/s in all three passes) and need
// no copies of the images; where it has none for this convolution (older or narrower
// instruction sets fall back to im2col + GEMM or reference code) the images are reordered to
// the layouts it prefers.
Plan MakePlan(const Geometry& g) {
  Plan plan = MakePlanWithLayout(g, Tag::nhwc);
  if (plan.implementation.find("gemm") != std::string::npos ||
      plan.implementation.find("ref") != std::string::npos) {
    plan = MakePlanWithLayout(g, Tag::any);
  }
  return plan;
}

const Plan& GetPlan(const Geometry& g) {
  static std::mutex* mutex = new std::mutex;
  static auto* plans = new std::unordered_map<std::string, std::unique_ptr<Plan>>;
  const std::string key = g.Key();
  std::lock_guard<std::mutex> lock(*mutex);
  auto it = plans->find(key);
  if (it == plans->end()) {
    it = plans->emplace(key, std::make_unique<Plan>(MakePlan(g))).first;
  }
  return *it->second;
}

// A per-thread buffer for one operand or scratch space: grows to the largest size asked for
// and is kept, so steady-state steps reuse memory that is already mapped. In bounds-checking
// mode each buffer ends in `kGuardBytes` of a known pattern.
class Workspace {
 public:
  static constexpr size_t kGuardBytes = 4096;
  static constexpr unsigned char kGuard = 0xA5;

  void* Get(size_t bytes, bool guarded) {
    const size_t total = RoundUp(bytes + (guarded ? kGuardBytes : 0));
    if (total > size_) {
      data_.reset(static_cast<unsigned char*>(std::aligned_alloc(64, total)));
      if (!data_) throw std::bad_alloc();
      size_ = total;
    }
    used_ = bytes;
    guarded_ = guarded;
    if (guarded) std::memset(data_.get() + bytes, kGuard, kGuardBytes);
    return data_.get();
  }

  // Whether the guard after the last `Get(..., true)` is intact.
  bool GuardIntact() const {
    if (!guarded_) return true;
    for (size_t i = 0; i < kGuardBytes; ++i) {
      if (data_.get()[used_ + i] != kGuard) return false;
    }
    return true;
  }

 private:
  static size_t RoundUp(size_t bytes) { return (bytes + 63) / 64 * 64; }
  struct Free {
    void operator()(unsigned char* p) const { std::free(p); }
  };
  std::unique_ptr<unsigned char, Free> data_;
  size_t size_ = 0, used_ = 0;
  bool guarded_ = false;
};

// oneDNN's kernels already use every core, through OpenMP. XLA runs independent operations
// concurrently, and two OpenMP teams on the same cores spin-wait on each other at every
// barrier, so the convolutions run one at a time.
std::mutex& ExecutionMutex() {
  static std::mutex* mutex = new std::mutex;
  return *mutex;
}

// Bounds-checking mode (`bagtricks_onednn_check_bounds`): everything oneDNN writes goes to
// guarded buffers first, so that a kernel writing past its output is an error, not a
// corrupted heap.
std::atomic<bool> check_bounds{false};

std::string Describe(const Geometry& g, const Plan& plan) {
  static const char* const kPassNames[] = {"forward", "backward data", "backward weights"};
  char text[320];
  std::snprintf(text, sizeof(text),
                "%s pass of a %ldx%ld convolution, %ld->%ld channels, images %ldx%ldx%ld -> "
                "%ldx%ld, strides %ldx%ld, padding (%ld, %ld), (%ld, %ld), kernel %s",
                kPassNames[g.pass], g.kernel_h, g.kernel_w, g.in_channels, g.out_channels,
                g.batch, g.height, g.width, g.out_h, g.out_w, g.stride_h, g.stride_w,
                g.pad_top, g.pad_bottom, g.pad_left, g.pad_right, plan.implementation.c_str());
  return text;
}

ffi::Error Run(const Geometry& g, void* input0, void* input1, void* output) {
  try {
    std::lock_guard<std::mutex> lock(ExecutionMutex());
    const Plan& plan = GetPlan(g);
    const bool guarded = check_bounds.load(std::memory_order_relaxed);
    auto& engine = Engine();
    thread_local dnnl::stream stream(engine);
    // Reordered inputs, the output, the scratch space.
    thread_local Workspace workspaces[4];
    void* user_inputs[2] = {input0, input1};
    std::unordered_map<int, memory> args;
    for (int i = 0; i < 2; ++i) {
      memory user(plan.user_inputs[i], engine, user_inputs[i]);
      if (plan.inputs[i] == plan.user_inputs[i]) {
        args.emplace(plan.input_args[i], user);
      } else {
        memory reordered(plan.inputs[i], engine,
                         workspaces[i].Get(plan.inputs[i].get_size(), guarded));
        plan.input_reorders[i].execute(stream, user, reordered);
        args.emplace(plan.input_args[i], reordered);
      }
    }
    memory user_output(plan.user_output, engine, output);
    const bool direct_output = plan.output == plan.user_output && !guarded;
    memory result = direct_output
        ? user_output
        : memory(plan.output, engine, workspaces[2].Get(plan.output.get_size(), guarded));
    args.emplace(plan.output_arg, result);
    args.emplace(DNNL_ARG_SCRATCHPAD,
                 memory(plan.scratchpad, engine,
                        workspaces[3].Get(plan.scratchpad.get_size(), guarded)));
    plan.primitive.execute(stream, args);
    stream.wait();
    if (guarded) {
      for (const Workspace& workspace : workspaces) {
        if (!workspace.GuardIntact()) {
          return ffi::Error(ffi::ErrorCode::kInternal,
                            "oneDNN wrote past a buffer in the " + Describe(g, plan));
        }
      }
    }
    if (!direct_output) {
      if (plan.output == plan.user_output) {
        std::memcpy(output, result.get_data_handle(), plan.output.get_size());
      } else {
        plan.output_reorder.execute(stream, result, user_output);
        stream.wait();
      }
    }
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal,
                      std::string("oneDNN convolution failed: ") + e.what());
  } catch (const std::bad_alloc&) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                      "oneDNN convolution: out of memory for its reordered operands");
  }
  return ffi::Error::Success();
}

// Fills the geometry from images [batch, height, width, in], kernel [kh, kw, in, out] and
// output [batch, out_h, out_w, out] dimensions.
Geometry MakeGeometry(Pass pass, ffi::Span<const int64_t> image, ffi::Span<const int64_t> kernel,
                      ffi::Span<const int64_t> out, int64_t stride_h, int64_t stride_w,
                      int64_t pad_top, int64_t pad_bottom, int64_t pad_left, int64_t pad_right) {
  return Geometry{static_cast<int64_t>(pass), image[0], image[1], image[2], image[3], kernel[3],
                  kernel[0], kernel[1], out[1], out[2], stride_h, stride_w, pad_top,
                  pad_bottom, pad_left, pad_right};
}

using Array = ffi::Buffer<ffi::F32, 4>;
using Result = ffi::ResultBuffer<ffi::F32, 4>;

ffi::Error Forward(Array x, Array w, Result y, int64_t stride_h, int64_t stride_w,
                   int64_t pad_top, int64_t pad_bottom, int64_t pad_left, int64_t pad_right) {
  const Geometry g = MakeGeometry(Pass::kForward, x.dimensions(), w.dimensions(),
                                  y->dimensions(), stride_h, stride_w, pad_top, pad_bottom,
                                  pad_left, pad_right);
  return Run(g, x.untyped_data(), w.untyped_data(), y->untyped_data());
}

ffi::Error BackwardData(Array dy, Array w, Result dx, int64_t stride_h, int64_t stride_w,
                        int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                        int64_t pad_right) {
  const Geometry g = MakeGeometry(Pass::kBackwardData, dx->dimensions(), w.dimensions(),
                                  dy.dimensions(), stride_h, stride_w, pad_top, pad_bottom,
                                  pad_left, pad_right);
  return Run(g, dy.untyped_data(), w.untyped_data(), dx->untyped_data());
}

ffi::Error BackwardWeights(Array x, Array dy, Result dw, int64_t stride_h, int64_t stride_w,
                           int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                           int64_t pad_right) {
  const Geometry g = MakeGeometry(Pass::kBackwardWeights, x.dimensions(), dw->dimensions(),
                                  dy.dimensions(), stride_h, stride_w, pad_top, pad_bottom,
                                  pad_left, pad_right);
  return Run(g, x.untyped_data(), dy.untyped_data(), dw->untyped_data());
}

template <typename B>
auto WithGeometryAttrs(B&& binding) {
  return std::move(binding)
      .template Attr<int64_t>("stride_h")
      .template Attr<int64_t>("stride_w")
      .template Attr<int64_t>("pad_top")
      .template Attr<int64_t>("pad_bottom")
      .template Attr<int64_t>("pad_left")
      .template Attr<int64_t>("pad_right");
}

}  // namespace

// The handlers and the version are the library's only exported symbols (it is built with
// hidden visibility, so its copy of oneDNN's C++ wrappers stays private).
#pragma GCC visibility push(default)

XLA_FFI_DEFINE_HANDLER_SYMBOL(bagtricks_onednn_conv_forward, Forward,
                              WithGeometryAttrs(ffi::Ffi::Bind().Arg<Array>().Arg<Array>()
                                                    .Ret<Array>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(bagtricks_onednn_conv_backward_data, BackwardData,
                              WithGeometryAttrs(ffi::Ffi::Bind().Arg<Array>().Arg<Array>()
                                                    .Ret<Array>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(bagtricks_onednn_conv_backward_weights, BackwardWeights,
                              WithGeometryAttrs(ffi::Ffi::Bind().Arg<Array>().Arg<Array>()
                                                    .Ret<Array>()));

// Turns bounds-checking mode on (nonzero) or off; for tests.
extern "C" void bagtricks_onednn_check_bounds(int enabled) { check_bounds.store(enabled != 0); }

// The linked oneDNN's version, so Python can report what it runs on.
extern "C" const char* bagtricks_onednn_version() {
  static std::string version = [] {
    const dnnl_version_t* v = dnnl_version();
    return std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
           std::to_string(v->patch);
  }();
  return version.c_str();
}

#pragma GCC visibility pop
