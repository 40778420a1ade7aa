/* Fused float32 CPU kernels for the fast mode of the spiking operators.
 *
 * Each function performs, element by element, the very float32 operations of the eager fast path in
 * spikingjelly_mbe/ops (same operands, same order, one rounding per operation: build with
 * -ffp-contract=off and without -ffast-math), so both paths return the same bits and spike counts;
 * tests/test_kernels.py checks that. Row sums accumulate in double and round to float once, as the
 * eager path does with sum(dtype=float64); the two add in different orders, so they could differ only
 * where the exact sum lies within about n 2^-53 (relative) of a float rounding boundary.
 *
 * A "coder" is the MBE_Id neuron of Eq. 9 as six numbers (ops.coding.IdentityCoder.kernel_params):
 * gain 2^T, offset 2^T, clamp (or +inf), output step w 2^-T, the top digit pattern 2^T - 1 and the
 * digit code (ops.coding.CODES: 0 binary digits, 1 signed digits, 2 balanced-ternary digits, whose top
 * pattern is (3^T - 1) / 2), which sets the spike count of q. The row kernels (Softmax, the norms) take
 * eight (IdentityCoder.row_params, band_t): the coder, then a centred code's centre and zero threshold.
 * A "table" is a SplitFunction's interleaved (value, spikes) pair for each of the 2^T digit patterns;
 * a "packed table" holds both in one 32-bit word (SplitFunction.packed_table), so that the per-element
 * lookup of Softmax is a single gather: value bits = base + (word & 0xFFFFFF), spikes = word >> 24.
 *
 * Per-row counts are int32: rows are at most kernels.MAX_ROW = 2^21 long (at most 24^2 = 576 per element).
 *
 * Every kernel also counts the inputs that are NaN or +inf (and -inf where that is not a mask) in its
 * last stats entry; the caller raises on a nonzero count. Such inputs never index outside a table
 * (quantize maps NaN to the top pattern).
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

typedef struct {
    float gain, offset, clamp, step, top;
    int32_t code;
} coder_t;

static coder_t coder_of(const double *p) {
    coder_t c = {(float)p[0], (float)p[1], (float)p[2], (float)p[3], (float)p[4], (int32_t)p[5]};
    return c;
}

/* The digits min(floor(u + offset), top) of the neuron's input u >= 0, as an integer. u + offset is at least
 * the offset (half a step, 1/2 here), and top (< 2^24) is an integer, so that is min(u + offset, top)
 * truncated to an integer; the min is taken on the bits, which order as positive floats do, NaN's above
 * top's (NaN gives top, as floor's NaN did). */
static inline int32_t digits_of(float u, coder_t c) {
    u = u + c.offset;
    int32_t bits, top;
    memcpy(&bits, &u, sizeof bits);
    memcpy(&top, &c.top, sizeof top);
    bits = bits < top ? bits : top;
    memcpy(&u, &bits, sizeof u);
    return (int32_t)u;
}

/* The digits q the neuron fires for |x| (IdentityCoder.quantize): min(floor(min(|x g|, clamp) + offset), top). */
static inline int32_t quantize(float x, coder_t c) {
    const float u = fabsf(x * c.gain);
    return digits_of(u < c.clamp ? u : c.clamp, c);
}

/* q >= 0 as a float (exact: q < 2^24). Where the CPU converts unsigned integers in one instruction, as
 * unsigned: GCC reads (float)(int32_t) of quantize's truncation as a rounding of the float (two). */
static inline float digits_value(int32_t q) {
#ifdef __AVX512F__
    return (float)(uint32_t)q;
#else
    return (float)q;
#endif
}

/* Set bits of v (branch-free, so loops over it vectorize: one instruction where the CPU counts bits in
 * vector registers). */
static inline int32_t bits_set(uint32_t v) {
#ifdef __AVX512VPOPCNTDQ__
    return __builtin_popcount(v);
#endif
    v = v - ((v >> 1) & 0x55555555u);
    v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
    v = (v + (v >> 4)) & 0x0F0F0F0Fu;
    return (int32_t)((v * 0x01010101u) >> 24);
}

/* Nonzero balanced-ternary digits of q <= (3^10 - 1) / 2 (ops.coding.ternary_digit_count): ten steps of
 * q = (q - r) / 3 + (r == 2), r = q mod 3 (a remainder 2 is the digit -1 and a carry); q / 3 as
 * (q 43691) >> 17, exact below 2^16. A fixed trip count, so it vectorizes. */
static inline int32_t ternary_count(uint32_t v) {
    int32_t count = 0;
    for (int k = 0; k < 10; ++k) {
        const uint32_t third = (v * 43691u) >> 17, r = v - 3u * third;
        count += r != 0u;
        v = third + (r == 2u);
    }
    return count;
}

/* Spikes of the digit pattern q < 2^16 in the digit code (ops.coding.CODES): binary, popcount(q);
 * signed, the nonzero digits of neurons.SignedDigitNode (ops.coding.signed_digit_count). m = (3q) ^ q
 * marks the NAF digits of q, digit k at bit k + 1 (bit 0 is always clear), so popcount(m) is the NAF's
 * weight. When the NAF's top digit is 2^T (bit T + 1 of m) the neuron fires 2^(T-1) + ... + 2^j for its
 * 2^T - 2^j (2^j the highest lower digit, at bit j + 1 of m): the two digits become T - j, T - 2 - j
 * spikes more. j + 1 is the exponent of m's lower digits as a float (exact below 2^24; never 0 there),
 * a conversion that vectorizes. Ternary: ternary_count. */
static inline int32_t spike_count(int32_t q, float top_pattern, int32_t code) {
    const uint32_t v = (uint32_t)q;
    if (code == 0) return bits_set(v);
    if (code == 2) return ternary_count(v);
    const uint32_t top = (uint32_t)(int32_t)top_pattern, marks = ((v << 1) + v) ^ v, lower = marks & (top << 1);
#ifdef __AVX512CD__
    /* T - 2 - j = T - 1 - (31 - leading zeros of lower): one instruction where the CPU counts them in vectors */
    return bits_set(marks) + (marks > (top << 1) + 1u ? bits_set(top) - 32 + __builtin_clz(lower) : 0);
#else
    const float as_float = (float)(int32_t)lower;
    int32_t bits;
    memcpy(&bits, &as_float, sizeof bits);
    /* T - 2 - j = T - 1 - (exponent of lower) = bits_set(top) + 126 - (bits >> 23) */
    return bits_set(marks) + (marks > (top << 1) + 1u ? bits_set(top) + 126 - (bits >> 23) : 0);
#endif
}

static inline float bits_to_float(int32_t bits) {
    float out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

/* 2^n for an integer-valued n <= 127, exactly as float32 exp2 (subnormal down to 2^-149, then 0). */
static inline float pow2(float n) {
    int32_t k = (int32_t)(n > -150.0f ? n : -150.0f);
    int32_t subnormal = k >= -149 ? 1 << ((k + 149) & 31) : 0;
    return bits_to_float(k >= -126 ? (k + 127) << 23 : subnormal);
}

/* z / 2^e for finite z, e the exponent of |z| (|z| 2^-e in [1/2, 1); ops.coding.element_exponent) within
 * [-span, 0], read from z's exponent field F (e = F - 126; a subnormal or zero z takes -span); sets
 * *shift = 2^e. Exact: 2^-e >= 1 only raises the exponent. */
static inline float element_reduced(float z, int32_t span, float *shift) {
    uint32_t bits;
    memcpy(&bits, &z, sizeof bits);
    int32_t field = (int32_t)(bits & 0x7F800000u);
    field = field < (126 << 23) ? field : (126 << 23);
    const int32_t lowest = (126 - span) << 23;
    field = field > lowest ? field : lowest;
    *shift = bits_to_float(field + (1 << 23));
    return z * bits_to_float((253 << 23) - field);
}


/* Table lookups run in blocks of this many elements (their indices and operands stay in L1). */
#define LOOKUP_BLOCK 512

/* table[index[i]] in place of index[i] for i < m: gather instructions, sixteen lanes at a time, where the
 * CPU has AVX-512 (compilers emulate a gather with scalar loads and lane inserts, about three times
 * slower), then one by one. */
static inline void gather_i32(int32_t *restrict index, int64_t m, const int32_t *restrict table) {
    int64_t i = 0;
#ifdef __AVX512F__
    for (; i + 16 <= m; i += 16)
        _mm512_storeu_si512(index + i, _mm512_i32gather_epi32(_mm512_loadu_si512(index + i), table, 4));
#endif
    for (; i < m; ++i) index[i] = table[index[i]];
}

/* Loops whose body depends on the digit code take it as a constant argument of an always-inlined
 * helper, called once per code: each copy has no branch on the code, so it vectorizes. */
#define INLINE static inline __attribute__((always_inline))
#define BY_CODE(code, call) ((code) == 2 ? (call(2)) : (code) ? (call(1)) : (call(0)))

/* The signed MBE_Id value of x (Eq. 9: sign(x) q w 2^-T) and its spike count, given u = |x g| (quantize's). */
INLINE float code_value_of(float x, float u, coder_t c, int32_t code, int32_t *count) {
    const int32_t q = digits_of(u < c.clamp ? u : c.clamp, c);
    *count = spike_count(q, c.top, code);
    return copysignf(digits_value(q) * c.step, x);
}

/* The signed MBE_Id value of x and its spike count. */
INLINE float code_value(float x, coder_t c, int32_t code, int32_t *count) {
    return code_value_of(x, fabsf(x * c.gain), c, code, count);
}

/* A row kernel's coder (IdentityCoder.row_params): the MBE_Id coder, and a centred code's centre and zero
 * threshold (both 0: the plain code). */
typedef struct {
    coder_t c;
    float centre, zero;
} band_t;

static band_t band_of(const double *p) {
    const band_t b = {coder_of(p), (float)p[6], (float)p[7]};
    return b;
}

/* The value of x in a row coder and its spike count (IdentityCoder.code_within): with centred (b.centre > 0)
 * the centred code |x| = centre + v (IdentityCoder.centred), v the signed digits of |x| - centre clamped to
 * the digits' reach (the coder's clamp), the centre one spike more, and 0 without a spike for |x| < zero;
 * otherwise code_value. */
INLINE float band_value(float x, band_t b, int32_t code, int centred, int32_t *count) {
    if (!centred) return code_value(x, b.c, code, count);
    const float m = fabsf(x), offset = m - b.centre;
    const int32_t live = m >= b.zero, q = quantize(offset, b.c);
    *count = (spike_count(q, b.c.top, code) + 1) * live; /* products, not branches: the loops vectorize */
    const float v = copysignf(digits_value(q) * b.c.step, offset) + b.centre;
    return copysignf(v * (float)live, x);
}

/* The overflow shift of a unit-range code (ops.coding.overflow_shift with A = 1): e >= 0 the smallest
 * exponent with |u| <= 2^e, at most 127, read from the bits of finite u (frexp's exponent, less one at an
 * exact power of two). Returns 2^e and sets *reduced = u / 2^e, exact: e > 0 only for |u| > 1, whose
 * quotient is a normal number, so lowering the exponent field by e is the division. */
INLINE float unit_overflow_shift(float u, float *reduced) {
    int32_t bits;
    memcpy(&bits, &u, sizeof bits);
    const int32_t magnitude = bits & 0x7FFFFFFF;
    int32_t e = (magnitude >> 23) - 127 + ((magnitude & 0x7FFFFF) != 0);
    e = e > 0 ? e : 0;
    e = e < 127 ? e : 127;
    *reduced = bits_to_float(bits - (e << 23));
    return bits_to_float((e + 127) << 23);
}

/* Operand codes counted in blocks (per-block counts are int32; at most 24 spikes per element). */
#define CODE_BLOCK 4096

INLINE void encode_block(const float *restrict x, int64_t n, coder_t c, float A, int32_t code, float *restrict value,
                         float *restrict counts, int64_t *stats) {
    int32_t spikes = 0, clamped = 0, bad = 0;
    for (int64_t i = 0; i < n; ++i) {
        int32_t count;
        value[i] = code_value(x[i], c, code, &count);
        counts[i] = (float)count;
        spikes += count;
        clamped += fabsf(x[i]) > A;
        bad += !(fabsf(x[i]) <= FLT_MAX);
    }
    stats[0] += spikes;
    stats[1] += clamped;
    stats[2] += bad;
}

/* An operand's MBE_Id code (IdentityCoder.encode, fast mode): value and spikes per element; the
 * coder clamps |x| to A, which changes nothing below A. stats += (spikes, |x| > A, NaN/Inf). */
void sjmbe_encode_f32(const float *restrict x, int64_t n, const double *coder, double limit, float *restrict value,
                      float *restrict counts, int64_t *stats) {
    const coder_t c = coder_of(coder);
    const float A = (float)limit;
    for (int64_t start = 0; start < n; start += CODE_BLOCK) {
        const int64_t m = n - start < CODE_BLOCK ? n - start : CODE_BLOCK;
#define ENCODE(code) encode_block(x + start, m, c, A, code, value + start, counts + start, stats)
        BY_CODE(c.code, ENCODE);
#undef ENCODE
    }
}

/* SpikingWeightInput's and SpikingReLU's input code on n <= CODE_BLOCK elements: element i is
 * u = (relu?(x[i]) - centre) / range (range and centre scalars, or per element when per_element),
 * held at +-FLT_MAX (ops.coding.finite), coded at its overflow shift s as the unit-range MBE_Id code of
 * u / s, and decoded as ((sign(u) q w 2^-T) s) range + centre, the operations of the eager path in its
 * order. The quotients are taken first; when none lies beyond [-1, 1] (nor is NaN), every shift is 1,
 * u / s = u and the multiplication by s is exact, so that pass skips the shift and returns the same
 * bits. stats += (spikes, |u / s| > 1: beyond even the largest shift, NaN/Inf inputs). */
INLINE void channel_block(const float *restrict x, int64_t n, const float *restrict range,
                          const float *restrict centre, int per_element, int rectify, coder_t c, int32_t code,
                          float *restrict out, int64_t *stats) {
    float unit[CODE_BLOCK];
    int32_t spikes = 0, clamped = 0, bad = 0, beyond = 0;
    for (int64_t i = 0; i < n; ++i) {
        const int64_t k = per_element ? i : 0;
        float v = x[i];
        bad += !(fabsf(v) <= FLT_MAX);
        if (rectify) v = v > 0.0f ? v : 0.0f;
        if (centre) v = v - centre[k];
        unit[i] = v / range[k];
        beyond += !(fabsf(unit[i]) <= 1.0f);
    }
    if (beyond) {
        for (int64_t i = 0; i < n; ++i) {
            const int64_t k = per_element ? i : 0;
            float u = unit[i];
            u = u < FLT_MAX ? u : FLT_MAX;
            u = u > -FLT_MAX ? u : -FLT_MAX;
            float w;
            const float shift = unit_overflow_shift(u, &w);
            const int32_t q = quantize(w, c);
            spikes += spike_count(q, c.top, code);
            clamped += fabsf(w) > 1.0f;
            float value = (copysignf(digits_value(q) * c.step, w) * shift) * range[k];
            if (centre) value = value + centre[k];
            out[i] = value;
        }
    } else {
        for (int64_t i = 0; i < n; ++i) {
            const int64_t k = per_element ? i : 0;
            const float u = unit[i];
            const int32_t q = quantize(u, c);
            spikes += spike_count(q, c.top, code);
            float value = copysignf(digits_value(q) * c.step, u) * range[k];
            if (centre) value = value + centre[k];
            out[i] = value;
        }
    }
    stats[0] += spikes;
    stats[1] += clamped;
    stats[2] += bad;
}

INLINE void channel_span(const float *restrict x, int64_t n, const float *restrict range,
                         const float *restrict centre, int per_element, int rectify, coder_t c, float *restrict out,
                         int64_t *stats) {
#define SPAN(code) channel_block(x, n, range, centre, per_element, rectify, c, code, out, stats)
    if (centre) BY_CODE(c.code, SPAN); /* two copies: with a centre and without (known NULL) */
    else BY_CODE(c.code, SPAN);
#undef SPAN
}

/* Elements [start, stop) of a unit-range operand viewed as [outer, channels, inner] (channels = 1: one
 * range for all), channel k with range ranges[k] and centre centres[k] (centres may be NULL), coded by
 * channel_block; rectify: relu first (SpikingReLU). stats += (spikes, clamped, NaN/Inf). */
void sjmbe_channel_code_f32(const float *restrict x, int64_t start, int64_t stop, int64_t channels, int64_t inner,
                            int32_t rectify, const float *ranges, const float *centres, const double *coder,
                            float *restrict out, int64_t *stats) {
    const coder_t c = coder_of(coder);
    for (int64_t i = start; i < stop;) {
        const int64_t k = (i / inner) % channels, left = stop - i < CODE_BLOCK ? stop - i : CODE_BLOCK;
        const float *centre = centres ? centres + k : NULL;
        if (inner == 1) { /* a row of channels: each element its own */
            const int64_t n = channels - k < left ? channels - k : left;
            if (rectify) channel_span(x + i, n, ranges + k, centre, 1, 1, c, out + i, stats);
            else channel_span(x + i, n, ranges + k, centre, 1, 0, c, out + i, stats);
            i += n;
        } else { /* a run of one channel */
            const int64_t n = inner - i % inner < left ? inner - i % inner : left;
            if (rectify) channel_span(x + i, n, ranges + k, centre, 0, 1, c, out + i, stats);
            else channel_span(x + i, n, ranges + k, centre, 0, 0, c, out + i, stats);
            i += n;
        }
    }
}

/* The overflow shift of an operand of range A (ops.coding.overflow_shift): 2^e, e >= 0 the smallest
 * exponent with |x| <= 2^e A, at most 2^127: frexp's exponent of the quotient |x| / A in float64 (A = 1:
 * |x| itself in float32) times 1 - eps/2, read from its bits (a finite x: the quotient is finite; a zero
 * or subnormal one reads below 0 and is held at 0), so the loop over it vectorizes. */
static inline float operand_shift(float x, double A) {
    int32_t e;
    if (A == 1.0) {
        const float q = fabsf(x) * (1.0f - FLT_EPSILON / 2);
        uint32_t bits;
        memcpy(&bits, &q, sizeof bits);
        e = (int32_t)(bits >> 23) - 126;
    } else {
        const double q = fabs((double)x) / A * (1.0 - DBL_EPSILON / 2);
        uint64_t bits;
        memcpy(&bits, &q, sizeof bits);
        e = (int32_t)(bits >> 52) - 1022;
    }
    e = e > 0 ? e : 0;
    return bits_to_float(((e < 127 ? e : 127) + 127) << 23);
}

/* A run of an operand's codes (IdentityCoder.fused: clamped to A, the sign carried; with span >= 0,
 * each element x first reduced to x / 2^e at its element exponent e, the exponent of x / A within
 * [-span, 0] (element_reduced; value times 2^e); with shifting, coded as x / s at its overflow shift s
 * and its value times s, as code.shifted does). Spikes per element to counts; stats3 += (spikes,
 * |x / s| > A, NaN/Inf). */
INLINE void operand_block(const float *restrict x, int64_t n, coder_t c, float A, int32_t code, int shifting,
                          int32_t span, double A_d, float *restrict value, int32_t *restrict counts, int64_t *stats3) {
    int32_t spikes = 0, clamped = 0, bad = 0;
    for (int64_t i = 0; i < n; ++i) {
        float v = x[i], s = 1.0f, e = 1.0f;
        bad += !(fabsf(v) <= FLT_MAX);
        if (span >= 0) {
            element_reduced(v / A, span, &e);
            v = v / e;
        }
        if (shifting) {
            s = operand_shift(v, A_d);
            v = v / s;
        }
        int32_t count;
        float coded = code_value(v, c, code, &count);
        coded = shifting ? coded * s : coded;
        value[i] = span >= 0 ? coded * e : coded;
        counts[i] = count;
        spikes += count;
        clamped += fabsf(v) > A;
    }
    stats3[0] += spikes;
    stats3[1] += clamped;
    stats3[2] += bad;
}

#define OPERAND_BLOCK 1024
#define MAX_DIMS 8
/* Runs of at most GROUP_RUN elements whose codes go across `out` (stride out_step) while consecutive runs
 * lie next to each other there are coded GROUP at a time into a tile, then written a row of GROUP at a time. */
#define GROUP 16
#define GROUP_RUN 128

/* The next run's position: the outer indices advanced by one, with the offsets of x and out. */
static inline void next_run(int32_t dims, const int64_t *shape, const int64_t *in_strides, const int64_t *out_strides,
                            int64_t *index, int64_t *in_at, int64_t *out_at) {
    for (int32_t d = dims - 1; d >= 0; --d) {
        *in_at += in_strides[d];
        *out_at += out_strides[d];
        if (++index[d] < shape[d]) return;
        *in_at -= shape[d] * in_strides[d];
        *out_at -= shape[d] * out_strides[d];
        index[d] = 0;
    }
}

/* A run's elements into `buf` where they are not contiguous in x (in_step != 1); the run itself otherwise. */
static inline const float *run_source(const float *src, int64_t m, int64_t in_step, float *restrict buf) {
    if (in_step == 1) return src;
    for (int64_t j = 0; j < m; ++j) buf[j] = src[j * in_step];
    return buf;
}

/* SpikingMatmul's operand in fast mode: every element's code (operand_block) written where torch.matmul
 * reads it, and its spikes summed over one of the two matrix dimensions (the coincidences of the
 * product are sum_k colsum(c_a)[k] rowsum(c_b)[k]). x is walked as runs: outer dimensions shape[0..dims)
 * (strides in_strides in x, out_strides in out, in elements) around a run of `run` elements (strides
 * in_step, out_step); runs [first, last) in that order. The last outer dimension is the matrix
 * dimension crossing the runs, `rows` runs per matrix. reduce_run: a run's spikes add to sums[r] (the
 * run lies along the summed dimension); otherwise they add element-wise to its matrix's
 * sums[(r / rows) run ...]; span >= 0: each element at its element exponent (operand_block).
 * stats += (spikes, |x / s| > A, NaN/Inf). The run two rows ahead in the
 * matrix is prefetched (consecutive runs of a strided operand lie apart in x). Where out is transposed against
 * x (out_step != 1, consecutive runs adjacent in out), GROUP runs of the same matrix are coded into a
 * tile and written GROUP adjacent elements at a time; the codes and sums are the same. */
void sjmbe_operand_f32(const float *x, int32_t dims, const int64_t *shape, const int64_t *in_strides,
                       const int64_t *out_strides, int64_t run, int64_t in_step, int64_t out_step, int64_t rows,
                       int32_t reduce_run, int64_t first, int64_t last, const double *coder, double limit,
                       int32_t shifting, int32_t span, float *out, int32_t *sums, int64_t *stats) {
    const coder_t c = coder_of(coder);
    const float A = (float)limit;
    int64_t index[MAX_DIMS], in_at = 0, out_at = 0, rest = first;
    for (int32_t d = dims - 1; d >= 0; --d) {
        index[d] = rest % shape[d];
        rest /= shape[d];
        in_at += index[d] * in_strides[d];
        out_at += index[d] * out_strides[d];
    }
    const int grouped = out_step != 1 && out_strides[dims - 1] == 1 && run <= GROUP_RUN;
    float in_buf[OPERAND_BLOCK], out_buf[OPERAND_BLOCK], tile[GROUP * GROUP_RUN];
    int32_t counts[GROUP * GROUP_RUN];
#define SHIFTED(code) operand_block(src, m, c, A, code, 1, -1, limit, dst, counts_at, stats)
#define PLAIN(code) operand_block(src, m, c, A, code, 0, -1, limit, dst, counts_at, stats)
#define SPANNED(code) operand_block(src, m, c, A, code, shifting, span, limit, dst, counts_at, stats)
#define CODE_RUN() do { if (span >= 0) BY_CODE(c.code, SPANNED); else if (shifting) BY_CODE(c.code, SHIFTED); \
                        else BY_CODE(c.code, PLAIN); } while (0)
    for (int64_t r = first; r < last;) {
        if (grouped && index[dims - 1] + GROUP <= shape[dims - 1] && r + GROUP <= last) {
            const int64_t m = run, base = out_at;
            for (int g = 0; g < GROUP; ++g) { /* GROUP runs of one matrix, adjacent in out */
                const float *src = run_source(x + in_at, m, in_step, in_buf);
                float *dst = tile + g * GROUP_RUN;
                int32_t *counts_at = counts + g * GROUP_RUN;
                CODE_RUN();
                if (reduce_run) {
                    int32_t total = 0;
                    for (int64_t j = 0; j < m; ++j) total += counts_at[j];
                    sums[r + g] += total;
                }
                next_run(dims, shape, in_strides, out_strides, index, &in_at, &out_at);
            }
            for (int64_t j = 0; j < m; ++j) {
                float *restrict row_out = out + base + j * out_step;
                for (int g = 0; g < GROUP; ++g) row_out[g] = tile[g * GROUP_RUN + j];
            }
            if (!reduce_run) {
                int32_t *restrict row = sums + (r / rows) * run;
                for (int g = 0; g < GROUP; ++g)
                    for (int64_t j = 0; j < m; ++j) row[j] += counts[g * GROUP_RUN + j];
            }
            r += GROUP;
            continue;
        }
        if (in_step == 1 && index[dims - 1] + 2 < shape[dims - 1]) /* the run after the next one, into the cache */
            for (int64_t j = 0; j < run; j += 16) __builtin_prefetch(x + in_at + 2 * in_strides[dims - 1] + j, 0, 3);
        for (int64_t start = 0; start < run; start += OPERAND_BLOCK) {
            const int64_t m = run - start < OPERAND_BLOCK ? run - start : OPERAND_BLOCK;
            const float *src = run_source(x + in_at + start * in_step, m, in_step, in_buf);
            float *dst = out_step == 1 ? out + out_at + start : out_buf;
            int32_t *counts_at = counts;
            CODE_RUN();
            if (out_step != 1)
                for (int64_t j = 0; j < m; ++j) out[out_at + (start + j) * out_step] = out_buf[j];
            if (reduce_run) {
                int32_t total = 0;
                for (int64_t j = 0; j < m; ++j) total += counts[j];
                sums[r] += total;
            } else {
                int32_t *restrict row = sums + (r / rows) * run + start;
                for (int64_t j = 0; j < m; ++j) row[j] += counts[j];
            }
        }
        next_run(dims, shape, in_strides, out_strides, index, &in_at, &out_at);
        ++r;
    }
#undef CODE_RUN
#undef SHIFTED
#undef PLAIN
#undef SPANNED
}

/* |x| > A or NaN, read from the bits (A positive): the magnitude's bits order as the magnitudes do, NaN's
 * above every other */
static inline int32_t magnitude_of(float x) {
    int32_t bits;
    memcpy(&bits, &x, sizeof bits);
    return bits & 0x7FFFFFFF;
}

INLINE void product_block(const float *restrict a, const float *restrict b, int64_t n, coder_t ca, float A_a,
                          int32_t code_a, coder_t cb, float A_b, int32_t code_b, float *restrict out,
                          int64_t *stats) {
    int32_t spikes_a = 0, spikes_b = 0, coincidences = 0, clamped_a = 0, clamped_b = 0, bad = 0, top_a = 0, top_b = 0;
    for (int64_t i = 0; i < n; ++i) {
        int32_t count_a, count_b;
        const float u_a = fabsf(a[i] * ca.gain), u_b = fabsf(b[i] * cb.gain);
        out[i] = code_value_of(a[i], u_a, ca, code_a, &count_a) * code_value_of(b[i], u_b, cb, code_b, &count_b);
        spikes_a += count_a;
        spikes_b += count_b;
        coincidences += count_a * count_b;
        top_a = magnitude_of(u_a) > top_a ? magnitude_of(u_a) : top_a; /* the largest |a g|, NaN above all */
        top_b = magnitude_of(u_b) > top_b ? magnitude_of(u_b) : top_b;
    }
    /* rare: which operand is beyond its range, and which elements are NaN/Inf. The clamp is fl(A g) (times 2^T,
     * exact), so |a| > A gives |a g| >= clamp (rounding is monotone), and NaN/Inf reach it too */
    if (top_a >= magnitude_of(ca.clamp) || top_b >= magnitude_of(cb.clamp))
        for (int64_t i = 0; i < n; ++i) {
            clamped_a += fabsf(a[i]) > A_a;
            clamped_b += fabsf(b[i]) > A_b;
            bad += !(fabsf(a[i]) <= FLT_MAX) + !(fabsf(b[i]) <= FLT_MAX);
        }
    int32_t totals[6] = {spikes_a, spikes_b, coincidences, clamped_a, clamped_b, bad};
    for (int k = 0; k < 6; ++k) stats[k] += totals[k];
}

/* SpikingProduct of same-shape operands (Eqs. 9-12, the sum over spike coincidences regrouped as
 * the product of the decoded operands). stats += (spikes of a, of b, coincidences sum c_a c_b,
 * |a| > A_a, |b| > A_b, NaN/Inf). */
void sjmbe_product_f32(const float *restrict a, const float *restrict b, int64_t n, const double *coder_a,
                       double limit_a, const double *coder_b, double limit_b, float *restrict out, int64_t *stats) {
    const coder_t ca = coder_of(coder_a), cb = coder_of(coder_b);
    const float A_a = (float)limit_a, A_b = (float)limit_b;
    for (int64_t start = 0; start < n; start += CODE_BLOCK) {
        const int64_t m = n - start < CODE_BLOCK ? n - start : CODE_BLOCK;
#define PRODUCT(code_a, code_b) \
    product_block(a + start, b + start, m, ca, A_a, code_a, cb, A_b, code_b, out + start, stats)
        if (ca.code == 2 && cb.code == 2) PRODUCT(2, 2); /* a product's operands share their code */
        else if (ca.code) cb.code ? PRODUCT(1, 1) : PRODUCT(1, 0);
        else cb.code ? PRODUCT(0, 1) : PRODUCT(0, 0);
#undef PRODUCT
    }
}

/* A SplitFunction's table row for v in [lo, lo + width] (params[6] = lo): its digit pattern q, whose
 * (value, spikes) pair is table[2q], table[2q + 1]. */
static inline int32_t split_index(float v, const double *params) {
    const coder_t c = coder_of(params);
    const float lo = (float)params[6];
    return quantize(lo != 0.0f ? v - lo : v, c);
}

/* Rows are processed in blocks: each row's per-element stages up to its row value (the sum), then, once
 * the block's table rows are known and fetched ahead, each row's table lookup and the rest. The rows'
 * reads of a table far larger than the caches then wait together instead of one after the other; every
 * row runs the very same operations. */
#define ROW_BLOCK 16

/* Row sums in double as eight interleaved partial sums (lane k adds x[i + k] in the order of i; they
 * vectorize), the lanes then added in one fixed order (lanes_total). */
typedef float float8 __attribute__((vector_size(32)));
typedef double double8 __attribute__((vector_size(64)));

/* float8 -> double8, one instruction where the CPU has AVX-512 (GCC widens through two halves otherwise) */
static inline double8 widen(float8 v) {
#ifdef __AVX512F__
    __m256 lanes;
    memcpy(&lanes, &v, sizeof lanes);
    const __m512d wide = _mm512_cvtps_pd(lanes);
    double8 out;
    memcpy(&out, &wide, sizeof out);
    return out;
#else
    return __builtin_convertvector(v, double8);
#endif
}

/* lanes[k] += x[0..8) widened: eight elements added to the eight lanes */
static inline void add_lanes(double8 *lanes, const float *x) {
    float8 v;
    memcpy(&v, x, sizeof v);
    *lanes += widen(v);
}

static inline double lanes_total(const double part[8]) {
    return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

/* The sum of x[0..n) in double, in the lanes' order. */
static inline double sum_f64(const float *restrict x, int64_t n) {
    double8 parts = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) add_lanes(&parts, x + i);
    double part[8];
    memcpy(part, &parts, sizeof part);
    for (; i < n; ++i) part[i % 8] += x[i];
    return lanes_total(part);
}

/* The row's probabilities p = min(code(e) * scaled, 1) in place of e, each e coded at its own exponent
 * (element_exponent), in a centred code when centred; returns the spikes of e's codes. */
INLINE int32_t probabilities(float *restrict o, int64_t n, band_t ce, int32_t code, int centred, float scaled,
                             int32_t span) {
    int32_t spikes = 0;
    for (int64_t i = 0; i < n; ++i) {
        float shift;
        int32_t count;
        const float u = element_reduced(o[i], span, &shift);
        const float coded = band_value(u, ce, code, centred, &count);
        spikes += count;
        const float p = (coded * shift) * scaled;
        o[i] = p < 1.0f ? p : 1.0f; /* a probability: capped at its true maximum */
    }
    return spikes;
}

/* SpikingSoftmax (Eq. 13 for 2^frac, the IEEE-754 split for 1/sum, Eqs. 9-12 for the product) on
 * contiguous rows of length n; stats += (spikes, live elements, product SOPs, NaN/+inf). The exponent
 * is floor(y + carry) and the fraction max(y - exponent, 0): a fraction within carry (half a step) of 1
 * rounds to 2^(exponent + 1) 2^0, as in SpikingSoftmax.stages. */
void sjmbe_softmax_f32(const float *restrict x, int64_t rows, int64_t n, double log2e, double min_exponent,
                       double carry,
                       const double *exp2_coder, const int32_t *exp2_packed, int32_t exp2_base,
                       const double *recip_coder, const float *recip_table, const double *e_coder,
                       const double *r_coder, int32_t element_span, float *restrict out, int64_t *stats) {
    const coder_t cx = coder_of(exp2_coder);
    const band_t ce = band_of(e_coder), cr = band_of(r_coder);
    const float l2e = (float)log2e, floor_exp = (float)min_exponent, up = (float)carry;
    for (int64_t first = 0; first < rows; first += ROW_BLOCK) {
        const int64_t block = rows - first < ROW_BLOCK ? rows - first : ROW_BLOCK;
        float totals[ROW_BLOCK];
        int32_t exponents[ROW_BLOCK], patterns[ROW_BLOCK], spikes[ROW_BLOCK], live[ROW_BLOCK], bad[ROW_BLOCK];
        for (int64_t r = 0; r < block; ++r) { /* 2^(x - max) and the row sum */
            const float *restrict xr = x + (first + r) * n;
            float *restrict o = out + (first + r) * n;
            float peak = -INFINITY;
            int32_t nonfinite = 0;
#pragma omp simd reduction(max : peak) reduction(+ : nonfinite)
            for (int64_t i = 0; i < n; ++i) {
                peak = xr[i] > peak ? xr[i] : peak;
                nonfinite += !(xr[i] < INFINITY);
            }
            const float m = peak == -INFINITY ? 0.0f : peak; /* a fully masked row */
            int32_t fired = 0, alive_count = 0;
            for (int64_t start = 0; start < n; start += LOOKUP_BLOCK) { /* y, its table word, then 2^y */
                const int64_t count = n - start < LOOKUP_BLOCK ? n - start : LOOKUP_BLOCK;
                float y[LOOKUP_BLOCK];
                int32_t word[LOOKUP_BLOCK];
                for (int64_t i = 0; i < count; ++i) {
                    const float v = (xr[start + i] - m) * l2e;
                    y[i] = v > floor_exp ? v : floor_exp;
                    const float frac = y[i] - floorf(y[i] + up);
                    word[i] = quantize(frac > 0.0f ? frac : 0.0f, cx);
                }
                gather_i32(word, count, exp2_packed);
                for (int64_t i = 0; i < count; ++i) {
                    const int32_t alive = y[i] > floor_exp;
                    const uint32_t w = (uint32_t)word[i];
                    o[start + i] = bits_to_float(exp2_base + (int32_t)(w & 0xFFFFFFu)) * pow2(floorf(y[i] + up));
                    fired += alive ? (int32_t)(w >> 24) : 0;
                    alive_count += alive;
                }
            }
            const float total = (float)sum_f64(o, n);
            const float mantissa = frexpf(total > 0.0f ? total : 1.0f, &exponents[r]);
            patterns[r] = split_index(2.0f * mantissa, recip_coder);
            __builtin_prefetch(recip_table + 2 * patterns[r]);
            totals[r] = total;
            spikes[r] = fired;
            live[r] = alive_count;
            bad[r] = nonfinite;
        }
        for (int64_t r = 0; r < block; ++r) { /* 1/sum and the probabilities */
            /* a fully masked row (total 0): its reciprocal would only scale zeros, so it does not fire */
            const int32_t q = patterns[r], fires = totals[r] > 0.0f;
            const float recip = fires ? recip_table[2 * q] : 0.0f;
            spikes[r] += fires ? (int32_t)recip_table[2 * q + 1] : 0;
            int32_t r_spikes;
            const float scaled = band_value(recip, cr, cr.c.code, cr.centre > 0.0f, &r_spikes)
                                 * pow2(1.0f - (float)exponents[r]);
#define PROBABILITIES(code) probabilities(out + (first + r) * n, n, ce, code, 0, scaled, element_span)
#define CENTRED_PROBABILITIES(code) probabilities(out + (first + r) * n, n, ce, code, 1, scaled, element_span)
            const int32_t e_spikes = ce.centre > 0.0f ? BY_CODE(ce.c.code, CENTRED_PROBABILITIES)
                                                      : BY_CODE(ce.c.code, PROBABILITIES);
#undef CENTRED_PROBABILITIES
#undef PROBABILITIES
            stats[0] += spikes[r] + e_spikes + r_spikes;
            stats[1] += live[r];
            stats[2] += (int64_t)e_spikes * r_spikes;
            stats[3] += bad[r];
        }
    }
}

/* A row's extremes hi = max x and lo = min x (NaN skipped, as x > hi ? x : hi skips it), element by
 * element; returns its count of NaN/Inf. Only rows holding NaN or Inf come here. */
static int32_t extremes(const float *restrict x, int64_t n, float *hi, float *lo) {
    float top = -INFINITY, bottom = INFINITY;
    int32_t nonfinite = 0;
    for (int64_t i = 0; i < n; ++i) {
        top = x[i] > top ? x[i] : top;
        bottom = x[i] < bottom ? x[i] : bottom;
        nonfinite += !(fabsf(x[i]) <= FLT_MAX);
    }
    *hi = top;
    *lo = bottom;
    return nonfinite;
}

/* Sixteen elements of a LayerNorm row into its lane-wise extremes and its sum's lanes. */
INLINE void scan16(const float *restrict v, float *restrict top, float *restrict bottom, double8 *parts) {
#pragma omp simd
    for (int j = 0; j < 16; ++j) {
        top[j] = v[j] > top[j] ? v[j] : top[j];
        bottom[j] = v[j] < bottom[j] ? v[j] : bottom[j];
    }
    add_lanes(parts, v);
    add_lanes(parts, v + 8);
}

/* A LayerNorm row's extremes (as extremes()) and its sum in double (as sum_f64), from scan16's lanes and
 * its last n - i elements. */
INLINE void scan_total(const float *restrict row, int64_t i, int64_t n, const float *top, const float *bottom,
                       double8 parts, float *hi, float *lo, double *sum) {
    float h = -INFINITY, l = INFINITY;
    for (int j = 0; j < 16; ++j) {
        h = top[j] > h ? top[j] : h;
        l = bottom[j] < l ? bottom[j] : l;
    }
    double part[8];
    memcpy(part, &parts, sizeof part);
    for (; i < n; ++i) {
        h = row[i] > h ? row[i] : h;
        l = row[i] < l ? row[i] : l;
        part[i % 8] += row[i];
    }
    *hi = h;
    *lo = l;
    *sum = lanes_total(part);
}

/* Two LayerNorm rows a, b read together: each row's extremes (as extremes()) and its sum in double, added
 * as sum_f64 adds it (its eight lanes in the order of i); the two rows' chains of adds overlap. A sum that
 * is not finite marks a row with NaN or Inf (finite floats never reach a non-finite double sum). */
static void centred_scans(const float *restrict a, const float *restrict b, int64_t n, float hi[2], float lo[2],
                          double sum[2]) {
    float top_a[16], bottom_a[16], top_b[16], bottom_b[16];
    double8 parts_a = {0, 0, 0, 0, 0, 0, 0, 0}, parts_b = parts_a;
    for (int j = 0; j < 16; ++j) {
        top_a[j] = top_b[j] = -INFINITY;
        bottom_a[j] = bottom_b[j] = INFINITY;
    }
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        scan16(a + i, top_a, bottom_a, &parts_a);
        scan16(b + i, top_b, bottom_b, &parts_b);
    }
    scan_total(a, i, n, top_a, bottom_a, parts_a, hi, lo, sum);
    scan_total(b, i, n, top_b, bottom_b, parts_b, hi + 1, lo + 1, sum + 1);
}

/* The largest |x| of a row as its bits (an integer, so the loop is one comparison per element and order
 * free); at least 0x7F800000 marks a row with NaN or Inf. */
static int32_t magnitude_bits(const float *restrict x, int64_t n) {
    int32_t top = 0;
    for (int64_t i = 0; i < n; ++i) {
        int32_t bits;
        memcpy(&bits, x + i, sizeof bits);
        bits &= 0x7FFFFFFF;
        top = bits > top ? bits : top;
    }
    return top;
}

/* A norm element's code of z = (x - mean) scale (x scale when not centered: x - 0 = x), scale = 2^-k the row's,
 * each element at its own exponent 2^e, e in [-span, 0] with exponents (element_exponent):
 * sign(z) q w 2^-T 2^e, its spikes to *count.
 * e is frexp's exponent of z (|z| = m 2^e, m in [1/2, 1)) held in [-span, 0] (span <= 126), read in
 * place from z's exponent field E = e + 126: clamped to [126 - span, 126] where it lies, 2^e's field is
 * E + 1 and 2^-e's 253 - E. A subnormal or zero z (E = 0) takes e = -span, as frexp's e <= -126 would
 * (a zero codes to the same signed zero at any exponent); NaN/Inf (E = 255) e = 0.
 * exponents: 0 the row's exponent alone; 1 each element's, z 2^-e g as ((c 2^-k) 2^-e) g, two exact scalings
 * and one rounding; 3 each element's in the centred code (band_value of z 2^-e); 2 the same as 1 as one
 * product c (2^(-k - e) g), for a row whose factor 2^(-k - e) g is
 * normal (z_row): z's field is c = x - mean's less k's (E = F - K) wherever z is normal, so F is clamped
 * to [126 - span, 126] + K instead, and the factor's bits are g's plus (126 - F) << 23 (the k's cancel),
 * exact. It rounds the same real number once, wherever z is normal; where it is not, z is below 2^-126,
 * e = -span and both round below 1/2: q = 0 either way, and the sign is c's. */
INLINE float z_code(float x, float mean, float scale, int32_t k, int element_span, band_t bz, int32_t code,
                    int centered, int exponents, int32_t *count) {
    const coder_t cz = bz.c;
    const float c = centered ? x - mean : x;
    float u, shift = 1.0f;
    if (exponents == 3) {
        const float z = element_reduced(c * scale, element_span, &shift);
        return band_value(z, bz, code, 1, count) * shift;
    }
    if (exponents == 2) {
        uint32_t bits, gain_bits;
        memcpy(&bits, &c, sizeof bits);
        memcpy(&gain_bits, &cz.gain, sizeof gain_bits);
        const int32_t row = k * (1 << 23), top = (126 << 23) + row, lowest = ((126 - element_span) << 23) + row;
        int32_t field = (int32_t)(bits & 0x7F800000u);
        field = field < top ? field : top;
        field = field > lowest ? field : lowest;
        shift = bits_to_float(field - row + (1 << 23));
        /* unsigned: the sum may pass 2^31 on the way, never at the end (z_row) */
        u = c * bits_to_float((int32_t)(gain_bits + (126u << 23) - (uint32_t)field));
    } else {
        float z = c * scale;
        if (exponents) z = element_reduced(z, element_span, &shift);
        u = z * cz.gain;
    }
    /* |z| < 1 = A: a clamp at A would change no finite z, and NaN/Inf give top either way */
    const int32_t q = digits_of(fabsf(u), cz);
    *count = spike_count(q, cz.top, code);
    return copysignf(digits_value(q) * cz.step, c) * shift;
}

/* A norm row's codes o[i] = z_code(x[i]), their spikes and squared spikes added to *z_spikes, *z_squares;
 * returns the variance's sum of (o * o) * inv_n in double, added in the lanes' order (sum_f64's), so the
 * row is read once and the adds' latency hides behind the codes. Sixteen elements at a time (one vector
 * of codes), then one by one. */
INLINE double z_codes(const float *restrict xr, int64_t n, float mean, float scale, int32_t k, int element_span,
                      band_t cz, int32_t code, int centered, int exponents, float inv_n, float *restrict o,
                      int32_t *z_spikes, int32_t *z_squares) {
    int32_t spikes[16] = {0}, squares[16] = {0};
    double8 parts = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        float square[16];
        for (int j = 0; j < 16; ++j) {
            int32_t c;
            const float v = z_code(xr[i + j], mean, scale, k, element_span, cz, code, centered, exponents, &c);
            o[i + j] = v;
            square[j] = (v * v) * inv_n;
            spikes[j] += c;
            squares[j] += c * c;
        }
        add_lanes(&parts, square);
        add_lanes(&parts, square + 8);
    }
    double part[8];
    memcpy(part, &parts, sizeof part);
    for (; i < n; ++i) {
        int32_t c;
        const float v = z_code(xr[i], mean, scale, k, element_span, cz, code, centered, exponents, &c);
        o[i] = v;
        part[i % 8] += (v * v) * inv_n;
        spikes[0] += c;
        squares[0] += c * c;
    }
    for (int j = 0; j < 16; ++j) {
        *z_spikes += spikes[j];
        *z_squares += squares[j];
    }
    return lanes_total(part);
}

/* z_codes with the digit code, the centring and the element exponents as constants: one copy of its loop
 * for each (no branch in it). The scalings are one product (z_code's exponents = 2) when the gain g (field G)
 * is a positive normal float, the factor 2^(-k - e) g is normal for every e in [-span, 0] (its field G - k - e
 * in [1, 254]), and a subnormal c (F = 0) takes e = -span both ways: z = c 2^-k < 2^(-126 - k) has
 * e <= -span when k >= span - 125 (here span <= 2T <= 32 and k >= -40: always). A centred code (z_code's
 * exponents = 3) scales exactly first. */
static double z_row(const float *restrict xr, int64_t n, float mean, int32_t k, int element_span, band_t cz,
                    int centered, float inv_n, float *restrict o, int32_t *z_spikes, int32_t *z_squares) {
    const float scale = pow2((float)-k);
    uint32_t gain_bits;
    memcpy(&gain_bits, &cz.c.gain, sizeof gain_bits);
    const int32_t gain_field = (int32_t)(gain_bits >> 23); /* a negative gain: above 255 */
    const int merged = gain_field >= 1 && gain_field - k >= 1 && gain_field - k + element_span <= 254
                       && k >= element_span - 125;
    const int centred_code = cz.centre > 0.0f;
#define Z(code, centring, exponents) \
    z_codes(xr, n, mean, scale, k, element_span, cz, code, centring, exponents, inv_n, o, z_spikes, z_squares)
#define BY_EXPONENTS(code, centring) \
    (element_span < 0 ? Z(code, centring, 0) : centred_code ? Z(code, centring, 3) \
                      : merged ? Z(code, centring, 2) : Z(code, centring, 1))
#define BY_CENTRE(code) (centered ? BY_EXPONENTS(code, 1) : BY_EXPONENTS(code, 0))
    return BY_CODE(cz.c.code, BY_CENTRE);
#undef BY_CENTRE
#undef BY_EXPONENTS
#undef Z
}

/* SpikingLayerNorm (centered) / SpikingRMSNorm (squares and products by Eqs. 9-12, 1/sqrt(M) by an MBE
 * neuron) on contiguous rows of length n; weight, bias may be NULL; element_span >= 0: each element of z
 * carries its own exponent, at least -element_span (-1: the row's alone).
 * stats += (spikes, SOPs of both products, NaN/Inf). max |c| comes from the row's extremes: rounding
 * is monotone, so max_i |fl(x_i - mu)| = max(fl(max x - mu), fl(mu - min x)); for RMSNorm (mu = 0) that is
 * the largest |x|. A block's rows take their means and extremes first (a LayerNorm's two rows at a time),
 * then their codes and variances, then the 1/sqrt lookups and the rest. */
void sjmbe_norm_f32(const float *restrict x, int64_t rows, int64_t n, int centered, double eps,
                    double min_row_exponent, int element_span, const float *restrict weight, const float *restrict bias,
                    const double *z_coder, const double *rsqrt_coder, const float *rsqrt_table,
                    const double *rho_coder, float *restrict out, int64_t *stats) {
    const band_t cz = band_of(z_coder), cr = band_of(rho_coder);
    const float inv_n = (float)(1.0 / (double)n), eps_f = (float)eps;
    for (int64_t first = 0; first < rows; first += ROW_BLOCK) {
        const int64_t block = rows - first < ROW_BLOCK ? rows - first : ROW_BLOCK;
        float means[ROW_BLOCK], extents[ROW_BLOCK], variances[ROW_BLOCK];
        int32_t exponents[ROW_BLOCK], odds[ROW_BLOCK], patterns[ROW_BLOCK], z_spikes[ROW_BLOCK], z_squares[ROW_BLOCK],
            bad[ROW_BLOCK];
        for (int64_t r = 0; r < block; r += 2) { /* the means and max |x - mean| */
            const float *pair[2] = {x + (first + r) * n, x + (first + (r + 1 < block ? r + 1 : r)) * n};
            float hi[2] = {0.0f, 0.0f}, lo[2] = {0.0f, 0.0f};
            double sum[2] = {0.0, 0.0};
            if (centered) centred_scans(pair[0], pair[1], n, hi, lo, sum);
            for (int64_t s = r; s < r + 2 && s < block; ++s) {
                float h = hi[s - r], l = lo[s - r];
                const int32_t magnitude = centered ? 0 : magnitude_bits(pair[s - r], n);
                bad[s] = isfinite(sum[s - r]) && magnitude < 0x7F800000 ? 0 : extremes(pair[s - r], n, &h, &l);
                /* x - 0 = x: RMSNorm keeps c = x */
                means[s] = centered ? (float)(sum[s - r] / (double)n) : 0.0f;
                const float top = h - means[s], bottom = means[s] - l;
                extents[s] = centered || bad[s] ? (top > bottom ? top : bottom) : bits_to_float(magnitude);
            }
        }
        for (int64_t r = 0; r < block; ++r) { /* z's codes and the variance */
            const float *restrict xr = x + (first + r) * n;
            if (first + ROW_BLOCK + r < rows) /* the next block's row into L2 while this one computes */
                for (int64_t i = 0; i < n; i += 16) __builtin_prefetch(xr + ROW_BLOCK * n + i, 0, 2);
            int k;
            frexpf(extents[r], &k);
            k = k > (int)min_row_exponent ? k : (int)min_row_exponent;
            float *restrict o = out + (first + r) * n;
            int32_t spikes = 0, squares = 0;
            const float variance = (float)z_row(xr, n, means[r], k, element_span, cz, centered, inv_n, o, &spikes,
                                                &squares);
            int exponent;
            const float mantissa = frexpf(variance + eps_f * pow2(-2.0f * (float)k), &exponent);
            const int odd = ((exponent - 1) % 2 + 2) % 2;
            patterns[r] = split_index(2.0f * mantissa * (odd ? 2.0f : 1.0f), rsqrt_coder);
            __builtin_prefetch(rsqrt_table + 2 * patterns[r]);
            variances[r] = variance;
            exponents[r] = exponent;
            odds[r] = odd;
            z_spikes[r] = spikes;
            z_squares[r] = squares;
        }
        for (int64_t r = 0; r < block; ++r) { /* 1/sqrt, the product and the affine map */
            /* every digit of z is 0: the output is 0 whatever 1/sqrt is, so that stage does not fire */
            const int32_t q = patterns[r], fires = variances[r] > 0.0f;
            const float rho = fires ? rsqrt_table[2 * q] : 0.0f;
            const int32_t spikes = fires ? (int32_t)rsqrt_table[2 * q + 1] : 0;
            int32_t rho_spikes;
            const float scaled = band_value(rho, cr, cr.c.code, cr.centre > 0.0f, &rho_spikes)
                                 * pow2((float)-((exponents[r] - 1 - odds[r]) / 2));
            float *restrict o = out + (first + r) * n;
            for (int64_t i = 0; i < n; ++i) {
                float v = o[i] * scaled;
                if (weight) v = v * weight[i];
                if (bias) v = v + bias[i];
                o[i] = v;
            }
            stats[0] += spikes + z_spikes[r] + rho_spikes;
            stats[1] += z_squares[r] + (int64_t)z_spikes[r] * rho_spikes;
            stats[2] += bad[r];
        }
    }
}

/* A NeuronTable (neurons.lookup.NeuronTable: Eq. 8 as a table, SpikingActivation's fast path) as kernel
 * arguments. */
typedef struct {
    float lo, hi, scale, last;
    const int32_t *first, *jumps;
    const float *padded_edges, *entries;
    int32_t levels;
} table_t;

static table_t table_of(double lo, double hi, double scale, const int32_t *first, int32_t buckets,
                        const float *padded_edges, const int32_t *jumps, int32_t levels, const float *entries) {
    table_t t = {(float)lo, (float)hi, (float)scale, (float)(buckets - 1), first, jumps, padded_edges, entries, levels};
    return t;
}

/* A first candidate's word: the interval in bits 0-30, bit 31 set where its bucket's inputs may lie in a
 * later interval (the search moves only those; elsewhere binary lifting would stay at the candidate). */
#define CANDIDATE 0x7FFFFFFF

/* The lookup of m <= LOOKUP_BLOCK inputs clamped to [lo, hi]: a bucket's first candidate interval, binary
 * lifting by jumps[0..levels) over the padded edges, then the interval's (value, spikes) entry.
 * stats3 += (spikes, inputs outside [lo, hi], NaN/Inf). Where the CPU has AVX-512 the table reads are
 * gather instructions, sixteen lanes at a time (as gather_i32), and an entry's value and spikes are one
 * 64-bit read. Where at most a quarter of a block's inputs fall in unsettled buckets (about one in nine of
 * GELU's residual's on the speed model), the lifting runs on those only, their indices packed together;
 * otherwise on every lane. The loads and comparisons that decide are the same either way. */
static inline void lookup_block(const float *restrict xb, int64_t m, table_t t, float *restrict out, int64_t *stats3) {
    int32_t position[LOOKUP_BLOCK];
    float clamped[LOOKUP_BLOCK];
    int32_t outside = 0, bad = 0, spikes = 0;
    for (int64_t i = 0; i < m; ++i) {
        const float v = xb[i];
        bad += !(fabsf(v) <= FLT_MAX);
        outside += (v < t.lo) | (v > t.hi);
        float c = v >= t.lo ? v : t.lo; /* NaN -> lo: never indexes outside the tables */
        c = c <= t.hi ? c : t.hi;
        float bucket = floorf((c - t.lo) * t.scale);
        bucket = bucket > 0.0f ? bucket : 0.0f;
        bucket = bucket < t.last ? bucket : t.last;
        clamped[i] = c;
        position[i] = (int32_t)bucket;
    }
    gather_i32(position, m, t.first);
    int64_t start = 0;
#ifdef __AVX512F__
    start = m - m % 16;
    int32_t unsettled[LOOKUP_BLOCK];
    int64_t open = 0;
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int64_t i = 0; i < start; i += 16) {
        const __m512i word = _mm512_loadu_si512(position + i);
        const __mmask16 moves = _mm512_cmplt_epi32_mask(word, _mm512_setzero_si512());
        _mm512_storeu_si512(position + i, _mm512_and_si512(word, _mm512_set1_epi32(CANDIDATE)));
        _mm512_mask_compressstoreu_epi32(unsettled + open, moves, _mm512_add_epi32(lanes, _mm512_set1_epi32((int32_t)i)));
        open += __builtin_popcount(moves);
    }
    for (int32_t level = 0; 4 * open > start && level < t.levels; ++level) { /* many: search every lane */
        const __m512i jump = _mm512_set1_epi32(t.jumps[level]);
        for (int64_t i = 0; i < start; i += 16) {
            const __m512i at = _mm512_loadu_si512(position + i), candidate = _mm512_add_epi32(at, jump);
            const __m512 edge = _mm512_i32gather_ps(candidate, t.padded_edges, 4);
            const __mmask16 below = _mm512_cmp_ps_mask(edge, _mm512_loadu_ps(clamped + i), _CMP_LE_OQ);
            _mm512_storeu_si512(position + i, _mm512_mask_mov_epi32(at, below, candidate));
        }
    }
    for (int64_t j = 0; 4 * open <= start && j < open; j += 16) { /* few: search the unsettled ones only */
        const __mmask16 live = open - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (open - j)) - 1u);
        const __m512i at_index = _mm512_maskz_loadu_epi32(live, unsettled + j);
        const __m512 c = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, at_index, clamped, 4);
        __m512i at = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, at_index, position, 4);
        for (int32_t level = 0; level < t.levels; ++level) {
            const __m512i candidate = _mm512_add_epi32(at, _mm512_set1_epi32(t.jumps[level]));
            const __m512 edge = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, candidate, t.padded_edges, 4);
            at = _mm512_mask_mov_epi32(at, _mm512_mask_cmp_ps_mask(live, edge, c, _CMP_LE_OQ), candidate);
        }
        _mm512_mask_i32scatter_epi32(position, live, at_index, at, 4);
    }
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    __m512i fired = _mm512_setzero_si512();
    for (int64_t i = 0; i < start; i += 16) {
        const __m512i at = _mm512_loadu_si512(position + i);
        const __m512 low = _mm512_castsi512_ps(_mm512_i32gather_epi64(_mm512_castsi512_si256(at), t.entries, 8));
        const __m512 high = _mm512_castsi512_ps(_mm512_i32gather_epi64(_mm512_extracti64x4_epi64(at, 1), t.entries, 8));
        _mm512_storeu_ps(out + i, _mm512_permutex2var_ps(low, even, high));
        fired = _mm512_add_epi32(fired, _mm512_cvttps_epi32(_mm512_permutex2var_ps(low, odd, high)));
    }
    spikes += _mm512_reduce_add_epi32(fired);
#endif
    for (int64_t i = start; i < m; ++i) position[i] &= CANDIDATE;
    for (int32_t level = 0; level < t.levels; ++level) {
        const int32_t jump = t.jumps[level];
        for (int64_t i = start; i < m; ++i) {
            const int32_t candidate = position[i] + jump;
            position[i] = t.padded_edges[candidate] <= clamped[i] ? candidate : position[i];
        }
    }
    for (int64_t i = start; i < m; ++i) {
        out[i] = t.entries[2 * position[i]];
        spikes += (int32_t)t.entries[2 * position[i] + 1];
    }
    stats3[0] += spikes;
    stats3[1] += outside;
    stats3[2] += bad;
}

/* NeuronTable lookup of rows * n inputs, in blocks that keep the positions in L1.
 * stats += (spikes, inputs outside [lo, hi], NaN/Inf). */
void sjmbe_lookup_f32(const float *restrict x, int64_t rows, int64_t n, double lo, double hi, double scale,
                      const int32_t *first, int32_t buckets, const float *padded_edges, const int32_t *jumps,
                      int32_t levels, const float *entries, float *restrict out, int64_t *stats) {
    const table_t t = table_of(lo, hi, scale, first, buckets, padded_edges, jumps, levels, entries);
    const int64_t total = rows * n;
    for (int64_t start = 0; start < total; start += LOOKUP_BLOCK) {
        const int64_t m = total - start < LOOKUP_BLOCK ? total - start : LOOKUP_BLOCK;
        lookup_block(x + start, m, t, out + start, stats);
    }
}

/* A rectified activation (ops.activation.RectifiedActivation): relu(x) coded per channel
 * (sjmbe_channel_code_f32 with rectify, no centres) plus the residual's NeuronTable lookup, added as
 * rectifier(x) + residual(x), for elements [start, stop). stats += (the rectifier's spikes, clamped,
 * NaN/Inf; the residual's spikes, inputs outside its domain, NaN/Inf). With next_out, each block of the
 * output is also coded, while it is in L1, as the input of the weight layer it feeds
 * (sjmbe_channel_code_f32 of the output with next_channels, next_inner, next_ranges, next_centres and
 * next_coder, no rectifier) into next_out, and stats[6..8] += that code's (spikes, clamped, NaN/Inf). */
void sjmbe_rectified_f32(const float *restrict x, int64_t start, int64_t stop, int64_t channels, int64_t inner,
                         const float *ranges, const double *coder, double lo, double hi, double scale,
                         const int32_t *first, int32_t buckets, const float *padded_edges, const int32_t *jumps,
                         int32_t levels, const float *entries, float *restrict out, int64_t next_channels,
                         int64_t next_inner, const float *next_ranges, const float *next_centres,
                         const double *next_coder, float *restrict next_out, int64_t *stats) {
    const table_t t = table_of(lo, hi, scale, first, buckets, padded_edges, jumps, levels, entries);
    float residual[LOOKUP_BLOCK];
    for (int64_t i = start; i < stop; i += LOOKUP_BLOCK) {
        const int64_t m = stop - i < LOOKUP_BLOCK ? stop - i : LOOKUP_BLOCK;
        sjmbe_channel_code_f32(x, i, i + m, channels, inner, 1, ranges, NULL, coder, out, stats);
        lookup_block(x + i, m, t, residual, stats + 3);
        for (int64_t j = 0; j < m; ++j) out[i + j] = out[i + j] + residual[j];
        if (next_out)
            sjmbe_channel_code_f32(out, i, i + m, next_channels, next_inner, 0, next_ranges, next_centres, next_coder,
                                   next_out, stats + 6);
    }
}

/* One step of ECMT's Multi-Threshold neuron (spikingjelly_mbe.ecmt.MTNode): v = x + v_prev (v_prev NULL: 0), the
 * positive threshold lam_p 2^k with the largest k < levels such that v >= lam_p (2^k - 1/2) fires,
 * else the negative one with -v >= lam_n (2^k - 1/2); out = +-lam 2^k or 0, v_out = v - out.
 * The index is estimated from the binary exponent of |v| / lam + 1/2 and then settled by the exact
 * comparisons with the bounds, which the estimate's rounding can miss by at most one.
 * v_prev and v_out may be the same array. stats += (spikes, saturated: v_out still reaches the top
 * threshold, NaN/Inf inputs). */
void sjmbe_mt_step_f32(const float *restrict x, const float *v_prev, int64_t n, const double *lambdas,
                       int32_t levels, float *v_out, float *restrict out, int64_t *stats) {
    float bound[2][34], value[2][34];  /* [sign][j]: j = 0 silent, j = k + 1 threshold lam 2^k, then +inf */
    const float lam[2] = {(float)lambdas[0], (float)lambdas[1]};
    for (int s = 0; s < 2; ++s) {
        bound[s][0] = 0.0f;
        value[s][0] = 0.0f;
        for (int32_t k = 0; k < levels; ++k) {
            const float level = ldexpf(1.0f, k);
            bound[s][k + 1] = lam[s] * (level - 0.5f);
            value[s][k + 1] = (s ? -lam[s] : lam[s]) * level;
        }
        bound[s][levels + 1] = INFINITY;
    }
    const float inv[2] = {1.0f / lam[0], 1.0f / lam[1]};
    int64_t spikes = 0, saturated = 0, bad = 0;
    for (int64_t i = 0; i < n; ++i) {
        const float v = x[i] + (v_prev ? v_prev[i] : 0.0f);
        const int s = v < 0.0f;
        const float a = fabsf(v), q = a * inv[s] + 0.5f;
        uint32_t bits;
        memcpy(&bits, &q, sizeof bits);
        int32_t j = (int32_t)(bits >> 23) - 126;  /* 1 + floor(log2 q) for q >= 0.5 */
        j = j < 0 ? 0 : (j > levels ? levels : j);
        j -= j > 0 && !(a >= bound[s][j]);
        j += j < levels && a >= bound[s][j + 1];
        const float o = value[s][j], rest = v - o;
        v_out[i] = rest;
        out[i] = o;
        spikes += j != 0;
        saturated += (rest >= bound[0][levels]) | (-rest >= bound[1][levels]);
        bad += !(fabsf(x[i]) <= FLT_MAX);
    }
    stats[0] += spikes;
    stats[1] += saturated;
    stats[2] += bad;
}
