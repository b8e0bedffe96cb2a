/* quantize_pack.c - per-channel int8 quantization straight into the packed
 * matmul layout (linear.c), from memory or straight from a file.
 *
 * Quantizing whole rows and packing afterwards streams the weight three
 * times (fp32 in, plain int8 out, plain int8 back in) and touches a second
 * output buffer as large as the packed one.  Here a thread takes whole
 * panels: the panel's 16 rows are quantized into a 16*k scratch that stays in
 * L2, then packed from it, so memory sees the fp32 input read once and the
 * packed output written once.  The row kernels are the dispatched ones
 * mq_rows_quantize_fused uses, so the bytes are the same on every ISA.
 *
 * From a file (checkpoints), each thread pread()s its panel's rows into a
 * buffer of its own that stays in cache: the page cache is copied once, as
 * by read(), and nothing is memory-mapped, so there are no page faults, no
 * pages to unmap afterwards, and no input pages counted in the process's
 * resident memory. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#ifndef _WIN32
#include <unistd.h>
#endif

#include "mq.h"

typedef struct {
    const uint8_t *src; /* the rows in memory, or NULL to read them from fd */
    int fd;
    int64_t offset;     /* file offset of row 0 */
    size_t row_bytes;
    mq_src_t kind;
    int64_t n, k;
    int qmin, qmax, symmetric;
    float *scale;
    int32_t *zp;
    int8_t *packed;
    int32_t *w_sum;
    uint8_t *panel_m128;
    double *sum_x2, *sum_err2;
    /* failures, each a plain int store (every thread that fails stores the same kind of value) */
    int out_of_memory;
    int read_error; /* errno of a failed read, or -1 for a file that ended early */
} qpack_ctx;

/* Read exactly nbytes at offset (retrying short reads and EINTR); 0, or the
 * errno (-1 for end of file). */
static int read_exact(int fd, void *dst, size_t nbytes, int64_t offset) {
#ifdef _WIN32
    (void)fd, (void)dst, (void)nbytes, (void)offset;
    return ENOSYS;
#else
    uint8_t *p = dst;
    while (nbytes) {
        ssize_t got = pread(fd, p, nbytes, (off_t)offset);
        if (got < 0) {
            if (errno == EINTR) continue;
            return errno ? errno : EIO;
        }
        if (got == 0) return -1;
        p += got;
        nbytes -= (size_t)got;
        offset += got;
    }
    return 0;
#endif
}

static void qpack_range(void *vctx, int64_t p0, int64_t p1) {
    qpack_ctx *c = vctx;
    const mq_kernels *kt = mq_active();
    const int64_t k = c->k, kp = mq_round_up(k, MQ_KGROUP);
    int8_t *scratch = malloc((size_t)MQ_PANEL * (size_t)k);
    uint8_t *rows_in = c->src ? NULL : malloc((size_t)MQ_PANEL * c->row_bytes);
    if (!scratch || (!c->src && !rows_in)) {
        c->out_of_memory = 1;
        free(scratch);
        free(rows_in);
        return;
    }
    for (int64_t p = p0; p < p1; p++) {
        const int64_t row0 = p * MQ_PANEL, nvalid = c->n - row0 < MQ_PANEL ? c->n - row0 : MQ_PANEL;
        const uint8_t *panel = c->src ? c->src + (size_t)row0 * c->row_bytes : rows_in;
        if (!c->src) {
            int err = read_exact(c->fd, rows_in, (size_t)nvalid * c->row_bytes,
                                 c->offset + row0 * (int64_t)c->row_bytes);
            if (err) {
                c->read_error = err;
                break;
            }
        }
        for (int64_t ch = 0; ch < nvalid; ch++) {
            const int64_t r = row0 + ch;
            uint8_t *q = (uint8_t *)scratch + ch * k;
            if (mq_quantize_row_fused(kt, c->kind, panel + (size_t)ch * c->row_bytes, k, c->qmin, c->qmax,
                                      c->symmetric, &c->scale[r], &c->zp[r], q, c->sum_x2 ? &c->sum_x2[r] : NULL,
                                      c->sum_x2 ? &c->sum_err2[r] : NULL))
                memset(q, 0, (size_t)k); /* NaN/Inf (reported by the driver): pack zeros, not garbage */
        }
        kt->pack_panel(scratch, k, nvalid, k, c->packed + p * MQ_PANEL * kp, c->w_sum + row0, &c->panel_m128[p]);
    }
    free(rows_in);
    free(scratch);
}

static int64_t run(qpack_ctx *c, int *has_m128, int *read_error, int nthreads) {
    const int64_t panels = mq_round_up(c->n, MQ_PANEL) / MQ_PANEL;
    /* ~1 MiB of input per chunk: small layers stay on this thread */
    const int64_t panel_bytes = MQ_PANEL * (int64_t)c->row_bytes;
    mq_parallel_for(panels, 1 + ((int64_t)1 << 20) / (panel_bytes > 0 ? panel_bytes : 1), nthreads, qpack_range, c);
    if (c->out_of_memory) return -2;
    if (c->read_error) {
        *read_error = c->read_error;
        return -3;
    }
    int m128 = 0;
    for (int64_t p = 0; p < panels; p++) m128 |= c->panel_m128[p];
    *has_m128 = m128;
    for (int64_t r = 0; r < c->n; r++)
        if (isnan(c->scale[r])) return r;
    return -1;
}

int64_t mq_quantize_pack_int8(const void *src, mq_src_t kind, int64_t n, int64_t k, int qmin, int qmax,
                              int symmetric, float *scale, int32_t *zero_point, int8_t *packed, int32_t *w_sum,
                              uint8_t *panel_m128, double *sum_x2, double *sum_err2, int *has_m128, int nthreads) {
    qpack_ctx c = {src, -1, 0, (size_t)k * mq_src_size(kind), kind, n, k, qmin, qmax, symmetric, scale, zero_point,
                   packed, w_sum, panel_m128, sum_x2, sum_err2, 0, 0};
    int unused = 0;
    return run(&c, has_m128, &unused, nthreads);
}

int64_t mq_quantize_pack_int8_file(int fd, int64_t offset, mq_src_t kind, int64_t n, int64_t k, int qmin, int qmax,
                                   int symmetric, float *scale, int32_t *zero_point, int8_t *packed, int32_t *w_sum,
                                   uint8_t *panel_m128, double *sum_x2, double *sum_err2, int *has_m128,
                                   int *read_error, int nthreads) {
    qpack_ctx c = {NULL, fd, offset, (size_t)k * mq_src_size(kind), kind, n, k, qmin, qmax, symmetric, scale,
                   zero_point, packed, w_sum, panel_m128, sum_x2, sum_err2, 0, 0};
    *read_error = 0;
    return run(&c, has_m128, read_error, nthreads);
}
