/* The chairman assignment (R. Tijdeman, "The chairman assignment problem", Discrete Math. 32, 1980).
 *
 * Fills out[0..n) with source ids 0..S-1 so that source s appears exactly counts[s] times and, for
 * every prefix length t and every source s, |c_s(t) - t * counts[s] / n| <= 1 - 1/(2(S-1)) < 1.
 * At step t the eligible sources are those that are at least 1/(2(S-1)) behind their quota; among
 * them the one whose next quota deadline (c_s + Delta) / w_s comes first is chosen. All comparisons are
 * exact integer arithmetic (128-bit), so the sequence does not depend on floating-point rounding.
 *
 * cursor[t] receives base[s] + c_s(t-1): the position of this sample in source s's own stream. base
 * is advanced in place, so consecutive phases continue each source's cursor.
 * Returns 0, or -1 if no source was eligible (impossible for valid input; kept as a guard).
 */
#include <stdint.h>
#include <limits.h>

typedef __int128 i128;

int chairman(const int64_t *counts, int32_t S, int64_t n, int16_t *out, uint32_t *cursor, int64_t *base,
             int64_t *used /* S scratch slots, zeroed by the caller */) {
    if (S == 1) {
        for (int64_t t = 0; t < n; ++t) { out[t] = 0; cursor[t] = (uint32_t)(base[0] + t); }
        base[0] += n;
        return 0;
    }
    const i128 two_s1 = 2 * (i128)(S - 1);
    const i128 delta_num = 2 * (i128)S - 3; /* Delta = (2S-3) / (2(S-1)) */
    /* Source s is eligible at step t when 2(S-1)(t*k - c*n) >= n, i.e. from
     * t >= (n + 2(S-1)*c*n) / (2(S-1)*k); this only changes when s is chosen, so keep it per source
     * and the inner loop compares plain integers. */
    int64_t elig[S];
    for (int32_t s = 0; s < S; ++s) {
        elig[s] = counts[s] > 0 ? (int64_t)((n + two_s1 * (i128)counts[s] - 1) / (two_s1 * (i128)counts[s])) : INT64_MAX;
    }
    /* Deadlines as doubles: IEEE division is correctly rounded and monotonic, so a strict double
     * comparison orders the exact fractions correctly; only equal doubles are compared exactly. */
    double dl[S];
    for (int32_t s = 0; s < S; ++s) dl[s] = counts[s] > 0 ? (double)delta_num / (double)counts[s] : 0.0;
    for (int64_t t = 1; t <= n; ++t) {
        int32_t best = -1;
        for (int32_t s = 0; s < S; ++s) {
            if (elig[s] > t) continue;
            if (best < 0 || dl[s] < dl[best]) { best = s; continue; }
            if (dl[s] == dl[best]) {
                const i128 num_s = two_s1 * used[s] + delta_num, num_b = two_s1 * used[best] + delta_num;
                if (num_s * (i128)counts[best] < num_b * (i128)counts[s]) best = s;
            }
        }
        if (best < 0) return -1;
        out[t - 1] = (int16_t)best;
        cursor[t - 1] = (uint32_t)(base[best] + used[best]);
        used[best] += 1;
        dl[best] = (double)(two_s1 * used[best] + delta_num) / (double)counts[best];
        if (used[best] >= counts[best]) {
            elig[best] = INT64_MAX;
        } else {
            const i128 k = counts[best];
            const i128 need = (i128)n + two_s1 * (i128)used[best] * (i128)n;  /* ceil(need / (2(S-1)k)) */
            elig[best] = (int64_t)((need + two_s1 * k - 1) / (two_s1 * k));
        }
    }
    for (int32_t s = 0; s < S; ++s) base[s] += used[s];
    return 0;
}
