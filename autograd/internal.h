// autograd/internal.h — PRIVATE to autograd/ (autograd.c <-> ops.c). Not part of the module
// interface; nothing outside autograd/ includes it.
//
// A Node is one recorded op: its backward function, the output whose gradient it consumes,
// up to three inputs, and whatever the op saved for backward (arena memory, valid until
// tape_reset). Nodes live in the arena and form a list walked backwards by tape_backward.
#pragma once
#include "autograd/autograd.h"

typedef struct Node Node;
typedef void (*BackwardFn)(Tape *t, const Node *n);

struct Node {
    BackwardFn backward;
    Node *prev;               // previous node on the tape (NULL for the first)
    Tensor *out;
    Tensor *in[3];            // inputs that may receive a gradient (NULL where unused)
    const Weight *w;          // frozen weight (op_lora_linear)
    void *saved[2];           // op-specific buffers (probabilities, masks, ...)
    float f[2];               // op-specific scalars (scale, dropout p, eps, norm, ...)
    int64_t d[8];             // op-specific sizes
    const char *op;           // op name, set while profiling (else NULL)
};

// An output tensor on the tape; requires_grad = any_input_rg && recording.
Tensor *tape_result(Tape *t, int ndim, const int64_t *shape, int any_input_rg);
// Records a node for out (zero-initialised apart from backward/out) and returns it, or
// returns NULL when nothing must be recorded (recording off or out needs no gradient).
Node *tape_record(Tape *t, BackwardFn backward, Tensor *out);
// x's gradient buffer, allocated and zeroed on first use; NULL when x is frozen.
float *tape_grad(Tape *t, Tensor *x);

// Reusable scratch buffers kept across tape_reset (contents undefined between ops).
enum { SCR_WTILE, SCR_A, SCR_B, SCR_C, SCR_GEMM, SCR_COUNT };
float *tape_scratch(Tape *t, int slot, size_t nfloats);

// ---- profiling (profile.c) --------------------------------------------------------------------
typedef struct Profile Profile;
Profile *profile_new(void);
void profile_free(Profile *p);
double prof_now(void);
double profile_op_begin(Profile *p, const char *op);
void profile_op_end(Profile *p, double t0);
const char *profile_current(const Profile *p);     // the outermost op running (NULL if none)
void profile_backward_add(Profile *p, const char *op, double dt);
void profile_set_backward(Profile *p, int on);
void profile_section_add(Profile *p, const char *name, double dt);
void profile_pause(Profile *p, int paused);
void profile_print(const Profile *p, FILE *f);
// Around each public op (ops.c): a no-op returning 0 when profiling is off.
double tape_prof_begin(Tape *t, const char *op);
void tape_prof_end(Tape *t, double t0);
