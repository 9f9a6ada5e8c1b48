// `lora info`: the CPU, its instruction sets, the GEMM variants this binary carries and what
// each measured here, the ones chosen per precision, the memory bandwidth, OpenBLAS's core
// and where the measurements are cached.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant/quant.h"
#include "train/train.h"

int cmd_info(int argc, char **argv) {
    CliFlag f[] = {{"threads", 0, 0}, {"recalibrate", 0, 1}, {"openblas-coretype", 0, 1}};
    const int nf = sizeof f / sizeof f[0];
    Err e = {{0}};
    int threads;
    if (cli_parse(argc, argv, f, nf, &e) || cli_int(f, nf, "threads", 0, &e, &threads)) return cli_fail(&e);
    if (cli_get(f, nf, "openblas-coretype", NULL)) {  // for scripts: the value to give OpenBLAS
        const char *env = getenv("OPENBLAS_CORETYPE"), *fix = openblas_coretype_fix();
        printf("%s\n", env && *env ? env : fix ? fix : "");
        return 0;
    }
    if (threads > 0) set_num_threads(threads);
    CpuInfo ci;
    cpu_info(&ci);
    printf("cpu:        %s (%s", ci.model, ci.arch);
    if (!strcmp(ci.arch, "x86_64")) printf(", %s family %d model %d", ci.vendor, ci.family, ci.model_id);
    printf(")\n");
    printf("isa:        %s\n", ci.flags[0] ? ci.flags : "(none of interest)");
    printf("build:      compiled for %s; kernel variants:", build_isa_level());
    for (int i = 0; i < gemm_kernel_count(); i++) printf(" %s", gemm_kernel_name(gemm_kernel_at(i)));
    printf("\n");
    const char *cap = getenv("LORA_ISA"), *force = getenv("LORA_KERNEL");
    if (cap && *cap) printf("LORA_ISA:   %s (variants above this level are not considered)\n", cap);
    if (force && *force) printf("LORA_KERNEL: %s\n", force);
    printf("threads:    %d\n", get_num_threads());
    const KernelChoice *kc = cli_get(f, nf, "recalibrate", NULL) ? kernel_recalibrate() : kernel_choice();
    printf("gemm:       NF4 weight, x (256,1024) · Wᵀ (1024,1024) and back, GFLOP/s %s\n",
           kc->forced ? "(not measured: LORA_KERNEL)"
           : kc->from_cache ? "(cached)"
                            : "(measured now)");
    for (int i = 0; i < kc->n_cand; i++) {
        const GemmKernel *g = kc->cand[i].k;
        printf("  %-12s %-11s %8.1f%s\n", gemm_kernel_name(g), g ? gemm_kernel_isa(g) : "sgemm",
               kc->cand[i].gflops,
               g == kc->best ? "  <- auto" : g == kc->fp32 ? "  <- fp32" : g == kc->bf16 ? "  <- bf16" : "");
    }
    for (int i = 0; i < gemm_kernel_count(); i++) {
        const GemmKernel *g = gemm_kernel_at(i);
        if (!gemm_kernel_usable(g)) printf("  %-12s %-11s   not usable here (the CPU lacks it, or LORA_ISA)\n", gemm_kernel_name(g), gemm_kernel_isa(g));
    }
    printf("chosen:     --compute-dtype auto -> %s; fp32 -> %s; bf16 -> %s\n", gemm_kernel_name(compute_gemm(COMPUTE_AUTO)),
           gemm_kernel_name(compute_gemm(COMPUTE_FP32)),
           kc->bf16 ? gemm_kernel_name(kc->bf16) : "none (fp32 is used)");
    printf("            (bf16 is taken by auto only when it measures %.0f%% faster than fp32, OpenBLAS over\n"
           "            our fp32 kernels only when %.0f%% faster: ours also fuse the LoRA term and the lm_head)\n",
           (KC_BF16_MARGIN - 1.0) * 100.0, (KC_OWN_MARGIN - 1.0) * 100.0);
    if (kc->mem_gbs > 0) printf("memory:     %.1f GB/s read (%d threads)\n", kc->mem_gbs, kc->threads);
    if (kc->cut) printf("            (%d more variants not measured: the 1 s calibration budget ran out)\n", kc->cut);
    if (kc->seconds > 0) printf("calibrated in %.2f s\n", kc->seconds);
    const char *obenv = getenv("OPENBLAS_CORETYPE"), *fix = openblas_coretype_fix();
    const char *ours = getenv("LORA_OPENBLAS_CORETYPE");  // set by main's start-up re-exec
    printf("openblas:   core %s", openblas_core());
    if (ours && *ours)
        printf(" (its own detection fell back to a generic core: lora set OPENBLAS_CORETYPE=%s)\n", ours);
    else if (obenv && *obenv)
        printf(" (OPENBLAS_CORETYPE=%s set by the environment)\n", obenv);
    else
        printf(" (its own detection)\n");
    if (fix) printf("            generic core: OPENBLAS_CORETYPE=%s would be faster\n", fix);
    printf("cache:      %s\n", kc->cache_path[0] ? kc->cache_path : "none (no $XDG_CACHE_HOME or $HOME)");
    return 0;
}
