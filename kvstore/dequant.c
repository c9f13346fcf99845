/* One-pass dequantization of fp8/int8/int4 KV codes into a float32 buffer (kvstore/native.py).

   Why C: the CPU pager wants each code read once and each float written once. torch has no
   kernel for code * scale + min from uint8 into float32, so codecs.py copies the codes and
   scales in place: three passes over the destination. Same arithmetic here: a code (at most
   8 bits) times a float16 statistic (11) is exact in float32, so the one rounding is the
   sum's, as in torch, fused or not. fp8 (e4m3) codes go through `fp8`, the 256 values torch
   decodes them to, then times the float32 scale (one rounding, no minimum). Same bits.

   Shapes (element counts, row-major):
     out        float32, planes [L, 2, H] of rows [out_rows, D]; plane p starts at
                out + p * plane_stride (the buffer may be a slice of a longer hot set).
     blob b     codes [L, 2, H, tokens, D * bits / 8] (int4: two channels a byte, the even
                one in the low nibble); its rows [row0, row0 + rows) land in every plane
                after the rows of the blobs before it.
                key statistics [L, H, key_groups, D]: row t uses group t / key_group;
                value statistics [L, H, tokens, D / value_group]; float16 (int8/int4) or
                float32 (fp8, which has no minima).
   Plane by plane, blob by blob: each plane's rows are written in order, and the codes of the
   blob two ahead are prefetched, since a hot set's blobs are small (on the embedded default 8
   rows, 512 bytes a plane) and scattered through the store's map. Measured on the 1,024-frame
   quant bench inside cold questions: 1.5 ms for the hot set with the prefetch, 2.7 without,
   bf16's copy 2.3. One thread: a second one raced torch's spinning OpenMP workers for the two
   cores and was slower (1.7-1.9 ms).
   Built by scripts/setup.sh: cc -O3 -ffp-contract=off -fPIC -shared. */
#include <stdint.h>
#include <string.h>

#define PREFETCH_AHEAD 2        /* blobs */

/* Inlined into each clone of planes(), so each gets that clone's vector width. */
#define INLINE static inline __attribute__((always_inline))
#if defined(__x86_64__)
#define CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CLONES
#endif
#define MAX_HEAD_DIM 4096       /* the statistics of a row live on the stack */

/* A float16's value (exact in float32): the compiler's _Float16 where it has one (x86-64-v3
   converts eight at once), else by its bits. */
INLINE float widen(const void *halves, int64_t i) {
#if defined(__FLT16_MAX__) && !defined(VKV_NO_FLOAT16)
    return ((const _Float16 *)halves)[i];
#else
    const uint16_t h = ((const uint16_t *)halves)[i];
    const uint32_t sign = (uint32_t)(h >> 15) << 31, exponent = (h >> 10) & 31, mantissa = h & 1023;
    uint32_t bits = sign | (exponent == 31 ? 0x7f800000u | mantissa << 13 : (exponent + 112) << 23 | mantissa << 13);
    float f;
    if (exponent == 0) {                                /* zero or subnormal: mantissa * 2^-24 */
        f = (float)mantissa * 0x1p-24f;
        memcpy(&bits, &f, 4);
        bits |= sign;
    }
    memcpy(&f, &bits, 4);
    return f;
#endif
}

typedef struct {        /* int64 fields only: Python fills an int64 array [blobs, 10] */
    int64_t codes, key_scale, key_min, value_scale, value_min;      /* addresses */
    int64_t tokens, row0, rows, key_groups, key_group;
} vkv_blob;

typedef struct {
    const vkv_blob *blobs;
    int64_t n_blobs, bits, L, H, D, value_group, plane_stride;
    float *out;
    const float *fp8;       /* NULL: integer codes with minima */
} vkv_job;

/* dst[d] = code(d) * scale[d] + min[d], channels [0, D). int4 walks the bytes (i, not d / 2,
   so the compiler sees the loads in order and vectorizes it). */
INLINE void row_by_channel(float *restrict dst, const uint8_t *restrict src, const float *restrict scale,
                           const float *restrict min, int64_t D, int64_t bits) {
    if (bits == 8)
        for (int64_t d = 0; d < D; d++) dst[d] = (float)src[d] * scale[d] + min[d];
    else
        for (int64_t i = 0; i < D / 2; i++) {
            dst[2 * i] = (float)(src[i] & 15) * scale[2 * i] + min[2 * i];
            dst[2 * i + 1] = (float)(src[i] >> 4) * scale[2 * i + 1] + min[2 * i + 1];
        }
}

/* dst[d] = code(d) * scale + min, channels [d0, d1) (even bounds for int4). */
INLINE void row_by_group(float *restrict dst, const uint8_t *restrict src, float scale, float min,
                         int64_t d0, int64_t d1, int64_t bits) {
    if (bits == 8)
        for (int64_t d = d0; d < d1; d++) dst[d] = (float)src[d] * scale + min;
    else
        for (int64_t i = d0 / 2; i < d1 / 2; i++) {
            dst[2 * i] = (float)(src[i] & 15) * scale + min;
            dst[2 * i + 1] = (float)(src[i] >> 4) * scale + min;
        }
}

/* fp8: dst[d] = fp8[code(d)] * scale[d], channels [0, D). */
INLINE void fp8_by_channel(float *restrict dst, const uint8_t *restrict src, const float *restrict scale,
                           int64_t D, const float *restrict fp8) {
    for (int64_t d = 0; d < D; d++) dst[d] = fp8[src[d]] * scale[d];
}

INLINE void fp8_by_group(float *restrict dst, const uint8_t *restrict src, float scale, int64_t d0, int64_t d1,
                         const float *restrict fp8) {
    for (int64_t d = d0; d < d1; d++) dst[d] = fp8[src[d]] * scale;
}

INLINE void keys(const vkv_job *j, const vkv_blob *b, int64_t l, int64_t h, const uint8_t *src, float *dst) {
    const int64_t D = j->D, width = D * j->bits / 8, at = (l * j->H + h) * b->key_groups * D;
    float scale[D], min[D];
    int64_t group = -1;
    for (int64_t t = b->row0; t < b->row0 + b->rows; t++, src += width, dst += D) {
        if (t / b->key_group != group) {            /* the group's statistics, widened once */
            group = t / b->key_group;
            for (int64_t d = 0; d < D; d++)
                if (j->fp8) {
                    scale[d] = ((const float *)(intptr_t)b->key_scale)[at + group * D + d];
                } else {
                    scale[d] = widen((const void *)(intptr_t)b->key_scale, at + group * D + d);
                    min[d] = widen((const void *)(intptr_t)b->key_min, at + group * D + d);
                }
        }
        if (j->fp8)
            fp8_by_channel(dst, src, scale, D, j->fp8);
        else
            row_by_channel(dst, src, scale, min, D, j->bits);
    }
}

INLINE void values(const vkv_job *j, const vkv_blob *b, int64_t l, int64_t h, const uint8_t *src, float *dst) {
    const int64_t D = j->D, width = D * j->bits / 8, vg = j->value_group, G = D / vg;
    const int64_t at = ((l * j->H + h) * b->tokens + b->row0) * G;
    for (int64_t t = 0; t < b->rows; t++, src += width, dst += D)
        for (int64_t g = 0; g < G; g++)
            if (j->fp8) {
                const float scale = ((const float *)(intptr_t)b->value_scale)[at + t * G + g];
                fp8_by_group(dst, src, scale, g * vg, (g + 1) * vg, j->fp8);
            } else {
                const float scale = widen((const void *)(intptr_t)b->value_scale, at + t * G + g);
                const float min = widen((const void *)(intptr_t)b->value_min, at + t * G + g);
                row_by_group(dst, src, scale, min, g * vg, (g + 1) * vg, j->bits);
            }
}

/* Every plane (a layer's keys or values of one head), each blob's rows in turn. */
CLONES static void planes(const vkv_job *j) {
    const int64_t width = j->D * j->bits / 8;
    for (int64_t p = 0; p < j->L * 2 * j->H; p++) {
        const int64_t l = p / (2 * j->H), is_value = (p / j->H) % 2, h = p % j->H;
        float *dst = j->out + p * j->plane_stride;
        for (const vkv_blob *b = j->blobs; b < j->blobs + j->n_blobs; b++) {
            const uint8_t *src = (const uint8_t *)(intptr_t)b->codes + (p * b->tokens + b->row0) * width;
            if (b + PREFETCH_AHEAD < j->blobs + j->n_blobs) {
                const vkv_blob *ahead = b + PREFETCH_AHEAD;
                const char *at = (const char *)(intptr_t)ahead->codes + (p * ahead->tokens + ahead->row0) * width;
                for (int64_t byte = 0; byte < ahead->rows * width; byte += 64)
                    __builtin_prefetch(at + byte, 0, 0);
            }
            if (is_value)
                values(j, b, l, h, src, dst);
            else
                keys(j, b, l, h, src, dst);
            dst += b->rows * j->D;
        }
    }
}

/* bits: 8 or 4; fp8: the 256 values of the e4m3 codes (then bits is 8), or NULL. Returns 0,
   or -1 for a layout it does not take (nothing written): the caller decodes another way. */
int vkv_dequantize(const vkv_blob *blobs, int64_t n_blobs, int64_t bits, int64_t L, int64_t H, int64_t D,
                   int64_t value_group, float *out, int64_t plane_stride, const float *fp8) {
    if ((bits != 8 && bits != 4) || (fp8 && bits != 8) || D < 1 || D > MAX_HEAD_DIM || value_group < 1
        || D % value_group || (bits == 4 && (D % 2 || value_group % 2)))   /* int4 groups pair nibbles */
        return -1;
    int64_t rows = 0;
    for (const vkv_blob *b = blobs; b < blobs + n_blobs; b++) {
        if (b->row0 < 0 || b->rows < 0 || b->row0 + b->rows > b->tokens || b->key_group < 1
            || (b->tokens - 1) / b->key_group >= b->key_groups)
            return -1;
        rows += b->rows;
    }
    if (rows > plane_stride / D)                        /* a plane's rows overrun the next plane */
        return -1;
    const vkv_job job = {blobs, n_blobs, bits, L, H, D, value_group, plane_stride, out, fp8};
    planes(&job);
    return 0;
}
