/* The chairman assignment (R. Tijdeman, "The chairman assignment problem", Discrete Math. 32, 1980).
 *
 * Fills out[0..n) with source ids 0..S-1 so that source s appears exactly counts[s] times and, for
 * every prefix length t and every source s, |c_s(t) - t * counts[s] / n| <= 1 - 1/(2(L-1)) < 1, where L is
 * the number of sources with counts[s] > 0. At step t the eligible sources are those that are at least
 * 1/(2(L-1)) behind their quota; among
 * them the one whose next quota deadline (c_s + Delta) / w_s comes first is chosen. Deadlines are compared
 * as correctly rounded doubles (monotonic in the exact fraction) and exactly (128-bit) only where two
 * doubles are equal, so the sequence does not depend on floating-point rounding.
 *
 * cursor[t] receives base[s] + c_s(t-1): the position of this sample in source s's own stream. base
 * is advanced in place, so consecutive phases continue each source's cursor. out and cursor are strided
 * (bytes between items), so they can be the two fields of SegmentIndex's packed 6-byte records.
 * Returns 0, or -1 if no source was eligible (impossible for valid input; kept as a guard).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef __int128 i128;
#define INFB 0x7FF0000000000000LL

static inline int64_t bits(double d) { int64_t b; memcpy(&b, &d, 8); return b; }
static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline void put16(char *p, int16_t v) { memcpy(p, &v, 2); }
static inline void put32(char *p, uint32_t v) { memcpy(p, &v, 4); }

int chairman(const int64_t *counts, int32_t S, int64_t n, char *out, int64_t out_stride, char *cursor,
             int64_t cursor_stride, int64_t *base, int64_t *used) {
    /* L: the sources with samples in this phase. The thresholds depend on L, never on S: zero-count
     * sources (streams other phases of the segment use) must not change this phase's order. */
    int32_t L = 0, only = 0;
    for (int32_t s = 0; s < S; ++s)
        if (counts[s] > 0) { ++L; only = s; }
    if (L <= 1) {
        for (int64_t t = 0; t < n; ++t) {
            put16(out + t * out_stride, (int16_t)only);
            put32(cursor + t * cursor_stride, (uint32_t)(base[only] + t));
        }
        base[only] += n;
        return 0;
    }
    const int64_t two_s1 = 2 * (int64_t)(L - 1), delta_num = 2 * (int64_t)L - 3;
    const int32_t SP = (S + 3) & ~3;
    /* heap, not stack: S can reach 32767 streams (8 arrays x 8 bytes x S) */
    int64_t *buf = (int64_t *)malloc(8 * (size_t)SP * sizeof(int64_t));
    if (buf == NULL) return -2;
    int64_t *elig = buf, *dlb = buf + SP, *key = buf + 2 * SP, *eq = buf + 3 * SP, *er = buf + 4 * SP,
            *eqi = buf + 5 * SP, *eri = buf + 6 * SP, *ed = buf + 7 * SP;
    for (int32_t s = 0; s < SP; ++s) {
        elig[s] = INT64_MAX; dlb[s] = INFB;
        if (s >= S || counts[s] <= 0) continue;
        const i128 D = (i128)two_s1 * counts[s], step = (i128)two_s1 * n;
        elig[s] = (int64_t)((n + D - 1) / D);
        ed[s] = (int64_t)D; eq[s] = (int64_t)(n / D); er[s] = (int64_t)(n % D);
        eqi[s] = (int64_t)(step / D); eri[s] = (int64_t)(step % D);
        dlb[s] = bits((double)delta_num / (double)counts[s]);
    }
    for (int64_t t = 1; t <= n; ++t) {
        int64_t m0 = INT64_MAX, m1 = INT64_MAX, m2 = INT64_MAX, m3 = INT64_MAX;
        for (int32_t s = 0; s < SP; s += 4) {
            key[s] = dlb[s] | (-(int64_t)(elig[s] > t) & INFB);
            key[s + 1] = dlb[s + 1] | (-(int64_t)(elig[s + 1] > t) & INFB);
            key[s + 2] = dlb[s + 2] | (-(int64_t)(elig[s + 2] > t) & INFB);
            key[s + 3] = dlb[s + 3] | (-(int64_t)(elig[s + 3] > t) & INFB);
            m0 = min64(m0, key[s]); m1 = min64(m1, key[s + 1]); m2 = min64(m2, key[s + 2]); m3 = min64(m3, key[s + 3]);
        }
        const int64_t m = min64(min64(m0, m1), min64(m2, m3));
        if (m >= INFB) { free(buf); return -1; }
        int32_t best = 0;
        while (key[best] != m) ++best;
        int32_t ties = 0;
        for (int32_t s = best + 1; s < S; ++s) ties += key[s] == m;
        if (ties) { /* equal doubles: compare the exact fractions, earliest source on exact ties */
            for (int32_t s = best + 1; s < S; ++s) {
                if (key[s] != m) continue;
                const i128 num_s = (i128)two_s1 * used[s] + delta_num, num_b = (i128)two_s1 * used[best] + delta_num;
                if (num_s * (i128)counts[best] < num_b * (i128)counts[s]) best = s;
            }
        }
        put16(out + (t - 1) * out_stride, (int16_t)best);
        put32(cursor + (t - 1) * cursor_stride, (uint32_t)(base[best] + used[best]));
        const int64_t u = ++used[best];
        dlb[best] = bits((double)(two_s1 * u + delta_num) / (double)counts[best]);
        if (u >= counts[best]) {
            elig[best] = INT64_MAX;
        } else {
            eq[best] += eqi[best]; er[best] += eri[best];
            if (er[best] >= ed[best]) { er[best] -= ed[best]; eq[best] += 1; }
            elig[best] = eq[best] + (er[best] > 0);
        }
    }
    for (int32_t s = 0; s < S; ++s) base[s] += used[s];
    free(buf);
    return 0;
}
