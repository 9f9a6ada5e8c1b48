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
#include "infer/infer.h"

// Compute dtype of the frozen-base matmuls during training steps (evaluation is always fp32).
typedef enum { COMPUTE_AUTO, COMPUTE_FP32, COMPUTE_BF16 } ComputeDtype;
int compute_dtype_parse(const char *s, ComputeDtype *out, Err *e);  // auto | fp32 | bf16
const char *compute_dtype_name(ComputeDtype d);
// The GEMM a training step runs with d (tape_set_gemm; NULL = OpenBLAS), from kernel_choice():
// fp32 -> the fastest fp32 path; bf16 -> the fastest bf16 variant (the fp32 path on a CPU
// without bf16 dot products); auto -> the fastest of all (bf16 only when it measured at least
// KC_BF16_MARGIN faster than fp32).
const GemmKernel *compute_gemm(ComputeDtype d);

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
    // frozen base and memory
    QuantType quant;           // QUANT_NF4 (QLoRA, the default) or QUANT_NONE (`--quant`)
    char quant_cache[1024];    // "" or a file caching the quantized base (`--quant-cache`)
    int profile;               // 1: per-op wall-time table at the end (`--profile`)
    int grad_checkpointing;    // 1: each block recomputed in backward (`--grad-checkpointing`)
    int memory_limit_mb;       // 1536: checkpointed blocks keep their matmul outputs (no re-run
                               // matmuls) while the planned step stays under it (`--memory-limit`)
    ComputeDtype compute;      // COMPUTE_AUTO: the fastest measured GEMM over the frozen base,
                               // bf16 or fp32 (`--compute-dtype`; compute_gemm)
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
    int eval_before;           // 0; 1: full `lora eval` table (base before step 0, adapter at the end)
    int threads;               // 0 = all cores
    // checkpoints
    int save_every;            // 0; N: OUT/checkpoint-STEP every N optimizer steps
    char resume[1024];         // "" or a checkpoint directory (or OUT: its latest) to continue
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

// ---- checkpoints (train/checkpoint.c) -------------------------------------------------------
// OUT/checkpoint-STEP/ holds the adapter (PEFT layout), optimizer.safetensors (the AdamW
// moments of every parameter), trainer_state.json (below) and train_config.json. It is
// written as OUT/checkpoint-STEP.tmp and renamed, so a checkpoint directory is always whole.
typedef struct {
    int64_t step;              // optimizer steps done
    int64_t total_steps;
    int64_t adam_t;            // AdamW steps taken
    int epoch, pos;            // data loader position after `step` steps
    uint64_t dropout_rng;      // the tape's RNG state (tape_rng)
    double val_before;         // held-out loss at step 0
    double window_loss;        // train losses summed since the last log line, and their tokens
    long window_tokens;
    long metrics_bytes;        // size of OUT/metrics.jsonl when the checkpoint was written
    int n_train;               // training examples and a hash of their tokens: a resume checks
    uint64_t data_hash;        //   that it sees the same data
} TrainState;
// FNV-1a over the ids and masks of every example of ds.
uint64_t dataset_hash(const Dataset *ds);
int checkpoint_save(const char *out, const TrainConfig *c, const TrainState *s, const LoraAdapter *a,
                    const Model *m, const AdamW *opt, Err *e);
// path: a checkpoint directory, or an output directory (then its latest whole checkpoint) ->
// the checkpoint directory in dir.
int checkpoint_find(const char *path, char *dir, size_t n, Err *e);
// Reads checkpoint dir into s, and its adapter weights and AdamW moments into a and opt
// (created for the same settings; every shape is checked).
int checkpoint_load(const char *dir, const Model *m, TrainState *s, LoraAdapter *a, AdamW *opt, Err *e);
// `lora train --resume PATH`: the settings the checkpoint was trained with (its
// train_config.json) into c; flags given with --resume then override them.
int train_config_load_checkpoint(TrainConfig *c, const char *path, Err *e);

// ---- the `lora` command line --------------------------------------------------------------
// Flags of the small commands: --name value pairs and boolean switches (train/cli.c).
typedef struct {
    const char *name;          // without the leading "--"
    const char *value;         // NULL = absent; "1" for a switch that is present; the last given
    int is_switch;
} CliFlag;
// Parses argv (all "--name [value]") into flags; an unknown flag or a missing value is an error.
int cli_parse(int argc, char **argv, CliFlag *flags, int nflags, Err *e);
// Every value of a repeatable flag --name, in order, into out (at most max). Returns the count.
int cli_all(int argc, char **argv, const char *name, const char **out, int max, Err *e);
const char *cli_get(const CliFlag *flags, int n, const char *name, const char *def);
int cli_int(const CliFlag *flags, int n, const char *name, int def, Err *e, int *out);
int cli_float(const CliFlag *flags, int n, const char *name, float def, Err *e, float *out);
// Prints "lora: MESSAGE" on stderr; returns 1 (the exit status).
int cli_fail(const Err *e);
// Generation settings from the flags max-tokens, temperature, top-k, top-p, min-p,
// repetition-penalty, seed, ignore-eos (switch) and every --stop of argv; the defaults for
// max_tokens and temperature are given.
int cli_gen_config(const CliFlag *flags, int n, int argc, char **argv, int def_max_tokens, float def_temperature,
                   GenConfig *g, Err *e);
// The prompt template of chat and serve: --template, else (or with "auto") the model's own
// chat template (template_detect of --tokenizer, then of --model), else alpaca. -1 on a bad
// name.
int cli_template(const CliFlag *flags, int n, Err *e);
// The model's own chat template (template_detect of --tokenizer, then of --model), TPL_AUTO
// when neither has a known one.
Template cli_detect_template(const CliFlag *flags, int n);
// The base's quantisation for generate, eval, chat and serve: --quant nf4|none, or (absent or
// "auto") the "quant" of the train_config.json `lora train` wrote beside each --adapter (the
// first one's when they disagree, with a warning), else none. Says on stderr which it is and
// why. -1 on a bad --quant or an unreadable train_config.json.
int cli_quant(const CliFlag *flags, int n, int argc, char **argv, QuantType *q, Err *e);
// Loads every --adapter name=path[:scale] of argv into r. Returns the count, -1 on error.
int cli_load_adapters(AdapterRegistry *r, int argc, char **argv, Err *e);

// Subcommands, one file each: train/cmd_<name>.c.
int cmd_generate(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_merge(int argc, char **argv);    // train/cmd_merge.c
int cmd_export(int argc, char **argv);   // train/cmd_export.c
int cmd_info(int argc, char **argv);     // train/cmd_info.c
