/* Quantized-weight GEMM for CPU decode: out [M, N] = x [M, K] (bfloat16) . W^T, W stored as 4-bit
 * or 8-bit codes in groups along K, for the M of a decode batch (1 to a few dozen rows).
 *
 * Why: torch's int4 CPU kernel widens every weight to float32 and runs float32 FMAs, so 16 rows
 * cost ~6x one row and a 16-sequence decode step is bound by arithmetic. Here the codes become
 * bfloat16 (exact: small integers) and AVX512-BF16's vdpbf16ps multiplies 32 pairs per instruction,
 * twice the float32 rate; the codes of a 16-column panel are unpacked once per block of rows.
 *
 * Arithmetic, per output element: for each group g of K, acc_g = sum_k x[k] * c[k] in float32 (c =
 * q - 8 for 4-bit, q for 8-bit; each product is exact, the sums round), then
 * out = sum_g (scale_g * acc_g [+ zero_g * sum_k x[k]]) with one fused multiply-add per term, in g
 * order. Invariant: a row's result depends on that row alone, never on M or on the other rows (the
 * same instructions in the same order for every row), so batch composition cannot change an answer.
 *
 * Two register layouts run that arithmetic. Blocks of 16 rows put the rows in the lanes: one
 * register holds a (k, k + 1) pair of x for 16 rows, each column's weight pair is broadcast from a
 * small buffer of unpacked codes, and 16 accumulators hold the panel's 16 columns (each vdpbf16ps
 * reads its broadcast operand straight from memory). On the Zen 4 VM, one thread, 16 rows of SmolLM2's shapes, that
 * runs at 75-77% of the vdpbf16ps peak against 65-68% for the other layout. Fewer rows put
 * the columns in the lanes: the unpacked codes of a panel in a register, each row's x pair
 * broadcast. vdpbf16ps multiplies exactly and sums the two products of a lane in a fixed order, so
 * both layouts give the same bits (tests/kernels/test_cpu_qgemm.py checks it).
 *
 * Packed layouts (built by kernels/cpu_qgemm.py), P = N / 16 panels of 16 columns:
 * - 4-bit codes [P, K / 4, 32] bytes: byte 2i + e of chunk c holds column i's code for k = 4c + e in
 *   its low nibble and for k = 4c + 2 + e in its high nibble, so one chunk unpacks into the two
 *   (k, k + 1) pair vectors vdpbf16ps reads. Scales and zeros [P, G, 2, 16] bfloat16.
 * - 8-bit codes [P, K / 2, 32] int8: byte 2i + e of pair p is column i's code for k = 2p + e.
 *   Scales [P, G, 16] bfloat16; no zeros (symmetric).
 * Columns past N (padding) have zero codes and scales; their outputs are not written.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* Load-time packing into the layouts above (cpu_qgemm.py's torch definitions, in one pass; rows
 * past N are zero). q [N, K] int32: codes 0..15 for pack_int4, -128..127 for pack_int8. */
void qgemm_pack_int4(const int32_t *q, int64_t n, int64_t k, uint8_t *packed) {
    const int64_t panels = (n + 15) / 16, chunks = k / 4;
    memset(packed, 0, (size_t)(panels * chunks * 32));
    for (int64_t row = 0; row < n; row++) {
        const int32_t *codes = q + row * k;
        uint8_t *panel = packed + (row / 16) * chunks * 32 + (row % 16) * 2;
        for (int64_t c = 0; c < chunks; c++)
            for (int e = 0; e < 2; e++)
                panel[c * 32 + e] = (uint8_t)(codes[4 * c + e] | (codes[4 * c + 2 + e] << 4));
    }
}

void qgemm_pack_int8(const int32_t *q, int64_t n, int64_t k, int8_t *packed) {
    const int64_t panels = (n + 15) / 16, pairs = k / 2;
    memset(packed, 0, (size_t)(panels * pairs * 32));
    for (int64_t row = 0; row < n; row++) {
        const int32_t *codes = q + row * k;
        int8_t *panel = packed + (row / 16) * pairs * 32 + (row % 16) * 2;
        for (int64_t p = 0; p < pairs; p++) {
            panel[p * 32] = (int8_t)codes[2 * p];
            panel[p * 32 + 1] = (int8_t)codes[2 * p + 1];
        }
    }
}

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512F__)
#include <immintrin.h>

int qgemm_available(void) { return 1; }

static inline __m512 widen_bf16x16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

static inline __m512bh pair_of(const uint16_t *x) { /* (x[0], x[1]) in every lane */
    int32_t bits;
    memcpy(&bits, x, sizeof bits);
    return (__m512bh)_mm512_set1_epi32(bits);
}

static inline void store_row(const float *values, void *out, int out_bf16, int64_t row, int64_t out_stride,
                             int64_t col, int64_t n) {
    const int64_t count = n - col < 16 ? n - col : 16;
    if (out_bf16) {
        uint16_t *o = (uint16_t *)out + row * out_stride + col;
        for (int64_t j = 0; j < count; j++) o[j] = f32_to_bf16(values[j]);
    } else {
        memcpy((float *)out + row * out_stride + col, values, sizeof(float) * (size_t)count);
    }
}

/* total [column][row] of a 16 x 16 tile to out rows row0 .. row0 + 15 at columns col .. */
static inline void store_transposed(const float total[16][16], void *out, int out_bf16, int64_t row0,
                                    int64_t out_stride, int64_t col, int64_t n) {
    for (int r = 0; r < 16; r++) {
        float row[16];
        for (int j = 0; j < 16; j++) row[j] = total[j][r];
        store_row(row, out, out_bf16, row0 + r, out_stride, col, n);
    }
}

#define LANES16_MAX_GROUP 256 /* larger groups take the column layout for every row */

/* x_pairs [K / 2][16] of rows row0 .. row0 + 15 (see lanes16_int4), the pairs [p0, p1) */
static void gather_pairs16(const uint16_t *x, int64_t x_stride, int64_t p0, int64_t p1, uint32_t *x_pairs) {
    for (int64_t p = p0; p < p1; p++)
        for (int r = 0; r < 16; r++) memcpy(x_pairs + p * 16 + r, x + r * x_stride + 2 * p, sizeof(uint32_t));
}

/* sums[g] = the sum of x over group g (the zeros' term), 16 lanes then a fixed reduction tree: a
 * row's sums depend on that row alone. A serial loop of dependent adds here took ~2 ms of a
 * 16-row decode step, with the other thread waiting. */
static void group_sums(const uint16_t *x, int64_t groups, int64_t group, float *sums) {
    for (int64_t g = 0; g < groups; g++) {
        const uint16_t *xg = x + g * group;
        int64_t j = 0;
        __m512 lanes = _mm512_setzero_ps();
        for (; j + 16 <= group; j += 16) lanes = _mm512_add_ps(lanes, widen_bf16x16(xg + j));
        float s = _mm512_reduce_add_ps(lanes);
        for (; j < group; j++) s += bf16_to_f32(xg[j]);
        sums[g] = s;
    }
}

/* bf16(v - 8) for the nibble v; indexed by the low 5 bits, so a byte's high nibble may sit in bit 4
 * unmasked (entries 16..31 repeat 0..15). */
static const uint16_t nibble_to_bf16[32] = {
    0xc100, 0xc0e0, 0xc0c0, 0xc0a0, 0xc080, 0xc040, 0xc000, 0xbf80, 0x0000, 0x3f80, 0x4000,
    0x4040, 0x4080, 0x40a0, 0x40c0, 0x40e0, 0xc100, 0xc0e0, 0xc0c0, 0xc0a0, 0xc080, 0xc040,
    0xc000, 0xbf80, 0x0000, 0x3f80, 0x4000, 0x4040, 0x4080, 0x40a0, 0x40c0, 0x40e0};

/* ROWS rows of x against PANELS consecutive panels of 4-bit codes. Inlined with constant ROWS and
 * PANELS: the loops unroll and the ROWS x PANELS accumulators live in registers. Each accumulator
 * is one chain of dependent vdpbf16ps; few rows take several panels so that enough chains run at
 * once to hide the instruction's latency. An element's arithmetic is the same in every variant. */
static inline __attribute__((always_inline)) void panels_int4(
    const int ROWS, const int PANELS, const uint16_t *x, int64_t x_stride, const float *xsum, int64_t groups,
    const uint8_t *codes, const uint16_t *scale_zero, int64_t k, int64_t group, void *out, int out_bf16,
    int64_t out_stride, int64_t row0, int64_t panel0, int64_t n) {
    const __m512i table = _mm512_loadu_si512(nibble_to_bf16);
    float total[ROWS][PANELS][16]; /* in memory: 16 rows of accumulators fill the registers */
    memset(total, 0, sizeof total);
    for (int64_t g = 0; g < groups; g++) {
        __m512 acc[ROWS][PANELS];
        for (int r = 0; r < ROWS; r++)
            for (int q = 0; q < PANELS; q++) acc[r][q] = _mm512_setzero_ps();
        for (int64_t k0 = g * group; k0 < (g + 1) * group; k0 += 4) {
            for (int q = 0; q < PANELS; q++) {
                const uint8_t *chunk = codes + (panel0 + q) * (k / 4) * 32 + k0 * 8;
                const __m512i bytes = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)chunk));
                const __m512bh low = (__m512bh)_mm512_permutexvar_epi16(bytes, table);
                const __m512bh high = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(bytes, 4), table);
                for (int r = 0; r < ROWS; r++) {
                    const uint16_t *xr = x + r * x_stride + k0;
                    acc[r][q] = _mm512_dpbf16_ps(acc[r][q], low, pair_of(xr));
                    acc[r][q] = _mm512_dpbf16_ps(acc[r][q], high, pair_of(xr + 2));
                }
            }
        }
        for (int q = 0; q < PANELS; q++) {
            const uint16_t *sz = scale_zero + ((panel0 + q) * groups + g) * 32;
            const __m512 scale = widen_bf16x16(sz), zero = widen_bf16x16(sz + 16);
            for (int r = 0; r < ROWS; r++) {
                __m512 sum = _mm512_fmadd_ps(scale, acc[r][q], _mm512_loadu_ps(total[r][q]));
                sum = _mm512_fmadd_ps(zero, _mm512_set1_ps(xsum[r * groups + g]), sum);
                _mm512_storeu_ps(total[r][q], sum);
            }
        }
    }
    for (int r = 0; r < ROWS; r++)
        for (int q = 0; q < PANELS; q++) store_row(total[r][q], out, out_bf16, row0 + r, out_stride, (panel0 + q) * 16, n);
}

/* acc[j] (16 rows) = the dot products of one group: `count` pairs of x (x_pairs, [pair][row]) with
 * column j's unpacked weight pairs (pairs, [pair][column]), broadcast from memory. */
static inline __attribute__((always_inline)) void lanes16_group_dot(const uint32_t *x_pairs,
                                                                    const uint32_t pairs[][16], int64_t count,
                                                                    __m512 acc[16]) {
    for (int j = 0; j < 16; j++) acc[j] = _mm512_setzero_ps();
    for (int64_t p = 0; p < count; p++) {
        const __m512bh xv = (__m512bh)_mm512_loadu_si512(x_pairs + p * 16);
        for (int j = 0; j < 16; j++) acc[j] = _mm512_dpbf16_ps(acc[j], xv, (__m512bh)_mm512_set1_epi32((int)pairs[p][j]));
    }
}

/* A block of 16 rows, rows in the lanes (see the top): x_pairs [K / 2][16] holds row r's
 * (x[2p], x[2p + 1]) at [p][r]; xsum_t [G][16] the rows' group sums. For each group the panel's
 * codes are unpacked into `pairs` ([pair][column], as the column layout's registers), then each
 * accumulator (one column, 16 rows) takes one vdpbf16ps per pair with that column's weight pair
 * broadcast from memory. */
static void lanes16_int4(const uint32_t *x_pairs, const float *xsum_t, int64_t groups, const uint8_t *codes,
                         const uint16_t *scale_zero, int64_t k, int64_t group, void *out, int out_bf16,
                         int64_t out_stride, int64_t row0, int64_t panel, int64_t n) {
    const __m512i table = _mm512_loadu_si512(nibble_to_bf16);
    const uint8_t *panel_codes = codes + panel * (k / 4) * 32;
    float total[16][16] __attribute__((aligned(64))); /* [column][row] */
    uint32_t pairs[LANES16_MAX_GROUP / 2][16] __attribute__((aligned(64)));
    memset(total, 0, sizeof total);
    for (int64_t g = 0; g < groups; g++) {
        for (int64_t c = 0; c < group / 4; c++) {
            const __m512i bytes =
                _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(panel_codes + (g * group + 4 * c) * 8)));
            _mm512_store_si512(pairs[2 * c], _mm512_permutexvar_epi16(bytes, table));
            _mm512_store_si512(pairs[2 * c + 1], _mm512_permutexvar_epi16(_mm512_srli_epi16(bytes, 4), table));
        }
        __m512 acc[16];
        lanes16_group_dot(x_pairs + g * group / 2 * 16, pairs, group / 2, acc);
        const uint16_t *sz = scale_zero + (panel * groups + g) * 32;
        const __m512 xsum = _mm512_loadu_ps(xsum_t + g * 16);
        for (int j = 0; j < 16; j++) {
            __m512 sum = _mm512_fmadd_ps(_mm512_set1_ps(bf16_to_f32(sz[j])), acc[j], _mm512_load_ps(total[j]));
            sum = _mm512_fmadd_ps(_mm512_set1_ps(bf16_to_f32(sz[16 + j])), xsum, sum);
            _mm512_store_ps(total[j], sum);
        }
    }
    store_transposed(total, out, out_bf16, row0, out_stride, panel * 16, n);
}

/* The same for 8-bit codes (no zeros). */
static void lanes16_int8(const uint32_t *x_pairs, int64_t groups, const int8_t *codes, const uint16_t *scales,
                         int64_t k, int64_t group, void *out, int out_bf16, int64_t out_stride, int64_t row0,
                         int64_t panel, int64_t n) {
    const int8_t *panel_codes = codes + panel * k * 16;
    float total[16][16] __attribute__((aligned(64)));
    uint32_t pairs[LANES16_MAX_GROUP / 2][16] __attribute__((aligned(64)));
    memset(total, 0, sizeof total);
    for (int64_t g = 0; g < groups; g++) {
        for (int64_t p = 0; p < group / 2; p++) {
            const int8_t *c = panel_codes + (g * group + 2 * p) * 16;
            const __m512 first = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)c)));
            const __m512 second = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(c + 16))));
            _mm512_store_si512(pairs[p], (__m512i)_mm512_cvtne2ps_pbh(second, first));
        }
        __m512 acc[16];
        lanes16_group_dot(x_pairs + g * group / 2 * 16, pairs, group / 2, acc);
        const uint16_t *sc = scales + (panel * groups + g) * 16;
        for (int j = 0; j < 16; j++)
            _mm512_store_ps(total[j], _mm512_fmadd_ps(_mm512_set1_ps(bf16_to_f32(sc[j])), acc[j], _mm512_load_ps(total[j])));
    }
    store_transposed(total, out, out_bf16, row0, out_stride, panel * 16, n);
}

/* The same for 8-bit codes (no zeros). */
static inline __attribute__((always_inline)) void panels_int8(
    const int ROWS, const int PANELS, const uint16_t *x, int64_t x_stride, int64_t groups, const int8_t *codes,
    const uint16_t *scales, int64_t k, int64_t group, void *out, int out_bf16, int64_t out_stride, int64_t row0,
    int64_t panel0, int64_t n) {
    float total[ROWS][PANELS][16];
    memset(total, 0, sizeof total);
    for (int64_t g = 0; g < groups; g++) {
        __m512 acc[ROWS][PANELS];
        for (int r = 0; r < ROWS; r++)
            for (int q = 0; q < PANELS; q++) acc[r][q] = _mm512_setzero_ps();
        for (int64_t k0 = g * group; k0 < (g + 1) * group; k0 += 2) {
            for (int q = 0; q < PANELS; q++) {
                const int8_t *c = codes + (panel0 + q) * k * 16 + k0 * 16;
                const __m512 first = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)c)));
                const __m512 second =
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(c + 16))));
                const __m512bh w = _mm512_cvtne2ps_pbh(second, first); /* exact: |code| <= 128 */
                for (int r = 0; r < ROWS; r++)
                    acc[r][q] = _mm512_dpbf16_ps(acc[r][q], w, pair_of(x + r * x_stride + k0));
            }
        }
        for (int q = 0; q < PANELS; q++) {
            const __m512 scale = widen_bf16x16(scales + ((panel0 + q) * groups + g) * 16);
            for (int r = 0; r < ROWS; r++)
                _mm512_storeu_ps(total[r][q], _mm512_fmadd_ps(scale, acc[r][q], _mm512_loadu_ps(total[r][q])));
        }
    }
    for (int r = 0; r < ROWS; r++)
        for (int q = 0; q < PANELS; q++) store_row(total[r][q], out, out_bf16, row0 + r, out_stride, (panel0 + q) * 16, n);
}

/* Each thread walks its share of the panels (thread_share: equal, where handing out whole groups
 * of 4 would give 36 panels as 20 and 16) four at a time (their codes stay in cache across the row
 * blocks). Within four panels: the blocks of 16 rows in the lanes layout, panel by panel; then,
 * in the column layout, one block of 8 rows and one of the rest, a block of R rows taking 4, 2 or 1
 * panels per pass (R * panels >= 4 chains), the last panels of a short tail one by one. (Groups
 * over LANES16_MAX_GROUP take the column layout for blocks of 16 rows too.) Every variant runs the
 * same per-element arithmetic: only speed depends on the split. */
#define PANEL_GROUP 4

#define ROWS_PASS(CALL, R, P)                                                               \
    do {                                                                                    \
        int64_t panel = group_start;                                                        \
        for (; panel + (P) <= group_end; panel += (P)) CALL(R, P);                          \
        for (; panel < group_end; panel++) CALL(R, 1);                                      \
    } while (0)
/* the column-layout blocks of rows first_row .. m - 1 */
#define FOR_BLOCKS(CALL, first_row)                                                         \
    do {                                                                                    \
        int64_t row = (first_row);                                                          \
        for (; row + 16 <= m; row += 16) ROWS_PASS(CALL, 16, 1);                            \
        if (row + 8 <= m) {                                                                 \
            ROWS_PASS(CALL, 8, 1);                                                          \
            row += 8;                                                                       \
        }                                                                                   \
        switch (m - row) {                                                                  \
        case 7: ROWS_PASS(CALL, 7, 1); break;                                               \
        case 6: ROWS_PASS(CALL, 6, 1); break;                                               \
        case 5: ROWS_PASS(CALL, 5, 1); break;                                               \
        case 4: ROWS_PASS(CALL, 4, 2); break;                                               \
        case 3: ROWS_PASS(CALL, 3, 2); break;                                               \
        case 2: ROWS_PASS(CALL, 2, 4); break;                                               \
        case 1: ROWS_PASS(CALL, 1, 4); break;                                               \
        default: break;                                                                     \
        }                                                                                   \
    } while (0)

/* Scratch of the lanes layout: x_pairs [blocks][K / 2][16] and xsum_t [blocks][G][16] for the
 * first `blocks` blocks of 16 rows (none when group > LANES16_MAX_GROUP). */
typedef struct {
    int64_t blocks;
    uint32_t *x_pairs;
    float *xsum_t;
} Lanes16;

static int lanes16_alloc(Lanes16 *lanes, int64_t m, int64_t k, int64_t group) {
    lanes->blocks = group <= LANES16_MAX_GROUP ? m / 16 : 0;
    lanes->x_pairs = NULL;
    lanes->xsum_t = NULL;
    if (lanes->blocks == 0) return 0;
    lanes->x_pairs = aligned_alloc(64, sizeof(uint32_t) * (size_t)(lanes->blocks * k * 8)); /* a multiple of 64 bytes: 4 | k */
    lanes->xsum_t = malloc(sizeof(float) * (size_t)(lanes->blocks * (k / group) * 16));
    return lanes->x_pairs == NULL || lanes->xsum_t == NULL ? -1 : 0;
}

static void lanes16_free(Lanes16 *lanes) {
    free(lanes->x_pairs);
    free(lanes->xsum_t);
}

/* Inside the parallel region: the threads gather the pairs of every block (barrier at the end;
 * none without blocks, a condition every thread sees alike). */
static void lanes16_gather(const Lanes16 *lanes, const uint16_t *x, int64_t x_stride, int64_t k) {
    const int64_t pairs = k / 2, step = 32, pieces = (pairs + step - 1) / step; /* per block */
    if (lanes->blocks == 0) return;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < lanes->blocks * pieces; i++) {
        const int64_t block = i / pieces, p0 = i % pieces * step, p1 = p0 + step < pairs ? p0 + step : pairs;
        gather_pairs16(x + block * 16 * x_stride, x_stride, p0, p1, lanes->x_pairs + block * pairs * 16);
    }
}

/* out [M, N] (row stride out_stride; bfloat16 when out_bf16, else float32) = x . W^T for `bits`-bit
 * W: 4 (codes [P, K / 4, 32], scales and zeros [P, G, 2, 16]) or 8 (codes [P, K / 2, 32], scales
 * [P, G, 16]). x bfloat16 [M, K] with row stride x_stride. Returns 0, or -1 when scratch cannot be
 * allocated. */
static int qgemm(int bits, const uint16_t *x, int64_t x_stride, const void *codes, const uint16_t *scales, void *out,
                 int out_bf16, int64_t out_stride, int64_t m, int64_t n, int64_t k, int64_t group, int threads) {
    const int64_t groups = k / group, panels = (n + 15) / 16;
    Lanes16 lanes;
    /* the zeros' term needs each row's group sums (4-bit only) */
    float *xsum = bits == 4 ? malloc(sizeof(float) * (size_t)(m * groups > 0 ? m * groups : 1)) : NULL;
    if (lanes16_alloc(&lanes, m, k, group) != 0 || (bits == 4 && xsum == NULL)) {
        lanes16_free(&lanes);
        free(xsum);
        return -1;
    }
    if (bits == 4) {
        for (int64_t i = 0; i < m; i++) group_sums(x + i * x_stride, groups, group, xsum + i * groups);
        for (int64_t b = 0; b < lanes.blocks; b++)
            for (int64_t g = 0; g < groups; g++)
                for (int r = 0; r < 16; r++) lanes.xsum_t[(b * groups + g) * 16 + r] = xsum[(b * 16 + r) * groups + g];
    }
#pragma omp parallel num_threads(threads)
    {
        lanes16_gather(&lanes, x, x_stride, k);
        int64_t share_start, share_end;
        thread_share(panels, &share_start, &share_end);
        for (int64_t group_start = share_start; group_start < share_end; group_start += PANEL_GROUP) {
            const int64_t group_end = group_start + PANEL_GROUP < share_end ? group_start + PANEL_GROUP : share_end;
            for (int64_t b = 0; b < lanes.blocks; b++)
                for (int64_t panel = group_start; panel < group_end; panel++) {
                    if (bits == 4)
                        lanes16_int4(lanes.x_pairs + b * k * 8, lanes.xsum_t + b * groups * 16, groups, codes, scales,
                                     k, group, out, out_bf16, out_stride, b * 16, panel, n);
                    else
                        lanes16_int8(lanes.x_pairs + b * k * 8, groups, codes, scales, k, group, out, out_bf16,
                                     out_stride, b * 16, panel, n);
                }
#define COLUMN_PASS(R, P)                                                                                       \
    do {                                                                                                        \
        if (bits == 4)                                                                                          \
            panels_int4(R, P, x + row * x_stride, x_stride, xsum + row * groups, groups, codes, scales, k, group, \
                        out, out_bf16, out_stride, row, panel, n);                                              \
        else                                                                                                    \
            panels_int8(R, P, x + row * x_stride, x_stride, groups, codes, scales, k, group, out, out_bf16,     \
                        out_stride, row, panel, n);                                                             \
    } while (0)
            FOR_BLOCKS(COLUMN_PASS, lanes.blocks * 16);
#undef COLUMN_PASS
        }
    }
    lanes16_free(&lanes);
    free(xsum);
    return 0;
}

int qgemm_int4(const uint16_t *x, int64_t x_stride, const uint8_t *codes, const uint16_t *scale_zero, void *out,
               int out_bf16, int64_t out_stride, int64_t m, int64_t n, int64_t k, int64_t group, int threads) {
    return qgemm(4, x, x_stride, codes, scale_zero, out, out_bf16, out_stride, m, n, k, group, threads);
}

int qgemm_int8(const uint16_t *x, int64_t x_stride, const int8_t *codes, const uint16_t *scales, void *out,
               int out_bf16, int64_t out_stride, int64_t m, int64_t n, int64_t k, int64_t group, int threads) {
    return qgemm(8, x, x_stride, codes, scales, out, out_bf16, out_stride, m, n, k, group, threads);
}

#else /* no AVX512-BF16: callers use torch's kernels (kernels/cpu_qgemm.py checks this) */

int qgemm_available(void) { return 0; }

int qgemm_int4(const uint16_t *x, int64_t x_stride, const uint8_t *codes, const uint16_t *scale_zero, void *out,
               int out_bf16, int64_t out_stride, int64_t m, int64_t n, int64_t k, int64_t group, int threads) {
    (void)x, (void)x_stride, (void)codes, (void)scale_zero, (void)out, (void)out_bf16, (void)out_stride, (void)m;
    (void)n, (void)k, (void)group, (void)threads;
    return -2;
}

int qgemm_int8(const uint16_t *x, int64_t x_stride, const int8_t *codes, const uint16_t *scales, void *out,
               int out_bf16, int64_t out_stride, int64_t m, int64_t n, int64_t k, int64_t group, int threads) {
    (void)x, (void)x_stride, (void)codes, (void)scales, (void)out, (void)out_bf16, (void)out_stride, (void)m;
    (void)n, (void)k, (void)group, (void)threads;
    return -2;
}

#endif
