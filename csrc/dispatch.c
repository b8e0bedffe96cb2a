/* dispatch.c - CPU feature detection, done once, and the kernel tables.
 *
 * The only file that tests CPU features.  The wheel is compiled for
 * baseline x86-64; SIMD kernels live in their own compile units with their
 * own -m flags, and a compiler may use those instructions anywhere in such a
 * unit, even in code that only stores function pointers (gcc did: an AVX-512
 * store in a "fill" function killed every AVX2-only CPU at import).  So each
 * ISA unit exports its kernels as a const table (data, no code), and this
 * file, compiled for the baseline, overlays a table onto a level only after
 * cpuid and the OS (XCR0: the register state is saved on context switches)
 * said yes.  Nothing of an ISA unit is called before that check. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h> /* strcasecmp */

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "mq.h"

typedef struct {
    int avx2, fma, f16c, avx512f, avx512bw, avx512vl, avx512dq, avx512_vnni, avx512_bf16, avx_vnni, amx_int8, amx_bf16;
    char vendor[13]; /* cpuid leaf 0: "GenuineIntel", "AuthenticAMD", ... ("" elsewhere) */
} cpu_features;

static cpu_features cpu;
static mq_kernels tables[MQ_ISA_COUNT];
/* The table each level runs (mq_active, mq_kernels_for): its entry of tables[], except the
 * AVX-512 level on AMX, which points at avx512_amx; switched by one atomic store (mq_use_amx),
 * so a kernel call on another thread sees one whole table or the other. */
static mq_kernels avx512_amx;
static mq_kernels *levels[MQ_ISA_COUNT];
static mq_isa_t best_isa = MQ_ISA_SCALAR;
static mq_isa_t active_isa = MQ_ISA_SCALAR;
static int initialized = 0;

#if defined(__x86_64__) || defined(__i386__)
static uint64_t read_xcr0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static int bit(uint32_t reg, int b) { return (int)((reg >> b) & 1u); }

static void detect(cpu_features *f) {
    uint32_t a = 0, b = 0, c = 0, d = 0, max_leaf = 0;
    memset(f, 0, sizeof *f);
    if (!__get_cpuid(0, &max_leaf, &b, &c, &d)) return;
    memcpy(f->vendor, &b, 4);
    memcpy(f->vendor + 4, &d, 4);
    memcpy(f->vendor + 8, &c, 4);
    f->vendor[12] = '\0';
    if (max_leaf < 1) return;
    __get_cpuid(1, &a, &b, &c, &d);
    const int avx = bit(c, 28), osxsave = bit(c, 27), fma = bit(c, 12), f16c = bit(c, 29);
    /* the OS must save the wider registers, or using them corrupts state */
    const uint64_t xcr0 = osxsave ? read_xcr0() : 0;
    const int os_ymm = (xcr0 & 0x6) == 0x6;        /* SSE + AVX state */
    const int os_zmm = (xcr0 & 0xe6) == 0xe6;      /* + opmask, ZMM_Hi256, Hi16_ZMM */
    const int os_amx = (xcr0 & 0x60000) == 0x60000; /* XTILECFG + XTILEDATA */
    if (!(avx && os_ymm)) return;
    f->fma = fma;
    f->f16c = f16c;
    if (max_leaf < 7) return;
    __get_cpuid_count(7, 0, &a, &b, &c, &d);
    const uint32_t max_sub7 = a;
    f->avx2 = bit(b, 5);
    f->amx_int8 = os_amx && bit(d, 25);
    f->amx_bf16 = os_amx && bit(d, 22);
    if (os_zmm) {
        f->avx512f = bit(b, 16);
        f->avx512dq = bit(b, 17);
        f->avx512bw = bit(b, 30);
        f->avx512vl = bit(b, 31);
        f->avx512_vnni = f->avx512f && bit(c, 11);
    }
    if (max_sub7 >= 1) {
        __get_cpuid_count(7, 1, &a, &b, &c, &d);
        f->avx_vnni = f->avx2 && bit(a, 4);
        f->avx512_bf16 = f->avx512f && bit(a, 5);
    }
}
#else
static void detect(cpu_features *f) { memset(f, 0, sizeof *f); }
#endif

int mq_cpu_has(const char *feature) {
    static const struct {
        const char *name;
        size_t offset;
    } names[] = {
        {"avx2", offsetof(cpu_features, avx2)},
        {"fma", offsetof(cpu_features, fma)},
        {"f16c", offsetof(cpu_features, f16c)},
        {"avx512f", offsetof(cpu_features, avx512f)},
        {"avx512bw", offsetof(cpu_features, avx512bw)},
        {"avx512vl", offsetof(cpu_features, avx512vl)},
        {"avx512dq", offsetof(cpu_features, avx512dq)},
        {"avx512_vnni", offsetof(cpu_features, avx512_vnni)},
        {"avx512_bf16", offsetof(cpu_features, avx512_bf16)},
        {"avx_vnni", offsetof(cpu_features, avx_vnni)},
        {"amx_int8", offsetof(cpu_features, amx_int8)},
        {"amx_bf16", offsetof(cpu_features, amx_bf16)},
    };
    mq_active(); /* detection runs once, inside the table set-up */
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(feature, names[i].name)) return *(const int *)((const char *)&cpu + names[i].offset);
    return 0;
}

const char *mq_cpu_vendor(void) {
    mq_active(); /* detection runs once, inside the table set-up */
    return cpu.vendor;
}

/* Linux hands out AMX tile data per process, on request (since 5.16; without it the first
 * tile instruction raises SIGILL).  Asked once, only where cpuid and XCR0 showed AMX and
 * MONO_QUANT_AMX is not 0 / false / off / no (which keeps the process from asking: the
 * grant raises the process's minimum signal stack to about 12 KiB, so a later 8 KiB
 * sigaltstack() fails); the grant is inherited by threads and fork() children.  The kernel
 * refuses it when some thread's alternate signal stack is too small for the tile state. */
static char amx_status[96] = "no AMX-INT8 + AVX-512 VNNI on this CPU";

static int env_says_off(const char *name) {
    const char *v = getenv(name);
    static const char *const off[] = {"0", "false", "off", "no"};
    for (size_t i = 0; v && i < sizeof off / sizeof off[0]; i++)
        if (!strcasecmp(v, off[i])) return 1;
    return 0;
}

static int amx_granted(const cpu_features *f) {
    if (!(f->amx_int8 && f->avx512_vnni)) return 0;
    if (!mq_amx_linear_table.qgemm) {
        strcpy(amx_status, "off: this build has no AMX kernel");
        return 0;
    }
    if (env_says_off("MONO_QUANT_AMX")) {
        strcpy(amx_status, "off: MONO_QUANT_AMX");
        return 0;
    }
#if defined(__linux__) && defined(__x86_64__) && defined(SYS_arch_prctl)
    enum { ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0) {
        strcpy(amx_status, "on");
        return 1;
    }
    snprintf(amx_status, sizeof amx_status, "off: Linux refused the tile data (arch_prctl errno %d)", errno);
#else
    strcpy(amx_status, "off: no way to ask this OS for the tile data");
#endif
    return 0;
}
static int amx_ready = 0; /* granted, and this build has the kernel */

const char *mq_amx_status(void) {
    mq_active();
    return amx_status;
}

static mq_isa_t best_level(const cpu_features *f) {
    const int avx2 = f->avx2 && f->fma && f->f16c;
    if (avx2 && f->avx512f && f->avx512bw && f->avx512vl && f->avx512dq) return MQ_ISA_AVX512;
    return avx2 ? MQ_ISA_AVX2 : MQ_ISA_SCALAR;
}

mq_isa_t mq_cpu_best_isa(void) {
    mq_active();
    return best_isa;
}

static const mq_kernels scalar_table = {
    .name = "scalar",
    .minmax = {[MQ_SRC_F32] = mq_ref_minmax_f32, [MQ_SRC_F16] = mq_ref_minmax_f16,
               [MQ_SRC_BF16] = mq_ref_minmax_bf16},
    .quantize = {[MQ_SRC_F32] = mq_ref_quantize_f32, [MQ_SRC_F16] = mq_ref_quantize_f16,
                 [MQ_SRC_BF16] = mq_ref_quantize_bf16},
    .dequantize = mq_ref_dequantize,
    .sqerr = {[MQ_SRC_F32] = mq_ref_sqerr_f32, [MQ_SRC_F16] = mq_ref_sqerr_f16, [MQ_SRC_BF16] = mq_ref_sqerr_bf16},
    .act_rows = {[MQ_SRC_F32] = mq_ref_act_rows_f32, [MQ_SRC_F16] = mq_ref_act_rows_f16,
                 [MQ_SRC_BF16] = mq_ref_act_rows_bf16},
    .qgemm = mq_ref_qgemm,
    .qgemm_x_u8 = 0,
    .qgemm_name = "scalar",
    .qgemm_u7 = mq_ref_qgemm_u7, /* the ground truth of the 7-bit kernels (as fast as qgemm on xq) */
    .qgemm_u7_name = "scalar_u7",
    .act_split_count = mq_act_split_count,
    .dconv_split_spread = mq_ref_dconv_split_spread,
    .wgemm = mq_ref_wgemm,
    .wgemm_name = "scalar",
    .pack_panel = mq_ref_pack_panel,
    .static_conv = mq_ref_static_conv,
    .static_add = mq_ref_static_add,
    .static_dw = mq_ref_static_dw,
    .nhwc_bytes = mq_ref_nhwc_bytes,
    .nchw_f32 = mq_ref_nchw_f32,
    .q4_pack = mq_ref_q4_pack,
    .q4_sqerr = mq_ref_q4_sqerr,
    .q4_unpack = mq_ref_q4_unpack,
    .q4_gemv = mq_ref_q4_gemv,
    .f32_panel = mq_ref_f32_panel,
    .q4_gemv_i8 = NULL, /* the int8-activation path only pays with integer dot-product instructions */
    .q4_gemv_i8_name = "reference",
    .q4_act_i8 = mq_ref_q4_act_i8,
    .f16_gemm = mq_ref_f16_gemm,
    .bf16_gemm = mq_ref_bf16_gemm,
    .u8_gemm = mq_ref_u8_gemm,
    .emb_rows = mq_ref_emb_rows,
    .emb_bags = mq_ref_emb_bags,
    .h16_dconv_panel = mq_ref_h16_dconv_panel,
    .f32_dconv_panel = mq_ref_f32_dconv_panel,
    .q4_dconv_panel = mq_ref_q4_dconv_panel,
    .h16_dconv = mq_ref_h16_dconv,
    .f32_dw_lanes = mq_ref_f32_dw_lanes,
    .f32_dw_interleave = mq_ref_f32_dw_interleave,
    .packed_span = mq_ref_packed_span,
    .packed_run = mq_ref_packed_run,
};

/* dst takes every entry that src sets (reads data only; calls nothing). */
static void overlay(mq_kernels *dst, const mq_kernels *src) {
#define TAKE(field) \
    if (src->field) dst->field = src->field
    TAKE(name);
    for (int s = 0; s < MQ_SRC_COUNT; s++) {
        TAKE(minmax[s]);
        TAKE(quantize[s]);
        TAKE(sqerr[s]);
        TAKE(act_rows[s]);
    }
    TAKE(dequantize);
    TAKE(act_split_count);
    TAKE(dconv_split_spread);
    if (src->qgemm) { /* the kernel, its activation encoding and its name go together */
        dst->qgemm = src->qgemm;
        dst->qgemm_x_u8 = src->qgemm_x_u8;
        dst->qgemm_speed = src->qgemm_speed;
        dst->qgemm_tile_rows = src->qgemm_tile_rows;
        dst->qgemm_tile_k = src->qgemm_tile_k;
        dst->qgemm_name = src->qgemm_name;
        /* a new qgemm drops the lower level's 7-bit kernel unless it brings one (VNNI is faster on xq) */
        dst->qgemm_u7 = src->qgemm_u7;
        dst->qgemm_u7_name = src->qgemm_u7_name;
        dst->qgemm_split = src->qgemm_split; /* likewise the split kernel */
        dst->qgemm_split_min_m = src->qgemm_split_min_m;
        dst->qgemm_split_name = src->qgemm_split_name;
    } else if (src->qgemm_u7) {
        dst->qgemm_u7 = src->qgemm_u7;
        dst->qgemm_u7_name = src->qgemm_u7_name;
    }
    TAKE(wgemm);
    TAKE(wgemm_name);
    TAKE(pack_panel);
    if (src->static_conv) { /* the kernel and its activation encoding go together */
        dst->static_conv = src->static_conv;
        dst->static_conv_x_u8 = src->static_conv_x_u8;
        /* a new conv kernel drops the lower level's split and unsigned-codes kernel (VNNI) */
        dst->dconv_split = src->dconv_split;
        dst->static_conv_ux = src->static_conv_ux;
    } else {
        TAKE(dconv_split);
        TAKE(static_conv_ux);
    }
    TAKE(static_add);
    TAKE(static_dw);
    TAKE(nhwc_bytes);
    TAKE(nchw_f32);
    TAKE(q4_pack);
    TAKE(q4_sqerr);
    TAKE(q4_unpack);
    TAKE(q4_gemv);
    TAKE(f32_panel);
    if (src->q4_gemv_i8) { /* the kernel and its name go together */
        dst->q4_gemv_i8 = src->q4_gemv_i8;
        dst->q4_gemv_i8_name = src->q4_gemv_i8_name;
        dst->q4_gemv_i8_speed = src->q4_gemv_i8_speed;
        dst->q4_gemv_i8_channels = src->q4_gemv_i8_channels;
    }
    TAKE(q4_act_i8);
    TAKE(f16_gemm);
    TAKE(bf16_gemm);
    TAKE(h16_panels);
    TAKE(u8_gemm);
    TAKE(u8_panels);
    TAKE(emb_rows);
    TAKE(emb_bags);
    if (src->amxbf16_gemm) {
        dst->amxbf16_pack_h16 = src->amxbf16_pack_h16;
        dst->amxbf16_pack_i8 = src->amxbf16_pack_i8;
        dst->amxbf16_gemm = src->amxbf16_gemm;
        dst->amxbf16_split_x = src->amxbf16_split_x;
        dst->amxbf16_gemm_panels = src->amxbf16_gemm_panels;
    }
    TAKE(h16_dconv_panel);
    TAKE(f32_dconv_panel);
    TAKE(q4_dconv_panel);
    TAKE(h16_dconv);
    TAKE(f32_dw_lanes);
    TAKE(f32_dw_interleave);
    if (src->packed_span) { /* the pieces and how their rows are written go together */
        dst->packed_span = src->packed_span;
        dst->packed_run = src->packed_run;
        dst->packed_untiled = src->packed_untiled;
    }
#undef TAKE
}

/* The AVX2 level's int8 matmul: AVX-VNNI's vpdpbusd where the CPU has it,
 * else the maddubs sign trick (and maddubs without it on 7-bit activations). */
static void avx2_int8_matmul(mq_kernels *k) {
    overlay(k, &mq_avx2_linear_table);
    overlay(k, &mq_avx2_linear_u7_table);
    overlay(k, &mq_avx2_static_table);
    overlay(k, &mq_avx2_dconv_split_table);
    overlay(k, &mq_avx2_static_conv_ux_table);
    if (cpu.avx_vnni) overlay(k, &mq_avxvnni_linear_table);
    if (cpu.avx_vnni) overlay(k, &mq_avxvnni_static_table);
}

static void init_tables(void) {
    if (initialized) return;
    detect(&cpu);
    best_isa = best_level(&cpu);
    /* each level starts from the one below, so a kernel without a SIMD twin
     * at some level inherits the best lower implementation; levels above
     * the CPU's best stay copies of it (never a table it can't run) */
    tables[MQ_ISA_SCALAR] = scalar_table;
    tables[MQ_ISA_AVX2] = tables[MQ_ISA_SCALAR];
    if (best_isa >= MQ_ISA_AVX2) {
        overlay(&tables[MQ_ISA_AVX2], &mq_avx2_quant_table);
        avx2_int8_matmul(&tables[MQ_ISA_AVX2]);
        overlay(&tables[MQ_ISA_AVX2], &mq_avx2_pack_table);
        overlay(&tables[MQ_ISA_AVX2], &mq_avx2_packed_rows_table);
        overlay(&tables[MQ_ISA_AVX2], &mq_avx2_int4_table);
        if (cpu.f16c) overlay(&tables[MQ_ISA_AVX2], &mq_avx2_fp16_table); /* vcvtph2ps: its own cpuid bit */
        if (cpu.f16c) overlay(&tables[MQ_ISA_AVX2], &mq_avx2_h16_dconv_table);
        overlay(&tables[MQ_ISA_AVX2], &mq_avx2_u8_weight_table);
        overlay(&tables[MQ_ISA_AVX2], &mq_avx2_embedding_table);
        overlay(&tables[MQ_ISA_AVX2], &mq_avx2_eltwise_table);
        overlay(&tables[MQ_ISA_AVX2], &mq_avx2_depthwise_table);
        overlay(&tables[MQ_ISA_AVX2], &mq_avx2_float_dw_table);
        overlay(&tables[MQ_ISA_AVX2], &mq_avx2_transpose_table);
    }
    tables[MQ_ISA_AVX512] = tables[MQ_ISA_AVX2];
    if (best_isa >= MQ_ISA_AVX512) {
        overlay(&tables[MQ_ISA_AVX512], &mq_avx512_quant_table);
        overlay(&tables[MQ_ISA_AVX512], &mq_avx512_linear_table);
        overlay(&tables[MQ_ISA_AVX512], &mq_avx512_pack_table);
        overlay(&tables[MQ_ISA_AVX512], &mq_avx512_int4_table);
        overlay(&tables[MQ_ISA_AVX512], &mq_avx512_fp16_table);
        overlay(&tables[MQ_ISA_AVX512], &mq_avx512_h16_dconv_table);
        overlay(&tables[MQ_ISA_AVX512], &mq_avx512_eltwise_table);
        if (cpu.avx512_vnni) {
            overlay(&tables[MQ_ISA_AVX512], &mq_avx512vnni_linear_table);
            overlay(&tables[MQ_ISA_AVX512], &mq_avx512vnni_int4_table);
            overlay(&tables[MQ_ISA_AVX512], &mq_avx512vnni_static_table);
            amx_ready = amx_granted(&cpu);
        }
    }
    avx512_amx = tables[MQ_ISA_AVX512];
    if (amx_ready) {
        overlay(&avx512_amx, &mq_amx_linear_table);
        overlay(&avx512_amx, &mq_amx_int4_table);
        if (cpu.amx_bf16) overlay(&avx512_amx, &mq_amx_bf16_table); /* its own cpuid bit */
    }
    for (int i = 0; i < MQ_ISA_COUNT; i++) levels[i] = &tables[i];
    if (amx_ready) levels[MQ_ISA_AVX512] = &avx512_amx;
    active_isa = best_isa;
    initialized = 1;
}

const mq_kernels *mq_kernels_for(mq_isa_t isa) {
    init_tables();
    return __atomic_load_n(&levels[isa], __ATOMIC_ACQUIRE);
}

const mq_kernels *mq_active(void) {
    init_tables();
    /* (relaxed atomics: set_isa may run on another thread; a call reads the level once) */
    return __atomic_load_n(&levels[__atomic_load_n(&active_isa, __ATOMIC_RELAXED)], __ATOMIC_ACQUIRE);
}

mq_isa_t mq_active_isa(void) {
    init_tables();
    return __atomic_load_n(&active_isa, __ATOMIC_RELAXED);
}

int mq_set_isa(mq_isa_t isa) {
    init_tables();
    if (isa < 0 || isa >= MQ_ISA_COUNT || isa > best_isa) return -1;
    __atomic_store_n(&active_isa, isa, __ATOMIC_RELAXED);
    return 0;
}

int mq_use_maddubs_for_tests(int on) {
    init_tables();
    if (best_isa < MQ_ISA_AVX2) return -1;
    if (on) {
        overlay(&tables[MQ_ISA_AVX2], &mq_avx2_linear_table);
        overlay(&tables[MQ_ISA_AVX2], &mq_avx2_linear_u7_table);
        overlay(&tables[MQ_ISA_AVX2], &mq_avx2_static_table);
        overlay(&tables[MQ_ISA_AVX2], &mq_avx2_dconv_split_table);
        overlay(&tables[MQ_ISA_AVX2], &mq_avx2_static_conv_ux_table);
    } else
        avx2_int8_matmul(&tables[MQ_ISA_AVX2]);
    return 0;
}

int mq_use_vnni256_for_tests(int on) {
    mq_kernels *avx2 = &tables[MQ_ISA_AVX2];
    init_tables();
    if (on) {
        if (!(cpu.avx512_vnni && cpu.avx512vl && best_isa >= MQ_ISA_AVX512)) return -1;
        if (!mq_vnni256_evex_linear_table.qgemm) return -1; /* built without the EVEX variant */
        overlay(avx2, &mq_vnni256_evex_linear_table);
        return 0;
    }
    if (best_isa >= MQ_ISA_AVX2) avx2_int8_matmul(avx2);
    return 0;
}

int mq_use_amx(int on) {
    init_tables();
    const int previous = __atomic_load_n(&levels[MQ_ISA_AVX512], __ATOMIC_ACQUIRE) == &avx512_amx;
    if (on < 0) return previous;
    if (!amx_ready) return on ? -1 : 0;
    __atomic_store_n(&levels[MQ_ISA_AVX512], on ? &avx512_amx : &tables[MQ_ISA_AVX512], __ATOMIC_RELEASE);
    return previous;
}
