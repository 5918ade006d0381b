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
 * stepnet_square_sums -- the stiffness recorder's norms of a state and of its update:
 *
 *     sum_a[r]    = sum_i a[r, i]^2
 *     sum_diff[r] = sum_i (b[r, i] - a[r, i])^2        (accumulated in double)
 *
 * ATen needs four passes (the norm of a, b - a written out, read back, its norm).
 *
 * Rows are shared out by OpenMP; loaded into a process that has imported torch, this uses
 * torch's own OpenMP runtime (the same libgomp), so its threads are torch's threads.
 */
#include <stdint.h>

/* x86-64: an AVX2 clone beside the baseline one, picked at load time by the CPU */
#if defined(__x86_64__) && defined(__GNUC__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

#define GATE_ROWS(NAME, T)                                                                \
    CLONES                                                                                \
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

GATE_ROWS(gate_rows_f32, float)
GATE_ROWS(gate_rows_f64, double)

#define SQUARE_ROWS(NAME, T)                                                              \
    CLONES                                                                                \
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

SQUARE_ROWS(square_rows_f32, float)
SQUARE_ROWS(square_rows_f64, double)

static int clamp_threads(int threads, int64_t rows) {
    if (threads < 1) threads = 1;
    return threads > rows ? (int)rows : threads;
}

/* dtype 0 is float32, 1 is float64; returns 0. */
int stepnet_gate_backward(const void *grad, const void *fx, const void *h, void *grad_fx,
                          void *row_sum, int64_t rows, int64_t inner, int64_t h_rows,
                          int dtype, int threads) {
    threads = clamp_threads(threads, rows);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < threads; ++t) {
        int64_t begin = rows * t / threads, end = rows * (t + 1) / threads;
        if (dtype == 1)
            gate_rows_f64(grad, fx, h, grad_fx, row_sum, begin, end, inner, h_rows);
        else
            gate_rows_f32(grad, fx, h, grad_fx, row_sum, begin, end, inner, h_rows);
    }
    return 0;
}

int stepnet_square_sums(const void *a, const void *b, double *sum_a, double *sum_diff,
                        int64_t rows, int64_t inner, int dtype, int threads) {
    threads = clamp_threads(threads, rows);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < threads; ++t) {
        int64_t begin = rows * t / threads, end = rows * (t + 1) / threads;
        if (dtype == 1)
            square_rows_f64(a, b, sum_a, sum_diff, begin, end, inner);
        else
            square_rows_f32(a, b, sum_a, sum_diff, begin, end, inner);
    }
    return 0;
}
