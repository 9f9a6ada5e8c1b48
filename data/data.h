// data — tokenizers and instruction datasets.
//
// Tokenizer: one interface over several implementations (SentencePiece .model files through
// a small C++ shim over libsentencepiece; later BPE from tokenizer.json and GGUF vocabs).
//
// Dataset: JSONL in one of four shapes, auto-detected per line unless forced —
//   alpaca      {"instruction": .., "input": .. (optional), "output": ..}
//   completion  {"prompt": .., "completion": ..}
//   messages    {"messages": [{"role": "system|user|assistant", "content": ..}, ...]}
//   text        {"text": ..}
// Each example becomes token ids plus a loss mask: by default only response tokens
// (alpaca output, completion, assistant turns, all of a text example) are trained on;
// train_on_inputs includes the prompt. Examples longer than seq_len are truncated.
#pragma once
#include <stdint.h>
#include "util/util.h"

// ---- tokenizer ----------------------------------------------------------------------------
typedef struct Tokenizer Tokenizer;

// Loads a tokenizer: a SentencePiece .model file (more kinds later).
Tokenizer *tok_load(const char *path, Err *e);
void tok_free(Tokenizer *t);
int tok_vocab_size(const Tokenizer *t);
int tok_bos(const Tokenizer *t);   // -1 if none
int tok_eos(const Tokenizer *t);   // -1 if none
// Encodes text (no BOS/EOS added). Returns the count and sets *ids (malloc'd), -1 on error.
int tok_encode(const Tokenizer *t, const char *text, int **ids, Err *e);
// Encodes text that continues a stream already begun: as tok_encode but without
// SentencePiece's dummy-prefix space (a response after its prompt, a chat turn after the
// model's reply), so decode(tok_encode(a) ++ tok_encode_cont(b)) == a ++ b as far as the
// model's normalizer keeps the text (one that removes extra whitespace keeps a leading
// space of b as one space, but drops a trailing space of a).
int tok_encode_cont(const Tokenizer *t, const char *text, int **ids, Err *e);
// Decodes ids to a malloc'd string (skipping BOS/EOS), NULL on error.
char *tok_decode(const Tokenizer *t, const int *ids, int n, Err *e);
// Text of one piece as it would appear after `prev` in a decoded stream (for streaming
// output); writes into buf (NUL-terminated) and returns it. prev < 0 or BOS: the start of
// the stream (the dummy-prefix space is dropped). A byte piece (<0x0A>) gives that one byte.
const char *tok_piece_text(const Tokenizer *t, int prev, int id, char *buf, size_t n);

// ---- prompt templates -----------------------------------------------------------------------
typedef enum {
    TPL_AUTO = 0,     // alpaca for alpaca rows, raw for completion/text, chatml for messages
    TPL_ALPACA,       // Stanford alpaca "Below is an instruction..." / "### Response:\n"
    TPL_CHATML,       // <|im_start|>role\ncontent<|im_end|>\n
    TPL_RAW,          // prompt and response concatenated as they are
} Template;
Template template_parse(const char *name, Err *e);  // "auto|alpaca|chatml|raw"; -1 on error
const char *template_name(Template t);
// The prompt text a model sees before its response for a single user instruction, exactly
// as in training (for `lora generate --template`). Returns a malloc'd string.
// TPL_AUTO is taken as alpaca here. The ids the model is fed are BOS (when add_bos) followed
// by tok_encode of this text; the response it learned follows as tok_encode_cont ids.
char *template_format_prompt(Template t, const char *instruction, const char *input);

// A conversation turn: role "system", "user" or "assistant".
typedef struct {
    const char *role;
    const char *content;
} ChatMsg;
// Token ids of a conversation in template t exactly as training sees it (no BOS/EOS), with
// mask 1 on the assistant replies (chatml: reply + "<|im_end|>"). The first text segment is
// encoded with tok_encode, every later one with tok_encode_cont. If the last message is not
// from the assistant, the ids end with the prompt for the next reply. input: alpaca's
// optional input for the first user message (NULL for none). TPL_AUTO is taken as chatml.
// Returns the count (ids and mask malloc'd), -1 on error.
int template_encode(Template t, const Tokenizer *tok, const ChatMsg *msgs, int n, const char *input,
                    int **ids, uint8_t **mask, Err *e);

// ---- dataset ------------------------------------------------------------------------------
typedef enum { FMT_AUTO = 0, FMT_ALPACA, FMT_COMPLETION, FMT_MESSAGES, FMT_TEXT } DataFormat;
DataFormat data_format_parse(const char *name, Err *e);  // "auto|alpaca|completion|messages|text"

typedef struct {
    DataFormat format;        // FMT_AUTO: detect from the keys of each line
    Template tpl;
    int seq_len;              // truncate examples to this many tokens
    int train_on_inputs;      // 1: loss on prompt tokens too
    int add_bos, add_eos;     // add the tokenizer's BOS before / EOS after each example
    int skip_bad_lines;       // 1: report a malformed line on stderr and skip it; 0: error
} DataOptions;
void data_options_default(DataOptions *o);  // auto, auto, 512, 0, 1, 1, 0

typedef struct {
    int *ids;                 // (n) token ids
    uint8_t *mask;            // (n) 1 = this token is a training target
    int n;
    int line;                 // 1-based line in the source file
} Example;

typedef struct {
    Example *ex;
    int n;
    int n_skipped;            // malformed lines skipped
    int n_truncated;
    char path[1024];
} Dataset;

// Reads a JSONL file. A malformed line (bad JSON, missing field, wrong type) is reported as
// "FILE:LINE: reason" — as an error, or on stderr and skipped when skip_bad_lines. Empty
// lines are ignored. An example with no trainable token after truncation is skipped with
// a warning. A file with no usable example is an error.
Dataset *dataset_load(const char *path, const Tokenizer *tok, const DataOptions *o, Err *e);
void dataset_free(Dataset *d);

// ---- batching -----------------------------------------------------------------------------
typedef struct {
    int B, T;                 // rows, padded length (longest example in the batch)
    int *ids;                 // (B,T) padded with pad id
    int *targets;             // (B,T) next-token targets; -1 = ignored (prompt, padding)
    int n_targets;            // kept targets
    int n_tokens;             // real (unpadded) tokens
} Batch;

typedef struct {
    const Dataset *ds;
    int batch_size;
    int shuffle;
    uint64_t seed;
    int epoch;                // completed epochs
    int pos;                  // next index into order
    int *order;               // (ds->n) current epoch's permutation
    int pad_id;
} DataLoader;

// Seeded: the same seed gives the same order on every machine; each epoch reshuffles with
// a stream derived from (seed, epoch). The loader's position (epoch, pos) is all that a
// checkpoint needs to resume.
DataLoader *loader_new(const Dataset *ds, int batch_size, int shuffle, uint64_t seed, int pad_id,
                       Err *e);
void loader_free(DataLoader *l);
// Fills b with the next batch (allocating b's arrays as needed; free with batch_free).
// Wraps to a new epoch when the data runs out (a batch never mixes epochs: the last batch of
// an epoch holds what is left and may be smaller than batch_size; then epoch += 1, pos = 0).
int loader_next(DataLoader *l, Batch *b, Err *e);
void loader_seek(DataLoader *l, int epoch, int pos);   // for resuming
// Builds a batch from examples [first, first+count) of ds in file order (evaluation).
int batch_from_range(const Dataset *ds, int first, int count, int pad_id, Batch *b, Err *e);
void batch_free(Batch *b);
