/* Per-row top-k column indices of a row-major float32 matrix, for saekit.kernels.row_topk.
 *
 * torch.topk copies each row into (value, index) pairs and runs std::partial_sort over all of them;
 * for k = 32 of 4608 that is several times the cost of reading the row. Here, per row:
 *  1. the maxima of GROUP-entry groups, eight groups at a time with vertical vector maxima (group p
 *     is the strided columns p, p + stride, ...; the last n_cols mod GROUP columns are in no group);
 *  2. the bar: the k-th largest group maximum. At least k groups reach it, so at least k entries do,
 *     so every entry of the row's top k is >= the bar;
 *  3. the candidates: the entries >= the bar, looked for only in the groups whose maximum reaches it
 *     (about k of them) and in the ungrouped columns;
 *  4. the top k of the candidates: those above the k-th largest candidate, then as many equal to it
 *     as fill k.
 * The k-th largest of a small array is found by bisection over the floats' ordered bit patterns
 * (32 counting passes that vectorise, no data-dependent branches), which beats a quickselect's
 * mispredicted branches at these sizes.
 *
 * A NaN anywhere in the rows makes the call return 1 with nothing promised about the output: the
 * caller then uses torch.topk, whose NaN rule (NaN is largest) this kernel does not reproduce.
 */
#include <stdint.h>
#include <string.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#define GROUP 16

/* Unsigned keys in the order of the floats (-inf < ... < -0 < +0 < ... < +inf). */
static inline uint32_t order_key(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

static inline int is_nan(float f) { return f != f; }

/* The k-th largest of keys[0:n), 1 <= k <= n: the largest t with at least k keys >= t. */
static uint32_t kth_largest(const uint32_t *keys, int64_t n, int64_t k) {
    /* The answer lies between the smallest and the largest key: bisecting only that range takes as
     * many counting passes as the bits in which they differ, not always 32. */
    uint32_t lo = UINT32_MAX, hi = 0;
    for (int64_t i = 0; i < n; i++) {
        lo = keys[i] < lo ? keys[i] : lo;
        hi = keys[i] > hi ? keys[i] : hi;
    }
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2 + 1;
        uint32_t count = 0;  /* 32-bit, as the keys: the counting loop vectorises lane for lane */
        for (int64_t i = 0; i < n; i++) count += keys[i] >= mid;
        if ((int64_t)count >= k) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/* keys[p] = order key of the maximum of row[c * stride + p] over c < GROUP, p < stride. Returns 1 on NaN. */
static int group_max_keys(const float *row, int64_t stride, uint32_t *keys) {
    int64_t p = 0;
#if defined(__AVX2__)
    __m256 unordered = _mm256_setzero_ps();
    for (; p + 8 <= stride; p += 8) {
        __m256 m = _mm256_loadu_ps(row + p);
        unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(m, m, _CMP_UNORD_Q));
        for (int c = 1; c < GROUP; c++) {
            __m256 v = _mm256_loadu_ps(row + c * stride + p);
            unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
            m = _mm256_max_ps(m, v);
        }
        /* order_key of eight lanes: flip every bit of a negative float, only the sign of the rest */
        __m256i bits = _mm256_castps_si256(m);
        __m256i flip = _mm256_or_si256(_mm256_srai_epi32(bits, 31), _mm256_set1_epi32((int)0x80000000u));
        _mm256_storeu_si256((__m256i *)(keys + p), _mm256_xor_si256(bits, flip));
    }
    if (_mm256_movemask_ps(unordered)) return 1;
#endif
    for (; p < stride; p++) {
        float m = row[p];
        for (int c = 0; c < GROUP; c++) {
            float v = row[c * stride + p];
            if (is_nan(v)) return 1;
            m = v > m ? v : m;
        }
        keys[p] = order_key(m);
    }
    return 0;
}

static void sort_indices(int64_t *a, int64_t k) {
    for (int64_t i = 1; i < k; i++) {
        int64_t x = a[i], j = i - 1;
        while (j >= 0 && a[j] > x) { a[j + 1] = a[j]; j--; }
        a[j + 1] = x;
    }
}

/* Rows [row_begin, row_end) of scores [*, n_cols] -> out [*, k]: each row's top-k column indices,
 * ascending. Scratch: keys and ids of n_cols + n_cols / GROUP entries each. 1 <= k <= n_cols. */
int row_topk(const float *scores, int64_t n_cols, int64_t row_begin, int64_t row_end, int64_t k,
             int64_t *out, uint32_t *keys, int64_t *ids) {
    int64_t stride = n_cols / GROUP, grouped = GROUP * stride;
    uint32_t *group_keys = keys + n_cols;
    for (int64_t r = row_begin; r < row_end; r++) {
        const float *row = scores + r * n_cols;
        int64_t n_cand = 0;
        if (k >= stride) {  /* too few groups to narrow anything: every entry is a candidate */
            for (int64_t j = 0; j < n_cols; j++) {
                if (is_nan(row[j])) return 1;
                keys[j] = order_key(row[j]);
                ids[j] = j;
            }
            n_cand = n_cols;
        } else {
            if (group_max_keys(row, stride, group_keys)) return 1;
            uint32_t bar = kth_largest(group_keys, stride, k);
            for (int64_t p = 0; p < stride; p++) {
                if (group_keys[p] < bar) continue;
                for (int64_t j = p; j < grouped; j += stride) {  /* branch-free: written, kept if >= bar */
                    uint32_t key = order_key(row[j]);
                    keys[n_cand] = key;
                    ids[n_cand] = j;
                    n_cand += key >= bar;
                }
            }
            for (int64_t j = grouped; j < n_cols; j++) {
                if (is_nan(row[j])) return 1;
                uint32_t key = order_key(row[j]);
                if (key >= bar) { keys[n_cand] = key; ids[n_cand++] = j; }
            }
        }
        uint32_t kth = kth_largest(keys, n_cand, k);
        int64_t *dest = out + r * k, n_out = 0;
        for (int64_t i = 0; i < n_cand; i++) if (keys[i] > kth) dest[n_out++] = ids[i];
        for (int64_t i = 0; i < n_cand && n_out < k; i++) if (keys[i] == kth) dest[n_out++] = ids[i];
        sort_indices(dest, k);
    }
    return 0;
}
