/* Decode attention on the paged KV cache, float32: one query token per sequence.
 *
 * Layouts as in decode_ops.c: the KV cache of one layer is [2, num_blocks, block_size, Hkv, D]
 * contiguous, slot = block_id * block_size + offset.
 *
 * Work split. Each sequence's positions are cut into chunks of CHUNK_POSITIONS (the last one
 * shorter); one work item is a (sequence, chunk). An item computes, for every query head, the
 * chunk's largest score m, the sum l of e^(score - m) and the unnormalized sum of
 * e^(score - m) * value; a second pass merges a (sequence, head)'s chunks in chunk order. Chunks
 * depend only on the sequence's own length, every item and every merge runs start to end on one
 * thread with a fixed instruction sequence, and nothing is shared between items: a sequence's
 * output is bit-identical whatever the batch around it and the number of threads. Short chunks
 * also spread one long sequence over all threads.
 *
 * Each thread takes an equal, contiguous run of items, so it knows its next one: while an item
 * computes, the next item's keys and values are prefetched into L2 (the cache is cold: each
 * layer's KV is read once per step). Measured on the 2-core Zen 4 VM, 16 sequences of 80
 * positions, 30 layers, cold cache: 5.0 ms per step before the prefetch and the register value
 * sums (chunk_values), 4.3-4.6 ms with the value sums alone, 3.8-4.3 ms with both; reading the
 * same bytes with no arithmetic takes ~3 ms.
 *
 * Memory order. An item reads
 * its rows position-major, every kv head of a few consecutive rows before the next rows, so DRAM
 * sees a nearly contiguous stream; walking one kv head's 1 / Hkv of every row instead runs at a
 * third of the bandwidth on Zen 4, software prefetch or not.
 */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "common.h"

#define CHUNK_POSITIONS 32 /* a multiple of 16; part of the numerics (changing it changes results, not their invariance) */
#define HEAD_TILE 4        /* query heads whose dot products accumulate in registers together */

/* Offset of each position's row (in floats, from the start of the keys or of the values) for the
 * positions start .. start + count - 1, walking the block table instead of dividing per position;
 * entries count .. CHUNK_POSITIONS - 1 repeat the last row, so that whole groups of rows can be
 * read (their scores are dropped and their weights are 0). */
static void chunk_row_offsets(const int32_t *blocks, int64_t start, int64_t count, int64_t block_size,
                              int64_t width, int64_t *row_offsets) {
    int64_t block = start / block_size, offset = start % block_size;
    for (int64_t p = 0; p < count; p++) {
        row_offsets[p] = ((int64_t)blocks[block] * block_size + offset) * width;
        if (++offset == block_size) {
            offset = 0;
            block++;
        }
    }
    for (int64_t p = count; p < CHUNK_POSITIONS; p++) row_offsets[p] = row_offsets[count - 1];
}

/* Every cache line of a chunk's keys and values, into L2 (a hint: it never faults). Rows of
 * width elements of element_size bytes. */
static void prefetch_chunk(const void *keys, const void *values, const int64_t *row_offsets, int64_t count,
                           int64_t width, int64_t element_size) {
    for (int64_t p = 0; p < count; p++)
        for (int64_t byte = 0; byte < width * element_size; byte += 64) {
            __builtin_prefetch((const char *)keys + row_offsets[p] * element_size + byte, 0, 2);
            __builtin_prefetch((const char *)values + row_offsets[p] * element_size + byte, 0, 2);
        }
}

#define ALWAYS_INLINE static inline __attribute__((always_inline))

#ifdef __AVX512F__

/* Lane j of the result is the sum of the 16 lanes of v[j]: a transpose by unpacks and 128-bit
 * shuffles, 45 instructions for 16 dot products instead of a reduction each. */
ALWAYS_INLINE __m512 horizontal_sums16(const __m512 *v) {
    __m512 quads[4];
    for (int i = 0; i < 4; i++) {
        const __m512 *w = v + 4 * i;
        const __m512 t0 = _mm512_add_ps(_mm512_unpacklo_ps(w[0], w[1]), _mm512_unpackhi_ps(w[0], w[1]));
        const __m512 t1 = _mm512_add_ps(_mm512_unpacklo_ps(w[2], w[3]), _mm512_unpackhi_ps(w[2], w[3]));
        const __m512d a = _mm512_castps_pd(t0), b = _mm512_castps_pd(t1);
        /* each 128-bit lane L: [sum_L(w0), sum_L(w1), sum_L(w2), sum_L(w3)] */
        quads[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    const __m512 x0 = _mm512_add_ps(_mm512_shuffle_f32x4(quads[0], quads[1], 0x88),
                                    _mm512_shuffle_f32x4(quads[0], quads[1], 0xdd));
    const __m512 x1 = _mm512_add_ps(_mm512_shuffle_f32x4(quads[2], quads[3], 0x88),
                                    _mm512_shuffle_f32x4(quads[2], quads[3], 0xdd));
    return _mm512_add_ps(_mm512_shuffle_f32x4(x0, x1, 0x88), _mm512_shuffle_f32x4(x0, x1, 0xdd));
}

/* exp_approx on 16 lanes: the same reduction and polynomial, with fused multiply-adds. */
ALWAYS_INLINE __m512 exp_approx16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f),
                                     _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x));
    __m512 p = _mm512_set1_ps(1.0f / 720.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    const __m512i two_to_n = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(two_to_n));
}

static inline __mmask16 first_lanes(int64_t n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1); }

/* Cache elements index .. index + 15 (those in mask; the rest 0) as float32: bfloat16 widens exactly. */
ALWAYS_INLINE __m512 kv_load(const void *base, int64_t index, int bf16, __mmask16 mask) {
    if (bf16)
        return _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, (const uint16_t *)base + index)), 16));
    return _mm512_maskz_loadu_ps(mask, (const float *)base + index);
}

/* Lane vectors of the dot products of `heads` query heads (a constant after inlining) with 4
 * consecutive rows: partial[h * 16 + j] for row j0 + j. */
ALWAYS_INLINE void dot_lanes_4rows(const float *queries, const void *keys, const int64_t key_rows[4], int64_t head_size,
                                   int heads, int bf16, __m512 *partial) {
    const int64_t full = head_size & ~(int64_t)15;
    const __mmask16 tail = first_lanes(head_size - full);
    __m512 acc[4][HEAD_TILE];
    for (int j = 0; j < 4; j++)
        for (int h = 0; h < heads; h++) acc[j][h] = _mm512_setzero_ps();
    for (int64_t d = 0; d < full; d += 16) {
        __m512 k[4];
        for (int j = 0; j < 4; j++) k[j] = kv_load(keys, key_rows[j] + d, bf16, 0xffff);
        for (int h = 0; h < heads; h++) {
            const __m512 qv = _mm512_loadu_ps(queries + h * head_size + d);
            for (int j = 0; j < 4; j++) acc[j][h] = _mm512_fmadd_ps(qv, k[j], acc[j][h]);
        }
    }
    if (tail) {
        __m512 k[4];
        for (int j = 0; j < 4; j++) k[j] = kv_load(keys, key_rows[j] + full, bf16, tail);
        for (int h = 0; h < heads; h++) {
            const __m512 qv = _mm512_maskz_loadu_ps(tail, queries + h * head_size + full);
            for (int j = 0; j < 4; j++) acc[j][h] = _mm512_fmadd_ps(qv, k[j], acc[j][h]);
        }
    }
    for (int j = 0; j < 4; j++)
        for (int h = 0; h < heads; h++) partial[h * 16 + j] = acc[j][h];
}

/* scores[h * CHUNK_POSITIONS + p] = (query h . key p) * scale for every query head h of the
 * sequence; partial: scratch of 16 vectors per query head. Lane sums of 16 positions are reduced
 * together. */
ALWAYS_INLINE void chunk_scores(const float *queries, const void *keys, const int64_t *row_offsets, int64_t count,
                                int64_t head_size, int64_t kv_heads, int64_t group, float scale, int bf16,
                                float *scores, __m512 *partial) {
    for (int64_t p0 = 0; p0 < count; p0 += 16) {
        for (int64_t j0 = 0; j0 < 16; j0 += 4) {
            for (int64_t kvh = 0; kvh < kv_heads; kvh++) {
                int64_t key_rows[4];
                for (int j = 0; j < 4; j++) key_rows[j] = row_offsets[p0 + j0 + j] + kvh * head_size;
                for (int64_t h0 = 0; h0 < group; h0 += HEAD_TILE) {
                    const int64_t h = kvh * group + h0;
                    const float *qh = queries + h * head_size;
                    __m512 *out = partial + h * 16 + j0;
                    switch (group - h0 < HEAD_TILE ? group - h0 : HEAD_TILE) {
                    case 1: dot_lanes_4rows(qh, keys, key_rows, head_size, 1, bf16, out); break;
                    case 2: dot_lanes_4rows(qh, keys, key_rows, head_size, 2, bf16, out); break;
                    case 3: dot_lanes_4rows(qh, keys, key_rows, head_size, 3, bf16, out); break;
                    default: dot_lanes_4rows(qh, keys, key_rows, head_size, 4, bf16, out); break;
                    }
                }
            }
        }
        for (int64_t h = 0; h < kv_heads * group; h++)
            _mm512_mask_storeu_ps(scores + h * CHUNK_POSITIONS + p0, first_lanes(count - p0),
                                  _mm512_mul_ps(horizontal_sums16(partial + h * 16), _mm512_set1_ps(scale)));
    }
}

/* row[p] <- e^(row[p] - max) over count scores, and 0 up to the next multiple of 16; gives max and
 * the sum of the new row. */
static void chunk_softmax_row(float *row, int64_t count, float *max_out, float *sum_out) {
    __m512 top = _mm512_set1_ps(-INFINITY);
    for (int64_t p = 0; p < count; p += 16)
        top = _mm512_max_ps(top, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), first_lanes(count - p), row + p));
    const float max = _mm512_reduce_max_ps(top);
    const __m512 shift = _mm512_set1_ps(max);
    __m512 total = _mm512_setzero_ps();
    for (int64_t p = 0; p < count; p += 16) {
        const __mmask16 lanes = first_lanes(count - p);
        const __m512 e = _mm512_maskz_mov_ps(lanes, exp_approx16(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, row + p), shift)));
        _mm512_storeu_ps(row + p, e);
        total = _mm512_add_ps(total, e);
    }
    *max_out = max;
    *sum_out = _mm512_reduce_add_ps(total);
}

/* Value sums of `heads` query heads (a constant after inlining) sharing one kv head, for 64
 * dims starting at d0: acc[h * head_size + d] = sum over p < padded of weights[h][p] * value_p[d],
 * one fused multiply-add per position in position order. The sums stay in registers across the
 * positions (loading and storing them per position, with AVX-512 masked stores, ran at a fifth of
 * this speed on Zen 4); only a head size not a multiple of 16 masks its last vector. */
ALWAYS_INLINE void value_tile(const float *weights, const void *values, const int64_t *row_offsets, int64_t padded,
                              int64_t head_size, int64_t kv_offset, int64_t d0, int heads, int bf16, float *acc) {
    __mmask16 lanes[4];
    for (int v = 0; v < 4; v++) lanes[v] = d0 + 16 * v < head_size ? first_lanes(head_size - d0 - 16 * v) : 0;
    __m512 sum[HEAD_TILE][4];
    for (int h = 0; h < heads; h++)
        for (int v = 0; v < 4; v++) sum[h][v] = _mm512_setzero_ps();
    for (int64_t p = 0; p < padded; p++) {
        const int64_t row = row_offsets[p] + kv_offset + d0;
        __m512 value[4];
        for (int v = 0; v < 4; v++) value[v] = kv_load(values, row + 16 * v, bf16, lanes[v]);
        for (int h = 0; h < heads; h++) {
            const __m512 w = _mm512_set1_ps(weights[h * CHUNK_POSITIONS + p]);
            for (int v = 0; v < 4; v++) sum[h][v] = _mm512_fmadd_ps(w, value[v], sum[h][v]);
        }
    }
    for (int h = 0; h < heads; h++)
        for (int v = 0; v < 4; v++)
            if (lanes[v] == 0xffff)
                _mm512_storeu_ps(acc + h * head_size + d0 + 16 * v, sum[h][v]);
            else if (lanes[v] != 0)
                _mm512_mask_storeu_ps(acc + h * head_size + d0 + 16 * v, lanes[v], sum[h][v]);
}

/* acc[h * head_size + d] = sum over p of weights[h * CHUNK_POSITIONS + p] * value_p[d] for every
 * query head h, in position order per element. Positions count .. the next multiple of 4 have
 * weight 0 and repeat the last row (as the scores' padding), adding exact zeros. */
ALWAYS_INLINE void chunk_values(const float *weights, const void *values, const int64_t *row_offsets, int64_t count,
                                int64_t head_size, int64_t kv_heads, int64_t group, int bf16, float *acc) {
    const int64_t padded = (count + 3) & ~(int64_t)3;
    for (int64_t kvh = 0; kvh < kv_heads; kvh++)
        for (int64_t h0 = 0; h0 < group; h0 += HEAD_TILE) {
            const int64_t h = kvh * group + h0;
            const float *w = weights + h * CHUNK_POSITIONS;
            float *a = acc + h * head_size;
            for (int64_t d0 = 0; d0 < head_size; d0 += 64) {
                switch (group - h0 < HEAD_TILE ? group - h0 : HEAD_TILE) {
                case 1: value_tile(w, values, row_offsets, padded, head_size, kvh * head_size, d0, 1, bf16, a); break;
                case 2: value_tile(w, values, row_offsets, padded, head_size, kvh * head_size, d0, 2, bf16, a); break;
                case 3: value_tile(w, values, row_offsets, padded, head_size, kvh * head_size, d0, 3, bf16, a); break;
                default: value_tile(w, values, row_offsets, padded, head_size, kvh * head_size, d0, 4, bf16, a); break;
                }
            }
        }
}

#else /* portable C: the same steps, one row and one head at a time */

/* Cache element i as float32 (bfloat16 widens exactly). */
static inline float kv_float(const void *base, int64_t i, int bf16) {
    return bf16 ? bf16_to_f32(((const uint16_t *)base)[i]) : ((const float *)base)[i];
}

static void chunk_scores(const float *queries, const void *keys, const int64_t *row_offsets, int64_t count,
                         int64_t head_size, int64_t kv_heads, int64_t group, float scale, int bf16, float *scores,
                         void *partial) {
    float *key = partial; /* one row, widened: head_size floats */
    for (int64_t p = 0; p < count; p++)
        for (int64_t h = 0; h < kv_heads * group; h++) {
            for (int64_t d = 0; d < head_size; d++) key[d] = kv_float(keys, row_offsets[p] + (h / group) * head_size + d, bf16);
            scores[h * CHUNK_POSITIONS + p] = dot(queries + h * head_size, key, head_size) * scale;
        }
}

static void chunk_softmax_row(float *row, int64_t count, float *max_out, float *sum_out) {
    float low, top;
    min_max(row, count, 1, &low, &top);
    for (int64_t p = 0; p < count; p++) row[p] = exp_approx(row[p] - top);
    *max_out = top;
    *sum_out = sum(row, count);
}

static void chunk_values(const float *weights, const void *values, const int64_t *row_offsets, int64_t count,
                         int64_t head_size, int64_t kv_heads, int64_t group, int bf16, float *acc) {
    memset(acc, 0, sizeof(float) * (size_t)(kv_heads * group * head_size));
    for (int64_t p = 0; p < count; p++)
        for (int64_t h = 0; h < kv_heads * group; h++) {
            const int64_t value = row_offsets[p] + (h / group) * head_size;
            const float weight = weights[h * CHUNK_POSITIONS + p];
            float *a = acc + h * head_size;
            for (int64_t d = 0; d < head_size; d++) a[d] += weight * kv_float(values, value + d, bf16);
        }
}

#endif

/* Positions in item `index` of a sequence of seq_len positions. */
static inline int64_t item_positions(int64_t seq_len, int64_t index) {
    const int64_t left = seq_len - index * CHUNK_POSITIONS;
    return left < CHUNK_POSITIONS ? left : CHUNK_POSITIONS;
}

/* One query token per sequence, at its last position: out[s, h] = softmax(q[s, h] . K^T * scale) V
 * over positions 0 .. seq_lens[s] - 1 of sequence s, read through its block table row. Query head
 * h reads kv head h / (Hq / Hkv). q [S, Hq, D] with row stride q_stride; out [S, Hq, D] contiguous.
 * The cache holds float32, or bfloat16 when kv_bf16 (widened exactly as it is read; everything
 * else stays float32). A sequence of length 0 gives zeros. Returns 0, or -1 when the scratch
 * cannot be allocated. */
int decode_attention(const float *q, int64_t q_stride, const void *kv_cache, int64_t num_slots,
                     const int32_t *block_table, int64_t block_table_stride, const int32_t *seq_lens, float *out,
                     int64_t num_seqs, int64_t q_heads, int64_t kv_heads, int64_t head_size, int64_t block_size,
                     float scale, int kv_bf16) {
    const int64_t group = q_heads / kv_heads, width = kv_heads * head_size;
    const int64_t element_size = kv_bf16 ? (int64_t)sizeof(uint16_t) : (int64_t)sizeof(float);
    const void *keys = kv_cache, *values = (const char *)kv_cache + num_slots * width * element_size;
    /* chunk c of the batch is chunk chunk_index[c] of sequence chunk_seq[c]; sequence s owns
     * chunks first_chunk[s] .. first_chunk[s + 1] - 1 */
    int64_t *first_chunk = malloc(sizeof(int64_t) * (size_t)(num_seqs + 1));
    if (first_chunk == NULL) return -1;
    first_chunk[0] = 0;
    for (int64_t s = 0; s < num_seqs; s++)
        first_chunk[s + 1] = first_chunk[s] + (seq_lens[s] + CHUNK_POSITIONS - 1) / CHUNK_POSITIONS;
    const int64_t chunks = first_chunk[num_seqs], slots_per_chunk = chunks > 0 ? chunks : 1;
    int64_t *chunk_seq = malloc(sizeof(int64_t) * (size_t)slots_per_chunk);
    int64_t *chunk_index = malloc(sizeof(int64_t) * (size_t)slots_per_chunk);
    /* per (chunk, query head): the chunk's max score, sum of weights and unnormalized P.V */
    float *chunk_max = malloc(sizeof(float) * (size_t)(slots_per_chunk * q_heads));
    float *chunk_sum = malloc(sizeof(float) * (size_t)(slots_per_chunk * q_heads));
    float *chunk_acc = malloc(sizeof(float) * (size_t)(slots_per_chunk * q_heads * head_size));
    int failed = chunk_seq == NULL || chunk_index == NULL || chunk_max == NULL || chunk_sum == NULL || chunk_acc == NULL;
    if (!failed)
        for (int64_t s = 0; s < num_seqs; s++)
            for (int64_t c = first_chunk[s]; c < first_chunk[s + 1]; c++) {
                chunk_seq[c] = s;
                chunk_index[c] = c - first_chunk[s];
            }
    /* below ~50k multiply-adds the thread team costs more than it saves; either way each item
     * runs on one thread, so this changes timing only */
    const int in_parallel = (double)chunks * CHUNK_POSITIONS * q_heads * head_size > 5e4;

#pragma omp parallel if (in_parallel && !failed)
    {
        int64_t row_offsets[CHUNK_POSITIONS], next_offsets[CHUNK_POSITIONS]; /* this item's rows, the next one's */
        float *scores = malloc(sizeof(float) * (size_t)(q_heads * CHUNK_POSITIONS));
        /* 16 lane vectors per query head, 64-byte aligned */
        float *partial = aligned_alloc(64, sizeof(float) * 256 * (size_t)q_heads);
        if (scores == NULL || partial == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp barrier
        int team_failed;
#pragma omp atomic read
        team_failed = failed;
        if (!team_failed) {
            int64_t first, last;
            thread_share(chunks, &first, &last);
            for (int64_t c = first; c < last; c++) {
                const int64_t s = chunk_seq[c], start = chunk_index[c] * CHUNK_POSITIONS;
                const int64_t count = item_positions(seq_lens[s], chunk_index[c]);
                const int64_t record = c * q_heads;
                chunk_row_offsets(block_table + s * block_table_stride, start, count, block_size, width, row_offsets);
                if (c + 1 < last) {
                    const int64_t next = chunk_seq[c + 1], next_count = item_positions(seq_lens[next], chunk_index[c + 1]);
                    chunk_row_offsets(block_table + next * block_table_stride, chunk_index[c + 1] * CHUNK_POSITIONS,
                                      next_count, block_size, width, next_offsets);
                    prefetch_chunk(keys, values, next_offsets, next_count, width, element_size);
                }
                const float *query = q + s * q_stride;
                /* one branch per item: each side inlines its loads (bfloat16 widening or none) */
                if (kv_bf16)
                    chunk_scores(query, keys, row_offsets, count, head_size, kv_heads, group, scale, 1, scores,
                                 (void *)partial);
                else
                    chunk_scores(query, keys, row_offsets, count, head_size, kv_heads, group, scale, 0, scores,
                                 (void *)partial);
                for (int64_t h = 0; h < q_heads; h++)
                    chunk_softmax_row(scores + h * CHUNK_POSITIONS, count, chunk_max + record + h, chunk_sum + record + h);
                if (kv_bf16)
                    chunk_values(scores, values, row_offsets, count, head_size, kv_heads, group, 1,
                                 chunk_acc + record * head_size);
                else
                    chunk_values(scores, values, row_offsets, count, head_size, kv_heads, group, 0,
                                 chunk_acc + record * head_size);
            }
#pragma omp barrier /* the merge reads every thread's items */
            /* out = sum over chunks of acc_c * e^(m_c - m) / sum over chunks of l_c * e^(m_c - m),
             * m the largest m_c, in chunk order */
#pragma omp for schedule(static)
            for (int64_t head = 0; head < num_seqs * q_heads; head++) {
                const int64_t s = head / q_heads, h = head % q_heads;
                float *o = out + head * head_size;
                memset(o, 0, sizeof(float) * (size_t)head_size);
                if (first_chunk[s] == first_chunk[s + 1]) continue;
                float top = -INFINITY, total = 0.0f;
                for (int64_t c = first_chunk[s]; c < first_chunk[s + 1]; c++)
                    top = chunk_max[c * q_heads + h] > top ? chunk_max[c * q_heads + h] : top;
                for (int64_t c = first_chunk[s]; c < first_chunk[s + 1]; c++)
                    total += chunk_sum[c * q_heads + h] * exp_approx(chunk_max[c * q_heads + h] - top);
                const float norm = 1.0f / total;
                for (int64_t c = first_chunk[s]; c < first_chunk[s + 1]; c++) {
                    const float weight = exp_approx(chunk_max[c * q_heads + h] - top) * norm;
                    const float *acc = chunk_acc + (c * q_heads + h) * head_size;
                    for (int64_t d = 0; d < head_size; d++) o[d] += weight * acc[d];
                }
            }
        }
        free(scores);
        free(partial);
    }
    free(first_chunk);
    free(chunk_seq);
    free(chunk_index);
    free(chunk_max);
    free(chunk_sum);
    free(chunk_acc);
    return failed ? -1 : 0;
}
