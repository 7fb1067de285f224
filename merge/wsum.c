/* The fused weighted sum out[i] = sum_j w[j] * src[j][i] for merge/native.py.
 *
 * fp32 arithmetic in L1-sized blocks: the first source is widened and multiplied, every
 * further source is added with one fused multiply-add (as torch's `add_(x, alpha=w)`
 * does), and the block is rounded once into the output dtype (round to nearest even,
 * NaN -> 0x7FC0 for bfloat16, as torch rounds). Each source is read once and the output
 * written once. Compiled once per machine by merge/native.py with -O3 -march=native.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__F16C__)
#include <immintrin.h>
#endif

enum { F32 = 0, BF16 = 1, F16 = 2 };
#define BLOCK 2048

#if defined(__F16C__)
static inline float f16_to_f32(uint16_t h) { return _cvtsh_ss(h); }
static inline uint16_t f32_to_f16(float f) { return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }
static inline void f16_block_to_f32(float *restrict dst, const uint16_t *restrict src, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = f16_to_f32(src[i]);
}
static inline void f32_block_to_f16(uint16_t *restrict dst, const float *restrict src, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) dst[i] = f32_to_f16(src[i]);
}
#define HAVE_F16 1
#elif defined(__aarch64__)
static inline void f16_block_to_f32(float *restrict dst, const uint16_t *restrict src, int64_t n) {
    const __fp16 *s = (const __fp16 *)src;
    for (int64_t i = 0; i < n; i++) dst[i] = (float)s[i];
}
static inline void f32_block_to_f16(uint16_t *restrict dst, const float *restrict src, int64_t n) {
    __fp16 *d = (__fp16 *)dst;
    for (int64_t i = 0; i < n; i++) d[i] = (__fp16)src[i];
}
#define HAVE_F16 1
#else
#define HAVE_F16 0
#endif

static inline void widen(float *restrict acc, const void *src, int type, float w, int64_t n, int first) {
    if (type == F32) {
        const float *s = (const float *)src;
        if (first)
            for (int64_t i = 0; i < n; i++) acc[i] = s[i] * w;
        else
            for (int64_t i = 0; i < n; i++) acc[i] = fmaf(s[i], w, acc[i]);
    } else if (type == BF16) {
        const uint16_t *s = (const uint16_t *)src;
        if (first)
            for (int64_t i = 0; i < n; i++) {
                uint32_t u = (uint32_t)s[i] << 16;
                float f;
                memcpy(&f, &u, 4);
                acc[i] = f * w;
            }
        else
            for (int64_t i = 0; i < n; i++) {
                uint32_t u = (uint32_t)s[i] << 16;
                float f;
                memcpy(&f, &u, 4);
                acc[i] = fmaf(f, w, acc[i]);
            }
    } else {
#if HAVE_F16
        float tmp[BLOCK] __attribute__((aligned(64)));
        f16_block_to_f32(tmp, (const uint16_t *)src, n);
        if (first)
            for (int64_t i = 0; i < n; i++) acc[i] = tmp[i] * w;
        else
            for (int64_t i = 0; i < n; i++) acc[i] = fmaf(tmp[i], w, acc[i]);
#endif
    }
}

static inline void narrow(void *dst, int type, const float *restrict acc, int64_t n) {
    if (type == F32) {
        memcpy(dst, acc, (size_t)n * 4);
    } else if (type == BF16) {
        uint16_t *d = (uint16_t *)dst;
        for (int64_t i = 0; i < n; i++) {
            uint32_t u;
            memcpy(&u, &acc[i], 4);
            uint16_t rounded = (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
            d[i] = (u & 0x7FFFFFFFu) > 0x7F800000u ? (uint16_t)0x7FC0 : rounded;
        }
    } else {
#if HAVE_F16
        f32_block_to_f16((uint16_t *)dst, acc, n);
#endif
    }
}

/* 1 when this build handles float16 (F16C on x86, native on aarch64). */
int sweep_has_f16(void) { return HAVE_F16; }

/* Elements [start, stop) of out = sum_j weights[j] * srcs[j]; types: 0 fp32, 1 bf16, 2 fp16.
 * Returns 0, or -1 for a dtype this build cannot handle (nothing written). */
int sweep_weighted_sum(int k, const void *const *srcs, const int *types, const float *weights, void *out, int out_type, int64_t start, int64_t stop) {
    static const int itemsize[3] = {4, 2, 2};
    for (int j = 0; j < k; j++)
        if (types[j] < 0 || types[j] > 2 || (types[j] == F16 && !HAVE_F16)) return -1;
    if (k < 1 || out_type < 0 || out_type > 2 || (out_type == F16 && !HAVE_F16)) return -1;
    float acc[BLOCK] __attribute__((aligned(64)));
    for (int64_t b = start; b < stop; b += BLOCK) {
        int64_t n = stop - b < BLOCK ? stop - b : BLOCK;
        for (int j = 0; j < k; j++) widen(acc, (const char *)srcs[j] + b * itemsize[types[j]], types[j], weights[j], n, j == 0);
        narrow((char *)out + b * itemsize[out_type], out_type, acc, n);
    }
    return 0;
}
