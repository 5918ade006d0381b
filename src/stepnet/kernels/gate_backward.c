/* Backward of the gated Euler step y = x + fx * h for a channel gate, in one pass.
 *
 * grad and fx are contiguous [rows, inner] (rows = B * C, inner = H * W), h holds h_rows
 * values (B * C for a [B, C, 1, 1] gate, C for [1, C, 1, 1]) and row r uses h[r % h_rows]:
 *
 *     grad_fx[r, i] = grad[r, i] * h[r % h_rows]
 *     row_sum[r]    = sum_i grad[r, i] * fx[r, i]      (grad_h before summing over the batch)
 *
 * ATen needs three full passes for the same (grad * fx, its sum, grad * h). Rows are shared
 * out by OpenMP; loaded into a process that has imported torch, this uses torch's own OpenMP
 * runtime (the same libgomp), so its threads are torch's threads.
 */
#include <stdint.h>

/* x86-64: an AVX2 clone beside the baseline one, picked at load time by the CPU */
#if defined(__x86_64__) && defined(__GNUC__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

#define ROWS(NAME, T)                                                                     \
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

ROWS(rows_f32, float)
ROWS(rows_f64, double)

/* Returns 0; dtype 0 is float32, 1 is float64. */
int stepnet_gate_backward(const void *grad, const void *fx, const void *h, void *grad_fx,
                          void *row_sum, int64_t rows, int64_t inner, int64_t h_rows,
                          int dtype, int threads) {
    if (threads < 1) threads = 1;
    if (threads > rows) threads = (int)rows;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < threads; ++t) {
        int64_t begin = rows * t / threads, end = rows * (t + 1) / threads;
        if (dtype == 1)
            rows_f64(grad, fx, h, grad_fx, row_sum, begin, end, inner, h_rows);
        else
            rows_f32(grad, fx, h, grad_fx, row_sum, begin, end, inner, h_rows);
    }
    return 0;
}
