// train — the training loop behind `lora train`, and its configuration (a recipe JSON file
// whose every key can be overridden on the command line: key "grad_accum" <-> flag
// "--grad-accum").
#pragma once
#include <stdint.h>
#include "util/util.h"
#include "autograd/autograd.h"
#include "model/model.h"
#include "data/data.h"
#include "optim/optim.h"

typedef struct {
    // inputs / outputs
    char model[1024];          // HF dir, .gguf or .bin
    char tokenizer[1024];      // tokenizer file ("" = beside the model)
    char data[1024];           // training JSONL
    char val_data[1024];       // held-out JSONL ("" = split val_fraction off data)
    char out[1024];            // output directory
    // LoRA
    int rank;                  // 8
    float alpha;               // 16
    float dropout;             // 0.05
    unsigned targets;          // default q,k,v,o,gate,up,down
    int use_rslora;            // 0
    // data
    DataOptions data_opts;
    float val_fraction;        // 0.1 when val_data is empty
    // schedule
    int steps;                 // optimizer steps (0 = derive from epochs)
    float epochs;              // 1
    int batch_size;            // 4
    int grad_accum;            // 1
    float lr;                  // 2e-4
    SchedType sched;           // cosine
    int warmup_steps;          // 0
    float warmup_ratio;        // 0 (used when warmup_steps is 0)
    float max_grad_norm;       // 1.0 (0 = no clipping)
    AdamWConfig adamw;         // betas 0.9/0.999, eps 1e-8, weight_decay 0
    uint64_t seed;             // 42
    // logging / evaluation
    int log_every;             // 1
    int eval_every;            // 0 = only at start and end
    int eval_max_examples;     // 0 = all
    int threads;               // 0 = all cores
} TrainConfig;

void train_config_default(TrainConfig *c);
// Applies the keys of a recipe JSON object (unknown key = error naming it and the file).
int train_config_load_json(TrainConfig *c, const char *path, Err *e);
// Sets one key from its text value ("lr", "2e-4"); the flag spelling "grad-accum" is
// accepted for "grad_accum".
int train_config_set(TrainConfig *c, const char *key, const char *value, Err *e);
// Writes the effective configuration as JSON (OUT/train_config.json).
int train_config_save(const TrainConfig *c, const char *path, Err *e);

// One optimizer step: forward + backward over n_micro micro-batches (the loss of each is
// normalised by the kept targets of all of them, so their sum is the mean over the step),
// global-norm clipping, learning rate from the schedule for `step`, AdamW update, zero
// grads. Returns the step's mean loss; *grad_norm and *lr receive the pre-clip norm and the
// rate used.
float train_step(Tape *t, const Model *m, LoraAdapter *lora, AdamW *opt, const Batch *micro,
                 int n_micro, const TrainConfig *c, int64_t step, int64_t total_steps,
                 float *grad_norm, float *lr);

// Mean loss over the kept targets of examples of ds (all, or the first max_examples),
// evaluated in batches of batch_size with recording off. *n_tokens receives the count.
double evaluate_loss(Tape *t, const Model *m, const LoraAdapter *lora, const Dataset *ds,
                     int batch_size, int max_examples, long *n_tokens, Err *e);

// The tokenizer for a model: tok_path when given, else tokenizer.model beside the model
// (in a HF directory, or next to a .gguf/.bin file).
Tokenizer *load_tokenizer_for(const char *model_path, const char *tok_path, Err *e);

// The whole `lora train` run: load, evaluate, train, evaluate, save. 0 on success.
int train_run(const TrainConfig *c, Err *e);
