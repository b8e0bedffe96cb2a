/* act_split.c - the pair split of int8 activation rows for the AVX2 "split"
 * qgemm (x86/avx2/linear.c, mq.h mq_split_entry).
 *
 * Without VNNI, vpmaddubsw multiplies unsigned by signed bytes and adds each
 * pair into a saturating int16.  With the weight as the unsigned side
 * (w + 128: 0..255) and the activation codes as the signed side, a pair
 * (a, b) is exact while |a + b| <= 128: the two products lie in
 * [255 * min(a + b, 0), 255 * max(a + b, 0)] when a and b have one sign
 * (255 * 128 = 32640 < 32767), and a pair of opposite signs never leaves
 * [-32640, 32385].  One operation per 32 multiply-adds fewer than the sign
 * trick.  Symmetric per-row codes rarely break it (a Gaussian row of 4096:
 * 0.7% of pairs; counting |a| + |b| > 128 instead would take twice as many),
 * so a breaking pair keeps |a + b| = 128 in the row (its larger value cut
 * down) and the cut goes to a short list that the kernel adds at the end:
 * the same exact sums.  An entry of the list carries two cuts, one in each
 * pair slot of a 4-byte K-group (bytes 0-1 and 2-3), from two groups: the
 * kernel blends their weights by 16-bit words and multiplies once.
 * The driver counts every row (the table's act_split_count, an AVX2 twin in
 * x86/avx2/linear.c), then splits them here when the split kernel takes the call. */
#include "mq.h"

#include <stdlib.h>

/* a and b of one sign (a + b's), past 128 together: vpmaddubsw would saturate */
static inline int breaks(int a, int b) { return abs(a + b) > 128; }

/* Breaking pair i of q (codes 2i, 2i + 1; one sign, breaks()) cut in place: the larger code (the
 * first of equals) down to 128 - |other|, same sign, so that the pair sums to +-128; the cut
 * returned (|cut| <= 128: -128 beside -128 keeps 0 and cuts -128), its code's index in *at.
 * Rows here, and the direct conv's image rows (conv_split.c). */
int mq_split_cut_pair(int8_t *q, int64_t i, int64_t *at) {
    const int a = q[2 * i], b = q[2 * i + 1];
    *at = abs(a) >= abs(b) ? 2 * i : 2 * i + 1;
    const int other = *at == 2 * i ? b : a, v = q[*at];
    const int keep = v < 0 ? abs(other) - 128 : 128 - abs(other);
    q[*at] = (int8_t)keep;
    return v - keep;
}

/* Row r's breaking pair i cut (mq_split_cut_pair), the cut into the next entry of the pair's slot
 * (i % 2: bytes 0-1 or 2-3 of its K-group); entries [filled, that entry) zeroed on first use. */
static void cut_pair(int8_t *q, int64_t i, mq_split_entry *entries, int64_t next[2], int64_t *filled) {
    const int slot = (int)(i & 1);
    const int64_t index = next[slot]++;
    for (; *filled <= index; (*filled)++) memset(&entries[*filled], 0, sizeof(*entries));
    int64_t at;
    const int cut = mq_split_cut_pair(q, i, &at);
    entries[index].offset[slot] = (int32_t)(i / 2 * MQ_PANEL_GROUP_BYTES);
    entries[index].cut[at % 4] = (int8_t)cut;
}

/* Pairs [first, end) of row q: their sum of codes, each breaking one's bit set in mask (bit i % 32
 * of mask[i / 32], or'ed in: the words start at 0) and counted in its slot, count[i % 2].  The
 * scalar count below, and the AVX2 count's last word (x86/avx2/linear.c). */
int32_t mq_act_split_pairs(const int8_t *q, int64_t first, int64_t end, uint32_t *mask, int64_t count[2]) {
    int32_t s = 0;
    for (int64_t i = first; i < end; i++) {
        const int a = q[2 * i], b = q[2 * i + 1];
        s += a + b;
        if (!breaks(a, b)) continue;
        mask[i / 32] |= (uint32_t)1 << (i % 32);
        count[i & 1]++;
    }
    return s;
}

/* The entries a split of row q (kp int8 codes, kp % 4 == 0) needs (the larger pair slot's count of
 * breaking pairs); *sum gets the row's sum of codes, mask its breaking pairs: bit i % 32 of
 * mask[i / 32] for pair i (codes 2i, 2i + 1), mq_split_mask_words(kp) words, the rest 0.  The
 * scalar twin of the table's act_split_count. */
int64_t mq_act_split_count(const int8_t *q, int64_t kp, int32_t *sum, uint32_t *mask) {
    int64_t count[2] = {0, 0};
    memset(mask, 0, (size_t)mq_split_mask_words(kp) * sizeof(uint32_t));
    *sum = mq_act_split_pairs(q, 0, kp / 2, mask, count);
    return count[0] > count[1] ? count[0] : count[1];
}

/* Split row q in place by its mask (act_split_count's) into entries[0 .. its count). */
void mq_act_split_row(int8_t *q, int64_t kp, const uint32_t *mask, mq_split_entry *entries) {
    int64_t next[2] = {0, 0}, filled = 0;
    for (int64_t w = 0; w < mq_split_mask_words(kp); w++)
        for (uint32_t bits = mask[w]; bits; bits &= bits - 1) /* pairs in increasing order */
            cut_pair(q, w * 32 + __builtin_ctz(bits), entries, next, &filled);
}
