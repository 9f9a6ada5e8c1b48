// infer — inference over one base Model: a sampler, a generation loop on model_forward with
// a KV cache (prompt in one pass, then one token at a time with last_only), a registry of
// many LoRA adapters over one base (chosen per call; the base is never reloaded or merged),
// and the before/after evaluation behind `lora eval`.
//
// Thread safety: the Model and every loaded LoraAdapter are read-only during inference, so
// any number of generations (each with its own Generator: tape, KV cache, sampler) may run
// at once on one base. The registry guards its list with a lock and counts the users of each
// adapter, so an adapter unloaded while a request uses it is freed only after that request.
#pragma once
#include <stdint.h>
#include <stdio.h>
#include "util/util.h"
#include "model/model.h"
#include "data/data.h"

// ---- sampling -----------------------------------------------------------------------------
// Logit processing in the order of HF transformers' generate(): repetition penalty, then
// temperature, top-k, top-p, min-p; then a draw from the remaining distribution.
typedef struct {
    float temperature;         // 0 = greedy: argmax of the (penalised) logits
    int top_k;                 // keep the k most likely tokens (0 = off)
    float top_p;               // keep the smallest most-likely set whose mass reaches p (1 = off)
    float min_p;               // drop tokens with probability < min_p × the top one (0 = off)
    float repetition_penalty;  // as HF: a seen token's logit is divided by it when > 0 and
                               // multiplied by it when < 0 (1 = off)
    uint64_t seed;             // the same seed and inputs give the same tokens
} SamplerConfig;
// temperature 1, top_k 0, top_p 1, min_p 0, repetition_penalty 1, seed 42.
void sampler_config_default(SamplerConfig *c);
// Checks ranges (temperature >= 0, top_k >= 0, top_p in (0,1], min_p in [0,1), penalty > 0).
int sampler_config_check(const SamplerConfig *c, Err *e);

typedef struct {
    SamplerConfig cfg;
    Rng rng;
    int vocab;
    float *probs;              // (vocab) scratch
    int *order;                // (vocab) scratch
} Sampler;
int sampler_init(Sampler *s, const SamplerConfig *c, int vocab, Err *e);
void sampler_free(Sampler *s);
// logits (V) -> logits (V): the HF repetition penalty over the distinct ids of history (n).
void apply_repetition_penalty(float *logits, int V, const int *history, int n, float penalty);
// logits (V) (modified: penalty applied) -> probs (V): the distribution a token is drawn from
// (temperature > 0), zero outside the kept set and summing to 1.
void sampler_probs(Sampler *s, float *logits, const int *history, int n_history, float *probs);
// logits (V) (modified) -> the next token. history: the ids so far (prompt + generated).
int sampler_next(Sampler *s, float *logits, const int *history, int n_history);

// ---- the decoding engine: a forward pass without a tape, batched over sequences -----------
// One step runs any number of sequences, each with its own KV cache, position and adapter
// (NULL = the base), through the model. Every frozen matrix is read once per step for all the
// step's rows (fused: q,k,v as one pass over their rows, gate,up likewise; rows split across
// the threads of ONE OpenMP team, the calling thread's, or one thread alone where the first
// steps with that many rows measured that faster: a small model's step can be barrier-bound);
// then each row adds its own
// adapter's low-rank term (rows gathered by adapter, as S-LoRA / Punica's BGMV). A row's
// result never depends on which other rows share its step, so a request's greedy output is
// the same alone or batched.
//   decode (one token per sequence): matrix-vector products in the weights' stored format
//     (quant/: activations quantized once per token for the integer dot products of the
//     GGUF block formats; NF4, bf16, f32 in floating point);
//   prefill (a prompt): GEMM over its tokens through the trainer's tiled kernels, in chunks
//     (the cancel flag is read between chunks).
// Not thread-safe: one thread calls an Engine (the server's scheduler); the Model and the
// adapters are only read.
typedef struct Engine Engine;
// max_rows: the most sequences one engine_decode call takes (the server's --max-batch).
Engine *engine_new(const Model *m, int max_rows, Err *e);
void engine_free(Engine *en);
// flag (or NULL): when *flag becomes non-zero, engine_prefill stops at its next chunk and
// fails with "cancelled".
void engine_set_cancel(Engine *en, const volatile int *flag);
// ids (n >= 1) of one sequence appended to kv at positions kv->len.. (kv->len grows by n)
// -> logits (V) of its last position. Errors: no room in kv, a token outside the vocabulary,
// cancelled, out of memory.
int engine_prefill(Engine *en, const LoraAdapter *lora, KVCache *kv, const int *ids, int n, float *logits,
                   Err *e);
// The prompts of count sequences in one pass: ids[s] (n[s] >= 1 tokens) appended to kv[s] with
// adapter lora[s] (NULL = base) -> logits[s] (V) of its last position. When the engine runs
// prompts as decode rows (a model whose layer matrices are all GGUF-quantized) the tokens of
// all the sequences share its steps (32 rows a step, the cancel flag read between); otherwise
// one engine_prefill each. Errors as engine_prefill's, for any of them.
int engine_prefill_many(Engine *en, const LoraAdapter *const *lora, KVCache *const *kv, const int *const *ids,
                        const int *n, int count, float *const *logits, Err *e);
// n sequences (1 <= n <= max_rows), one token each: tokens[i] at position kv[i]->len of
// sequence i with adapter lora[i] (lora NULL = all base) -> logits[i] (V) (each row its own
// buffer). kv[i]->len grows by 1.
int engine_decode(Engine *en, const LoraAdapter *const *lora, KVCache *const *kv, const int *tokens, int n,
                  float *const *logits, Err *e);
// Bytes of one sequence's KV cache per position (2 · n_layers · kv_dim · 4).
size_t engine_kv_bytes_per_pos(const ModelConfig *cfg);

// ---- generation ---------------------------------------------------------------------------
#define GEN_MAX_STOP 8
typedef enum { FINISH_LENGTH = 0, FINISH_EOS, FINISH_STOP } FinishReason;
// "length", or "stop" for EOS and stop strings (the OpenAI names).
const char *finish_reason_name(FinishReason r);

typedef struct {
    int max_tokens;            // new tokens at most (also bounded by the model's context)
    SamplerConfig sampler;
    const char *stop[GEN_MAX_STOP];  // stop strings: the text ends before the first one
    int n_stop;
    int ignore_eos;            // 1: do not stop at the tokenizer's EOS
} GenConfig;
// 128 tokens, sampler defaults, no stop strings.
void gen_config_default(GenConfig *g);

// One generation in progress: its own tape, KV cache and sampler over a shared read-only
// model and adapter (lora NULL = the base).
typedef struct Generator Generator;
// Feeds the prompt ids (n_prompt >= 1) through the model; errors when the prompt does not
// fit the model's context.
Generator *gen_new(const Model *m, const LoraAdapter *lora, const Tokenizer *tok, const int *prompt,
                   int n_prompt, const GenConfig *g, Err *e);
// One step: picks a token and, unless finished, runs it through the model. *text/*len get the
// text that became final (possibly empty: text that could still begin a stop string is held
// back until it cannot), valid until the next call. Returns 1 while generating, 0 when
// finished (the last text is returned with the 0), -1 on error.
int gen_next(Generator *g, const char **text, size_t *len, Err *e);
void gen_free(Generator *g);
// After the end (or at any point): the generated ids, the text so far and why it stopped.
const int *gen_ids(const Generator *g, int *n);
const char *gen_text(const Generator *g, size_t *len);
FinishReason gen_finish(const Generator *g);

// The same, one step at a time for a scheduler that batches many generators in one
// engine_decode (the server): gen_create sets up (no forward); gen_prefill runs the prompt
// through en; then, until finished, gen_advance picks the next token from the logits and
// releases text exactly as gen_next does, returning 1 with *token = the token to feed next
// (the scheduler runs engine_decode with gen_kv(g), gen_lora(g), *token, gen_logits(g)),
// 0 when finished (the last text comes with it), -1 on error.
Generator *gen_create(const Model *m, const LoraAdapter *lora, const Tokenizer *tok, const int *prompt,
                      int n_prompt, const GenConfig *g, Err *e);
int gen_prefill(Generator *g, Engine *en, Err *e);
// The prompt a slice at a time (a scheduler interleaving a long prompt with other requests'
// decode steps): at most max_tokens more of it (0 = the rest). 1 while some remain, 0 when
// the whole prompt is in (the logits are ready), -1 on error.
int gen_prefill_step(Generator *g, Engine *en, int max_tokens, Err *e);
// Several generators' prompts in one engine pass (engine_prefill_many): gs[i] takes take[i]
// (1 .. gen_prompt_left) more of its prompt; more[i] = 1 while some of it remains. Returns 0,
// or -1 on an error (then no generator of the call is usable).
int gen_prefill_batch(Generator *const *gs, int count, Engine *en, const int *take, int *more, Err *e);
int gen_prompt_left(const Generator *g);  // prompt tokens not yet through the model
int gen_advance(Generator *g, const char **text, size_t *len, int *token, Err *e);
KVCache *gen_kv(Generator *g);
const LoraAdapter *gen_lora(const Generator *g);
float *gen_logits(Generator *g);       // (V): where the next forward writes its logits
// Timing of a generation (gen_new/gen_next, generate): prefill and decode seconds and tokens.
typedef struct {
    int prompt_tokens, decode_tokens;
    double prefill_s, decode_s;
} GenTiming;
void gen_timing(const Generator *g, GenTiming *t);

// Called with each piece of final text; returning non-zero stops the generation.
typedef int (*GenEmit)(void *user, const char *text, size_t len);
typedef struct {
    int *ids;                  // (n) generated token ids (malloc'd; a stop string's tokens included)
    int n;
    char *text;                // the text, cut before a stop string (malloc'd)
    size_t len;
    FinishReason finish;
    GenTiming timing;          // prefill and decode time
} GenResult;
// The whole loop: gen_new, gen_next until done (emit may be NULL), results into out.
int generate(const Model *m, const LoraAdapter *lora, const Tokenizer *tok, const int *prompt,
             int n_prompt, const GenConfig *g, GenEmit emit, void *user, GenResult *out, Err *e);
void gen_result_free(GenResult *r);

// Prompt ids for a conversation exactly as training lays it out (template_encode), after
// BOS when add_bos and the tokenizer has one. Returns the count (ids malloc'd), -1 on error.
int prompt_ids_chat(const Tokenizer *tok, Template t, const ChatMsg *msgs, int n, int add_bos, int **ids,
                    Err *e);
// Prompt ids for one instruction: a user message in template t (TPL_AUTO taken as alpaca),
// or with TPL_RAW the text as it is.
int prompt_ids_text(const Tokenizer *tok, Template t, const char *text, int add_bos, int **ids, Err *e);
// The stop string a template's replies end with (template_stop: "<|im_end|>" for chatml,
// ...), added to g.
void gen_add_template_stops(GenConfig *g, Template t);

// ---- adapter registry ---------------------------------------------------------------------
typedef struct AdapterRegistry AdapterRegistry;
typedef struct AdapterEntry AdapterEntry;    // one loaded adapter (opaque)

#define ADAPTER_NAME_MAX 128
typedef struct {
    char name[ADAPTER_NAME_MAX];
    char path[1024];
    float scale;               // multiplier on the adapter's own alpha/r (0 = disabled)
    int rank;
    float alpha;
    unsigned targets;
    int users;                 // requests using it now
} AdapterInfo;

// base_name: what requests call the base (e.g. the model directory's name).
AdapterRegistry *registry_new(const Model *m, const char *base_name, Err *e);
// Frees every adapter; no request may be using the registry any more.
void registry_free(AdapterRegistry *r);
const char *registry_base_name(const AdapterRegistry *r);
// "name=path[:scale]" or "path[:scale]" (name = the path's last component) -> its parts;
// scale defaults to 1. Names are 1..127 characters of [A-Za-z0-9._-].
int adapter_spec_parse(const char *spec, char *name, size_t name_n, char *path, size_t path_n,
                       float *scale, Err *e);
// Loads the adapter at path (a PEFT directory or a GGUF LoRA file, see adapter_load) as
// name, its output scaled by scale. A name already loaded, or the base's name, is an error.
int registry_load(AdapterRegistry *r, const char *name, const char *path, float scale, Err *e);
// Takes the adapter out of the registry; it is freed once no request uses it.
int registry_unload(AdapterRegistry *r, const char *name, Err *e);
// Takes a reference to adapter `name` for one call: *lora gets what to pass to model_forward
// (NULL for the base — name NULL, "" or the base's name — and for a scale-0 adapter).
// Release with registry_release (ref may be NULL for the base).
int registry_acquire(AdapterRegistry *r, const char *name, const LoraAdapter **lora, AdapterEntry **ref,
                     Err *e);
void registry_release(AdapterRegistry *r, AdapterEntry *ref);
// A snapshot of the loaded adapters in load order: up to max into out; returns the count.
int registry_list(AdapterRegistry *r, AdapterInfo *out, int max);

// ---- evaluation ---------------------------------------------------------------------------
typedef struct {
    char name[ADAPTER_NAME_MAX];
    int n_examples;
    long n_tokens;             // response tokens scored
    double loss;               // mean cross-entropy over the response tokens
    double perplexity;         // exp(loss)
    double token_accuracy;     // fraction of response tokens where argmax = the reference
    int n_generated;           // examples with generation metrics (0: not run)
    // greedy generation vs the reference response, after SQuAD normalisation; means over
    // the examples, in [0,1]
    double exact_match, starts_with, contains, f1;
} EvalResult;

typedef struct {
    int batch_size;            // 4: examples per forward pass for the loss
    int max_examples;          // 0 = all
    int max_tokens;            // 0: generate up to each reference's length (in tokens)
    int generate;              // 1: also the generation metrics
    int progress;              // 1: a progress line on stderr
} EvalOptions;
void eval_options_default(EvalOptions *o);

// The metrics of base m + lora (NULL = the base) on the examples of ds: loss over the masked
// (response) tokens, and greedy generation from each example's prompt (the tokens before its
// first response token) compared with that response (up to EOS or an end-of-turn marker such
// as "<|im_end|>").
int eval_model(const Model *m, const LoraAdapter *lora, const Tokenizer *tok, const Dataset *ds,
               const EvalOptions *o, const char *name, EvalResult *out, Err *e);
// One table: a row per model (the first is the reference, e.g. the base) and, under every
// other row, its change against the first.
void eval_print_table(FILE *f, const EvalResult *rows, int n);
// {"results":[{"name":..,"loss":..,"perplexity":..,"token_accuracy":..,"exact_match":..,
// "starts_with":..,"contains":..,"f1":..,"n_examples":..,"n_tokens":..}, ...]}, atomically.
int eval_write_json(const char *path, const EvalResult *rows, int n, Err *e);

// Text metrics over SQuAD-normalised text (lower case, ASCII punctuation removed, the
// articles a/an/the dropped, whitespace collapsed).
char *text_normalize(const char *s);                             // malloc'd, NULL on OOM
int text_exact_match(const char *pred, const char *ref);         // normalised equal
int text_starts_with(const char *pred, const char *ref);         // pred begins with ref (whole words)
int text_contains(const char *pred, const char *ref);            // ref appears in pred (whole words)
double text_f1(const char *pred, const char *ref);               // word-multiset F1 (SQuAD)
