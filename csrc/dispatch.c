/* dispatch.c - CPU feature detection, done once, and the kernel tables.
 *
 * The wheel is compiled for baseline x86-64; SIMD kernels live in their own
 * compile units with their own -m flags and are only reached through these
 * tables, after the CPU (and the OS, via XCR0) said it supports them. */
#include <stdlib.h>
#include <string.h>

#include "mq.h"

static mq_kernels tables[MQ_ISA_COUNT];
static mq_isa_t best_isa = MQ_ISA_SCALAR;
static mq_isa_t active_isa = MQ_ISA_SCALAR;
static int initialized = 0;

int mq_cpu_has(const char *feature) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    /* __builtin_cpu_supports needs a string literal, hence the ladder */
    if (!strcmp(feature, "avx2")) return __builtin_cpu_supports("avx2");
    if (!strcmp(feature, "fma")) return __builtin_cpu_supports("fma");
    if (!strcmp(feature, "f16c")) {
        unsigned a, b, c, d;
        __asm__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
        return (c >> 29) & 1u;
    }
    if (!strcmp(feature, "avx512f")) return __builtin_cpu_supports("avx512f");
    if (!strcmp(feature, "avx512bw")) return __builtin_cpu_supports("avx512bw");
    if (!strcmp(feature, "avx512vl")) return __builtin_cpu_supports("avx512vl");
    if (!strcmp(feature, "avx512dq")) return __builtin_cpu_supports("avx512dq");
    if (!strcmp(feature, "avx512_vnni")) return __builtin_cpu_supports("avx512vnni");
    if (!strcmp(feature, "avx512_bf16")) return __builtin_cpu_supports("avx512bf16");
    if (!strcmp(feature, "avx_vnni")) return __builtin_cpu_supports("avxvnni");
    if (!strcmp(feature, "amx_int8")) return __builtin_cpu_supports("amx-int8");
#else
    (void)feature;
#endif
    return 0;
}

mq_isa_t mq_cpu_best_isa(void) {
    if (mq_cpu_has("avx512f") && mq_cpu_has("avx512bw") && mq_cpu_has("avx512vl") && mq_cpu_has("avx512dq") &&
        mq_cpu_has("avx2") && mq_cpu_has("fma") && mq_cpu_has("f16c"))
        return MQ_ISA_AVX512;
    if (mq_cpu_has("avx2") && mq_cpu_has("fma") && mq_cpu_has("f16c")) return MQ_ISA_AVX2;
    return MQ_ISA_SCALAR;
}

static void fill_scalar(mq_kernels *k) {
    k->name = "scalar";
    k->minmax[MQ_SRC_F32] = mq_ref_minmax_f32;
    k->minmax[MQ_SRC_F16] = mq_ref_minmax_f16;
    k->minmax[MQ_SRC_BF16] = mq_ref_minmax_bf16;
    k->quantize[MQ_SRC_F32] = mq_ref_quantize_f32;
    k->quantize[MQ_SRC_F16] = mq_ref_quantize_f16;
    k->quantize[MQ_SRC_BF16] = mq_ref_quantize_bf16;
    k->dequantize = mq_ref_dequantize;
    k->sqerr[MQ_SRC_F32] = mq_ref_sqerr_f32;
    k->sqerr[MQ_SRC_F16] = mq_ref_sqerr_f16;
    k->sqerr[MQ_SRC_BF16] = mq_ref_sqerr_bf16;
    k->qgemm = mq_ref_qgemm;
    k->qgemm_x_u8 = 0;
    k->qgemm_name = "scalar";
    k->wgemm = mq_ref_wgemm;
    k->wgemm_name = "scalar";
    k->pack_panel = mq_ref_pack_panel;
    k->q4_pack = mq_ref_q4_pack;
    k->q4_sqerr = mq_ref_q4_sqerr;
    k->q4_unpack = mq_ref_q4_unpack;
    k->q4_gemv = mq_ref_q4_gemv;
    k->f32_panel = mq_ref_f32_panel;
    k->q4_gemv_i8 = NULL; /* the int8-activation path only pays with integer dot-product instructions */
    k->q4_act_i8 = mq_ref_q4_act_i8;
}

static void init_tables(void) {
    if (initialized) return;
    best_isa = mq_cpu_best_isa();
    /* each level starts from the one below, so a kernel without a SIMD twin
     * at some level inherits the best lower implementation */
    fill_scalar(&tables[MQ_ISA_SCALAR]);
    tables[MQ_ISA_AVX2] = tables[MQ_ISA_SCALAR];
    mq_avx2_fill(&tables[MQ_ISA_AVX2]);
    mq_avx2_linear_fill(&tables[MQ_ISA_AVX2]);
    if (mq_cpu_has("avx_vnni")) mq_avxvnni_linear_fill(&tables[MQ_ISA_AVX2]); /* replaces the maddubs qgemm */
    mq_avx2_pack_fill(&tables[MQ_ISA_AVX2]);
    mq_avx2_int4_fill(&tables[MQ_ISA_AVX2]);
    tables[MQ_ISA_AVX512] = tables[MQ_ISA_AVX2];
    mq_avx512_fill(&tables[MQ_ISA_AVX512]);
    mq_avx512_linear_fill(&tables[MQ_ISA_AVX512]);
    mq_avx512_pack_fill(&tables[MQ_ISA_AVX512]);
    mq_avx512_int4_fill(&tables[MQ_ISA_AVX512]);
    mq_avx512vnni_int4_fill(&tables[MQ_ISA_AVX512]);
    active_isa = best_isa;
    initialized = 1;
}

const mq_kernels *mq_kernels_for(mq_isa_t isa) {
    init_tables();
    return &tables[isa];
}

const mq_kernels *mq_active(void) {
    init_tables();
    return &tables[active_isa];
}

mq_isa_t mq_active_isa(void) {
    init_tables();
    return active_isa;
}

int mq_set_isa(mq_isa_t isa) {
    init_tables();
    if (isa < 0 || isa >= MQ_ISA_COUNT || isa > best_isa) return -1;
    active_isa = isa;
    return 0;
}

int mq_use_vnni256_for_tests(int on) {
    init_tables();
    if (on) {
        if (!(mq_cpu_has("avx512_vnni") && mq_cpu_has("avx512vl") && best_isa >= MQ_ISA_AVX512)) return -1;
        mq_kernels probe = tables[MQ_ISA_AVX2];
        mq_vnni256_evex_fill(&probe);
        if (probe.qgemm == tables[MQ_ISA_AVX2].qgemm) return -1; /* built without the EVEX variant */
        tables[MQ_ISA_AVX2].qgemm = probe.qgemm;
        tables[MQ_ISA_AVX2].qgemm_x_u8 = probe.qgemm_x_u8;
        tables[MQ_ISA_AVX2].qgemm_name = probe.qgemm_name;
        return 0;
    }
    mq_kernels fresh = tables[MQ_ISA_SCALAR]; /* rebuild the AVX2 level's int8 matmul entries */
    mq_avx2_linear_fill(&fresh);
    if (mq_cpu_has("avx_vnni")) mq_avxvnni_linear_fill(&fresh);
    tables[MQ_ISA_AVX2].qgemm = fresh.qgemm;
    tables[MQ_ISA_AVX2].qgemm_x_u8 = fresh.qgemm_x_u8;
    tables[MQ_ISA_AVX2].qgemm_name = fresh.qgemm_name;
    return 0;
}
