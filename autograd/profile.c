// autograd/profile.c — `lora train --profile`: wall time per op type (forward, checkpoint
// recompute, backward) plus named sections (optimizer, data, eval), accumulated over a run.
// Off by default: every op then pays one pointer test.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "autograd/internal.h"

enum { PROF_MAX = 48 };
typedef struct {
    const char *name;         // static string: op name or section name
    int is_section;
    double fwd, rec, bwd;     // seconds: forward, forward re-run inside backward, backward
    int64_t n_fwd, n_rec, n_bwd;
} ProfRow;

struct Profile {
    ProfRow row[PROF_MAX];
    int n;
    int depth;                // ops nest (op_linear -> op_lora_linear): only the outermost counts
    int in_backward;          // forward ops now are checkpoint recomputes
    double t_start;
    const char *cur;          // the outermost op running
    int paused;               // ops not timed (the caller times them as a section)
};

void profile_pause(Profile *p, int paused) { p->paused = paused; }

double prof_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

Profile *profile_new(void) {
    Profile *p = calloc(1, sizeof *p);
    if (p) p->t_start = prof_now();
    return p;
}

void profile_free(Profile *p) { free(p); }

static ProfRow *prof_row(Profile *p, const char *name, int is_section) {
    for (int i = 0; i < p->n; i++)
        if (p->row[i].name == name || !strcmp(p->row[i].name, name)) return &p->row[i];
    if (p->n == PROF_MAX) return &p->row[PROF_MAX - 1];  // "other" bucket once full
    ProfRow *r = &p->row[p->n++];
    r->name = p->n == PROF_MAX ? "other" : name;
    r->is_section = is_section;
    return r;
}

double profile_op_begin(Profile *p, const char *op) {
    if (p->paused) return 0.0;
    if (p->depth++) return 0.0;
    p->cur = op;
    return prof_now();
}

const char *profile_current(const Profile *p) { return p->cur; }

void profile_op_end(Profile *p, double t0) {
    if (p->paused || --p->depth) return;
    ProfRow *r = prof_row(p, p->cur, 0);
    p->cur = NULL;
    double dt = prof_now() - t0;
    if (p->in_backward) {
        r->rec += dt;
        r->n_rec++;
    } else {
        r->fwd += dt;
        r->n_fwd++;
    }
}

void profile_backward_add(Profile *p, const char *op, double dt) {
    ProfRow *r = prof_row(p, op ? op : "?", 0);
    r->bwd += dt;
    r->n_bwd++;
}

void profile_set_backward(Profile *p, int on) { p->in_backward = on; }

void profile_section_add(Profile *p, const char *name, double dt) {
    ProfRow *r = prof_row(p, name, 1);
    r->fwd += dt;
    r->n_fwd++;
}

void profile_print(const Profile *p, FILE *f) {
    double ops = 0, secs = 0;
    for (int i = 0; i < p->n; i++) {
        const ProfRow *r = &p->row[i];
        if (r->is_section) secs += r->fwd;
        else ops += r->fwd + r->rec + r->bwd;
    }
    double wall = prof_now() - p->t_start, tot = ops + secs;
    fprintf(f, "profile: wall time per op over the run (forward / checkpoint recompute / backward)\n");
    fprintf(f, "  %-22s %10s %10s %10s %10s %7s %9s\n", "op", "fwd s", "recomp s", "bwd s", "total s", "%", "calls");
    // rows by total, largest first (selection order: at most PROF_MAX rows)
    int done[PROF_MAX] = {0};
    for (int k = 0; k < p->n; k++) {
        int b = -1;
        double bt = -1;
        for (int i = 0; i < p->n; i++) {
            double ti = p->row[i].fwd + p->row[i].rec + p->row[i].bwd;
            if (!done[i] && ti > bt) b = i, bt = ti;
        }
        done[b] = 1;
        const ProfRow *r = &p->row[b];
        if (r->is_section)
            fprintf(f, "  %-22s %10.3f %10s %10s %10.3f %6.1f%% %9lld\n", r->name, r->fwd, "", "", bt,
                    tot > 0 ? 100 * bt / tot : 0, (long long)r->n_fwd);
        else
            fprintf(f, "  %-22s %10.3f %10.3f %10.3f %10.3f %6.1f%% %9lld\n", r->name, r->fwd, r->rec, r->bwd,
                    bt, tot > 0 ? 100 * bt / tot : 0, (long long)(r->n_fwd + r->n_rec + r->n_bwd));
    }
    fprintf(f, "  %-22s %43.3f s (ops %.3f s + sections %.3f s; wall since start %.3f s)\n", "total", tot, ops, secs,
            wall);
}
