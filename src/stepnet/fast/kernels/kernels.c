/* stepnet's compiled CPU kernels: one pass over full-size [rows, inner] tensors where ATen
 * needs several. Tensors are contiguous, rows = B * C (or B * N), inner = H * W (or D).
 *
 * stepnet_gate_backward -- backward of the gated Euler step y = x + fx * h for a channel gate
 * h holding h_rows values (B * C for [B, C, 1, 1], C for [1, C, 1, 1]; row r uses
 * h[r % h_rows]):
 *
 *     grad_fx[r, i] = grad[r, i] * h[r % h_rows]
 *     row_sum[r]    = sum_i grad[r, i] * fx[r, i]      (grad_h before summing over the batch)
 *
 * ATen needs three full passes for the same (grad * fx, its sum, grad * h).
 *
 * stepnet_gate_relu_backward -- the same for the post-activation step y = relu(x + fx * h),
 * from the saved output y (the ReLU's mask, as ATen's threshold_backward: zero where y <= 0):
 *
 *     grad_x[r, i]  = y[r, i] <= 0 ? 0 : grad[r, i] + pool_grad[r]
 *     grad_fx[r, i] = grad_x[r, i] * h[r % h_rows]
 *     row_sum[r]    = sum_i grad_x[r, i] * fx[r, i]
 *
 * pool_grad (NULL: none) is the gradient of y's per-row mean, already divided by `inner`:
 * the pooling's backward (a broadcast added to grad) folded into the same pass.
 * ATen needs two passes more (the ReLU's backward writes grad_x, the gate reads it back),
 * and two for the pooling's gradient.
 *
 * stepnet_euler_step -- the forward of the Euler step without autograd (evaluation), with the
 * post-activation ReLU and the stiffness recorder's sums in the same pass:
 *
 *     v                 = x[r, i] + fx[r, i] * h[r % h_rows]   (h = 1 when h is NULL)
 *     out[r, i]         = relu ? (v < 0 ? 0 : v) : v           (NaN stays NaN, as torch.relu)
 *
 * when pooled is set, each row's mean (summed in double, rounded, divided by `inner` -- the
 * global average pooling of out, read while the row is in cache):
 *
 *     pooled[r]         = sum_i out[r, i] / inner
 *
 * and, when sums is set, three planes of `rows` doubles (the update u = out - x):
 *
 *     sums[r]           = sum_i out[r, i]^2
 *     sums[rows + r]    = sum_i u[r, i]^2
 *     sums[2 rows + r]  = sum_i (u[r, i] / h)^2
 *
 * Without the ReLU u is exactly fx * h, so these come from sum_i fx^2 (no cancellation in
 * out - x). Sums accumulate in double; the row is still in cache when they are taken, so they
 * add arithmetic but no memory traffic. With fma set, v is one
 * fused multiply-add (one rounding), else a product and a sum (two roundings: ISO C does not
 * contract them): the caller picks what ATen's addcmul does on this CPU, so out equals ATen's
 * result bitwise. ATen needs two passes for the step and the ReLU, and the
 * recorder two more to read x and out again.
 *
 * stepnet_row_moments / stepnet_affine_step / stepnet_affine_step_backward /
 * stepnet_affine_grad_z -- the post-activation step with its batch norm folded in,
 * y = relu(x + a z + b) for the batch norm's input z, a = h s / sigma and b = h (beta - s mu /
 * sigma) per row (a_rows values, row r using a[r % a_rows]; a_rows = C for the plain network's
 * h = 1), so the normalised map bn(z) is never formed:
 *
 *     sum[r] = sum_i z[r, i],  sumsq[r] = sum_i z[r, i]^2           (moments, in double)
 *     filtered[r] = sum_i filters[c, i] z[r, i]        (optional: a gate's weighted pooling)
 *     out[r, i] = relu(x[r, i] + (a z[r, i] + b)),  pooled[r] = mean_i out[r, i]
 *                                          (x NULL: relu(a z + b), a batch norm and its ReLU)
 *     grad_x[r, i] = y[r, i] <= 0 ? 0 : grad[r, i] + pool_grad[r]   (backward, first part)
 *     sum_g[r] = sum_i grad_x[r, i],  sum_gz[r] = sum_i grad_x[r, i] z[r, i]
 *     grad_z[r, i] = a grad_x[r, i] + v[r] (z[r, i] - shift[c]) + u[r]  (c = r % channels)
 *
 * The last is z's whole gradient: through the step (a grad_x, grad_x may be NULL) and through
 * the moments (u + v (z - shift) with v = 2 d/dsumsq and u = d/dsum + v shift: the gradient
 * of sum and sumsq, centred on the channel mean for accuracy). ATen needs three passes for
 * the batch norm's forward and four for the step and ReLU; two for the batch norm's backward
 * and three for the ReLU's and the step's.
 *
 * Each entry point computes a range of rows; the caller (ops.cpp, the torch operators)
 * shares the rows out over torch's threads with at::parallel_for. No OpenMP runtime: the
 * `omp simd` pragmas are compiled with -fopenmp-simd (vectorisation only).
 */
#include <stdint.h>
#include <stdlib.h>

/* x86-64: every row function twice, for AVX2 + FMA and for the baseline, the first picked at
 * run time where the CPU has both (by features: target_clones' "arch=" clones are picked by CPU
 * model, and its "avx2" clone has no FMA). Elsewhere the baseline only. */
#if defined(__x86_64__) && defined(__GNUC__)
#define FAST_ATTR __attribute__((target("avx2,fma")))
static int fast_cpu(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
#define FAST_ATTR
static int fast_cpu(void) { return 0; }
#endif
#define BASE_ATTR

/* a row function's four builds: float32 / float64, baseline / AVX2 + FMA */
#define FOUR_BUILDS(ROWS, name)                                                           \
    ROWS(name##_f32, float, BASE_ATTR)                                                    \
    ROWS(name##_f64, double, BASE_ATTR)                                                   \
    ROWS(name##_f32_fast, float, FAST_ATTR)                                               \
    ROWS(name##_f64_fast, double, FAST_ATTR)

/* one rounding of a * b + c, in the operands' type */
#define FMA(a, b, c) _Generic((a), float: __builtin_fmaf, double: __builtin_fma)(a, b, c)

#define GATE_ROWS(NAME, T, ATTR)                                                          \
    ATTR                                                                                  \
    static void NAME(const T *g, const T *fx, const T *h, T *grad_fx, T *row_sum,        \
                     int64_t begin, int64_t end, int64_t inner, int64_t h_rows) {        \
        for (int64_t r = begin; r < end; ++r) {                                           \
            const T *gr = g + r * inner, *fr = fx + r * inner;                            \
            T *out = grad_fx + r * inner;                                                 \
            const T hv = h[r % h_rows];                                                   \
            T acc = 0;                                                                    \
            _Pragma("omp simd reduction(+:acc)")                                          \
            for (int64_t i = 0; i < inner; ++i) {                                         \
                out[i] = gr[i] * hv;                                                      \
                acc += gr[i] * fr[i];                                                     \
            }                                                                             \
            row_sum[r] = acc;                                                             \
        }                                                                                 \
    }

FOUR_BUILDS(GATE_ROWS, gate_rows)

#define GATE_RELU_ROWS(NAME, T, ATTR)                                                     \
    ATTR                                                                                  \
    static void NAME(const T *g, const T *y, const T *fx, const T *h, T *grad_x,         \
                     T *grad_fx, T *row_sum, const T *pool_grad, int64_t begin,          \
                     int64_t end, int64_t inner, int64_t h_rows) {                        \
        for (int64_t r = begin; r < end; ++r) {                                           \
            const T *gr = g + r * inner, *yr = y + r * inner, *fr = fx + r * inner;       \
            T *gx = grad_x + r * inner, *gf = grad_fx + r * inner;                        \
            const T hv = h[r % h_rows];                                                   \
            T acc = 0;                                                                    \
            /* every operand is read unconditionally, so the mask is a blend: a select  \
             * whose arm is a load makes GCC emit masked loads or a branch per element */ \
            if (pool_grad) {                                                              \
                const T pg = pool_grad[r];                                                \
                _Pragma("omp simd reduction(+:acc)")                                      \
                for (int64_t i = 0; i < inner; ++i) {                                     \
                    const T gv = gr[i] + pg, gi = yr[i] <= 0 ? (T)0 : gv;                 \
                    gx[i] = gi;                                                           \
                    gf[i] = gi * hv;                                                      \
                    acc += gi * fr[i];                                                    \
                }                                                                         \
            } else {                                                                      \
                _Pragma("omp simd reduction(+:acc)")                                      \
                for (int64_t i = 0; i < inner; ++i) {                                     \
                    const T gv = gr[i], gi = yr[i] <= 0 ? (T)0 : gv;                      \
                    gx[i] = gi;                                                           \
                    gf[i] = gi * hv;                                                      \
                    acc += gi * fr[i];                                                    \
                }                                                                         \
            }                                                                             \
            row_sum[r] = acc;                                                             \
        }                                                                                 \
    }

FOUR_BUILDS(GATE_RELU_ROWS, gate_relu_rows)

#define STEP_ROWS(NAME, T, ATTR)                                                          \
    ATTR                                                                                  \
    static void NAME(const T *x, const T *fx, const T *h, T *out, T *pooled,             \
                     double *sums, int64_t plane, int64_t begin, int64_t end,            \
                     int64_t inner, int64_t h_rows, int relu, int fma) {                  \
        for (int64_t r = begin; r < end; ++r) {                                           \
            const T *xr = x + r * inner, *fr = fx + r * inner;                            \
            T *o = out + r * inner;                                                       \
            const T hv = h ? h[r % h_rows] : (T)1;                                        \
            if (fma && h) {                                                               \
                _Pragma("omp simd")                                                       \
                for (int64_t i = 0; i < inner; ++i) o[i] = FMA(fr[i], hv, xr[i]);         \
            } else {                                                                      \
                _Pragma("omp simd")                                                       \
                for (int64_t i = 0; i < inner; ++i) o[i] = xr[i] + fr[i] * hv;            \
            }                                                                             \
            if (relu) {                                                                   \
                _Pragma("omp simd")                                                       \
                for (int64_t i = 0; i < inner; ++i) o[i] = o[i] < 0 ? (T)0 : o[i];        \
            }                                                                             \
            if (pooled) {                                                                 \
                double total = 0;                                                         \
                _Pragma("omp simd reduction(+:total)")                                    \
                for (int64_t i = 0; i < inner; ++i) total += o[i];                        \
                pooled[r] = (T)total / (T)inner;                                          \
            }                                                                             \
            if (!sums) continue;                                                          \
            double so = 0, su = 0;                                                        \
            const double h2 = (double)hv * (double)hv;                                    \
            if (relu) {                                                                   \
                _Pragma("omp simd reduction(+:so, su)")                                   \
                for (int64_t i = 0; i < inner; ++i) {                                     \
                    const double ov = o[i], d = ov - (double)xr[i];                       \
                    so += ov * ov;                                                        \
                    su += d * d;                                                          \
                }                                                                         \
                sums[plane + r] = su;                                                     \
                sums[2 * plane + r] = su / h2;                                            \
            } else {                                                                      \
                _Pragma("omp simd reduction(+:so, su)")                                   \
                for (int64_t i = 0; i < inner; ++i) {                                     \
                    const double ov = o[i], fv = fr[i];                                   \
                    so += ov * ov;                                                        \
                    su += fv * fv;                                                        \
                }                                                                         \
                sums[plane + r] = su * h2;                                                \
                sums[2 * plane + r] = su;                                                 \
            }                                                                             \
            sums[r] = so;                                                                 \
        }                                                                                 \
    }

FOUR_BUILDS(STEP_ROWS, step_rows)

#define MOMENT_ROWS(NAME, T, ATTR)                                                        \
    ATTR                                                                                  \
    static void NAME(const T *z, const T *filters, double *sum, double *sumsq,           \
                     double *filtered, int64_t begin, int64_t end, int64_t inner,        \
                     int64_t channels) {                                                  \
        for (int64_t r = begin; r < end; ++r) {                                           \
            const T *zr = z + r * inner;                                                  \
            double s = 0, q = 0, w = 0;                                                   \
            if (filters) {                                                                \
                const T *fr = filters + (r % channels) * inner;                           \
                _Pragma("omp simd reduction(+:s, q, w)")                                  \
                for (int64_t i = 0; i < inner; ++i) {                                     \
                    const double v = zr[i];                                               \
                    s += v;                                                               \
                    q += v * v;                                                           \
                    w += v * (double)fr[i];                                               \
                }                                                                         \
                filtered[r] = w;                                                          \
            } else {                                                                      \
                _Pragma("omp simd reduction(+:s, q)")                                     \
                for (int64_t i = 0; i < inner; ++i) {                                     \
                    const double v = zr[i];                                               \
                    s += v;                                                               \
                    q += v * v;                                                           \
                }                                                                         \
            }                                                                             \
            sum[r] = s;                                                                   \
            sumsq[r] = q;                                                                 \
        }                                                                                 \
    }

FOUR_BUILDS(MOMENT_ROWS, moment_rows)

#define AFFINE_STEP_ROWS(NAME, T, ATTR)                                                   \
    ATTR                                                                                  \
    static void NAME(const T *x, const T *z, const T *a, const T *b, T *out, T *pooled,  \
                     int64_t begin, int64_t end, int64_t inner, int64_t a_rows, int fma) { \
        for (int64_t r = begin; r < end; ++r) {                                           \
            const T *xr = x ? x + r * inner : 0, *zr = z + r * inner;                     \
            T *o = out + r * inner;                                                       \
            const T av = a[r % a_rows], bv = b[r % a_rows];                               \
            if (!x) {                                                                     \
                _Pragma("omp simd")                                                       \
                for (int64_t i = 0; i < inner; ++i) {                                     \
                    const T v = fma ? FMA(zr[i], av, bv) : zr[i] * av + bv;               \
                    o[i] = v < 0 ? (T)0 : v;                                              \
                }                                                                         \
            } else if (fma) {                                                             \
                _Pragma("omp simd")                                                       \
                for (int64_t i = 0; i < inner; ++i) {                                     \
                    const T v = xr[i] + FMA(zr[i], av, bv);                               \
                    o[i] = v < 0 ? (T)0 : v;                                              \
                }                                                                         \
            } else {                                                                      \
                _Pragma("omp simd")                                                       \
                for (int64_t i = 0; i < inner; ++i) {                                     \
                    const T v = xr[i] + (zr[i] * av + bv);                                \
                    o[i] = v < 0 ? (T)0 : v;                                              \
                }                                                                         \
            }                                                                             \
            if (pooled) {                                                                 \
                double total = 0;                                                         \
                _Pragma("omp simd reduction(+:total)")                                    \
                for (int64_t i = 0; i < inner; ++i) total += o[i];                        \
                pooled[r] = (T)total / (T)inner;                                          \
            }                                                                             \
        }                                                                                 \
    }

FOUR_BUILDS(AFFINE_STEP_ROWS, affine_step_rows)

#define AFFINE_BACKWARD_ROWS(NAME, T, ATTR)                                               \
    ATTR                                                                                  \
    static void NAME(const T *g, const T *y, const T *z, const T *pool_grad, T *grad_x,  \
                     T *sum_g, T *sum_gz, int64_t begin, int64_t end, int64_t inner) {    \
        for (int64_t r = begin; r < end; ++r) {                                           \
            const T *gr = g + r * inner, *yr = y + r * inner, *zr = z + r * inner;        \
            T *gx = grad_x + r * inner;                                                   \
            const T pg = pool_grad ? pool_grad[r] : (T)0;                                 \
            T acc_g = 0, acc_gz = 0;                                                      \
            /* operands read unconditionally: the mask is a blend (see gate_relu_rows) */ \
            _Pragma("omp simd reduction(+:acc_g, acc_gz)")                                \
            for (int64_t i = 0; i < inner; ++i) {                                         \
                const T gv = gr[i] + pg, gi = yr[i] <= 0 ? (T)0 : gv;                     \
                gx[i] = gi;                                                               \
                acc_g += gi;                                                              \
                acc_gz += gi * zr[i];                                                     \
            }                                                                             \
            sum_g[r] = acc_g;                                                             \
            sum_gz[r] = acc_gz;                                                           \
        }                                                                                 \
    }

FOUR_BUILDS(AFFINE_BACKWARD_ROWS, affine_backward_rows)

#define AFFINE_GRAD_Z_ROWS(NAME, T, ATTR)                                                 \
    ATTR                                                                                  \
    static void NAME(const T *z, const T *grad_x, const T *a, const double *u,           \
                     const double *v, const double *shift, T *grad_z, int64_t begin,     \
                     int64_t end, int64_t inner, int64_t a_rows, int64_t channels) {      \
        for (int64_t r = begin; r < end; ++r) {                                           \
            const T *zr = z + r * inner;                                                  \
            T *o = grad_z + r * inner;                                                    \
            const T uv = (T)u[r], vv = (T)v[r], m = (T)shift[r % channels];               \
            if (grad_x) {                                                                 \
                const T *gx = grad_x + r * inner;                                         \
                const T av = a[r % a_rows];                                               \
                _Pragma("omp simd")                                                       \
                for (int64_t i = 0; i < inner; ++i)                                       \
                    o[i] = av * gx[i] + (vv * (zr[i] - m) + uv);                          \
            } else {                                                                      \
                _Pragma("omp simd")                                                       \
                for (int64_t i = 0; i < inner; ++i) o[i] = vv * (zr[i] - m) + uv;         \
            }                                                                             \
        }                                                                                 \
    }

FOUR_BUILDS(AFFINE_GRAD_Z_ROWS, affine_grad_z_rows)

/* Every entry point: dtype 0 is float32, 1 is float64; it computes rows [begin, end) of the
 * `rows` (the caller shares rows out over threads: ops.cpp through at::parallel_for, so the
 * threads are torch's own); returns 0. Rows are independent, so any split gives the same
 * numbers. */
#define RANGE_CALL(CALL_F32, CALL_F64, CALL_F32_FAST, CALL_F64_FAST)                    \
    const int fast = fast_cpu();                                                          \
    if (dtype == 1) {                                                                     \
        if (fast) CALL_F64_FAST; else CALL_F64;                                           \
    } else {                                                                              \
        if (fast) CALL_F32_FAST; else CALL_F32;                                           \
    }                                                                                     \
    return 0;

#define GATE_ARGS grad, fx, h, grad_fx, row_sum, begin, end, inner, h_rows
int stepnet_gate_backward(const void *grad, const void *fx, const void *h, void *grad_fx,
                          void *row_sum, int64_t rows, int64_t inner, int64_t h_rows,
                          int dtype, int64_t begin, int64_t end) {
    RANGE_CALL(gate_rows_f32(GATE_ARGS), gate_rows_f64(GATE_ARGS),
                  gate_rows_f32_fast(GATE_ARGS), gate_rows_f64_fast(GATE_ARGS))
}

/* pool_grad may be NULL (no gradient for y's mean). */
#define GATE_RELU_ARGS grad, y, fx, h, grad_x, grad_fx, row_sum, pool_grad, begin, end, inner, \
                       h_rows
int stepnet_gate_relu_backward(const void *grad, const void *y, const void *fx, const void *h,
                               void *grad_x, void *grad_fx, void *row_sum,
                               const void *pool_grad, int64_t rows, int64_t inner,
                               int64_t h_rows, int dtype, int64_t begin, int64_t end) {
    RANGE_CALL(gate_relu_rows_f32(GATE_RELU_ARGS), gate_relu_rows_f64(GATE_RELU_ARGS),
                  gate_relu_rows_f32_fast(GATE_RELU_ARGS), gate_relu_rows_f64_fast(GATE_RELU_ARGS))
}

/* h may be NULL (h = 1); pooled NULL (none) or rows values; sums NULL (none) or 3 * rows
 * doubles. */
#define STEP_ARGS x, fx, h, out, pooled, sums, rows, begin, end, inner, h_rows, relu, fma
int stepnet_euler_step(const void *x, const void *fx, const void *h, void *out, void *pooled,
                       double *sums, int64_t rows, int64_t inner,
                       int64_t h_rows, int relu, int fma, int dtype, int64_t begin,
                       int64_t end) {
    RANGE_CALL(step_rows_f32(STEP_ARGS), step_rows_f64(STEP_ARGS),
                  step_rows_f32_fast(STEP_ARGS), step_rows_f64_fast(STEP_ARGS))
}

/* filters may be NULL (then filtered is not written): else [channels, inner], row r weighted
 * by filters[r % channels]. */
#define MOMENT_ARGS z, filters, sum, sumsq, filtered, begin, end, inner, channels
int stepnet_row_moments(const void *z, const void *filters, double *sum, double *sumsq,
                        double *filtered, int64_t rows, int64_t inner, int64_t channels,
                        int dtype, int64_t begin, int64_t end) {
    RANGE_CALL(moment_rows_f32(MOMENT_ARGS), moment_rows_f64(MOMENT_ARGS),
                  moment_rows_f32_fast(MOMENT_ARGS), moment_rows_f64_fast(MOMENT_ARGS))
}

/* x may be NULL (no step: relu(a z + b)); pooled NULL (none). */
#define AFFINE_STEP_ARGS x, z, a, b, out, pooled, begin, end, inner, a_rows, fma
int stepnet_affine_step(const void *x, const void *z, const void *a, const void *b, void *out,
                        void *pooled, int64_t rows, int64_t inner, int64_t a_rows, int fma,
                        int dtype, int64_t begin, int64_t end) {
    RANGE_CALL(affine_step_rows_f32(AFFINE_STEP_ARGS), affine_step_rows_f64(AFFINE_STEP_ARGS),
                  affine_step_rows_f32_fast(AFFINE_STEP_ARGS),
                  affine_step_rows_f64_fast(AFFINE_STEP_ARGS))
}

/* pool_grad may be NULL (no gradient for y's mean). */
#define AFFINE_BACKWARD_ARGS grad, y, z, pool_grad, grad_x, sum_g, sum_gz, begin, end, inner
int stepnet_affine_step_backward(const void *grad, const void *y, const void *z,
                                 const void *pool_grad, void *grad_x, void *sum_g, void *sum_gz,
                                 int64_t rows, int64_t inner, int dtype, int64_t begin,
                                 int64_t end) {
    RANGE_CALL(affine_backward_rows_f32(AFFINE_BACKWARD_ARGS),
                  affine_backward_rows_f64(AFFINE_BACKWARD_ARGS),
                  affine_backward_rows_f32_fast(AFFINE_BACKWARD_ARGS),
                  affine_backward_rows_f64_fast(AFFINE_BACKWARD_ARGS))
}

/* grad_x may be NULL (then a is not read): only the moments' gradient. */
#define AFFINE_GRAD_Z_ARGS z, grad_x, a, u, v, shift, grad_z, begin, end, inner, a_rows, channels
int stepnet_affine_grad_z(const void *z, const void *grad_x, const void *a, const double *u,
                          const double *v, const double *shift, void *grad_z, int64_t rows,
                          int64_t inner, int64_t a_rows, int64_t channels, int dtype,
                          int64_t begin, int64_t end) {
    RANGE_CALL(affine_grad_z_rows_f32(AFFINE_GRAD_Z_ARGS),
                  affine_grad_z_rows_f64(AFFINE_GRAD_Z_ARGS),
                  affine_grad_z_rows_f32_fast(AFFINE_GRAD_Z_ARGS),
                  affine_grad_z_rows_f64_fast(AFFINE_GRAD_Z_ARGS))
}

/* stepnet_adaptor_forward / _backward -- StepNet's default adaptor in training mode on pooled
 * descriptors p = GAP(x), d = GAP(fx), each [B, C] (c fastest), per channel c:
 *
 *     q = p + d                                        (GAP(x + fx))
 *     z = p w[c, 0] + q w[c, 1]                        (the grouped 1x1 convolution)
 *     zhat = (z - mean_b z) / sqrt(var_b z + eps)       (batch statistics, biased variance)
 *     g = sigmoid(ie_b + ie_w z)                       (IEBN's instance gate)
 *     h = sigmoid(beta + zhat (g gamma))
 *
 * with the running statistics updated as torch's batch norm updates them (momentum times the
 * batch mean and unbiased variance plus 1 - momentum times the old value) when `update` is set.
 * Forward saves z, zhat, g and 1 / std for the backward, which writes the gradients of p, d,
 * w, gamma, beta, ie_w and ie_b from that of h (batch norm's backward through the batch
 * statistics included). The forward rounds as ATen's ops do (z, the gate's and h's logits in
 * T; statistics and sums in double); ATen needs about twenty ops on [B, C] each way, each a
 * dispatch and an autograd node. Loops run along the channels (contiguous, vectorised), with
 * per-channel sums in a scratch buffer; no threads (B * C values). Returns 0, or 1 when the
 * scratch buffer cannot be allocated. */

/* The logistic sigmoid for vector loops (libm's exp is a scalar call): e^m for m = -a, clamped,
 * as 2^k e^r with |r| <= ln2 / 2 (Cody-Waite: ln2 in two parts), e^r by its Taylor series
 * (double: to r^13, the next term below 5e-18 of the sum; float: to r^8, below 1e-9), 2^k
 * from the exponent bits (k rounded by a 1.5 * 2^mantissa shifter: no float-to-integer
 * conversion, which AVX2 lacks for 64-bit lanes). Where the clamp acts the sigmoid is 1 to
 * working precision, or below the smallest normal number (and exactly 0 where e^-a overflows,
 * as with libm); NaN stays NaN. */
static inline double sigmoid_f64(double a) {
    const double m = -a > 709.0 ? 709.0 : (-a < -709.0 ? -709.0 : -a);
    const double shifter = 6755399441055744.0;   /* 1.5 * 2^52 */
    const double t = m * 1.4426950408889634 + shifter, k = t - shifter;
    const double r = (m - k * 6.93147180369123816490e-01) - k * 1.90821492927058770002e-10;
    double e = 1.0 / 6227020800.0;               /* 1 / 13! */
    e = e * r + 1.0 / 479001600.0;
    e = e * r + 1.0 / 39916800.0;
    e = e * r + 1.0 / 3628800.0;
    e = e * r + 1.0 / 362880.0;
    e = e * r + 1.0 / 40320.0;
    e = e * r + 1.0 / 5040.0;
    e = e * r + 1.0 / 720.0;
    e = e * r + 1.0 / 120.0;
    e = e * r + 1.0 / 24.0;
    e = e * r + 1.0 / 6.0;
    e = e * r + 0.5;
    e = e * r + 1.0;
    e = e * r + 1.0;
    int64_t t_bits, shifter_bits;
    __builtin_memcpy(&t_bits, &t, sizeof t);
    __builtin_memcpy(&shifter_bits, &shifter, sizeof shifter);
    const int64_t scale_bits = (t_bits - shifter_bits + 1023) << 52;
    double scale;
    __builtin_memcpy(&scale, &scale_bits, sizeof scale);
    const double s = 1.0 / (1.0 + e * scale);
    return a != a ? a : (a < -709.782712893384 ? 0.0 : s);    /* ln(DBL_MAX) */
}

static inline float sigmoid_f32(float a) {
    const float m = -a > 88.0f ? 88.0f : (-a < -88.0f ? -88.0f : -a);
    const float shifter = 12582912.0f;           /* 1.5 * 2^23 */
    const float t = m * 1.44269504f + shifter, k = t - shifter;
    const float r = (m - k * 0.693145751953125f) - k * 1.428606765330187e-06f;
    float e = 1.0f / 40320.0f;                    /* 1 / 8! */
    e = e * r + 1.0f / 5040.0f;
    e = e * r + 1.0f / 720.0f;
    e = e * r + 1.0f / 120.0f;
    e = e * r + 1.0f / 24.0f;
    e = e * r + 1.0f / 6.0f;
    e = e * r + 0.5f;
    e = e * r + 1.0f;
    e = e * r + 1.0f;
    int32_t t_bits, shifter_bits;
    __builtin_memcpy(&t_bits, &t, sizeof t);
    __builtin_memcpy(&shifter_bits, &shifter, sizeof shifter);
    const int32_t scale_bits = (t_bits - shifter_bits + 127) << 23;
    float scale;
    __builtin_memcpy(&scale, &scale_bits, sizeof scale);
    const float s = 1.0f / (1.0f + e * scale);
    return a != a ? a : (a < -88.7228391f ? 0.0f : s);           /* ln(FLT_MAX) */
}

#define SIGMOID(a) _Generic((a), float: sigmoid_f32, double: sigmoid_f64)(a)

#define ADAPTOR_FORWARD(NAME, T, ATTR)                                                    \
    ATTR                                                                                  \
    static void NAME(const T *p, const T *d, const T *w, const T *gamma, const T *beta,  \
                     const T *ie_w, const T *ie_b, T *running_mean, T *running_var,      \
                     T *h, T *z, T *zhat, T *g, T *invstd, double *scratch, int64_t B,   \
                     int64_t C, int update, double eps, double momentum) {                \
        double *mean = scratch, *squares = scratch + C;                                   \
        T *w0 = (T *)(scratch + 2 * C), *w1 = w0 + C;                                    \
        for (int64_t c = 0; c < C; ++c) {                                                 \
            mean[c] = squares[c] = 0;                                                     \
            w0[c] = w[2 * c];                                                             \
            w1[c] = w[2 * c + 1];                                                         \
        }                                                                                 \
        for (int64_t b = 0; b < B; ++b) {                                                 \
            const T *pr = p + b * C, *dr = d + b * C;                                     \
            T *zr = z + b * C;                                                            \
            _Pragma("omp simd")                                                           \
            for (int64_t c = 0; c < C; ++c) {                                             \
                const T first = pr[c] * w0[c], second = (pr[c] + dr[c]) * w1[c];          \
                zr[c] = first + second;                                                   \
                mean[c] += zr[c];                                                         \
            }                                                                             \
        }                                                                                 \
        for (int64_t c = 0; c < C; ++c) mean[c] /= B;                                     \
        for (int64_t b = 0; b < B; ++b) {                                                 \
            const T *zr = z + b * C;                                                      \
            _Pragma("omp simd")                                                           \
            for (int64_t c = 0; c < C; ++c) {                                             \
                const double centred = zr[c] - mean[c];                                   \
                squares[c] += centred * centred;                                          \
            }                                                                             \
        }                                                                                 \
        for (int64_t c = 0; c < C; ++c) {                                                 \
            invstd[c] = (T)(1.0 / __builtin_sqrt(squares[c] / B + eps));                  \
            if (update) {                                                                 \
                running_mean[c] = (T)(momentum * mean[c] + (1 - momentum) * running_mean[c]); \
                running_var[c] = (T)(momentum * squares[c] / (B - 1)                      \
                                     + (1 - momentum) * running_var[c]);                  \
            }                                                                             \
        }                                                                                 \
        for (int64_t b = 0; b < B; ++b) {                                                 \
            const T *zr = z + b * C;                                                      \
            T *zhr = zhat + b * C, *gr = g + b * C, *hr = h + b * C;                      \
            _Pragma("omp simd")                                                           \
            for (int64_t c = 0; c < C; ++c) {                                             \
                zhr[c] = (T)((zr[c] - mean[c]) * (double)invstd[c]);                      \
                const T gate_logit = ie_b[c] + ie_w[c] * zr[c];                           \
                gr[c] = SIGMOID(gate_logit);                                              \
                const T logit = beta[c] + zhr[c] * (gr[c] * gamma[c]);                    \
                hr[c] = SIGMOID(logit);                                                   \
            }                                                                             \
        }                                                                                 \
    }

#define ADAPTOR_BACKWARD(NAME, T, ATTR)                                                   \
    ATTR                                                                                  \
    static void NAME(const T *grad_h, const T *p, const T *d, const T *w, const T *gamma, \
                     const T *ie_w, const T *h, const T *z, const T *zhat, const T *g,   \
                     const T *invstd, T *grad_p, T *grad_d, T *grad_w, T *grad_gamma,    \
                     T *grad_beta, T *grad_ie_w, T *grad_ie_b, double *scratch, int64_t B, \
                     int64_t C) {                                                         \
        double *s_beta = scratch, *s_gamma = s_beta + C, *s_gzh = s_gamma + C;            \
        double *s_gzh_zh = s_gzh + C, *s_ie_b = s_gzh_zh + C, *s_ie_w = s_ie_b + C;       \
        double *s_w0 = s_ie_w + C, *s_w1 = s_w0 + C;                                      \
        for (int64_t j = 0; j < 8 * C; ++j) scratch[j] = 0;                               \
        /* pass 1: the per-channel sums the batch norm's backward needs, and IEBN's */    \
        for (int64_t b = 0; b < B; ++b) {                                                 \
            const int64_t o = b * C;                                                      \
            _Pragma("omp simd")                                                           \
            for (int64_t c = 0; c < C; ++c) {                                             \
                const double hv = h[o + c], gv = g[o + c], zh = zhat[o + c];              \
                const double gn = grad_h[o + c] * hv * (1 - hv);   /* the sigmoid's */    \
                const double gzh = gn * gv * gamma[c];             /* into zhat */        \
                const double ga = gn * zh * gamma[c] * gv * (1 - gv); /* gate logit */    \
                s_beta[c] += gn;                                                          \
                s_gamma[c] += gn * zh * gv;                                               \
                s_gzh[c] += gzh;                                                          \
                s_gzh_zh[c] += gzh * zh;                                                  \
                s_ie_b[c] += ga;                                                          \
                s_ie_w[c] += ga * z[o + c];                                               \
            }                                                                             \
        }                                                                                 \
        /* pass 2: through the batch statistics into z, then p, d and w */                \
        for (int64_t b = 0; b < B; ++b) {                                                 \
            const int64_t o = b * C;                                                      \
            _Pragma("omp simd")                                                           \
            for (int64_t c = 0; c < C; ++c) {                                             \
                const double hv = h[o + c], gv = g[o + c], zh = zhat[o + c];              \
                const double gn = grad_h[o + c] * hv * (1 - hv);                          \
                const double gzh = gn * gv * gamma[c];                                    \
                const double ga = gn * zh * gamma[c] * gv * (1 - gv);                     \
                const double gz = invstd[c] * (gzh - s_gzh[c] / B - zh * (s_gzh_zh[c] / B)) \
                                  + ga * ie_w[c];                                         \
                const double pv = p[o + c], qv = pv + (double)d[o + c];                   \
                const double w0 = w[2 * c], w1 = w[2 * c + 1];                            \
                s_w0[c] += gz * pv;                                                       \
                s_w1[c] += gz * qv;                                                       \
                grad_p[o + c] = (T)(gz * (w0 + w1));                                      \
                grad_d[o + c] = (T)(gz * w1);                                             \
            }                                                                             \
        }                                                                                 \
        for (int64_t c = 0; c < C; ++c) {                                                 \
            grad_w[2 * c] = (T)s_w0[c];                                                   \
            grad_w[2 * c + 1] = (T)s_w1[c];                                               \
            grad_gamma[c] = (T)s_gamma[c];                                                \
            grad_beta[c] = (T)s_beta[c];                                                  \
            grad_ie_w[c] = (T)s_ie_w[c];                                                  \
            grad_ie_b[c] = (T)s_ie_b[c];                                                  \
        }                                                                                 \
    }

FOUR_BUILDS(ADAPTOR_FORWARD, adaptor_forward)
FOUR_BUILDS(ADAPTOR_BACKWARD, adaptor_backward)

/* one build of four by dtype and CPU, on a scratch buffer of 8 * C doubles */
#define ADAPTOR_CALL(name, ARGS)                                                          \
    double *scratch = malloc(8 * (size_t)C * sizeof(double));                            \
    if (!scratch) return 1;                                                               \
    const int fast = fast_cpu();                                                          \
    if (dtype == 1) {                                                                     \
        if (fast) name##_f64_fast(ARGS); else name##_f64(ARGS);                           \
    } else {                                                                              \
        if (fast) name##_f32_fast(ARGS); else name##_f32(ARGS);                           \
    }                                                                                     \
    free(scratch);                                                                        \
    return 0;

/* running_mean / running_var: updated when `update` is set (else may be NULL). */
#define ADAPTOR_FORWARD_ARGS p, d, w, gamma, beta, ie_w, ie_b, running_mean, running_var, h, z, \
                             zhat, g, invstd, scratch, B, C, update, eps, momentum
int stepnet_adaptor_forward(const void *p, const void *d, const void *w, const void *gamma,
                            const void *beta, const void *ie_w, const void *ie_b,
                            void *running_mean, void *running_var, void *h, void *z,
                            void *zhat, void *g, void *invstd, int64_t B, int64_t C,
                            int update, int dtype, double eps, double momentum) {
    ADAPTOR_CALL(adaptor_forward, ADAPTOR_FORWARD_ARGS)
}

#define ADAPTOR_BACKWARD_ARGS grad_h, p, d, w, gamma, ie_w, h, z, zhat, g, invstd, grad_p, \
                              grad_d, grad_w, grad_gamma, grad_beta, grad_ie_w, grad_ie_b,  \
                              scratch, B, C
int stepnet_adaptor_backward(const void *grad_h, const void *p, const void *d, const void *w,
                             const void *gamma, const void *ie_w, const void *h,
                             const void *z, const void *zhat, const void *g,
                             const void *invstd, void *grad_p, void *grad_d, void *grad_w,
                             void *grad_gamma, void *grad_beta, void *grad_ie_w,
                             void *grad_ie_b, int64_t B, int64_t C, int dtype) {
    ADAPTOR_CALL(adaptor_backward, ADAPTOR_BACKWARD_ARGS)
}
