/* Small inline helpers shared by the CPU kernels (decode_ops.c, decode_attention.c, qgemm.c):
 * a thread's share of a parallel loop, float32 reductions with 16 independent partial sums, min/max, bfloat16 conversions as torch
 * rounds them, and a vectorizable e^x. */

#ifndef LOCALLLM_CPU_COMMON_H
#define LOCALLLM_CPU_COMMON_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define LANES 16 /* independent partial sums: one AVX-512 register of floats */

/* This thread's share [*start, *end) of `items` inside a parallel region: one contiguous, equal
 * run (36 on 2 threads: 18 each), all of them outside one. */
static inline void thread_share(int64_t items, int64_t *start, int64_t *end) {
#ifdef _OPENMP
    const int64_t team = omp_get_num_threads(), me = omp_get_thread_num();
#else
    const int64_t team = 1, me = 0;
#endif
    *start = items * me / team;
    *end = items * (me + 1) / team;
}

static inline float dot(const float *a, const float *b, int64_t n) {
    float acc[LANES] = {0};
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += a[j + l] * b[j + l];
    for (int width = LANES / 2; width > 0; width /= 2) /* a tree: shuffles, not 16 scalar adds */
        for (int l = 0; l < width; l++) acc[l] += acc[l + width];
    float s = acc[0];
    for (; j < n; j++) s += a[j] * b[j];
    return s;
}

static inline float sum(const float *a, int64_t n) {
    float acc[LANES] = {0};
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += a[j + l];
    float s = 0.0f;
    for (int l = 0; l < LANES; l++) s += acc[l];
    for (; j < n; j++) s += a[j];
    return s;
}

/* min and max of n values at stride `stride`; 16 lanes when contiguous (vectorizes: the float
 * comparisons below are exactly vminps / vmaxps). */
static inline void min_max(const float *src, int64_t n, int64_t stride, float *low_out, float *high_out) {
    float low = src[0], high = src[0];
    int64_t j = 0;
    if (stride == 1 && n >= LANES) {
        float lo[LANES], hi[LANES];
        for (int l = 0; l < LANES; l++) lo[l] = hi[l] = src[l];
        for (j = LANES; j + LANES <= n; j += LANES)
            for (int l = 0; l < LANES; l++) {
                const float v = src[j + l];
                lo[l] = v < lo[l] ? v : lo[l];
                hi[l] = v > hi[l] ? v : hi[l];
            }
        for (int l = 0; l < LANES; l++) {
            low = lo[l] < low ? lo[l] : low;
            high = hi[l] > high ? hi[l] : high;
        }
    }
    for (; j < n; j++) {
        const float v = src[j * stride];
        low = v < low ? v : low;
        high = v > high ? v : high;
    }
    *low_out = low;
    *high_out = high;
}


/* bfloat16 <-> float32 as torch converts: widening is exact; narrowing rounds to nearest even.
 * Bit casts through memcpy: the loops over them vectorize. */
static inline float bf16_to_f32(uint16_t v) {
    const uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : rounded); /* NaN stays NaN */
}

/* e^x within 2.5e-7 relative (a few ulp), branch-free so that loops over it vectorize (libm's
 * expf is a call per element: 1536 of them per layer and token in SiLU alone). Cody-Waite
 * reduction x = n ln2 + r, |r| <= ln2 / 2, a degree-6 Taylor polynomial for e^r, and 2^n built in
 * the exponent bits. Inputs are clamped to [-87.3, 88]: below, the result is ~1e-38 instead of a
 * subnormal or 0 (softmax weights and SiLU gates that small change nothing in float32 sums);
 * above, e^x is within a factor 2 of float32's largest. */
static inline float exp_approx(float x) {
    x = x < -87.3f ? -87.3f : (x > 88.0f ? 88.0f : x);
    const float n = rintf(x * 1.44269504088896341f);
    const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { uint32_t u; float f; } scale = {.u = (uint32_t)((int32_t)n + 127) << 23};
    return p * scale.f;
}

#endif
