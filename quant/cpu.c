// quant — which CPU this is and which GEMM variant runs fastest on it, by measurement: a short
// calibration times every usable variant (and OpenBLAS's sgemm over dequantized tiles) on one
// representative NF4 shape, in xwt and dyw, and keeps the fastest per precision. The result is
// cached per CPU model, flags, thread count and the kernels of this build, so that later runs
// start at once. The one process-wide state besides the thread count: a dispatch table
// filled once (per thread count) and never changed after.
#include "quant/quant.h"
#include "quant/quant_internal.h"

#include <cblas.h>
#include <errno.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

// ---- the CPU ------------------------------------------------------------------------------

static void add_flag(CpuInfo *ci, int on, const char *name) {
    if (!on) return;
    size_t n = strlen(ci->flags);
    snprintf(ci->flags + n, sizeof ci->flags - n, "%s%s", n ? " " : "", name);
}

// "model name" / "Model" / "CPU part" line of /proc/cpuinfo -> out ("" when absent)
static void cpuinfo_field(const char *key, char *out, size_t n) {
    out[0] = 0;
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, kl) || (line[kl] != ' ' && line[kl] != '\t' && line[kl] != ':')) continue;
        char *v = strchr(line, ':');
        if (!v) continue;
        v++;
        while (*v == ' ' || *v == '\t') v++;
        v[strcspn(v, "\n")] = 0;
        snprintf(out, n, "%s", v);
        break;
    }
    fclose(f);
}

void cpu_info(CpuInfo *ci) {
    memset(ci, 0, sizeof *ci);
#if defined(__x86_64__)
    snprintf(ci->arch, sizeof ci->arch, "x86_64");
    unsigned a, b, c, d;
    if (__get_cpuid(0, &a, &b, &c, &d)) {
        memcpy(ci->vendor, &b, 4);
        memcpy(ci->vendor + 4, &d, 4);
        memcpy(ci->vendor + 8, &c, 4);
    }
    if (__get_cpuid(1, &a, &b, &c, &d)) {
        int fam = (a >> 8) & 15, mod = (a >> 4) & 15;
        if (fam == 15) fam += (a >> 20) & 255;
        if (fam == 6 || fam >= 15) mod |= ((a >> 16) & 15) << 4;
        ci->family = fam;
        ci->model_id = mod;
    }
    char brand[49] = {0};
    if (__get_cpuid(0x80000000, &a, &b, &c, &d) && a >= 0x80000004) {
        for (unsigned i = 0; i < 3; i++) {
            __get_cpuid(0x80000002 + i, &a, &b, &c, &d);
            memcpy(brand + 16 * i, &a, 4);
            memcpy(brand + 16 * i + 4, &b, 4);
            memcpy(brand + 16 * i + 8, &c, 4);
            memcpy(brand + 16 * i + 12, &d, 4);
        }
    }
    char *s = brand;
    while (*s == ' ') s++;
    size_t L = strlen(s);
    while (L && s[L - 1] == ' ') s[--L] = 0;
    snprintf(ci->model, sizeof ci->model, "%s", s);
    __builtin_cpu_init();
    ci->avx2 = __builtin_cpu_supports("avx2");
    ci->fma = __builtin_cpu_supports("fma");
    ci->avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    ci->avx512bf16 = ci->avx512 && __builtin_cpu_supports("avx512bf16");
    add_flag(ci, __builtin_cpu_supports("avx"), "avx");
    add_flag(ci, ci->avx2, "avx2");
    add_flag(ci, ci->fma, "fma");
    add_flag(ci, __builtin_cpu_supports("f16c"), "f16c");
    add_flag(ci, __builtin_cpu_supports("avx512f"), "avx512f");
    add_flag(ci, __builtin_cpu_supports("avx512bw"), "avx512bw");
    add_flag(ci, __builtin_cpu_supports("avx512vl"), "avx512vl");
    add_flag(ci, __builtin_cpu_supports("avx512vnni"), "avx512vnni");
    add_flag(ci, __builtin_cpu_supports("avx512bf16"), "avx512bf16");
    add_flag(ci, __builtin_cpu_supports("avx512fp16"), "avx512fp16");
    add_flag(ci, __builtin_cpu_supports("avxvnni"), "avxvnni");
    add_flag(ci, __builtin_cpu_supports("amx-tile"), "amx-tile");
#elif defined(__aarch64__)
    snprintf(ci->arch, sizeof ci->arch, "aarch64");
    snprintf(ci->vendor, sizeof ci->vendor, "arm");
    ci->neon = 1;
    char feat[1024];
    cpuinfo_field("Features", feat, sizeof feat);
    add_flag(ci, 1, "neon");
    add_flag(ci, strstr(feat, "asimddp") != NULL, "dotprod");
    add_flag(ci, strstr(feat, "bf16") != NULL, "bf16");
    add_flag(ci, strstr(feat, "i8mm") != NULL, "i8mm");
    add_flag(ci, strstr(feat, " sve") != NULL, "sve");
#else
    snprintf(ci->arch, sizeof ci->arch, "other");
#endif
    if (!ci->model[0]) cpuinfo_field("model name", ci->model, sizeof ci->model);
    if (!ci->model[0]) {
        char imp[32], part[32];
        cpuinfo_field("CPU implementer", imp, sizeof imp);
        cpuinfo_field("CPU part", part, sizeof part);
        if (imp[0]) snprintf(ci->model, sizeof ci->model, "implementer %s part %s", imp, part);
    }
    if (!ci->model[0]) snprintf(ci->model, sizeof ci->model, "unknown %s CPU", ci->arch);
}

// ---- which variants may run --------------------------------------------------------------

// An ordering of the instruction sets for LORA_ISA's cap: c < avx2+fma (or neon) < avx512f
// < avx512bf16.
static int isa_level(const char *isa) {
    if (!strcmp(isa, "c")) return 0;
    if (!strcmp(isa, "avx2") || !strcmp(isa, "avx2+fma") || !strcmp(isa, "neon")) return 1;
    if (!strcmp(isa, "avx512") || !strcmp(isa, "avx512f")) return 2;
    if (!strcmp(isa, "avx512bf16")) return 3;
    return -1;
}

// The extensions beside that ordering, used by the decode GEMVs (qgemv*.c): the integer dot
// products. As a LORA_ISA value each names a CPU generation and caps the levels as the one
// below it: avxvnni = avx2 + AVX-VNNI (Alder Lake), avx512vnni = avx512f + AVX-512 VNNI
// (Cascade Lake). Which of them each LORA_ISA value allows: avx2 and avx512 none (Haswell and
// Skylake-X have no VNNI), avxvnni only avxvnni, avx512vnni both kinds (each still needs its CPU
// flag), avx512bf16 both too (every AVX-512 BF16 CPU has AVX-512 VNNI); unset or unknown: all.
enum { EXT_AVXVNNI = 1, EXT_AVX512VNNI = 2 };
static int ext_bit(const char *isa) {
    if (!strcmp(isa, "avxvnni")) return EXT_AVXVNNI;
    if (!strcmp(isa, "avx512vnni")) return EXT_AVX512VNNI;
    return 0;
}

static int isa_cap(void) {
    const char *v = getenv("LORA_ISA");
    if (!v || !*v) return 99;
    int l = isa_level(v);
    if (l < 0 && ext_bit(v)) l = ext_bit(v) == EXT_AVX512VNNI ? 2 : 1;  // their base level
    return l < 0 ? 99 : l;  // an unknown value caps nothing (lora info reports it)
}

static int ext_cap(void) {
    const char *v = getenv("LORA_ISA");
    if (!v || !*v) return 3;
    if (!strcmp(v, "avxvnni")) return EXT_AVXVNNI;
    if (!strcmp(v, "avx512vnni") || !strcmp(v, "avx512bf16")) return EXT_AVXVNNI | EXT_AVX512VNNI;
    return isa_level(v) < 0 ? 3 : 0;
}

// Which of the levels 0..3 this CPU has and LORA_ISA allows: decided once per process (the
// decode kernels ask on every call).
static pthread_once_t isa_once = PTHREAD_ONCE_INIT;
static int isa_ok[4], ext_ok;
static void isa_init(void) {
    const int cap = isa_cap();
    CpuInfo ci;
    cpu_info(&ci);
    const int has[4] = {1, (ci.avx2 && ci.fma) || ci.neon, ci.avx512, ci.avx512bf16};
    for (int l = 0; l < 4; l++) isa_ok[l] = has[l] && l <= cap;
    int ext = 0;
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (ci.avx2 && ci.fma && __builtin_cpu_supports("avxvnni")) ext |= EXT_AVXVNNI;
    if (ci.avx512 && __builtin_cpu_supports("avx512vnni")) ext |= EXT_AVX512VNNI;
#endif
    ext_ok = ext & ext_cap();
}

int cpu_isa_usable(const char *isa) {
    const int eb = ext_bit(isa);
    if (eb) {
        pthread_once(&isa_once, isa_init);
        return (ext_ok & eb) != 0;
    }
    int lvl = isa_level(isa);
    if (lvl < 0) return 0;
#if defined(__x86_64__)
    if (!strcmp(isa, "neon")) return 0;
#elif defined(__aarch64__)
    if (lvl == 1 && strcmp(isa, "neon")) return 0;
#endif
    pthread_once(&isa_once, isa_init);
    return isa_ok[lvl];
}

int gemm_kernel_usable(const GemmKernel *g) { return !g || cpu_isa_usable(g->isa); }  // NULL: OpenBLAS

// ---- calibration --------------------------------------------------------------------------

#define CAL_M 256
#define CAL_C 1024
#define CAL_OC 1024

typedef struct {
    Nf4Matrix w;
    float *x, *y, *dx, *qscr;
    void *gscr;
} CalBufs;

// One xwt and one dyw on the calibration shape with kernel k (NULL: OpenBLAS): seconds
static double run_once(const GemmKernel *k, CalBufs *b) {
    double t0 = now_seconds();
    if (k) {
        TiledWeight tw = tiled_nf4(&b->w);
        gemm_xwt(k, b->x, CAL_M, CAL_C, &tw, b->y, CAL_OC, 0, b->gscr);
        gemm_dyw(k, b->y, CAL_M, CAL_OC, &tw, b->dx, CAL_C, 0, b->gscr);
    } else {
        nf4_matmul_xwt(b->x, CAL_M, &b->w, b->y, 0, b->qscr, NULL);
        nf4_matmul_dyw(b->y, CAL_M, &b->w, b->dx, 0, b->qscr, NULL);
    }
    return now_seconds() - t0;
}

// GFLOP/s of k: best of 2 to 5 runs after one warm-up (more while under 0.1 s), fewer when the
// deadline passes (on a slow CPU or an emulator, the warm-up alone)
static double measure(const GemmKernel *k, CalBufs *b, double deadline) {
    double spent = run_once(k, b), best = spent;
    for (int rep = 0; rep < 5 && (rep < 2 || spent < 0.1) && now_seconds() < deadline; rep++) {
        double t = run_once(k, b);
        spent += t;
        if (t < best) best = t;
    }
    return 4.0 * CAL_M * CAL_C * CAL_OC / best / 1e9;
}

// read bandwidth: a parallel sum over 128 MiB, best of up to 3 passes (1 past the deadline)
static double measure_bandwidth(double deadline) {
    const int64_t n = (int64_t)32 << 20;
    float *a = malloc((size_t)n * sizeof(float));
    if (!a) return 0;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) a[i] = (float)(i & 7);
    double best = 1e30;
    volatile float sink = 0;
    for (int rep = 0; rep < 3 && (rep == 0 || now_seconds() < deadline); rep++) {
        double t0 = now_seconds();
        float s = 0;
#pragma omp parallel for simd schedule(static) reduction(+ : s)
        for (int64_t i = 0; i < n; i++) s += a[i];
        double t = now_seconds() - t0;
        sink += s;
        if (t < best) best = t;
    }
    (void)sink;
    free(a);
    return (double)n * sizeof(float) / best / 1e9;
}

// uniform in [-scale, scale) from a 64-bit LCG (cheap: the setup counts against the budget)
static float lcg_uniform(uint64_t *s, float scale) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return scale * ((float)(*s >> 40) / 8388608.0f - 1.0f);
}

// The candidates in the order they are measured: the vector variants, widest first (the likely
// winners, measured before a deadline can cut the list), then OpenBLAS, then the portable fp32
// variant where no vector one runs (elsewhere it is only their reference; bf16-c always is).
static int candidates(const GemmKernel **out, int max) {
    int n = 0, vec_f32 = 0;
    for (int lvl = 3; lvl >= 1; lvl--)
        for (int i = 0; qg_kernels[i]; i++) {
            const GemmKernel *k = qg_kernels[i];
            if (isa_level(k->isa) != lvl || !gemm_kernel_usable(k) || n >= max - 2) continue;
            out[n++] = k;
            vec_f32 |= !k->bf16;
        }
    out[n++] = NULL;  // OpenBLAS
    for (int i = 0; qg_kernels[i] && !vec_f32; i++)
        if (!strcmp(qg_kernels[i]->isa, "c") && !qg_kernels[i]->bf16 && n < max) out[n++] = qg_kernels[i];
    return n;
}

// Measures every candidate, within CAL_BUDGET seconds (setup included) where the CPU allows:
// past it, the candidates not yet measured are left out (kc->cut) and the bandwidth gets one pass.
#define CAL_BUDGET 1.0
static int calibrate(KernelChoice *kc) {
    const double deadline = now_seconds() + CAL_BUDGET;
    CalBufs b = {0};
    uint64_t seed = 7;
    float *w = malloc((size_t)CAL_OC * CAL_C * sizeof(float));
    b.x = malloc((size_t)CAL_M * CAL_C * sizeof(float));
    b.y = malloc((size_t)CAL_M * CAL_OC * sizeof(float));
    b.dx = malloc((size_t)CAL_M * CAL_C * sizeof(float));
    int ok = w && b.x && b.y && b.dx;
    if (ok) {
        for (int64_t i = 0; i < (int64_t)CAL_OC * CAL_C; i++) w[i] = lcg_uniform(&seed, 0.04f);
        for (int64_t i = 0; i < (int64_t)CAL_M * CAL_C; i++) b.x[i] = lcg_uniform(&seed, 1.0f);
        ok = nf4_quantize(w, CAL_OC, CAL_C, "calibration", &b.w, NULL) == 0;
    }
    free(w);
    if (ok) {
        b.qscr = malloc(nf4_scratch_floats(&b.w) * sizeof(float));
        b.gscr = malloc(gemm_scratch_bytes(NULL, CAL_M, CAL_C > CAL_OC ? CAL_C : CAL_OC));
        ok = b.qscr && b.gscr;
    }
    if (ok) {
        const GemmKernel *cand[KC_MAX_CAND];
        int nc = candidates(cand, KC_MAX_CAND);
        kc->n_cand = 0;
        for (int i = 0; i < nc; i++) {
            if (i > 0 && now_seconds() > deadline) {
                kc->cut = nc - i;
                break;
            }
            kc->cand[kc->n_cand++] = (KernelCand){cand[i], measure(cand[i], &b, deadline)};
        }
        kc->mem_gbs = measure_bandwidth(deadline);
    }
    if (b.w.packed) nf4_free(&b.w);
    free(b.x);
    free(b.y);
    free(b.dx);
    free(b.qscr);
    free(b.gscr);
    return ok ? 0 : -1;
}

static void decide(KernelChoice *kc) {
    double own = -1, blas = -1, bf = -1;
    const GemmKernel *own_k = NULL;
    kc->fp32 = kc->bf16 = NULL;
    for (int i = 0; i < kc->n_cand; i++) {
        const KernelCand *c = &kc->cand[i];
        if (gemm_kernel_bf16(c->k)) {
            if (c->gflops > bf) bf = c->gflops, kc->bf16 = c->k;
        } else if (!c->k) {
            blas = c->gflops;
        } else if (c->gflops > own) {
            own = c->gflops, own_k = c->k;
        }
    }
    // OpenBLAS only when clearly faster than our own fp32 variant: ours also fuses the LoRA
    // term into the frozen matmul's pass and takes the lm_head in one call, which the isolated
    // shape does not show
    int use_blas = blas > 0 && (!own_k || blas > KC_OWN_MARGIN * own);
    kc->fp32 = use_blas ? NULL : own_k;
    double f32 = use_blas ? blas : own;
    kc->best = kc->bf16 && bf >= KC_BF16_MARGIN * f32 ? kc->bf16 : kc->fp32;
}

// ---- the cache ----------------------------------------------------------------------------

const char *build_isa_level(void) {
#if defined(__AVX512BF16__)
    return "avx512bf16";
#elif defined(__AVX512F__)
    return "avx512f";
#elif defined(__AVX2__)
    return "x86-64-v3";
#elif defined(__SSE4_2__)
    return "x86-64-v2";
#elif defined(__x86_64__)
    return "x86-64";
#elif defined(__aarch64__)
    return "armv8-a";
#else
    return "generic";
#endif
}

static void cache_key(char *key, size_t n, int threads) {
    CpuInfo ci;
    cpu_info(&ci);
    int o = snprintf(key, n, "lora-kernels v3|%s|%s|%d.%d|%s|%s|threads %d|isa cap %d|openblas %s|build %s|", ci.arch,
                     ci.vendor, ci.family, ci.model_id, ci.model, ci.flags, threads, isa_cap(), openblas_get_corename(),
                     build_isa_level());
    for (int i = 0; qg_kernels[i] && o > 0 && (size_t)o < n; i++)
        o += snprintf(key + o, n - (size_t)o, "%s%s", qg_kernels[i]->name, gemm_kernel_usable(qg_kernels[i]) ? "+" : "-");
}

static uint64_t fnv1a(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void cache_path(char *out, size_t n, const char *key) {
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    char dir[400];
    if (xdg && *xdg)
        snprintf(dir, sizeof dir, "%s/lora", xdg);
    else if (home && *home)
        snprintf(dir, sizeof dir, "%s/.cache/lora", home);
    else {
        out[0] = 0;
        return;
    }
    snprintf(out, n, "%s/kernels-%016llx.txt", dir, (unsigned long long)fnv1a(key));
}

static int cache_read(KernelChoice *kc, const char *key) {
    if (!kc->cache_path[0]) return -1;
    FILE *f = fopen(kc->cache_path, "r");
    if (!f) return -1;
    char line[1200];
    int ok = fgets(line, sizeof line, f) != NULL;
    line[strcspn(line, "\n")] = 0;
    ok = ok && !strncmp(line, "key ", 4) && !strcmp(line + 4, key);
    kc->n_cand = 0;
    kc->mem_gbs = 0;
    while (ok && fgets(line, sizeof line, f)) {
        char name[64];
        double v;
        if (sscanf(line, "cand %63s %lf", name, &v) == 2) {
            const GemmKernel *k = strcmp(name, "openblas") ? gemm_kernel_find(name) : NULL;
            if ((strcmp(name, "openblas") && !k) || !gemm_kernel_usable(k) || kc->n_cand >= KC_MAX_CAND || !(v > 0))
                ok = 0;
            else
                kc->cand[kc->n_cand++] = (KernelCand){k, v};
        } else if (sscanf(line, "mem %lf", &v) == 1) {
            kc->mem_gbs = v;
        } else if (sscanf(line, "cut %lf", &v) == 1) {
            kc->cut = (int)v;
        }
    }
    fclose(f);
    return ok && kc->n_cand > 0 ? 0 : -1;
}

// Best effort: a cache that cannot be written only costs the next run its calibration.
static void cache_write(const KernelChoice *kc, const char *key) {
    if (!kc->cache_path[0]) return;
    char dir[600];
    snprintf(dir, sizeof dir, "%s", kc->cache_path);
    char *slash = strrchr(dir, '/');
    if (!slash) return;
    *slash = 0;
    if (make_dirs(dir, NULL)) return;
    char buf[4096];
    int o = snprintf(buf, sizeof buf, "key %s\n", key);
    for (int i = 0; i < kc->n_cand && o > 0 && (size_t)o < sizeof buf; i++)
        o += snprintf(buf + o, sizeof buf - (size_t)o, "cand %s %.2f\n", gemm_kernel_name(kc->cand[i].k),
                      kc->cand[i].gflops);
    if (o > 0 && (size_t)o < sizeof buf) o += snprintf(buf + o, sizeof buf - (size_t)o, "mem %.2f\ncut %d\n", kc->mem_gbs, kc->cut);
    if (o > 0 && (size_t)o < sizeof buf) write_file_atomic(kc->cache_path, buf, (size_t)o, NULL);
}

// ---- the choice -----------------------------------------------------------------------------

static int forced_choice(KernelChoice *kc) {
    const char *v = getenv("LORA_KERNEL");
    if (!v || !*v) return 0;
    const GemmKernel *k = strcmp(v, "openblas") ? gemm_kernel_find(v) : NULL;
    if (strcmp(v, "openblas") && (!k || !gemm_kernel_usable(k))) {
        fprintf(stderr, "lora: LORA_KERNEL=%s is not a kernel this CPU runs (see `lora info`); measuring instead\n", v);
        return 0;
    }
    kc->forced = 1;
    kc->n_cand = 0;
    kc->fp32 = gemm_kernel_bf16(k) ? NULL : k;
    kc->bf16 = gemm_kernel_bf16(k) ? k : NULL;
    kc->best = k;
    return 1;
}

#define MAX_CHOICES 16
static pthread_mutex_t choice_lock = PTHREAD_MUTEX_INITIALIZER;
static KernelChoice choices[MAX_CHOICES];
static int n_choices;

// The entry for the current thread count (measured now when fresh, or when neither this process
// nor the cache has it).
static const KernelChoice *choose(int fresh) {
    const int threads = omp_get_max_threads();
    pthread_mutex_lock(&choice_lock);
    KernelChoice *kc = NULL;
    for (int i = 0; i < n_choices && !kc; i++)
        if (choices[i].threads == threads) kc = &choices[i];
    if (kc && !fresh) {
        pthread_mutex_unlock(&choice_lock);
        return kc;
    }
    if (!kc) kc = &choices[n_choices < MAX_CHOICES ? n_choices++ : MAX_CHOICES - 1];
    memset(kc, 0, sizeof *kc);
    kc->threads = threads;
    char key[1100];
    cache_key(key, sizeof key, threads);
    cache_path(kc->cache_path, sizeof kc->cache_path, key);
    if (!forced_choice(kc)) {
        if (!fresh && cache_read(kc, key) == 0) {
            kc->from_cache = 1;
        } else {
            double t0 = now_seconds();
            if (calibrate(kc)) {  // out of memory: the portable choices, unmeasured
                kc->n_cand = 1;
                kc->cand[0] = (KernelCand){NULL, 1.0};
            }
            kc->seconds = now_seconds() - t0;
            cache_write(kc, key);
        }
        decide(kc);
    }
    pthread_mutex_unlock(&choice_lock);
    return kc;
}

const KernelChoice *kernel_choice(void) { return choose(0); }
const KernelChoice *kernel_recalibrate(void) { return choose(1); }

// ---- OpenBLAS's core -------------------------------------------------------------------------

const char *openblas_core(void) { return openblas_get_corename(); }

// OpenBLAS (DYNAMIC_ARCH) picks its kernels from the CPU model; a model newer than the
// library (Debian 12's 0.3.21 and Intel family 6 model 207, say) falls back to a generic core
// such as Prescott, at a fifth of the speed. Those generic names, and what the instruction
// sets present allow instead.
const char *openblas_coretype_for(const char *core, const CpuInfo *ci) {
    static const char *const generic[] = {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom",
                                          "Katmai", "Coppermine", "Northwood", "Banias", "Opteron",
                                          "Barcelona", "Bobcat", "Unknown", "generic", NULL};
    int fallback = !core || !*core;
    for (int i = 0; !fallback && generic[i]; i++) fallback = !strcmp(core, generic[i]);
    if (!fallback || strcmp(ci->arch, "x86_64")) return NULL;
    if (ci->avx512) return "SkylakeX";
    if (ci->avx2 && ci->fma) return "Haswell";
    if (strstr(ci->flags, "avx")) return "Sandybridge";
    return NULL;
}

const char *openblas_coretype_fix(void) {
    const char *env = getenv("OPENBLAS_CORETYPE");
    if (env && *env) return NULL;  // the user's choice stands
    CpuInfo ci;
    cpu_info(&ci);
    return openblas_coretype_for(openblas_get_corename(), &ci);
}
