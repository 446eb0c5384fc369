// The hub's bf16 matrix product for CPUs without bf16 kernels (AVX2): demo/bf16kernel.py builds and calls it.
//
// y[r][n] = sum_k x[r][k] * w[n][k] (+ bias[n]): x, w, bias and y in bf16, products summed in float32.
// Each weight block is widened to float32 once and used for up to 4 rows, so a few rows cost little more than
// one (PyTorch's fallback widens the weights again for every row). Every (row, feature) sum runs in the
// same order whatever the other rows are: a row gets the same bits in any batch as alone.
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>

static inline float hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}
static inline float bf16_to_f32(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 0x40);  // NaN stays NaN
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}


#define PREFETCH 2048  // elements (4 KiB) ahead of the weights in use: the next rows arrive while these are summed
// 16 bf16 weights as two float32 vectors: elements 0-3, 8-11 and 4-7, 12-15 (unpacking against zero puts
// each bf16 in the high half of a 32-bit lane); x is widened once into the same order.
static inline void widen16(const uint16_t *p, __m256 *lo, __m256 *hi) {
    __m256i v = _mm256_loadu_si256((const __m256i *)p), z = _mm256_setzero_si256();
    *lo = _mm256_castsi256_ps(_mm256_unpacklo_epi16(z, v));
    *hi = _mm256_castsi256_ps(_mm256_unpackhi_epi16(z, v));
}
#define BLOCK(RB, NB) \
static void block_##RB##_##NB(const float *x, const uint16_t *w, float *acc_out, int K) { \
    __m256 acc[RB][NB]; \
    for (int r = 0; r < RB; r++) for (int j = 0; j < NB; j++) acc[r][j] = _mm256_setzero_ps(); \
    for (int k = 0; k < K; k += 16) { \
        __m256 wl[NB], wh[NB]; \
        for (int j = 0; j < NB; j++) { _mm_prefetch((const char *)(w + (size_t)j * K + k + PREFETCH), _MM_HINT_T0); widen16(w + (size_t)j * K + k, &wl[j], &wh[j]); } \
        for (int r = 0; r < RB; r++) { \
            __m256 xl = _mm256_loadu_ps(x + (size_t)r * K + k), xh = _mm256_loadu_ps(x + (size_t)r * K + k + 8); \
            for (int j = 0; j < NB; j++) { acc[r][j] = _mm256_fmadd_ps(xl, wl[j], acc[r][j]); acc[r][j] = _mm256_fmadd_ps(xh, wh[j], acc[r][j]); } \
        } \
    } \
    for (int r = 0; r < RB; r++) for (int j = 0; j < NB; j++) acc_out[r * NB + j] = hsum(acc[r][j]); \
}
BLOCK(1, 4) BLOCK(2, 4) BLOCK(3, 2) BLOCK(4, 2) BLOCK(1, 1) BLOCK(2, 1) BLOCK(3, 1) BLOCK(4, 1)

static void rows_block(int rb, const float *x, const uint16_t *w, float *out, int K, int nb) {
    // nb: 4 (rb<=2), 2 (rb>2) or 1 (the tail)
    if (nb == 1) {
        switch (rb) { case 1: block_1_1(x, w, out, K); break; case 2: block_2_1(x, w, out, K); break;
                      case 3: block_3_1(x, w, out, K); break; default: block_4_1(x, w, out, K); }
    } else if (rb == 1) block_1_4(x, w, out, K);
    else if (rb == 2) block_2_4(x, w, out, K);
    else if (rb == 3) block_3_2(x, w, out, K);
    else block_4_2(x, w, out, K);
}

// threads: PyTorch's thread count, passed in (an OpenMP thread count set in one thread is not seen by others)
int hub_bf16_linear(const uint16_t *x16, const uint16_t *w, const uint16_t *bias, uint16_t *y, int R, int N, int K,
                    int threads) {
    if (K % 16) return 1;
    float *x = (float *)malloc(sizeof(float) * (size_t)R * K);
    if (!x) return 2;
    static const int order[16] = {0,1,2,3,8,9,10,11,4,5,6,7,12,13,14,15};
    for (size_t i = 0; i < (size_t)R * K; i += 16) for (int j = 0; j < 16; j++) x[i + j] = bf16_to_f32(x16[i + order[j]]);
    const int step = 4;  // features per task, enough for every block shape
    const int tasks = (N + step - 1) / step;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int t = 0; t < tasks; t++) {
        int n0 = t * step, n1 = n0 + step < N ? n0 + step : N;
        float out[16];
        for (int r0 = 0; r0 < R; r0 += 4) {
            int rb = R - r0 < 4 ? R - r0 : 4;
            int full = rb <= 2 ? 4 : 2;
            for (int n = n0, nb; n < n1; n += nb) {
                nb = n + full <= n1 ? full : 1;  // the features left over at the end go one by one
                rows_block(rb, x + (size_t)r0 * K, w + (size_t)n * K, out, K, nb);
                for (int r = 0; r < rb; r++) for (int j = 0; j < nb; j++) {
                    float v = out[r * nb + j] + (bias ? bf16_to_f32(bias[n + j]) : 0.0f);
                    y[(size_t)(r0 + r) * N + n + j] = f32_to_bf16(v);
                }
            }
        }
    }
    free(x);
    return 0;
}
