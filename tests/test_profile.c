// `lora train --profile`: the tape's per-op timing table (autograd tape_set_profile).
#include <stdio.h>
#include <string.h>
#include "autograd/autograd.h"
#include "tests/testutil.h"

// x (N,C) -> loss: rmsnorm -> linear -> linear_cross_entropy, with a trainable norm weight
static Tensor *run(Tape *t, Tensor *x, Tensor *g, Weight *w, Weight *head, const int *tg) {
    Tensor *h = op_rmsnorm(t, x, g, 1e-5f);
    Tensor *y = op_linear(t, h, w);
    return op_linear_cross_entropy(t, y, head, tg, 4.0f);
}

static int count_str(const char *s, const char *sub) {
    int n = 0;
    for (const char *p = strstr(s, sub); p; p = strstr(p + 1, sub)) n++;
    return n;
}

int main(void) {
    Err e = {{0}};
    enum { N = 4, C = 8, V = 11 };
    float wd[C * C], hd[V * C];
    for (int i = 0; i < C * C; i++) wd[i] = 0.01f * (float)((i * 7) % 13 - 6);
    for (int i = 0; i < V * C; i++) hd[i] = 0.02f * (float)((i * 5) % 11 - 5);
    Weight w = {WT_F32, C, C, wd, 0, "w"}, head = {WT_F32, V, C, hd, 0, "head"};
    int64_t sx[2] = {N, C}, sg[1] = {C};
    Tensor *x = tensor_new_param(2, sx, 0, "x", &e), *g = tensor_new_param(1, sg, 1, "g", &e);
    for (int i = 0; i < N * C; i++) x->data[i] = 0.1f * (float)(i % 5) - 0.2f;
    for (int i = 0; i < C; i++) g->data[i] = 1.0f;
    int tg[N] = {1, 3, -1, 7};
    Tape *t = tape_new(&e);

    // off (the default): nothing printed, gradients as usual
    char buf[4096] = {0};
    FILE *f = fmemopen(buf, sizeof buf, "w");
    tape_backward(t, run(t, x, g, &w, &head, tg));
    float g_off = g->grad[0];
    tape_profile_print(t, f);
    fflush(f);
    CHECK("profile off by default", !tape_profiling(t) && buf[0] == 0, "printed \"%s\"", buf);
    fclose(f);

    // three accumulated steps without profiling: the gradients profiling must not change (not
    // 3 x one step: a gradient summed from per-thread parts rounds differently when accumulated)
    (void)g_off;
    tensor_zero_grad(g);
    for (int step = 0; step < 3; step++) {
        tape_reset(t);
        tape_backward(t, run(t, x, g, &w, &head, tg));
    }
    float g_off3 = g->grad[0];
    // on: one row per op type with forward and backward calls, sections, same gradients
    tensor_zero_grad(g);
    tape_reset(t);
    tape_set_profile(t, 1);
    for (int step = 0; step < 3; step++) {
        tape_reset(t);
        tape_backward(t, run(t, x, g, &w, &head, tg));
    }
    tape_profile_add(t, "optimizer", 0.5);
    tape_profile_add(t, "optimizer", 0.25);
    memset(buf, 0, sizeof buf);
    f = fmemopen(buf, sizeof buf, "w");
    tape_profile_print(t, f);
    fclose(f);
    CHECK("profiling on", tape_profiling(t), "tape_profiling is 0");
    CHECK("gradients unchanged by profiling", g->grad[0] == g_off3, "%.9g vs %.9g", g->grad[0], g_off3);
    CHECK("rows for each op", strstr(buf, "\n  rmsnorm ") && strstr(buf, "\n  linear ") &&
          strstr(buf, "\n  linear_cross_entropy "), "%s", buf);
    // rmsnorm: 3 forwards + 3 backwards = 6 calls (the last column)
    const char *r = strstr(buf, "\n  rmsnorm ");
    int calls = -1;
    if (r) {
        const char *eol = strchr(r + 1, '\n');
        const char *sp = eol;
        while (sp > r && sp[-1] != ' ') sp--;
        sscanf(sp, "%d", &calls);
    }
    CHECK("rmsnorm forward and backward counted", calls == 6, "calls %d in\n%s", calls, buf);
    CHECK("section accumulated", strstr(buf, "optimizer") && strstr(buf, "0.750"), "%s", buf);
    CHECK("one row per name", count_str(buf, "\n  linear ") == 1, "%s", buf);

    tape_set_profile(t, 0);
    CHECK("profile off again", !tape_profiling(t), "still on");
    tape_free(t);
    tensor_free(x);
    tensor_free(g);
    return tu_exit();
}
