// quant — the tiled GEMM's aarch64 kernel variant (see gemm.c and quant_internal.h):
//   f32-neon   8 × 8 fp32 micro-tile, 16 q-register accumulators, fmla by element (NEON is
//              part of every aarch64 CPU, so it needs no run-time check)
#include "quant/quant.h"
#include "quant/quant_internal.h"

#if defined(__aarch64__)
#include <arm_neon.h>

#define N_MR 8
#define N_NR 8

// ap (kpn, 8) fp32, bp (kpn, 8) fp32 -> c (rows, ncols): c = (add ? c : 0) + Σ a b
static void n_f32_kernel(int rows, const uint32_t *ap, const uint32_t *bp, int64_t kpn, float *c, int64_t ldc,
                         int add, int ncols) {
    const float *a = (const float *)ap, *b = (const float *)bp;
    float32x4_t acc[N_MR][2];
    for (int m = 0; m < N_MR; m++) acc[m][0] = acc[m][1] = vdupq_n_f32(0.0f);
    for (int64_t kp = 0; kp < kpn; kp++) {
        const float32x4_t b0 = vld1q_f32(b + kp * N_NR), b1 = vld1q_f32(b + kp * N_NR + 4);
        const float32x4_t a0 = vld1q_f32(a + kp * N_MR), a1 = vld1q_f32(a + kp * N_MR + 4);
        acc[0][0] = vfmaq_laneq_f32(acc[0][0], b0, a0, 0);
        acc[0][1] = vfmaq_laneq_f32(acc[0][1], b1, a0, 0);
        acc[1][0] = vfmaq_laneq_f32(acc[1][0], b0, a0, 1);
        acc[1][1] = vfmaq_laneq_f32(acc[1][1], b1, a0, 1);
        acc[2][0] = vfmaq_laneq_f32(acc[2][0], b0, a0, 2);
        acc[2][1] = vfmaq_laneq_f32(acc[2][1], b1, a0, 2);
        acc[3][0] = vfmaq_laneq_f32(acc[3][0], b0, a0, 3);
        acc[3][1] = vfmaq_laneq_f32(acc[3][1], b1, a0, 3);
        acc[4][0] = vfmaq_laneq_f32(acc[4][0], b0, a1, 0);
        acc[4][1] = vfmaq_laneq_f32(acc[4][1], b1, a1, 0);
        acc[5][0] = vfmaq_laneq_f32(acc[5][0], b0, a1, 1);
        acc[5][1] = vfmaq_laneq_f32(acc[5][1], b1, a1, 1);
        acc[6][0] = vfmaq_laneq_f32(acc[6][0], b0, a1, 2);
        acc[6][1] = vfmaq_laneq_f32(acc[6][1], b1, a1, 2);
        acc[7][0] = vfmaq_laneq_f32(acc[7][0], b0, a1, 3);
        acc[7][1] = vfmaq_laneq_f32(acc[7][1], b1, a1, 3);
    }
#pragma GCC unroll 8
    for (int m = 0; m < N_MR; m++) {  // unrolled: acc stays in registers
        if (m >= rows) break;
        float *cr = c + m * ldc;
        if (ncols == N_NR) {
            float32x4_t v0 = acc[m][0], v1 = acc[m][1];
            if (add) {
                v0 = vaddq_f32(v0, vld1q_f32(cr));
                v1 = vaddq_f32(v1, vld1q_f32(cr + 4));
            }
            vst1q_f32(cr, v0);
            vst1q_f32(cr + 4, v1);
        } else {
            float buf[N_NR];
            vst1q_f32(buf, acc[m][0]);
            vst1q_f32(buf + 4, acc[m][1]);
            for (int j = 0; j < ncols; j++) cr[j] = add ? cr[j] + buf[j] : buf[j];
        }
    }
}

static void n_f32_pack_a(uint32_t *ap, int64_t KPT, int64_t kpo, const float *a, int64_t M, int64_t K, int64_t lda);
static void n_f32_pack_b(int xwt, uint32_t *P, const float *T, int64_t ldt, int64_t nc, int64_t kc);

const GemmKernel qg_f32_neon = {"f32-neon", "neon", 0, 1, N_MR, N_NR, n_f32_pack_a, n_f32_pack_b, n_f32_kernel};

static void n_f32_pack_a(uint32_t *ap, int64_t KPT, int64_t kpo, const float *a, int64_t M, int64_t K, int64_t lda) {
    qg_pack_a_words(&qg_f32_neon, ap, KPT, kpo, a, M, K, lda);
}
static void n_f32_pack_b(int xwt, uint32_t *P, const float *T, int64_t ldt, int64_t nc, int64_t kc) {
    qg_pack_b_words(&qg_f32_neon, xwt, P, T, ldt, nc, kc);
}
#endif
