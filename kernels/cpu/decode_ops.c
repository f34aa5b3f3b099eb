/* CPU kernels for the small ops of a decode step, float32, single-threaded.
 *
 * Why: on the CPU a decode step of a small model is bound by op count, not arithmetic. Each torch
 * op costs a few microseconds of dispatch; attention alone (gather, views, SDPA) took ~75 us per
 * layer for ~0.1 MFLOP of work. Each function here is one call from Python (ctypes, ~2 us).
 *
 * Semantics are those of kernels/reference.py (the ground truth the tests compare against).
 * Built with -ffp-contract=off: no fused multiply-adds, so elementwise results (rotary, the
 * products of rms_norm) round exactly as torch's float32 ops do; reductions sum in a different
 * order than torch, so they agree to rounding, not bit for bit.
 *
 * Layouts: row-major, every "row stride" in elements; the KV cache of one layer is
 * [2, num_blocks, block_size, Hkv, D] contiguous, slot = block_id * block_size + offset.
 */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 16 /* independent partial sums: one AVX-512 register of floats */

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

static inline float sum_of_squares(const float *a, int64_t n) { return dot(a, a, n); }

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

/* dst[j] = float32(src[j]) (+ bias[j]) for j < n. */
static void widen_row(const uint16_t *src, const float *bias, float *dst, int64_t n) {
    for (int64_t j = 0; j < n; j++) dst[j] = bf16_to_f32(src[j]);
    if (bias != NULL)
        for (int64_t j = 0; j < n; j++) dst[j] = dst[j] + bias[j];
}

static void narrow_row(const float *src, uint16_t *dst, int64_t n) {
    for (int64_t j = 0; j < n; j++) dst[j] = f32_to_bf16(src[j]);
}

/* Exported for the tests: the conversion every bfloat16 output of the fast path goes through. */
void round_to_bf16(const float *x, uint16_t *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = f32_to_bf16(x[i]);
}

/* The 1/rms of one row, as the reference computes it: 1 / sqrt(mean(h^2) + eps). */
static inline float inverse_rms(const float *h, int64_t hidden, float eps) {
    return 1.0f / sqrtf(sum_of_squares(h, hidden) / (float)hidden + eps);
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

static inline float silu_times(float gate, float up) { return gate / (1.0f + exp_approx(-gate)) * up; }

/* out = the neox rotation of the first rot_dim dims of x (one head), the rest copied. */
static inline void rotate_head(const float *x, const float *cos, const float *sin, float *out, int64_t head_size,
                               int64_t rot_dim) {
    const int64_t half = rot_dim / 2;
    for (int64_t j = 0; j < half; j++) {
        /* the reference's x * cat(cos, cos) + cat(x2, x1) * cat(-sin, sin), term by term */
        out[j] = x[j] * cos[j] + x[j + half] * -sin[j];
        out[j + half] = x[j + half] * cos[j] + x[j] * sin[j];
    }
    for (int64_t j = rot_dim; j < head_size; j++) out[j] = x[j];
}

/* out[i] = weight * (h * 1/sqrt(mean(h^2) + eps)), h = x[i] (+ residual[i], also written to
 * new_residual[i] when residual is given). */
void rms_norm(const float *x, int64_t x_stride, const float *residual, int64_t residual_stride,
              const float *weight, float *out, float *new_residual, int64_t rows, int64_t hidden, float eps) {
    for (int64_t i = 0; i < rows; i++) {
        const float *h = x + i * x_stride;
        if (residual != NULL) {
            const float *r = residual + i * residual_stride;
            float *nr = new_residual + i * hidden;
            for (int64_t j = 0; j < hidden; j++) nr[j] = h[j] + r[j];
            h = nr;
        }
        float inv = inverse_rms(h, hidden, eps);
        float *o = out + i * hidden;
        for (int64_t j = 0; j < hidden; j++) o[j] = weight[j] * (h[j] * inv);
    }
}

/* out[i] = silu(x[i, :I]) * x[i, I:], silu(g) = g / (1 + exp(-g)). */
void silu_and_mul(const float *x, int64_t x_stride, float *out, int64_t rows, int64_t inter) {
    for (int64_t i = 0; i < rows; i++) {
        const float *gate = x + i * x_stride, *up = gate + inter;
        float *o = out + i * inter;
        for (int64_t j = 0; j < inter; j++) o[j] = silu_times(gate[j], up[j]);
    }
}

/* Neox-style rotary of the first rot_dim dims of every head (pairs i, i + rot_dim / 2), the rest
 * copied. q [T, Hq*D] and k [T, Hkv*D] rows (any row strides) -> out [T, (Hq + Hkv) * D]
 * contiguous: the rotated q then the rotated k of each token. cos_sin [max_pos, rot_dim]. */
void rotary_neox(const int64_t *positions, const float *q, int64_t q_stride, const float *k, int64_t k_stride,
                 const float *cos_sin, float *out, int64_t tokens, int64_t q_heads, int64_t k_heads,
                 int64_t head_size, int64_t rot_dim) {
    const int64_t width = (q_heads + k_heads) * head_size;
    for (int64_t t = 0; t < tokens; t++) {
        const float *cos = cos_sin + positions[t] * rot_dim, *sin = cos + rot_dim / 2;
        for (int64_t h = 0; h < q_heads + k_heads; h++) {
            const float *x = h < q_heads ? q + t * q_stride + h * head_size : k + t * k_stride + (h - q_heads) * head_size;
            rotate_head(x, cos, sin, out + t * width + h * head_size, head_size, rot_dim);
        }
    }
}

/* kv_cache[0 / 1, slot] = key / value row of each token; width = Hkv * D. */
void store_kv(const float *key, int64_t key_stride, const float *value, int64_t value_stride, float *kv_cache,
              int64_t num_slots, const int64_t *slots, int64_t tokens, int64_t width) {
    float *keys = kv_cache, *values = kv_cache + num_slots * width;
    for (int64_t t = 0; t < tokens; t++) {
        if (slots[t] < 0) continue;
        memcpy(keys + slots[t] * width, key + t * key_stride, width * sizeof(float));
        memcpy(values + slots[t] * width, value + t * value_stride, width * sizeof(float));
    }
}

/* One query token per sequence, at its last position: out[s, h] = softmax(q[s, h] . K^T * scale) V
 * over positions 0 .. seq_lens[s] - 1 of sequence s, read through its block table row. Query head
 * h reads kv head h / (Hq / Hkv). q [S, Hq, D] with row stride q_stride; out [S, Hq, D] contiguous.
 * A sequence of length 0 gives zeros. Returns 0, or -1 when the scratch cannot be allocated. */
int decode_attention(const float *q, int64_t q_stride, const float *kv_cache, int64_t num_slots,
                     const int32_t *block_table, int64_t block_table_stride, const int32_t *seq_lens, float *out,
                     int64_t num_seqs, int64_t q_heads, int64_t kv_heads, int64_t head_size, int64_t block_size,
                     float scale) {
    const int64_t group = q_heads / kv_heads, width = kv_heads * head_size;
    const float *keys = kv_cache, *values = kv_cache + num_slots * width;
    int64_t longest = 0;
    for (int64_t s = 0; s < num_seqs; s++) longest = seq_lens[s] > longest ? seq_lens[s] : longest;
    float *scores = malloc(sizeof(float) * (size_t)(group * (longest > 0 ? longest : 1)));
    int64_t *slot_of = malloc(sizeof(int64_t) * (size_t)(longest > 0 ? longest : 1));
    if (scores == NULL || slot_of == NULL) {
        free(scores);
        free(slot_of);
        return -1;
    }
    for (int64_t s = 0; s < num_seqs; s++) {
        const int64_t length = seq_lens[s];
        const int32_t *blocks = block_table + s * block_table_stride;
        for (int64_t p = 0; p < length; p++) slot_of[p] = (int64_t)blocks[p / block_size] * block_size + p % block_size;
        for (int64_t kvh = 0; kvh < kv_heads; kvh++) {
            const float *qs = q + s * q_stride + kvh * group * head_size;
            float *os = out + (s * q_heads + kvh * group) * head_size;
            memset(os, 0, sizeof(float) * (size_t)(group * head_size));
            if (length == 0) continue;
            /* scores: each key row is read once for the group's query heads */
            for (int64_t p = 0; p < length; p++) {
                const float *key = keys + slot_of[p] * width + kvh * head_size;
                for (int64_t g = 0; g < group; g++) scores[g * length + p] = dot(qs + g * head_size, key, head_size) * scale;
            }
            for (int64_t g = 0; g < group; g++) {
                float *row = scores + g * length, low, top;
                min_max(row, length, 1, &low, &top);
                for (int64_t p = 0; p < length; p++) row[p] = exp_approx(row[p] - top);
                const float norm = 1.0f / sum(row, length);
                for (int64_t p = 0; p < length; p++) row[p] *= norm;
            }
            for (int64_t p = 0; p < length; p++) {
                const float *value = values + slot_of[p] * width + kvh * head_size;
                for (int64_t g = 0; g < group; g++) {
                    const float weight = scores[g * length + p];
                    float *o = os + g * head_size;
                    for (int64_t d = 0; d < head_size; d++) o[d] += weight * value[d];
                }
            }
        }
    }
    free(scores);
    free(slot_of);
    return 0;
}

/* ------------------------------------------------------------------ the decode fast path
 * The steps of one decoder layer between its int4 matmuls (which take and give bfloat16), each
 * one call. Each computes exactly what the module path computes with the functions above plus
 * torch's dtype conversions (x.to(bfloat16) before an int4 matmul, .to(float32) and the bias
 * after it), in the same order, so both paths give the same bits. */

/* h = x [+ bias] [+ residual] (x float32 with no bias, or bfloat16 with an optional float32
 * bias), written to residual [rows, hidden]; then the RMSNorm of h, to out_bf16 or out_f32 (one of
 * them). Returns 0, or -1 when scratch memory cannot be allocated. */
int add_rms_norm_step(const void *x, int x_is_bf16, int64_t x_stride, const float *bias, float *residual,
                      int add_residual, const float *weight, uint16_t *out_bf16, float *out_f32, int64_t rows,
                      int64_t hidden, float eps) {
    float *widened = x_is_bf16 ? malloc(sizeof(float) * (size_t)hidden) : NULL;
    if (x_is_bf16 && widened == NULL) return -1;
    for (int64_t i = 0; i < rows; i++) {
        float *h = residual + i * hidden;
        const float *v = (const float *)x + i * x_stride;
        if (x_is_bf16) {
            widen_row((const uint16_t *)x + i * x_stride, bias, widened, hidden);
            v = widened;
        }
        if (add_residual)
            for (int64_t j = 0; j < hidden; j++) h[j] = v[j] + h[j];
        else
            for (int64_t j = 0; j < hidden; j++) h[j] = v[j];
        const float inv = inverse_rms(h, hidden, eps);
        if (out_bf16 != NULL)
            for (int64_t j = 0; j < hidden; j++) out_bf16[i * hidden + j] = f32_to_bf16(weight[j] * (h[j] * inv));
        else
            for (int64_t j = 0; j < hidden; j++) out_f32[i * hidden + j] = weight[j] * (h[j] * inv);
    }
    free(widened);
    return 0;
}

/* out_bf16[i] = bf16(silu(g) * u), g | u = float32(x[i]) [+ bias], x bfloat16 [rows, 2 * inter].
 * Returns 0, or -1 when scratch memory cannot be allocated. */
int silu_and_mul_step(const uint16_t *x, int64_t x_stride, const float *bias, uint16_t *out, int64_t rows,
                      int64_t inter) {
    float *row = malloc(sizeof(float) * (size_t)(3 * inter));
    if (row == NULL) return -1;
    float *activated = row + 2 * inter;
    for (int64_t i = 0; i < rows; i++) {
        widen_row(x + i * x_stride, bias, row, 2 * inter);
        for (int64_t j = 0; j < inter; j++) activated[j] = silu_times(row[j], row[j + inter]);
        narrow_row(activated, out + i * inter, inter);
    }
    free(row);
    return 0;
}

/* One decode step of attention from the qkv projection: per token, q | k | v = float32(qkv[t])
 * [+ bias]; q and k rotated (neox) at positions[t]; k and v stored at slots[t]; then every
 * token's query attends over its sequence (token t is sequence t), to out_bf16 [T, Hq * D].
 * Returns 0, or -1 when scratch memory cannot be allocated. */
int attention_step(const uint16_t *qkv, int64_t qkv_stride, const float *bias, const int64_t *positions,
                   const float *cos_sin, int64_t rot_dim, float *kv_cache, int64_t num_slots, const int64_t *slots,
                   const int32_t *block_table, int64_t block_table_stride, const int32_t *seq_lens, uint16_t *out,
                   int64_t tokens, int64_t q_heads, int64_t kv_heads, int64_t head_size, int64_t block_size,
                   float scale) {
    const int64_t q_width = q_heads * head_size, kv_width = kv_heads * head_size;
    const int64_t width = q_width + 2 * kv_width;
    float *row = malloc(sizeof(float) * (size_t)width);
    float *rotated_k = malloc(sizeof(float) * (size_t)kv_width);
    float *queries = malloc(sizeof(float) * (size_t)(tokens * q_width));
    float *context = malloc(sizeof(float) * (size_t)(tokens * q_width));
    int status = -1;
    if (row == NULL || rotated_k == NULL || queries == NULL || context == NULL) goto done;
    for (int64_t t = 0; t < tokens; t++) {
        widen_row(qkv + t * qkv_stride, bias, row, width);
        const float *cos = cos_sin + positions[t] * rot_dim, *sin = cos + rot_dim / 2;
        for (int64_t h = 0; h < q_heads; h++)
            rotate_head(row + h * head_size, cos, sin, queries + t * q_width + h * head_size, head_size, rot_dim);
        for (int64_t h = 0; h < kv_heads; h++)
            rotate_head(row + q_width + h * head_size, cos, sin, rotated_k + h * head_size, head_size, rot_dim);
        store_kv(rotated_k, kv_width, row + q_width + kv_width, kv_width, kv_cache, num_slots, slots + t, 1, kv_width);
    }
    if (decode_attention(queries, q_width, kv_cache, num_slots, block_table, block_table_stride, seq_lens, context,
                         tokens, q_heads, kv_heads, head_size, block_size, scale) != 0)
        goto done;
    narrow_row(context, out, tokens * q_width);
    status = 0;
done:
    free(row);
    free(rotated_k);
    free(queries);
    free(context);
    return status;
}

/* ------------------------------------------------------------------ load-time quantization
 * The torch definitions in localllm/layers/int4_cpu_linear.py and int8_cpu_lm_head.py, one pass
 * per group instead of a dozen torch passes over the whole weight (SmolLM2: ~0.9 s of start-up).
 * Same float32 operations in the same order (no FMA; rintf rounds half to even like torch.round),
 * so the same codes and scales. w [N, K] with any strides (a tied embedding is column-major). */

/* Asymmetric 4-bit groups: q [N, K] int32 in 0..15; scale_zero [N, K / group, 2] float32 holding
 * scale = max((max - min) / 15, 1e-12) and zero = min + 8 * scale. */
void quantize_int4_groups_f32(const float *w, int64_t row_stride, int64_t col_stride, int32_t *q, float *scale_zero,
                              int64_t n, int64_t k, int64_t group) {
    for (int64_t i = 0; i < n; i++) {
        for (int64_t g0 = 0; g0 < k; g0 += group) {
            const float *src = w + i * row_stride + g0 * col_stride;
            float low, high;
            min_max(src, group, col_stride, &low, &high);
            float scale = (high - low) / 15.0f;
            scale = scale < 1e-12f ? 1e-12f : scale;
            int32_t *codes = q + i * k + g0;
            for (int64_t j = 0; j < group; j++) {
                float c = rintf((src[j * col_stride] - low) / scale);
                codes[j] = (int32_t)(c < 0.0f ? 0.0f : (c > 15.0f ? 15.0f : c));
            }
            float *sz = scale_zero + (i * (k / group) + g0 / group) * 2;
            sz[0] = scale;
            sz[1] = low + 8.0f * scale;
        }
    }
}

/* Symmetric 8-bit groups (llama.cpp's Q8_0 rule): d = bf16(max|w| / 127) as bits [N, K / group];
 * q [N, K] int32 = clamp(round(w / max(d, 1e-30)), -127, 127). */
void quantize_int8_groups_f32(const float *w, int64_t row_stride, int64_t col_stride, int32_t *q, uint16_t *d_bits,
                              int64_t n, int64_t k, int64_t group) {
    for (int64_t i = 0; i < n; i++) {
        for (int64_t g0 = 0; g0 < k; g0 += group) {
            const float *src = w + i * row_stride + g0 * col_stride;
            float low, high;
            min_max(src, group, col_stride, &low, &high);
            const float top = -low > high ? -low : high;
            const uint16_t bits = f32_to_bf16(top / 127.0f);
            d_bits[i * (k / group) + g0 / group] = bits;
            float d = bf16_to_f32(bits);
            d = d < 1e-30f ? 1e-30f : d;
            int32_t *codes = q + i * k + g0;
            for (int64_t j = 0; j < group; j++) {
                const float c = rintf(src[j * col_stride] / d);
                codes[j] = (int32_t)(c < -127.0f ? -127.0f : (c > 127.0f ? 127.0f : c));
            }
        }
    }
}
