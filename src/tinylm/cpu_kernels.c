/* tinylm's CPU kernels for the matrix products of decoding: few rows of activations, float32 or int8
 * weights.
 *
 *   tinylm_f32_linear:  y (M, N) = x (M, K) @ w (N, K)^T                       x, w, y float32
 *   tinylm_int8_linear: y (M, N) = x (M, K) @ (q (N, K) * s (N,)[:, None])^T   q int8; x, s, y float32
 *
 * Decoding one token reads every weight once, so these products are bound by memory bandwidth: the work
 * is to stream the weight rows at the machine's full speed. Threads (OpenMP: PyTorch's own runtime, which
 * is already loaded) split the output rows into contiguous ranges; each weight row is read once and
 * multiplied with every activation row while it is in the L1 cache; the inner loop is a plain dot product
 * that the compiler vectorizes (tinylm/cpu_kernels.py builds this file with -march=native and lets the
 * compiler reorder the sums). Everything accumulates in float32.
 */
#include <math.h>
#include <stdint.h>

#define MAX_M 8 /* activation rows per call at most (tinylm/cpu_kernels.py refuses more) */

static inline float dot_f32(const float *restrict w, const float *restrict x, long K) {
    float acc = 0.0f;
    for (long k = 0; k < K; k++) acc += w[k] * x[k];
    return acc;
}

static inline float dot_int8(const int8_t *restrict q, const float *restrict x, long K) {
    float acc = 0.0f;
    for (long k = 0; k < K; k++) acc += (float)q[k] * x[k];
    return acc;
}

void tinylm_f32_linear(const float *restrict x, const float *restrict w, float *restrict y, long M, long N,
                       long K, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long n = 0; n < N; n++)
        for (long m = 0; m < M; m++) y[m * N + n] = dot_f32(w + n * K, x + m * K, K);
}

void tinylm_int8_linear(const float *restrict x, const int8_t *restrict q, const float *restrict s,
                        float *restrict y, long M, long N, long K, float eps, int threads) {
    /* eps > 0: the product takes RMS-normalized rows, x[m] / sqrt(mean(x[m]^2) + eps) (the norm's weight
       is folded into q's columns by tinylm.quantize); each thread computes the M row factors itself. */
    const long blocks = N / 4; /* four weight rows at a time */
#pragma omp parallel num_threads(threads)
    {
        float r[MAX_M];
        for (long m = 0; m < M; m++) {
            float ss = 0.0f;
            if (eps > 0.0f)
                for (long k = 0; k < K; k++) ss += x[m * K + k] * x[m * K + k];
            r[m] = eps > 0.0f ? 1.0f / sqrtf(ss / (float)K + eps) : 1.0f;
        }
#pragma omp for schedule(static)
        for (long b = 0; b < blocks; b++) {
            const int8_t *p = q + b * 4 * K;
            for (long m = 0; m < M; m++) {
                const float *xm = x + m * K;
                float a[4];
                for (int i = 0; i < 4; i++) a[i] = dot_int8(p + i * K, xm, K);
                for (int i = 0; i < 4; i++) y[m * N + b * 4 + i] = a[i] * s[b * 4 + i] * r[m];
            }
        }
#pragma omp single
        for (long n = blocks * 4; n < N; n++)
            for (long m = 0; m < M; m++) y[m * N + n] = dot_int8(q + n * K, x + m * K, K) * s[n] * r[m];
    }
}
