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
};

// An output tensor on the tape; requires_grad = any_input_rg && recording.
Tensor *tape_result(Tape *t, int ndim, const int64_t *shape, int any_input_rg);
// Records a node for out (zero-initialised apart from backward/out) and returns it, or
// returns NULL when nothing must be recorded (recording off or out needs no gradient).
Node *tape_record(Tape *t, BackwardFn backward, Tensor *out);
// x's gradient buffer, allocated and zeroed on first use; NULL when x is frozen.
float *tape_grad(Tape *t, Tensor *x);

// Reusable scratch buffers kept across tape_reset (contents undefined between ops).
enum { SCR_WTILE, SCR_A, SCR_B, SCR_C, SCR_COUNT };
float *tape_scratch(Tape *t, int slot, size_t nfloats);
