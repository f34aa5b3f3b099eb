/* CPU kernels for the small ops of a decode step, float32. The decode-path steps split their rows
 * across OpenMP threads (each row computed by one thread, so its bits never depend on the split).
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

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "common.h"

static inline float sum_of_squares(const float *a, int64_t n) { return dot(a, a, n); }


/* dst[j] = float32(src[j]) (+ bias[j]) for j < n; src is bfloat16 when src_is_bf16, else float32
 * (a matmul's output: torch's int4 kernel gives bfloat16, cpu/qgemm.c float32). */
static void load_row(const void *src, int src_is_bf16, const float *bias, float *dst, int64_t n) {
    if (src_is_bf16)
        for (int64_t j = 0; j < n; j++) dst[j] = bf16_to_f32(((const uint16_t *)src)[j]);
    else
        memcpy(dst, src, sizeof(float) * (size_t)n);
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

/* out[i] = torch.argmax(x[i]): the first index of the row's largest value, the first NaN where
 * there is one (torch counts NaN as the largest). Rows split across threads. torch's CPU argmax is
 * scalar: 0.65 ms for 16 rows of a 49k vocabulary on the 2-core VM, 0.21 ms here. */
static int64_t argmax_row(const float *x, int64_t cols) {
    int64_t j = 0;
    float top = -INFINITY;
#ifdef __AVX512F__
    __m512 lanes = _mm512_set1_ps(-INFINITY);
    __mmask16 nan = 0;
    for (; j + 16 <= cols; j += 16) {
        const __m512 v = _mm512_loadu_ps(x + j);
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        lanes = _mm512_max_ps(lanes, v);
    }
    top = nan ? NAN : _mm512_reduce_max_ps(lanes);
#endif
    for (; j < cols; j++)
        if (x[j] != x[j] || x[j] > top) top = x[j];
    const int find_nan = top != top;
    for (j = 0; j < cols; j++)
        if (find_nan ? x[j] != x[j] : x[j] == top) return j;
    return 0; /* cols == 0 */
}

void argmax_rows(const float *x, int64_t x_stride, int64_t rows, int64_t cols, int64_t *out) {
#pragma omp parallel for schedule(static) if (rows > 1)
    for (int64_t i = 0; i < rows; i++) out[i] = argmax_row(x + i * x_stride, cols);
}

/* decode_attention lives in decode_attention.c (one query token per sequence over the paged cache). */
int decode_attention(const float *q, int64_t q_stride, const void *kv_cache, int64_t num_slots,
                     const int32_t *block_table, int64_t block_table_stride, const int32_t *seq_lens, float *out,
                     int64_t num_seqs, int64_t q_heads, int64_t kv_heads, int64_t head_size, int64_t block_size,
                     float scale, int kv_bf16);

/* ------------------------------------------------------------------ the decode fast path
 * The steps of one decoder layer between its int4 matmuls (which take and give bfloat16), each
 * one call. Each computes exactly what the module path computes with the functions above plus
 * torch's dtype conversions (x.to(bfloat16) before an int4 matmul, .to(float32) and the bias
 * after it), in the same order, so both paths give the same bits. */

/* h = x [+ bias] [+ residual] (x float32 or bfloat16, bias float32), written to residual
 * [rows, hidden]; then the RMSNorm of h, to out_bf16 or out_f32 (one of them). Returns 0, or -1 when
 * scratch memory cannot be allocated. */
int add_rms_norm_step(const void *x, int x_is_bf16, int64_t x_stride, const float *bias, float *residual,
                      int add_residual, const float *weight, uint16_t *out_bf16, float *out_f32, int64_t rows,
                      int64_t hidden, float eps) {
    const size_t element = x_is_bf16 ? sizeof(uint16_t) : sizeof(float);
    int status = 0;
#pragma omp parallel if (rows > 1) reduction(min : status)
    {
        float *loaded = malloc(sizeof(float) * (size_t)hidden);
        status = loaded == NULL ? -1 : 0;
#pragma omp for schedule(static)
        for (int64_t i = 0; i < rows; i++) {
            if (loaded == NULL) continue;
            float *h = residual + i * hidden;
            load_row((const char *)x + (size_t)(i * x_stride) * element, x_is_bf16, bias, loaded, hidden);
            if (add_residual)
                for (int64_t j = 0; j < hidden; j++) h[j] = loaded[j] + h[j];
            else
                for (int64_t j = 0; j < hidden; j++) h[j] = loaded[j];
            const float inv = inverse_rms(h, hidden, eps);
            if (out_bf16 != NULL)
                for (int64_t j = 0; j < hidden; j++) out_bf16[i * hidden + j] = f32_to_bf16(weight[j] * (h[j] * inv));
            else
                for (int64_t j = 0; j < hidden; j++) out_f32[i * hidden + j] = weight[j] * (h[j] * inv);
        }
        free(loaded);
    }
    return status;
}

/* out_bf16[i] = bf16(silu(g) * u), g | u = float32(x[i]) [+ bias], x bfloat16 or float32
 * [rows, 2 * inter]. Returns 0, or -1 when scratch memory cannot be allocated. */
int silu_and_mul_step(const void *x, int x_is_bf16, int64_t x_stride, const float *bias, uint16_t *out, int64_t rows,
                      int64_t inter) {
    const size_t element = x_is_bf16 ? sizeof(uint16_t) : sizeof(float);
    int status = 0;
#pragma omp parallel if (rows > 1) reduction(min : status)
    {
        float *row = malloc(sizeof(float) * (size_t)(3 * inter));
        status = row == NULL ? -1 : 0;
#pragma omp for schedule(static)
        for (int64_t i = 0; i < rows; i++) {
            if (row == NULL) continue;
            float *activated = row + 2 * inter;
            load_row((const char *)x + (size_t)(i * x_stride) * element, x_is_bf16, bias, row, 2 * inter);
            for (int64_t j = 0; j < inter; j++) activated[j] = silu_times(row[j], row[j + inter]);
            narrow_row(activated, out + i * inter, inter);
        }
        free(row);
    }
    return status;
}

/* One decode step of attention from the qkv projection (bfloat16 or float32 rows): per token,
 * q | k | v = float32(qkv[t]) [+ bias]; q and k rotated (neox) at positions[t]; k and v stored at slots[t]; then every
 * token's query attends over its sequence (token t is sequence t), to out_bf16 [T, Hq * D]. The
 * cache holds float32, or bfloat16 when kv_bf16 (k and v rounded to it as torch rounds).
 * Returns 0, or -1 when scratch memory cannot be allocated. */
int attention_step(const void *qkv, int qkv_is_bf16, int64_t qkv_stride, const float *bias, const int64_t *positions,
                   const float *cos_sin, int64_t rot_dim, void *kv_cache, int kv_bf16, int64_t num_slots,
                   const int64_t *slots, const int32_t *block_table, int64_t block_table_stride,
                   const int32_t *seq_lens, uint16_t *out, int64_t tokens, int64_t q_heads, int64_t kv_heads,
                   int64_t head_size, int64_t block_size, float scale) {
    const int64_t q_width = q_heads * head_size, kv_width = kv_heads * head_size;
    const int64_t width = q_width + 2 * kv_width;
    const size_t element = qkv_is_bf16 ? sizeof(uint16_t) : sizeof(float);
    float *queries = malloc(sizeof(float) * (size_t)(tokens * q_width));
    float *context = malloc(sizeof(float) * (size_t)(tokens * q_width));
    int status = queries == NULL || context == NULL ? -1 : 0;
    if (status != 0) goto done;
    /* tokens split across threads: each writes its own query row and its own cache slot */
#pragma omp parallel if (tokens > 1) reduction(min : status)
    {
        float *row = malloc(sizeof(float) * (size_t)(width + kv_width));
        status = row == NULL ? -1 : 0;
        float *rotated_k = row == NULL ? NULL : row + width;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tokens; t++) {
            if (row == NULL) continue;
            load_row((const char *)qkv + (size_t)(t * qkv_stride) * element, qkv_is_bf16, bias, row, width);
            const float *cos = cos_sin + positions[t] * rot_dim, *sin = cos + rot_dim / 2;
            for (int64_t h = 0; h < q_heads; h++)
                rotate_head(row + h * head_size, cos, sin, queries + t * q_width + h * head_size, head_size, rot_dim);
            for (int64_t h = 0; h < kv_heads; h++)
                rotate_head(row + q_width + h * head_size, cos, sin, rotated_k + h * head_size, head_size, rot_dim);
            if (kv_bf16) {
                if (slots[t] >= 0) {
                    uint16_t *keys = kv_cache, *values = keys + num_slots * kv_width;
                    narrow_row(rotated_k, keys + slots[t] * kv_width, kv_width);
                    narrow_row(row + q_width + kv_width, values + slots[t] * kv_width, kv_width);
                }
            } else {
                store_kv(rotated_k, kv_width, row + q_width + kv_width, kv_width, kv_cache, num_slots, slots + t, 1,
                         kv_width);
            }
        }
        free(row);
    }
    if (status != 0) goto done;
    status = decode_attention(queries, q_width, kv_cache, num_slots, block_table, block_table_stride, seq_lens, context,
                              tokens, q_heads, kv_heads, head_size, block_size, scale, kv_bf16);
    if (status == 0) narrow_row(context, out, tokens * q_width);
done:
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
