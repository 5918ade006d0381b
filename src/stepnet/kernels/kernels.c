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
 * stepnet_square_sums -- the stiffness recorder's norms of a state and of its update:
 *
 *     sum_a[r]    = sum_i a[r, i]^2
 *     sum_diff[r] = sum_i (b[r, i] - a[r, i])^2        (accumulated in double)
 *
 * ATen needs four passes (the norm of a, b - a written out, read back, its norm).
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
 * Rows are shared out by OpenMP; loaded into a process that has imported torch, this uses
 * torch's own OpenMP runtime (the same libgomp), so its threads are torch's threads.
 */
#include <stdint.h>

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

#define SQUARE_ROWS(NAME, T, ATTR)                                                          \
    ATTR                                                                                  \
    static void NAME(const T *a, const T *b, double *sum_a, double *sum_diff,            \
                     int64_t begin, int64_t end, int64_t inner) {                         \
        for (int64_t r = begin; r < end; ++r) {                                           \
            const T *ar = a + r * inner, *br = b + r * inner;                             \
            double sa = 0, sd = 0;                                                        \
            _Pragma("omp simd reduction(+:sa, sd)")                                       \
            for (int64_t i = 0; i < inner; ++i) {                                         \
                const double av = ar[i], d = (double)br[i] - av;                          \
                sa += av * av;                                                            \
                sd += d * d;                                                              \
            }                                                                             \
            sum_a[r] = sa;                                                                \
            sum_diff[r] = sd;                                                             \
        }                                                                                 \
    }

FOUR_BUILDS(SQUARE_ROWS, square_rows)

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

static int clamp_threads(int threads, int64_t rows) {
    if (threads < 1) threads = 1;
    return threads > rows ? (int)rows : threads;
}

/* Every entry point: dtype 0 is float32, 1 is float64; rows are shared out over `threads`
 * OpenMP threads; returns 0. */
#define PARALLEL_ROWS(CALL_F32, CALL_F64, CALL_F32_FAST, CALL_F64_FAST)                    \
    const int fast = fast_cpu();                                                          \
    threads = clamp_threads(threads, rows);                                               \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                     \
    for (int t = 0; t < threads; ++t) {                                                   \
        const int64_t begin = rows * t / threads, end = rows * (t + 1) / threads;         \
        if (dtype == 1) {                                                                 \
            if (fast) CALL_F64_FAST; else CALL_F64;                                       \
        } else {                                                                          \
            if (fast) CALL_F32_FAST; else CALL_F32;                                       \
        }                                                                                 \
    }                                                                                     \
    return 0;

#define GATE_ARGS grad, fx, h, grad_fx, row_sum, begin, end, inner, h_rows
int stepnet_gate_backward(const void *grad, const void *fx, const void *h, void *grad_fx,
                          void *row_sum, int64_t rows, int64_t inner, int64_t h_rows,
                          int dtype, int threads) {
    PARALLEL_ROWS(gate_rows_f32(GATE_ARGS), gate_rows_f64(GATE_ARGS),
                  gate_rows_f32_fast(GATE_ARGS), gate_rows_f64_fast(GATE_ARGS))
}

/* pool_grad may be NULL (no gradient for y's mean). */
#define GATE_RELU_ARGS grad, y, fx, h, grad_x, grad_fx, row_sum, pool_grad, begin, end, inner, \
                       h_rows
int stepnet_gate_relu_backward(const void *grad, const void *y, const void *fx, const void *h,
                               void *grad_x, void *grad_fx, void *row_sum,
                               const void *pool_grad, int64_t rows, int64_t inner,
                               int64_t h_rows, int dtype, int threads) {
    PARALLEL_ROWS(gate_relu_rows_f32(GATE_RELU_ARGS), gate_relu_rows_f64(GATE_RELU_ARGS),
                  gate_relu_rows_f32_fast(GATE_RELU_ARGS), gate_relu_rows_f64_fast(GATE_RELU_ARGS))
}

#define SQUARE_ARGS a, b, sum_a, sum_diff, begin, end, inner
int stepnet_square_sums(const void *a, const void *b, double *sum_a, double *sum_diff,
                        int64_t rows, int64_t inner, int dtype, int threads) {
    PARALLEL_ROWS(square_rows_f32(SQUARE_ARGS), square_rows_f64(SQUARE_ARGS),
                  square_rows_f32_fast(SQUARE_ARGS), square_rows_f64_fast(SQUARE_ARGS))
}

/* h may be NULL (h = 1); pooled NULL (none) or rows values; sums NULL (none) or 3 * rows
 * doubles. */
#define STEP_ARGS x, fx, h, out, pooled, sums, rows, begin, end, inner, h_rows, relu, fma
int stepnet_euler_step(const void *x, const void *fx, const void *h, void *out, void *pooled,
                       double *sums, int64_t rows, int64_t inner,
                       int64_t h_rows, int relu, int fma, int dtype, int threads) {
    PARALLEL_ROWS(step_rows_f32(STEP_ARGS), step_rows_f64(STEP_ARGS),
                  step_rows_f32_fast(STEP_ARGS), step_rows_f64_fast(STEP_ARGS))
}
