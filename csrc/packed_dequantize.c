/* packed_dequantize.c - a packed int8 weight (layout.h) back to float32 rows in torch's
 * order in one pass: the weight of a weight-only layer made per call for torch's op (a
 * conv's dequantize + torch route, a Linear's dequantize + BLAS rows).
 *
 * Done as an unpack, a byte permute of a conv's K from the packed (kh, kw, in_channel) to
 * torch's (in_channel, kh, kw) and a dequantize (three calls, two int8 copies), the permute
 * alone took 0.47 ms of a 256 -> 256 3x3 conv's 2.7 ms on an AMD Zen 3.  Here a panel is
 * read once, K-group by K-group (64 bytes: 4 codes of each of its 16 channels), and each
 * channel's floats are written in torch's order; a panel is 16 * k bytes, past a 32 KiB L1D
 * for k >= 2048, so reading one channel's 4 bytes of every K-group at a time would take its
 * lines from L2 sixteen times.  The values are mq_rows_dequantize's: (code - zero_point) * scale.
 * The pieces that convert and place a panel's codes come from the level's table (packed_span,
 * packed_run; AVX2 twins in x86/avx2/packed_rows.c), the walk over panels and tiles is here. */
#include <string.h>

#include "layout.h"
#include "mq.h"

typedef struct {
    const mq_kernels *kt; /* the level's packed_span / packed_run */
    const int8_t *packed;
    int64_t out_g, k, taps, cin, n_pad, k_pad, panels_per_group;
    const float *scale;
    const int32_t *zp;
    int per_row;
    float *dst;
} packed_dequantize_ctx;

/* A K-group's 64 codes (4 of each of 16 channels) dequantized, (code - z) * s with each channel's
 * z and s repeated 4 times, in a loop the compiler turns into SIMD on every target (no ISA flags):
 * converted one at a time, cvtsi2ss's false dependency on its destination made it ~2 cycles a
 * code on an AMD Zen 3. */
static inline void group_floats(const int8_t *group, const float *z, const float *s, float *f) {
    for (int j = 0; j < MQ_PANEL_GROUP_BYTES; j++) f[j] = ((float)group[j] - z[j]) * s[j];
}

/* The code of lane-th channel of a panel at packed K index p. */
static inline int8_t code_at(const int8_t *panel, int lane, int64_t p) {
    return panel[(p >> 2) * MQ_PANEL_GROUP_BYTES + lane * MQ_KGROUP + (p & 3)];
}

/* Each channel's 4 x nt floats of a run (runs: nt K-groups of dequantized codes) to its row (rows
 * ld floats apart), channel-major as torch keeps them. */
static inline void runs_to_rows(const float *runs, int lanes, int64_t nt, int64_t taps, float *dst, int64_t ld) {
    for (int r = 0; r < lanes; r++) {
        float *o = dst + r * ld;
        const float *fr = runs + r * MQ_KGROUP;
        for (int i = 0; i < MQ_KGROUP; i++, o += taps)
            for (int64_t t = 0; t < nt; t++) o[t] = fr[t * MQ_PANEL_GROUP_BYTES + i];
    }
}

/* K in the same order (mq_packed_span_fn): each K-group is 4 floats of each row. */
void mq_ref_packed_span(const int8_t *panel, int lanes, int64_t q0, int64_t len, const float *s, const float *z,
                        float *o, int64_t ld) {
    float f[MQ_PANEL_GROUP_BYTES];
    for (int64_t q = 0; q < len; q += MQ_KGROUP) {
        group_floats(panel + ((q0 + q) >> 2) * MQ_PANEL_GROUP_BYTES, z, s, f);
        for (int r = 0; r < lanes; r++) memcpy(o + r * ld + q, f + r * MQ_KGROUP, MQ_KGROUP * sizeof(float));
    }
}

/* Up to MQ_PACKED_RUN_TAPS taps' K-groups of 4 channels dequantized and stored channel-major at o
 * (rows ld floats apart; mq_packed_run_fn): the runs side by side first, as taps are cin / 4 K-groups
 * apart (4 KiB at 256 channels, where 9 taps' lines fall in one set of an 8-way L1D and were refetched
 * per channel). */
void mq_ref_packed_run(const int8_t *first, int64_t tap_step, int64_t nt, int lanes, int64_t taps, const float *s,
                       const float *z, float *o, int64_t ld) {
    float runs[MQ_PACKED_RUN_TAPS * MQ_PANEL_GROUP_BYTES];
    for (int64_t t = 0; t < nt; t++) group_floats(first + t * tap_step, z, s, runs + t * MQ_PANEL_GROUP_BYTES);
    if (nt == 9) /* (3x3: a constant trip count, unrolled) */
        runs_to_rows(runs, lanes, 9, taps, o, ld);
    else
        runs_to_rows(runs, lanes, nt, taps, o, ld);
}

/* A tap-major run of 4 channels (every tap's K-group at c0) to rows in torch's order at dst, by the
 * level's packed_run, MQ_PACKED_RUN_TAPS taps at a time. */
static void run_to_rows(const mq_kernels *kt, const int8_t *panel, int lanes, int64_t c0, int64_t taps, int64_t cin,
                        const float *s, const float *z, float *dst, int64_t ld) {
    const int64_t tap_step = cin / MQ_KGROUP * MQ_PANEL_GROUP_BYTES; /* the next tap's K-group */
    for (int64_t t0 = 0; t0 < taps; t0 += MQ_PACKED_RUN_TAPS) {
        const int64_t nt = taps - t0 < MQ_PACKED_RUN_TAPS ? taps - t0 : MQ_PACKED_RUN_TAPS;
        kt->packed_run(panel + (c0 >> 2) * MQ_PANEL_GROUP_BYTES + t0 * tap_step, tap_step, nt, lanes, taps, s, z,
                       dst + t0, ld);
    }
}

/* The `lanes` channels of one panel into rows of k floats at dst (s, z: their scale and zero-point,
 * each repeated MQ_KGROUP times), TILE_ROW floats of each row at a time, by the level's packed_span /
 * packed_run.  Rows k floats apart with k * 4 bytes a multiple of 2 KiB (k a multiple of 512: 768 x
 * 3072, 2048 x 2048, 512-channel 3x3 convs) put the 16 rows' lines in one or two sets of an 8-way
 * L1D when written side by side (the portable pieces at 768 x 3072: 0.7 ns a value against 0.22 at
 * 768 x 768): unless the level's pieces write them straight (packed_untiled), those are built in a
 * tile on the stack and copied out a row at a time (0.38 ns a value: the copy's cost, so only for them). */
enum { TILE_ROW = 256 };
static void panel_rows(const mq_kernels *kt, const int8_t *panel, int lanes, int64_t k, int64_t taps, int64_t cin,
                       const float *s, const float *z, float *dst) {
    float tile[MQ_PANEL * TILE_ROW];
    const int via_tile = !kt->packed_untiled && (k * (int64_t)sizeof(float)) % 2048 == 0;
    float *const rows = via_tile ? tile : dst;
    const int64_t ld = via_tile ? TILE_ROW : k;
    if (taps == 1) { /* K in the same order: each K-group is 4 floats of each row */
        const int64_t whole = k / MQ_KGROUP * MQ_KGROUP;
        for (int64_t p0 = 0; p0 < whole; p0 += TILE_ROW) { /* (the panel read once, as a stream) */
            const int64_t len = whole - p0 < TILE_ROW ? whole - p0 : TILE_ROW;
            kt->packed_span(panel, lanes, p0, len, s, z, via_tile ? rows : rows + p0, ld);
            for (int r = 0; via_tile && r < lanes; r++)
                memcpy(dst + r * k + p0, tile + r * TILE_ROW, (size_t)len * sizeof(float));
        }
        for (int r = 0; r < lanes; r++)
            for (int64_t p = whole; p < k; p++)
                dst[r * k + p] = ((float)code_at(panel, r, p) - z[r * MQ_KGROUP]) * s[r * MQ_KGROUP];
    } else if (cin % MQ_KGROUP == 0 && MQ_KGROUP * taps <= TILE_ROW) { /* whole 4-channel runs a tile row */
        const int64_t per_tile = TILE_ROW / taps / MQ_KGROUP * MQ_KGROUP; /* channels */
        for (int64_t cb = 0; cb < cin; cb += per_tile) {
            const int64_t nc = cin - cb < per_tile ? cin - cb : per_tile;
            float *o = via_tile ? rows : rows + cb * taps;
            for (int64_t c0 = cb; c0 < cb + nc; c0 += MQ_KGROUP)
                run_to_rows(kt, panel, lanes, c0, taps, cin, s, z, o + (c0 - cb) * taps, ld);
            for (int r = 0; via_tile && r < lanes; r++)
                memcpy(dst + r * k + cb * taps, tile + r * TILE_ROW, (size_t)(nc * taps) * sizeof(float));
        }
    } else if (cin % MQ_KGROUP == 0) { /* (more than 64 taps: straight to the rows) */
        for (int64_t c0 = 0; c0 < cin; c0 += MQ_KGROUP)
            run_to_rows(kt, panel, lanes, c0, taps, cin, s, z, dst + c0 * taps, k);
    } else { /* (a few input channels: a code at a time) */
        for (int r = 0; r < lanes; r++)
            for (int64_t c = 0; c < cin; c++)
                for (int64_t t = 0; t < taps; t++)
                    dst[r * k + c * taps + t] =
                        ((float)code_at(panel, r, t * cin + c) - z[r * MQ_KGROUP]) * s[r * MQ_KGROUP];
    }
}

static void packed_dequantize_range(void *vctx, int64_t begin, int64_t end) {
    const packed_dequantize_ctx *c = vctx;
    /* (lanes past a short panel's channels: computed from padding bytes, never stored) */
    float s[MQ_PANEL_GROUP_BYTES] = {0}, z[MQ_PANEL_GROUP_BYTES] = {0};
    for (int64_t u = begin; u < end; u++) { /* panel u: group g, channels ch0.. of it */
        const int64_t g = u / c->panels_per_group, ch0 = u % c->panels_per_group * MQ_PANEL;
        const int lanes = c->out_g - ch0 < MQ_PANEL ? (int)(c->out_g - ch0) : MQ_PANEL;
        const int64_t row0 = g * c->out_g + ch0;
        for (int j = 0; j < lanes * MQ_KGROUP; j++) {
            const int64_t q = c->per_row ? row0 + j / MQ_KGROUP : 0;
            s[j] = c->scale[q];
            z[j] = (float)c->zp[q];
        }
        panel_rows(c->kt, c->packed + (size_t)(g * c->n_pad + ch0) * (size_t)c->k_pad, lanes, c->k, c->taps, c->cin,
                   s, z, c->dst + (size_t)row0 * (size_t)c->k);
    }
}

void mq_packed_dequantize(const int8_t *packed, int64_t groups, int64_t out_g, int64_t k, int64_t taps,
                          const float *scale, const int32_t *zero_point, int per_row, float *dst, int nthreads) {
    const int64_t n_pad = mq_size_round_up(out_g, MQ_PANEL);
    packed_dequantize_ctx c = {mq_active(), packed, out_g, k, taps, k / taps, n_pad, mq_size_round_up(k, MQ_KGROUP),
                               n_pad / MQ_PANEL, scale, zero_point, per_row, dst};
    mq_parallel_for(groups * c.panels_per_group, mq_items_per_chunk(MQ_PANEL * k, 1 << 15), nthreads,
                    packed_dequantize_range, &c);
}
