// Kernels for XLA:CPU, as XLA FFI handlers (dnas_jax/kernels/cpu.py).
//
// Depthwise convolution:
//
// x [N, H, W, C] (NHWC, C contiguous), kernel [K, K, C], every channel convolved with
// its own K×K kernel, PyTorch's symmetric zero padding `padding`, `stride` and
// `dilation`:
//
//   y[n, oy, ox, c] = Σ_{i,j} x[n, oy·s + i·d − p, ox·s + j·d − p, c] · k[i, j, c]
//
// Three handlers: the forward pass, the gradient in the input and the gradient in the
// kernel. With stride 1 every tap (i, j) of an output row is one contiguous
// multiply-add over the row's W·C values against the tap's kernel tiled along the row,
// which the compiler vectorises whatever C is; strided convolutions take a plain loop.
// Work is split over output rows (over batch chunks for the kernel gradient) and run
// on XLA's intra-op thread pool.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Runs fn(i) for i in [0, n) on the calling thread and the pool's threads; returns
// when all are done. Tasks that start after the work is gone return at once.
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, const F& fn) {
  int64_t workers = std::min<int64_t>(std::max<int64_t>(pool.num_threads(), 1), n);
  if (workers <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  struct Progress {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto progress = std::make_shared<Progress>();
  auto work = [progress, n, &fn]() {
    for (int64_t i; (i = progress->next.fetch_add(1)) < n;) {
      fn(i);
      progress->done.fetch_add(1);
    }
  };
  for (int64_t t = 1; t < workers; ++t) {
    auto task = work;
    pool.Schedule(std::move(task));
  }
  work();
  while (progress->done.load() < n) std::this_thread::yield();
}

struct Geometry {
  int64_t n, h, w, c;  // input
  int64_t k;           // kernel size
  int64_t ho, wo;      // output
  int64_t s, p, d;     // stride, padding, dilation

  // The output columns ox whose input column ox·s + off lies in [0, w).
  void Columns(int64_t off, int64_t* lo, int64_t* hi) const {
    *lo = off >= 0 ? 0 : (-off + s - 1) / s;
    *hi = std::min<int64_t>(wo, off >= w ? 0 : (w - off + s - 1) / s);
  }
};

// tiles[((i·K + j)·wo + ox)·C + c] = k[i, j, c]: each tap repeated along a row.
template <typename T>
std::vector<T> TileKernel(const T* k, const Geometry& g, bool flip) {
  std::vector<T> tiles(g.k * g.k * g.wo * g.c);
  for (int64_t i = 0; i < g.k; ++i)
    for (int64_t j = 0; j < g.k; ++j) {
      const T* tap = flip ? k + ((g.k - 1 - i) * g.k + (g.k - 1 - j)) * g.c
                          : k + (i * g.k + j) * g.c;
      for (int64_t ox = 0; ox < g.wo; ++ox)
        std::memcpy(&tiles[((i * g.k + j) * g.wo + ox) * g.c], tap, g.c * sizeof(T));
    }
  return tiles;
}

// One output row of a stride-1 correlation with tiled taps.
template <typename T>
void CorrelateRowStride1(const T* x, const T* tiles, T* y, const Geometry& g, int64_t n,
                         int64_t oy) {
  T* __restrict out = y + (n * g.ho + oy) * g.wo * g.c;
  std::fill(out, out + g.wo * g.c, T(0));
  for (int64_t i = 0; i < g.k; ++i) {
    int64_t iy = oy + i * g.d - g.p;
    if (iy < 0 || iy >= g.h) continue;
    const T* row = x + (n * g.h + iy) * g.w * g.c;
    for (int64_t j = 0; j < g.k; ++j) {
      int64_t off = j * g.d - g.p, lo, hi;
      g.Columns(off, &lo, &hi);
      const T* __restrict in = row + off * g.c;
      const T* __restrict tap = tiles + (i * g.k + j) * g.wo * g.c;
      for (int64_t m = lo * g.c; m < hi * g.c; ++m) out[m] += in[m] * tap[m];
    }
  }
}

// One output row of a strided correlation.
template <typename T>
void CorrelateRow(const T* x, const T* k, T* y, const Geometry& g, int64_t n, int64_t oy) {
  T* out = y + (n * g.ho + oy) * g.wo * g.c;
  std::fill(out, out + g.wo * g.c, T(0));
  for (int64_t i = 0; i < g.k; ++i) {
    int64_t iy = oy * g.s + i * g.d - g.p;
    if (iy < 0 || iy >= g.h) continue;
    const T* row = x + (n * g.h + iy) * g.w * g.c;
    for (int64_t j = 0; j < g.k; ++j) {
      const T* __restrict tap = k + (i * g.k + j) * g.c;
      int64_t off = j * g.d - g.p, lo, hi;
      g.Columns(off, &lo, &hi);
      for (int64_t ox = lo; ox < hi; ++ox) {
        const T* __restrict in = row + (ox * g.s + off) * g.c;
        T* __restrict o = out + ox * g.c;
        for (int64_t c = 0; c < g.c; ++c) o[c] += in[c] * tap[c];
      }
    }
  }
}

template <ffi::DataType DT>
ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<DT> x, ffi::Buffer<DT> k,
                   ffi::ResultBuffer<DT> y, int64_t stride, int64_t padding,
                   int64_t dilation) {
  using T = ffi::NativeType<DT>;
  auto xd = x.dimensions();
  auto yd = y->dimensions();
  Geometry g{xd[0], xd[1], xd[2], xd[3], k.dimensions()[0], yd[1], yd[2],
             stride,  padding, dilation};
  const T* xp = x.typed_data();
  const T* kp = k.typed_data();
  T* yp = y->typed_data();
  if (stride == 1) {
    std::vector<T> tiles = TileKernel(kp, g, /*flip=*/false);
    const T* tp = tiles.data();
    ParallelFor(pool, g.n * g.ho,
                [&](int64_t r) { CorrelateRowStride1(xp, tp, yp, g, r / g.ho, r % g.ho); });
  } else {
    ParallelFor(pool, g.n * g.ho,
                [&](int64_t r) { CorrelateRow(xp, kp, yp, g, r / g.ho, r % g.ho); });
  }
  return ffi::Error::Success();
}

// dx[n, iy, ix, c] = Σ over the (i, j, oy, ox) with oy·s + i·d − p = iy and
// ox·s + j·d − p = ix of g[n, oy, ox, c] · k[i, j, c].
template <ffi::DataType DT>
ffi::Error InputGrad(ffi::ThreadPool pool, ffi::Buffer<DT> gy, ffi::Buffer<DT> k,
                     ffi::ResultBuffer<DT> dx, int64_t stride, int64_t padding,
                     int64_t dilation) {
  using T = ffi::NativeType<DT>;
  auto gd = gy.dimensions();
  auto xd = dx->dimensions();
  int64_t ks = k.dimensions()[0];
  const T* gp = gy.typed_data();
  const T* kp = k.typed_data();
  T* xp = dx->typed_data();
  int64_t front = (ks - 1) * dilation - padding;
  if (stride == 1 && front >= 0) {
    // The forward correlation of g with the flipped kernel and padding (K−1)·d − p.
    Geometry g{gd[0], gd[1], gd[2], gd[3], ks, xd[1], xd[2], 1, front, dilation};
    std::vector<T> tiles = TileKernel(kp, g, /*flip=*/true);
    const T* tp = tiles.data();
    ParallelFor(pool, g.n * g.ho,
                [&](int64_t r) { CorrelateRowStride1(gp, tp, xp, g, r / g.ho, r % g.ho); });
    return ffi::Error::Success();
  }
  Geometry g{xd[0], xd[1], xd[2], xd[3], ks, gd[1], gd[2], stride, padding, dilation};
  ParallelFor(pool, g.n, [&](int64_t n) {
    T* __restrict out = xp + n * g.h * g.w * g.c;
    std::fill(out, out + g.h * g.w * g.c, T(0));
    for (int64_t oy = 0; oy < g.ho; ++oy)
      for (int64_t i = 0; i < g.k; ++i) {
        int64_t iy = oy * g.s + i * g.d - g.p;
        if (iy < 0 || iy >= g.h) continue;
        for (int64_t j = 0; j < g.k; ++j) {
          const T* __restrict tap = kp + (i * g.k + j) * g.c;
          int64_t off = j * g.d - g.p, lo, hi;
          g.Columns(off, &lo, &hi);
          for (int64_t ox = lo; ox < hi; ++ox) {
            const T* __restrict gin = gp + ((n * g.ho + oy) * g.wo + ox) * g.c;
            T* __restrict o = out + (iy * g.w + ox * g.s + off) * g.c;
            for (int64_t c = 0; c < g.c; ++c) o[c] += gin[c] * tap[c];
          }
        }
      }
  });
  return ffi::Error::Success();
}

// dk[i, j, c] = Σ_{n, oy, ox} x[n, oy·s + i·d − p, ox·s + j·d − p, c] · g[n, oy, ox, c],
// accumulated per batch chunk (per output column too, with stride 1) and summed.
template <ffi::DataType DT>
ffi::Error KernelGrad(ffi::ThreadPool pool, ffi::Buffer<DT> x, ffi::Buffer<DT> gy,
                      ffi::ResultBuffer<DT> dk, int64_t stride, int64_t padding,
                      int64_t dilation) {
  using T = ffi::NativeType<DT>;
  auto xd = x.dimensions();
  auto gd = gy.dimensions();
  Geometry g{xd[0], xd[1], xd[2], xd[3], dk->dimensions()[0], gd[1], gd[2],
             stride,  padding, dilation};
  const T* xp = x.typed_data();
  const T* gp = gy.typed_data();
  int64_t taps = g.k * g.k;
  int64_t width = stride == 1 ? g.wo * g.c : g.c;  // accumulator per tap
  int64_t chunks = std::min<int64_t>(g.n, 2 * std::max<int64_t>(pool.num_threads(), 1));
  std::vector<T> partial(chunks * taps * width, T(0));
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    T* acc = partial.data() + chunk * taps * width;
    for (int64_t n = chunk; n < g.n; n += chunks)
      for (int64_t oy = 0; oy < g.ho; ++oy) {
        const T* grow = gp + (n * g.ho + oy) * g.wo * g.c;
        for (int64_t i = 0; i < g.k; ++i) {
          int64_t iy = oy * g.s + i * g.d - g.p;
          if (iy < 0 || iy >= g.h) continue;
          const T* row = xp + (n * g.h + iy) * g.w * g.c;
          for (int64_t j = 0; j < g.k; ++j) {
            int64_t off = j * g.d - g.p, lo, hi;
            g.Columns(off, &lo, &hi);
            T* __restrict a = acc + (i * g.k + j) * width;
            if (stride == 1) {
              const T* __restrict in = row + off * g.c;
              const T* __restrict gin = grow;
              for (int64_t m = lo * g.c; m < hi * g.c; ++m) a[m] += in[m] * gin[m];
            } else {
              for (int64_t ox = lo; ox < hi; ++ox) {
                const T* __restrict in = row + (ox * g.s + off) * g.c;
                const T* __restrict gin = grow + ox * g.c;
                for (int64_t c = 0; c < g.c; ++c) a[c] += in[c] * gin[c];
              }
            }
          }
        }
      }
  });
  T* out = dk->typed_data();
  std::fill(out, out + taps * g.c, T(0));
  for (int64_t chunk = 0; chunk < chunks; ++chunk)
    for (int64_t t = 0; t < taps; ++t) {
      const T* a = partial.data() + (chunk * taps + t) * width;
      for (int64_t m = 0; m < width; ++m) out[t * g.c + m % g.c] += a[m];
    }
  return ffi::Error::Success();
}

// (thread pool, two operands, one result, stride, padding, dilation)
template <ffi::DataType DT>
auto Binding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .template Arg<ffi::Buffer<DT>>()
      .template Arg<ffi::Buffer<DT>>()
      .template Ret<ffi::Buffer<DT>>()
      .template Attr<int64_t>("stride")
      .template Attr<int64_t>("padding")
      .template Attr<int64_t>("dilation");
}

// A copy of x: XLA fuses nothing across a custom call, so every consumer reads this
// one array (dnas_jax.kernels.cpu.materialize).
ffi::Error Copy(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y) {
  const char* from = static_cast<const char*>(x.untyped_data());
  char* to = static_cast<char*>(y->untyped_data());
  int64_t bytes = static_cast<int64_t>(x.size_bytes());
  constexpr int64_t kChunk = 1 << 20;
  int64_t chunks = (bytes + kChunk - 1) / kChunk;
  ParallelFor(pool, chunks, [&](int64_t i) {
    int64_t start = i * kChunk;
    std::memcpy(to + start, from + start, std::min(kChunk, bytes - start));
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MaterializeCopy, Copy,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());

#define DNAS_HANDLER(name, fn, dtype) \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, fn<dtype>, Binding<dtype>());

DNAS_HANDLER(DepthwiseForwardF32, Forward, ffi::F32)
DNAS_HANDLER(DepthwiseForwardF64, Forward, ffi::F64)
DNAS_HANDLER(DepthwiseInputGradF32, InputGrad, ffi::F32)
DNAS_HANDLER(DepthwiseInputGradF64, InputGrad, ffi::F64)
DNAS_HANDLER(DepthwiseKernelGradF32, KernelGrad, ffi::F32)
DNAS_HANDLER(DepthwiseKernelGradF64, KernelGrad, ffi::F64)
