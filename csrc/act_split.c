/* act_split.c - the pair split of int8 activation rows for the AVX2 "split"
 * qgemm (x86/avx2/linear.c, mq.h mq_split_entry).
 *
 * Without VNNI, vpmaddubsw multiplies unsigned by signed bytes and adds each
 * pair into a saturating int16.  With the weight as the unsigned side
 * (w + 128: 0..255) and the activation codes as the signed side, a pair
 * (a, b) is exact while |a| + |b| <= 128 (255 * 128 = 32640 < 32767): one
 * operation per 32 multiply-adds fewer than the sign trick.  Symmetric
 * per-row codes rarely break it (a Gaussian row of 4096: 1.4% of pairs), so
 * a breaking pair keeps |a| + |b| = 128 in the row (its larger value cut
 * down) and the cut goes to a short list that the kernel adds at the end:
 * the same exact sums.  An entry of the list carries two cuts, one in each
 * pair slot of a 4-byte K-group (bytes 0-1 and 2-3), from two groups: the
 * kernel blends their weights by 16-bit words and multiplies once.
 * Plain C: the driver counts every row, then splits them when the level's
 * split kernel takes the call. */
#include "mq.h"

#include <stdlib.h>

static inline int breaks(int a, int b) { return abs(a) + abs(b) > 128; }

/* Pairs a chunk of the row takes at once: its flags fit a small stack buffer */
#define SPLIT_CHUNK_PAIRS 512

/* Row r's pair i (codes 2i, 2i + 1) cut: the larger one down to 128 - |other|, same sign (one cut
 * per pair, |cut| <= 127), the cut into the next entry of the pair's slot (i % 2: bytes 0-1 or 2-3
 * of its K-group); entries [filled, that entry) zeroed on first use. */
static void cut_pair(int8_t *q, int64_t i, mq_split_entry *entries, int64_t next[2], int64_t *filled) {
    const int slot = (int)(i & 1);
    const int64_t index = next[slot]++;
    for (; *filled <= index; (*filled)++) memset(&entries[*filled], 0, sizeof(*entries));
    const int a = q[2 * i], b = q[2 * i + 1];
    const int64_t big = abs(a) >= abs(b) ? 2 * i : 2 * i + 1;
    const int other = abs(a) >= abs(b) ? b : a, v = q[big];
    const int keep = v < 0 ? abs(other) - 128 : 128 - abs(other);
    entries[index].offset[slot] = (int32_t)(i / 2 * MQ_PANEL_GROUP_BYTES);
    entries[index].cut[big % 4] = (int8_t)(v - keep);
    q[big] = (int8_t)keep;
}

/* Flags of the breaking pairs among pairs [base, base + n) of row q (n <= SPLIT_CHUNK_PAIRS, the
 * tail of the last word 0) and their sum of codes. */
static int32_t chunk_flags(const int8_t *q, int64_t base, int64_t n, uint8_t *flag) {
    const int8_t *c = q + 2 * base;
    int32_t sum = 0;
    for (int64_t i = 0; i < n; i++) { /* a loop GCC vectorizes */
        const int a = c[2 * i], b = c[2 * i + 1];
        sum += a + b;
        flag[i] = (uint8_t)breaks(a, b);
    }
    for (int64_t i = n; i % 8; i++) flag[i] = 0;
    return sum;
}

/* The entries a split of row q (kp int8 codes, kp % 4 == 0) needs (the larger pair slot's count of
 * breaking pairs); *sum gets the row's sum of codes. */
int64_t mq_act_split_count(const int8_t *q, int64_t kp, int32_t *sum) {
    int32_t s = 0;
    int64_t count[2] = {0, 0};
    const int64_t pairs = kp / 2;
    for (int64_t base = 0; base < pairs; base += SPLIT_CHUNK_PAIRS) {
        const int64_t n = pairs - base < SPLIT_CHUNK_PAIRS ? pairs - base : SPLIT_CHUNK_PAIRS;
        uint8_t flag[SPLIT_CHUNK_PAIRS] __attribute__((aligned(8)));
        s += chunk_flags(q, base, n, flag);
        for (int64_t i = 0; i < n; i += 2) {
            count[0] += flag[i];
            count[1] += flag[i + 1];
        }
    }
    *sum = s;
    return count[0] > count[1] ? count[0] : count[1];
}

/* Split row q in place into its list entries[0 .. mq_act_split_count(q)) (room for that many). */
void mq_act_split_row(int8_t *q, int64_t kp, mq_split_entry *entries) {
    int64_t next[2] = {0, 0}, filled = 0;
    const int64_t pairs = kp / 2;
    for (int64_t base = 0; base < pairs; base += SPLIT_CHUNK_PAIRS) {
        const int64_t n = pairs - base < SPLIT_CHUNK_PAIRS ? pairs - base : SPLIT_CHUNK_PAIRS;
        uint8_t flag[SPLIT_CHUNK_PAIRS] __attribute__((aligned(8)));
        chunk_flags(q, base, n, flag);
        for (int64_t w = 0; w < n; w += 8) { /* 8 pairs at a time: most have no breaking one */
            uint64_t word;
            memcpy(&word, flag + w, 8);
            if (!word) continue;
            for (int64_t i = w; i < w + 8 && i < n; i++)
                if (flag[i]) cut_pair(q, base + i, entries, next, &filled);
        }
    }
}

