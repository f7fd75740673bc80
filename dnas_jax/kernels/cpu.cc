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
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <utility>
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

// Grouped 1×1 convolution: x [..., G·c] (G groups of c channels, groups outermost),
// w [G, c, o]: y[..., g·o + j] = Σ_i x[..., g·c + i] · w[g, i, j]. The search's
// groups are tiny (c = o = C/K: 4 to 64), so each handler dispatches to a version
// with c and o fixed at compile time (fully unrolled, a group's weights in
// registers), looping over the groups of a block of rows, then over the rows; other
// sizes take the same loops with c and o at run time.
constexpr int64_t kRowBlock = 512;

// out[r, g, :] = Σ_i in[r, g, i] · w[g, i, :] (transposed: w[g, :, i]) for rows
// [r0, r1); CI, CO > 0 fix the sizes at compile time.
template <typename T, int CI, int CO, bool kTransposed>
void GroupedRows(const T* __restrict x, const T* __restrict w, T* __restrict y,
                 int64_t r0, int64_t r1, int64_t groups, int64_t ci_, int64_t co_) {
  const int64_t ci = CI > 0 ? CI : ci_, co = CO > 0 ? CO : co_;
  for (int64_t g = 0; g < groups; ++g) {
    const T* __restrict wg = w + g * ci * co;
    for (int64_t r = r0; r < r1; ++r) {
      const T* __restrict in = x + (r * groups + g) * ci;
      T* __restrict out = y + (r * groups + g) * co;
      for (int64_t j = 0; j < co; ++j) {  // one dot product per output channel
        T a = T(0);
        for (int64_t i = 0; i < ci; ++i)
          a += in[i] * (kTransposed ? wg[j * ci + i] : wg[i * co + j]);
        out[j] = a;
      }
    }
  }
}

// acc[g, i, j] += Σ_r x[r, g, i] · gy[r, g, j] for rows [r0, r1).
template <typename T, int CI, int CO>
void GroupedOuterRows(const T* __restrict x, const T* __restrict gy, T* __restrict acc,
                      int64_t r0, int64_t r1, int64_t groups, int64_t ci_, int64_t co_) {
  const int64_t ci = CI > 0 ? CI : ci_, co = CO > 0 ? CO : co_;
  for (int64_t g = 0; g < groups; ++g) {
    T* __restrict a = acc + g * ci * co;
    if constexpr (CI > 0 && CO > 0) {
      T local[CI * CO];
      for (int m = 0; m < CI * CO; ++m) local[m] = T(0);
      for (int64_t r = r0; r < r1; ++r) {
        const T* __restrict in = x + (r * groups + g) * CI;
        const T* __restrict gin = gy + (r * groups + g) * CO;
        for (int i = 0; i < CI; ++i)
          for (int j = 0; j < CO; ++j) local[i * CO + j] += in[i] * gin[j];
      }
      for (int m = 0; m < CI * CO; ++m) a[m] += local[m];
    } else {
      for (int64_t r = r0; r < r1; ++r) {
        const T* __restrict in = x + (r * groups + g) * ci;
        const T* __restrict gin = gy + (r * groups + g) * co;
        for (int64_t i = 0; i < ci; ++i)
          for (int64_t j = 0; j < co; ++j) a[i * co + j] += in[i] * gin[j];
      }
    }
  }
}

// y = x · w per group (kTransposed: y = x · wᵀ) over all rows, blocks of rows spread
// over the threads.
template <typename T, int CI, int CO, bool kTransposed>
void GroupedProductAll(ffi::ThreadPool& pool, const T* x, const T* w, T* y, int64_t rows,
                       int64_t groups, int64_t ci, int64_t co) {
  ParallelFor(pool, (rows + kRowBlock - 1) / kRowBlock, [&](int64_t b) {
    GroupedRows<T, CI, CO, kTransposed>(x, w, y, b * kRowBlock,
                                        std::min(rows, (b + 1) * kRowBlock), groups, ci, co);
  });
}

// Each of `chunks` contiguous row ranges sums its outer products into its own slice
// of `partial`.
template <typename T, int CI, int CO>
void GroupedOuterAll(ffi::ThreadPool& pool, const T* x, const T* gy, T* partial,
                     int64_t chunks, int64_t rows, int64_t groups, int64_t ci, int64_t co) {
  int64_t per_chunk = (rows + chunks - 1) / chunks, size = groups * ci * co;
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    GroupedOuterRows<T, CI, CO>(x, gy, partial + chunk * size, chunk * per_chunk,
                                std::min(rows, (chunk + 1) * per_chunk), groups, ci, co);
  });
}

// The search's sizes (c == o, as C/K at every stage) get compile-time versions.
#define DNAS_DISPATCH_SIZES(ci, co, call)          \
  if ((ci) == (co) && (ci) == 4) {                 \
    call(4, 4);                                    \
  } else if ((ci) == (co) && (ci) == 8) {          \
    call(8, 8);                                    \
  } else if ((ci) == (co) && (ci) == 16) {         \
    call(16, 16);                                  \
  } else if ((ci) == (co) && (ci) == 32) {         \
    call(32, 32);                                  \
  } else {                                         \
    call(0, 0);                                    \
  }

// y = x · w per group (kTransposed: dx = gy · wᵀ per group, w [G, c, o]).
template <ffi::DataType DT, bool kTransposed>
ffi::Error GroupedProduct(ffi::ThreadPool pool, ffi::Buffer<DT> x, ffi::Buffer<DT> w,
                          ffi::ResultBuffer<DT> y) {
  using T = ffi::NativeType<DT>;
  auto wd = w.dimensions();
  int64_t groups = wd[0];
  int64_t ci = kTransposed ? wd[2] : wd[1], co = kTransposed ? wd[1] : wd[2];
  int64_t rows = static_cast<int64_t>(x.element_count()) / (groups * ci);
  const T* xp = x.typed_data();
  const T* wp = w.typed_data();
  T* yp = y->typed_data();
#define DNAS_PRODUCT(CI, CO) \
  GroupedProductAll<T, CI, CO, kTransposed>(pool, xp, wp, yp, rows, groups, ci, co)
  DNAS_DISPATCH_SIZES(ci, co, DNAS_PRODUCT)
#undef DNAS_PRODUCT
  return ffi::Error::Success();
}

template <ffi::DataType DT>
ffi::Error GroupedForward(ffi::ThreadPool pool, ffi::Buffer<DT> x, ffi::Buffer<DT> w,
                          ffi::ResultBuffer<DT> y) {
  return GroupedProduct<DT, false>(pool, x, w, y);
}

// dx[..., g·c + i] = Σ_j gy[..., g·o + j] · w[g, i, j].
template <ffi::DataType DT>
ffi::Error GroupedInputGrad(ffi::ThreadPool pool, ffi::Buffer<DT> gy, ffi::Buffer<DT> w,
                            ffi::ResultBuffer<DT> dx) {
  return GroupedProduct<DT, true>(pool, gy, w, dx);
}

// dw[g, i, j] = Σ_rows x[..., g·c + i] · gy[..., g·o + j]: each of a few contiguous
// row ranges sums into its own buffer, and the buffers are added in a fixed order
// (the result does not depend on the threads' timing).
template <ffi::DataType DT>
ffi::Error GroupedWeightGrad(ffi::ThreadPool pool, ffi::Buffer<DT> x, ffi::Buffer<DT> gy,
                             ffi::ResultBuffer<DT> dw) {
  using T = ffi::NativeType<DT>;
  auto wd = dw->dimensions();
  int64_t groups = wd[0], ci = wd[1], co = wd[2];
  int64_t size = groups * ci * co;
  int64_t rows = static_cast<int64_t>(x.element_count()) / (groups * ci);
  const T* xp = x.typed_data();
  const T* gp = gy.typed_data();
  int64_t chunks = std::max<int64_t>(
      1, std::min<int64_t>((rows + kRowBlock - 1) / kRowBlock,
                           2 * std::max<int64_t>(pool.num_threads(), 1)));
  std::vector<T> partial(chunks * size, T(0));
#define DNAS_OUTER(CI, CO) \
  GroupedOuterAll<T, CI, CO>(pool, xp, gp, partial.data(), chunks, rows, groups, ci, co)
  DNAS_DISPATCH_SIZES(ci, co, DNAS_OUTER)
#undef DNAS_OUTER
  T* out = dw->typed_data();
  std::fill(out, out + size, T(0));
  for (int64_t chunk = 0; chunk < chunks; ++chunk)
    for (int64_t m = 0; m < size; ++m) out[m] += partial[chunk * size + m];
  return ffi::Error::Success();
}

// Batch normalisation in training mode, without an affine transform, over the rows of
// p [N, F] (F contiguous), as `batched_ops.conv_stage` and `pool_stage` apply it:
//
//   mean = Σ p / N,  var = max(Σ p² / N − mean², 0),  rstd = 1 / sqrt(var + eps),
//   y = (p − mean) · rstd;
//   backward: dp = (g − Σ g / N − y · Σ (g · y) / N) · rstd.
//
// The column sums run in double over a few contiguous row ranges, each into its own
// buffer, added in a fixed order (the result does not depend on the threads' timing).
// One call replaces the reductions and element-wise kernels XLA:CPU compiles for each.
template <typename T, typename RowFn>
std::vector<double> ColumnSums(ffi::ThreadPool& pool, int64_t rows, int64_t f, int sums,
                               const RowFn& row_fn) {
  int64_t chunks = std::max<int64_t>(
      1, std::min<int64_t>((rows + kRowBlock - 1) / kRowBlock,
                           2 * std::max<int64_t>(pool.num_threads(), 1)));
  int64_t per = (rows + chunks - 1) / chunks;
  std::vector<double> partial(chunks * sums * f, 0.0);
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    double* acc = partial.data() + chunk * sums * f;
    for (int64_t r = chunk * per; r < std::min(rows, (chunk + 1) * per); ++r) row_fn(r, acc);
  });
  std::vector<double> total(sums * f, 0.0);
  for (int64_t chunk = 0; chunk < chunks; ++chunk)
    for (int64_t m = 0; m < sums * f; ++m) total[m] += partial[chunk * sums * f + m];
  return total;
}

template <ffi::DataType DT>
ffi::Error NormForward(ffi::ThreadPool pool, ffi::Buffer<DT> p, ffi::ResultBuffer<DT> y,
                       ffi::ResultBuffer<DT> mean, ffi::ResultBuffer<DT> var,
                       ffi::ResultBuffer<DT> rstd, double eps) {
  using T = ffi::NativeType<DT>;
  auto dims = p.dimensions();
  int64_t f = dims[dims.size() - 1];
  int64_t rows = f == 0 ? 0 : static_cast<int64_t>(p.element_count()) / f;
  const T* x = p.typed_data();
  std::vector<double> sums = ColumnSums<T>(pool, rows, f, 2, [&](int64_t r, double* acc) {
    const T* row = x + r * f;
    for (int64_t c = 0; c < f; ++c) {
      double v = row[c];
      acc[c] += v;
      acc[f + c] += v * v;
    }
  });
  T *m = mean->typed_data(), *v = var->typed_data(), *s = rstd->typed_data();
  for (int64_t c = 0; c < f; ++c) {
    double mu = rows ? sums[c] / rows : 0.0;
    double sigma2 = std::max(rows ? sums[f + c] / rows - mu * mu : 0.0, 0.0);
    m[c] = static_cast<T>(mu);
    v[c] = static_cast<T>(sigma2);
    s[c] = static_cast<T>(1.0 / std::sqrt(static_cast<double>(v[c]) + eps));
  }
  T* out = y->typed_data();
  ParallelFor(pool, (rows + kRowBlock - 1) / kRowBlock, [&](int64_t block) {
    for (int64_t r = block * kRowBlock; r < std::min(rows, (block + 1) * kRowBlock); ++r) {
      const T* __restrict row = x + r * f;
      T* __restrict o = out + r * f;
      for (int64_t c = 0; c < f; ++c) o[c] = (row[c] - m[c]) * s[c];
    }
  });
  return ffi::Error::Success();
}

template <ffi::DataType DT>
ffi::Error NormBackward(ffi::ThreadPool pool, ffi::Buffer<DT> g, ffi::Buffer<DT> y,
                        ffi::Buffer<DT> rstd, ffi::ResultBuffer<DT> dp) {
  using T = ffi::NativeType<DT>;
  int64_t f = static_cast<int64_t>(rstd.element_count());
  int64_t rows = f == 0 ? 0 : static_cast<int64_t>(g.element_count()) / f;
  if (g.element_count() != y.element_count() || rows * f != static_cast<int64_t>(g.element_count())) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "norm backward: shapes differ");
  }
  const T *gp = g.typed_data(), *yp = y.typed_data(), *s = rstd.typed_data();
  std::vector<double> sums = ColumnSums<T>(pool, rows, f, 2, [&](int64_t r, double* acc) {
    const T *gr = gp + r * f, *yr = yp + r * f;
    for (int64_t c = 0; c < f; ++c) {
      acc[c] += gr[c];
      acc[f + c] += static_cast<double>(gr[c]) * yr[c];
    }
  });
  std::vector<T> mg(f), mgy(f);
  for (int64_t c = 0; c < f; ++c) {
    mg[c] = static_cast<T>(sums[c] / rows);
    mgy[c] = static_cast<T>(sums[f + c] / rows);
  }
  T* out = dp->typed_data();
  ParallelFor(pool, (rows + kRowBlock - 1) / kRowBlock, [&](int64_t block) {
    for (int64_t r = block * kRowBlock; r < std::min(rows, (block + 1) * kRowBlock); ++r) {
      const T *__restrict gr = gp + r * f, *__restrict yr = yp + r * f;
      T* __restrict o = out + r * f;
      for (int64_t c = 0; c < f; ++c) o[c] = (gr[c] - mg[c] - yr[c] * mgy[c]) * s[c];
    }
  });
  return ffi::Error::Success();
}

// 3×3 pooling with padding 1 and `stride`, per channel, as DARTS's pools: the maximum
// (padding never wins), or the mean over the window positions inside the image
// (count_include_pad=False). The max pool's gradient goes to the first maximum of each
// window in row-major order, as XLA's select-and-scatter gives it.
struct Window {
  int64_t y0, y1, x0, x1;  // [y0, y1) × [x0, x1) inside the image
};

inline Window PoolWindow(const Geometry& g, int64_t oy, int64_t ox) {
  int64_t y = oy * g.s - 1, x = ox * g.s - 1;
  return {std::max<int64_t>(y, 0), std::min<int64_t>(y + 3, g.h),
          std::max<int64_t>(x, 0), std::min<int64_t>(x + 3, g.w)};
}

template <ffi::DataType DT>
ffi::Error PoolForward(ffi::ThreadPool pool, ffi::Buffer<DT> x, ffi::ResultBuffer<DT> y,
                       int64_t stride, int64_t average) {
  using T = ffi::NativeType<DT>;
  auto xd = x.dimensions();
  auto yd = y->dimensions();
  Geometry g{xd[0], xd[1], xd[2], xd[3], 3, yd[1], yd[2], stride, 1, 1};
  const T* xp = x.typed_data();
  T* yp = y->typed_data();
  ParallelFor(pool, g.n * g.ho, [&](int64_t r) {
    int64_t n = r / g.ho, oy = r % g.ho;
    for (int64_t ox = 0; ox < g.wo; ++ox) {
      Window win = PoolWindow(g, oy, ox);
      T* __restrict out = yp + ((n * g.ho + oy) * g.wo + ox) * g.c;
      bool first = true;
      for (int64_t iy = win.y0; iy < win.y1; ++iy)
        for (int64_t ix = win.x0; ix < win.x1; ++ix) {
          const T* __restrict in = xp + ((n * g.h + iy) * g.w + ix) * g.c;
          if (first) {
            std::memcpy(out, in, g.c * sizeof(T));
            first = false;
          } else if (average) {
            for (int64_t c = 0; c < g.c; ++c) out[c] += in[c];
          } else {
            for (int64_t c = 0; c < g.c; ++c) out[c] = in[c] > out[c] ? in[c] : out[c];
          }
        }
      if (average) {
        T inv = T(1) / T((win.y1 - win.y0) * (win.x1 - win.x0));
        for (int64_t c = 0; c < g.c; ++c) out[c] *= inv;
      }
    }
  });
  return ffi::Error::Success();
}

// dx of Σ(pool(x) · g): x [N, H, W, C] (its shape for the average), g [N, H', W', C].
template <ffi::DataType DT>
ffi::Error PoolBackward(ffi::ThreadPool pool, ffi::Buffer<DT> x, ffi::Buffer<DT> gy,
                        ffi::ResultBuffer<DT> dx, int64_t stride, int64_t average) {
  using T = ffi::NativeType<DT>;
  auto xd = x.dimensions();
  auto gd = gy.dimensions();
  Geometry g{xd[0], xd[1], xd[2], xd[3], 3, gd[1], gd[2], stride, 1, 1};
  const T* xp = x.typed_data();
  const T* gp = gy.typed_data();
  T* dp = dx->typed_data();
  ParallelFor(pool, g.n, [&](int64_t n) {
    T* __restrict out = dp + n * g.h * g.w * g.c;
    std::fill(out, out + g.h * g.w * g.c, T(0));
    std::vector<T> top(g.c), open(g.c);
    for (int64_t oy = 0; oy < g.ho; ++oy)
      for (int64_t ox = 0; ox < g.wo; ++ox) {
        Window win = PoolWindow(g, oy, ox);
        const T* __restrict gin = gp + ((n * g.ho + oy) * g.wo + ox) * g.c;
        if (average) {
          T inv = T(1) / T((win.y1 - win.y0) * (win.x1 - win.x0));
          for (int64_t iy = win.y0; iy < win.y1; ++iy)
            for (int64_t ix = win.x0; ix < win.x1; ++ix) {
              T* __restrict o = out + (iy * g.w + ix) * g.c;
              for (int64_t c = 0; c < g.c; ++c) o[c] += gin[c] * inv;
            }
          continue;
        }
        // The window's maximum per channel, then the gradient to the first position
        // (row-major) that holds it: selects over contiguous channels, no scatter,
        // so both loops vectorise.
        const T* __restrict xn = xp + n * g.h * g.w * g.c;
        T* __restrict tp = top.data();
        T* __restrict pending = open.data();
        std::memcpy(tp, xn + (win.y0 * g.w + win.x0) * g.c, g.c * sizeof(T));
        for (int64_t iy = win.y0; iy < win.y1; ++iy)
          for (int64_t ix = win.x0; ix < win.x1; ++ix) {
            const T* __restrict in = xn + (iy * g.w + ix) * g.c;
            for (int64_t c = 0; c < g.c; ++c) tp[c] = in[c] > tp[c] ? in[c] : tp[c];
          }
        std::fill(pending, pending + g.c, T(1));
        for (int64_t iy = win.y0; iy < win.y1; ++iy)
          for (int64_t ix = win.x0; ix < win.x1; ++ix) {
            const T* __restrict in = xn + (iy * g.w + ix) * g.c;
            T* __restrict o = out + (iy * g.w + ix) * g.c;
            for (int64_t c = 0; c < g.c; ++c) {
              bool hit = pending[c] != T(0) && in[c] == tp[c];
              o[c] += hit ? gin[c] : T(0);
              pending[c] = hit ? T(0) : pending[c];
            }
          }
      }
  });
  return ffi::Error::Success();
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

// Random bits as JAX draws them with its default key type (threefry2x32) and
// jax_threefry_partitionable: element i of a key's block of n elements is the
// Threefry-2x32 hash (20 rounds) of the counter (i >> 32, i & 0xffffffff) under the
// key (k0, k1), its two output words xor-ed. key [..., 2] (uint32), bits [..., n]
// flattened: one block of n = bits / keys elements per key, in the keys' order
// (dnas_jax.kernels.cpu.random_bits; XLA:CPU otherwise compiles each draw as its own
// 5-step loop).
inline uint32_t RotateLeft(uint32_t v, int r) { return (v << r) | (v >> (32 - r)); }

inline uint32_t Threefry(uint32_t k0, uint32_t k1, uint32_t x0, uint32_t x1) {
  const uint32_t ks[3] = {k0, k1, k0 ^ k1 ^ 0x1BD11BDAu};
  static constexpr int kRotations[2][4] = {{13, 15, 26, 6}, {17, 29, 16, 24}};
  x0 += ks[0];
  x1 += ks[1];
  for (int i = 0; i < 5; ++i) {
    for (int r : kRotations[i % 2]) {
      x0 += x1;
      x1 = RotateLeft(x1, r);
      x1 ^= x0;
    }
    x0 += ks[(i + 1) % 3];
    x1 += ks[(i + 2) % 3] + static_cast<uint32_t>(i + 1);
  }
  return x0 ^ x1;
}

ffi::Error RandomBits(ffi::ThreadPool pool, ffi::Buffer<ffi::U32> key,
                      ffi::ResultBuffer<ffi::U32> bits) {
  const uint32_t* k = key.typed_data();
  uint32_t* out = bits->typed_data();
  int64_t keys = static_cast<int64_t>(key.element_count()) / 2;
  int64_t total = static_cast<int64_t>(bits->element_count());
  if (keys == 0 || total == 0) return ffi::Error::Success();
  if (total % keys != 0) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "random bits: the output is not a whole number of blocks per key");
  }
  int64_t n = total / keys;
  constexpr int64_t kChunk = 1 << 14;
  int64_t chunks_per_key = (n + kChunk - 1) / kChunk;
  ParallelFor(pool, keys * chunks_per_key, [&](int64_t t) {
    int64_t row = t / chunks_per_key;
    int64_t start = (t % chunks_per_key) * kChunk;
    int64_t stop = std::min(n, start + kChunk);
    uint32_t k0 = k[2 * row], k1 = k[2 * row + 1];
    uint32_t* o = out + row * n;
    for (int64_t i = start; i < stop; ++i) {
      o[i] = Threefry(k0, k1, static_cast<uint32_t>(static_cast<uint64_t>(i) >> 32),
                      static_cast<uint32_t>(i));
    }
  });
  return ffi::Error::Success();
}

// The weights' SGD step of `optimizers.create_weight_tx` over every parameter array at
// once (dnas_jax.kernels.cpu.sgd_update; XLA otherwise compiles a reduction and two
// element-wise kernels per array). hyper = (lr, momentum, weight decay, max norm);
// args: n parameter arrays w, then their n gradients g, then their n momentum buffers
// m; results: the n new w, then the n new m (they may alias w and m):
//
//   ‖g‖ = sqrt(Σ g²) over all arrays (in double);  with max norm > 0 and ‖g‖ ≥ max norm,
//   g ← (g / ‖g‖) · max norm;  g ← g + wd · w;  m ← g + momentum · m;  w ← w + (−lr) · m
//
// in optax's order of operations (clip_by_global_norm, add_decayed_weights, trace,
// scale_by_learning_rate, apply_updates).
ffi::Error SgdStep(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> hyper, ffi::RemainingArgs args,
                   ffi::RemainingRets rets) {
  if (hyper.element_count() != 4 || args.size() % 3 != 0 || rets.size() * 3 != args.size() * 2) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "sgd step: expected 4 settings, 3n arrays and 2n results");
  }
  const float* h = hyper.typed_data();
  const float lr = h[0], momentum = h[1], decay = h[2], max_norm = h[3];
  const size_t n = args.size() / 3;
  struct Leaf {
    const float *w, *g, *m;
    float *w_out, *m_out;
    int64_t size;
  };
  std::vector<Leaf> leaves(n);
  for (size_t i = 0; i < n; ++i) {
    auto w = args.get<ffi::Buffer<ffi::F32>>(i);
    auto g = args.get<ffi::Buffer<ffi::F32>>(n + i);
    auto m = args.get<ffi::Buffer<ffi::F32>>(2 * n + i);
    auto w_out = rets.get<ffi::Buffer<ffi::F32>>(i);
    auto m_out = rets.get<ffi::Buffer<ffi::F32>>(n + i);
    if (!w.has_value() || !g.has_value() || !m.has_value() || !w_out.has_value() ||
        !m_out.has_value()) {
      return ffi::Error(ffi::ErrorCode::kInvalidArgument, "sgd step: float32 arrays expected");
    }
    int64_t size = static_cast<int64_t>(w->element_count());
    if (static_cast<int64_t>(g->element_count()) != size ||
        static_cast<int64_t>(m->element_count()) != size ||
        static_cast<int64_t>((*w_out)->element_count()) != size ||
        static_cast<int64_t>((*m_out)->element_count()) != size) {
      return ffi::Error(ffi::ErrorCode::kInvalidArgument, "sgd step: array sizes differ");
    }
    leaves[i] = {w->typed_data(), g->typed_data(), m->typed_data(), (*w_out)->typed_data(),
                 (*m_out)->typed_data(), size};
  }
  // Work items of at most kChunk elements, in the leaves' order.
  constexpr int64_t kChunk = 1 << 15;
  std::vector<std::pair<size_t, int64_t>> chunks;
  for (size_t i = 0; i < n; ++i)
    for (int64_t start = 0; start < leaves[i].size; start += kChunk) chunks.push_back({i, start});
  const int64_t count = static_cast<int64_t>(chunks.size());
  bool clip = false;
  float norm = 0.0f;
  if (max_norm > 0.0f) {
    std::vector<double> partial(count, 0.0);
    ParallelFor(pool, count, [&](int64_t t) {
      const Leaf& leaf = leaves[chunks[t].first];
      int64_t start = chunks[t].second, stop = std::min(leaf.size, start + kChunk);
      double sum = 0.0;
      for (int64_t k = start; k < stop; ++k) sum += double(leaf.g[k]) * double(leaf.g[k]);
      partial[t] = sum;
    });
    double total = 0.0;
    for (double p : partial) total += p;
    norm = static_cast<float>(std::sqrt(total));
    clip = !(norm < max_norm);
  }
  const float neg_lr = -lr;
  ParallelFor(pool, count, [&](int64_t t) {
    const Leaf& leaf = leaves[chunks[t].first];
    int64_t start = chunks[t].second, stop = std::min(leaf.size, start + kChunk);
    for (int64_t k = start; k < stop; ++k) {
      float g = leaf.g[k];
      if (clip) g = (g / norm) * max_norm;
      float w = leaf.w[k];
      g = g + decay * w;
      float m = g + momentum * leaf.m[k];
      leaf.m_out[k] = m;
      leaf.w_out[k] = w + neg_lr * m;
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ThreefryBits, RandomBits,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::U32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(SgdUpdate, SgdStep,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .RemainingRets());

XLA_FFI_DEFINE_HANDLER_SYMBOL(MaterializeCopy, Copy,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());

#define DNAS_POOL_HANDLER(name, fn, dtype, ...)                         \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, fn<dtype>,                        \
                                ffi::Ffi::Bind()                        \
                                    .Ctx<ffi::ThreadPool>()             \
                                    __VA_ARGS__                         \
                                    .Ret<ffi::Buffer<dtype>>()          \
                                    .Attr<int64_t>("stride")            \
                                    .Attr<int64_t>("average"));

DNAS_POOL_HANDLER(PoolForwardF32, PoolForward, ffi::F32, .Arg<ffi::Buffer<ffi::F32>>())
DNAS_POOL_HANDLER(PoolForwardF64, PoolForward, ffi::F64, .Arg<ffi::Buffer<ffi::F64>>())
DNAS_POOL_HANDLER(PoolBackwardF32, PoolBackward, ffi::F32,
                  .Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>())
DNAS_POOL_HANDLER(PoolBackwardF64, PoolBackward, ffi::F64,
                  .Arg<ffi::Buffer<ffi::F64>>().Arg<ffi::Buffer<ffi::F64>>())

#define DNAS_GROUPED_HANDLER(name, fn, dtype)                          \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, fn<dtype>,                        \
                                ffi::Ffi::Bind()                        \
                                    .Ctx<ffi::ThreadPool>()             \
                                    .Arg<ffi::Buffer<dtype>>()          \
                                    .Arg<ffi::Buffer<dtype>>()          \
                                    .Ret<ffi::Buffer<dtype>>());

DNAS_GROUPED_HANDLER(GroupedForwardF32, GroupedForward, ffi::F32)
DNAS_GROUPED_HANDLER(GroupedForwardF64, GroupedForward, ffi::F64)
DNAS_GROUPED_HANDLER(GroupedInputGradF32, GroupedInputGrad, ffi::F32)
DNAS_GROUPED_HANDLER(GroupedInputGradF64, GroupedInputGrad, ffi::F64)
DNAS_GROUPED_HANDLER(GroupedWeightGradF32, GroupedWeightGrad, ffi::F32)
DNAS_GROUPED_HANDLER(GroupedWeightGradF64, GroupedWeightGrad, ffi::F64)

#define DNAS_HANDLER(name, fn, dtype) \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, fn<dtype>, Binding<dtype>());

DNAS_HANDLER(DepthwiseForwardF32, Forward, ffi::F32)
DNAS_HANDLER(DepthwiseForwardF64, Forward, ffi::F64)
DNAS_HANDLER(DepthwiseInputGradF32, InputGrad, ffi::F32)
DNAS_HANDLER(DepthwiseInputGradF64, InputGrad, ffi::F64)
DNAS_HANDLER(DepthwiseKernelGradF32, KernelGrad, ffi::F32)
DNAS_HANDLER(DepthwiseKernelGradF64, KernelGrad, ffi::F64)

#define DNAS_NORM_HANDLERS(suffix, dtype)                                        \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NormForward##suffix, NormForward<dtype>,         \
                                ffi::Ffi::Bind()                                \
                                    .Ctx<ffi::ThreadPool>()                     \
                                    .Arg<ffi::Buffer<dtype>>()                  \
                                    .Ret<ffi::Buffer<dtype>>()                  \
                                    .Ret<ffi::Buffer<dtype>>()                  \
                                    .Ret<ffi::Buffer<dtype>>()                  \
                                    .Ret<ffi::Buffer<dtype>>()                  \
                                    .Attr<double>("eps"));                      \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NormBackward##suffix, NormBackward<dtype>,       \
                                ffi::Ffi::Bind()                                \
                                    .Ctx<ffi::ThreadPool>()                     \
                                    .Arg<ffi::Buffer<dtype>>()                  \
                                    .Arg<ffi::Buffer<dtype>>()                  \
                                    .Arg<ffi::Buffer<dtype>>()                  \
                                    .Ret<ffi::Buffer<dtype>>());

DNAS_NORM_HANDLERS(F32, ffi::F32)
DNAS_NORM_HANDLERS(F64, ffi::F64)
