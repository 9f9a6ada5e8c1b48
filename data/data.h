// data — tokenizers and instruction datasets.
//
// Tokenizer: one interface over several implementations (SentencePiece .model files through
// a small C++ shim over libsentencepiece; BPE from HF tokenizer.json files and from the
// tokenizer.ggml.* vocabulary of GGUF files).
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

// Loads a tokenizer, by what the file is: a SentencePiece .model file; a HF tokenizer.json
// (byte-level BPE like GPT-2 / Llama-3 / Qwen2 / SmolLM2, or SentencePiece-style BPE with
// byte fallback; tokenizer_config.json, generation_config.json and config.json beside it give
// BOS / EOS and add_bos_token); a .gguf file's embedded vocabulary (tokenizer.ggml.model
// "llama" or "gpt2"); or a directory holding tokenizer.json (else tokenizer.model).
// Added / special tokens of tokenizer.json (CONTROL / USER_DEFINED tokens of a GGUF vocab)
// written in the text are matched as those tokens.
Tokenizer *tok_load(const char *path, Err *e);
void tok_free(Tokenizer *t);
int tok_vocab_size(const Tokenizer *t);
// The BOS id to put before a sequence: -1 if the tokenizer has none or adds none (HF
// add_bos_token false, e.g. Qwen2 and SmolLM2; GGUF tokenizer.ggml.add_bos_token).
int tok_bos(const Tokenizer *t);
int tok_eos(const Tokenizer *t);   // -1 if none
// The id of the token whose text is exactly piece: an added / special / control token such
// as "<|im_end|>" or "</s>" (what this is for), else a vocabulary piece as the vocabulary
// spells it (SentencePiece: "\xe2\x96\x81the"; byte-level BPE: its raw bytes, " the"); -1 if none.
int tok_piece_id(const Tokenizer *t, const char *piece);
// Encodes text (no BOS/EOS added). Returns the count and sets *ids (malloc'd), -1 on error.
int tok_encode(const Tokenizer *t, const char *text, int **ids, Err *e);
// Encodes text that continues a stream already begun: as tok_encode but without
// SentencePiece's dummy-prefix space (a response after its prompt, a chat turn after the
// model's reply), so decode(tok_encode(a) ++ tok_encode_cont(b)) == a ++ b as far as the
// model's normalizer keeps the text (one that removes extra whitespace keeps a leading
// space of b as one space, but drops a trailing space of a).
int tok_encode_cont(const Tokenizer *t, const char *text, int **ids, Err *e);
// Decodes ids to a malloc'd string (skipping BOS/EOS; byte sequences that are not valid
// UTF-8 come out as U+FFFD), NULL on error.
char *tok_decode(const Tokenizer *t, const int *ids, int n, Err *e);
// Text of one piece as it would appear after `prev` in a decoded stream (for streaming
// output); writes into buf (NUL-terminated) and returns it. prev < 0 or BOS: the start of
// the stream (the dummy-prefix space is dropped). A byte piece (<0x0A>) gives that one byte,
// a byte-level BPE token its raw bytes: either may be part of a multi-byte character (print
// through tok_stream_next to keep characters whole).
const char *tok_piece_text(const Tokenizer *t, int prev, int id, char *buf, size_t n);
// Streaming output that keeps multi-byte characters whole (a character may be split over
// several byte-level or <0xXX> tokens): feed the ids one by one; each call writes the text
// completed so far into buf (NUL-terminated, "" while a character is unfinished; 1024 bytes
// hold any piece) and returns it. At the end, tok_stream_flush gives what is left (an
// unfinished character as U+FFFD). The concatenated output equals tok_decode of the ids.
typedef struct {
    int prev;                 // last id that gave text, -1 at the start
    int npend;                // bytes of an unfinished UTF-8 character held back
    char pend[4];
} TokStream;
void tok_stream_init(TokStream *s);
const char *tok_stream_next(const Tokenizer *t, TokStream *s, int id, char *buf, size_t n);
const char *tok_stream_flush(TokStream *s, char *buf, size_t n);

// ---- SentencePiece vocabulary (data/spm_shim.cpp) -------------------------------------------
// The pieces of a SentencePiece .model file with their scores and llama.cpp token types, for
// writing the tokenizer.ggml.* metadata of a GGUF file.
typedef struct {
    int n;                    // pieces
    char **pieces;            // (n) piece strings as stored ("\xe2\x96\x81the", "<0x0A>", "<s>")
    float *scores;            // (n)
    int32_t *types;           // (n) 1 normal, 2 unknown, 3 control, 5 unused, 6 byte (llama.cpp)
    int bos, eos, unk;        // -1 when the model has none
} SpmVocab;
// Reads a .model file. NULL with Err naming the file on failure.
SpmVocab *spm_vocab_load(const char *path, Err *e);
void spm_vocab_free(SpmVocab *v);

// ---- prompt templates -----------------------------------------------------------------------
// The chat templates render a conversation exactly as the model's own Jinja `chat_template`
// (tokenizer_config.json) does under HF apply_chat_template, rendered in C, one renderer per
// family (data/template.c names the model each string was taken from).
typedef enum {
    TPL_AUTO = 0,     // alpaca for alpaca rows, raw for completion/text, chatml for messages
    TPL_ALPACA,       // Stanford alpaca "Below is an instruction..." / "### Response:\n"
    TPL_CHATML,       // <|im_start|>role\ncontent<|im_end|>\n (no default system; Qwen3 too)
    TPL_RAW,          // prompt and response concatenated as they are
    TPL_QWEN2,        // chatml; no system message -> "You are a helpful assistant." (Qwen1.5/2)
    TPL_QWEN25,       // chatml; default "You are Qwen, created by Alibaba Cloud. ..." (Qwen2.5)
    TPL_SMOLLM2,      // chatml; default "You are a helpful AI assistant named SmolLM, ..."
    TPL_LLAMA2,       // <s>[INST] <<SYS>>\nsys\n<</SYS>>\n\nuser [/INST] reply </s> (Llama-2-chat)
    TPL_LLAMA3,       // <|begin_of_text|><|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>
    TPL_LLAMA32,      // llama3 with the system header always there, "Cutting Knowledge Date: ..."
                      // (Llama-3.1/3.2/3.3-Instruct; "Today Date: 26 Jul 2024", the template's fallback)
    TPL_ZEPHYR,       // <|user|>\ncontent</s>\n<|assistant|>\n (zephyr-7b-beta, TinyLlama-1.1B-Chat)
    TPL_PHI3,         // <|user|>\ncontent<|end|>\n<|assistant|>\n (Phi-3-mini-4k-instruct)
    TPL_GEMMA,        // <bos><start_of_turn>user\ncontent<end_of_turn>\n<start_of_turn>model\n;
                      // a first system message is put before the first user turn + "\n\n" (Gemma 3)
} Template;
// "auto|alpaca|chatml|raw|qwen2|qwen2.5|smollm2|llama2|llama3|llama3.2|zephyr|phi3|gemma";
// -1 on error.
Template template_parse(const char *name, Err *e);
const char *template_name(Template t);
// The family of a Jinja chat_template string, recognised by its markers ("<|im_start|>" and
// its default system prompt, "<|start_header_id|>", "[INST]" + "<<SYS>>", "<|user|>" with
// "<|end|>" or with eos_token, "<start_of_turn>"); TPL_AUTO when not recognised (Mistral's
// [INST] without <<SYS>>, a chatml template injecting an unknown default system prompt, ...).
Template template_detect_string(const char *chat_template);
// The template of a model: the chat_template of tokenizer_config.json (or chat_template.jinja)
// in path's directory (path: a model/tokenizer directory or a file in one), or the
// tokenizer.chat_template of a .gguf file. TPL_AUTO when there is none or it is not recognised.
Template template_detect(const char *model_or_tokenizer_path);
// The text a reply ends with in template t when it is not the tokenizer's EOS ("<|im_end|>",
// "<|eot_id|>", "<|end|>", "<end_of_turn>"): a stop string for generation. NULL for templates
// whose replies end with EOS (llama2, zephyr, alpaca, raw).
const char *template_stop(Template t);
// The prompt text a model sees before its response for a single user instruction, exactly
// as in training (for `lora generate --template`). Returns a malloc'd string.
// TPL_AUTO is taken as alpaca here. The ids the model is fed are BOS (when add_bos) followed
// by tok_encode of this text; the response it learned follows as tok_encode_cont ids.
// (A leading bos_token is left out; an eos_token inside, as zephyr's after the user turn, is
// written "</s>": prefer prompt_ids_chat / template_encode, which use the EOS id.)
char *template_format_prompt(Template t, const char *instruction, const char *input);

// A conversation turn: role "system", "user" or "assistant".
typedef struct {
    const char *role;
    const char *content;
} ChatMsg;
// The text HF apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
// gives for msgs, with bos and eos as bos_token / eos_token (NULL: ""). input: alpaca's
// optional input, appended to the first user message after "\n\n" (NULL for none).
// Malloc'd string, NULL with e filled on error (unknown role; llama2 and gemma: roles not
// alternating user/assistant after an optional first system message, as their templates
// raise).
char *template_render(Template t, const ChatMsg *msgs, int n, const char *input, int gen, const char *bos,
                      const char *eos, Err *e);
// Token ids of a conversation in template t exactly as training sees it, with mask 1 on the
// assistant replies and their end-of-turn marker (chatml: reply + "<|im_end|>"; llama3:
// reply + "<|eot_id|>"; llama2, zephyr: reply + EOS), as TRL's assistant-only loss does.
// The ids are those of template_render's text (gen = 1 when the last message is not from
// the assistant: the ids then end with the prompt for the next reply) without the leading
// bos_token and, when the last message is the assistant's, without what follows its reply's
// end-of-turn marker; a final marker that is the tokenizer's EOS id is left out too (llama2,
// zephyr; or "<|im_end|>" when that is the tokenizer's EOS): the caller adds BOS and EOS
// (dataset add_bos/add_eos). bos_token/eos_token inside a conversation (llama2's "</s><s>"
// between turns, zephyr's "</s>" after each message) are the tokenizer's BOS/EOS ids; the
// other markers are text that tok_encode turns into the tokenizer's special-token ids when
// it has them. Each run of text is encoded on its own: the first one, and one after a BOS,
// with tok_encode, every other with tok_encode_cont. TPL_AUTO is taken as chatml.
// Returns the count (ids and mask malloc'd), -1 on error.
int template_encode(Template t, const Tokenizer *tok, const ChatMsg *msgs, int n, const char *input,
                    int **ids, uint8_t **mask, Err *e);

// ---- dataset ------------------------------------------------------------------------------
typedef enum { FMT_AUTO = 0, FMT_ALPACA, FMT_COMPLETION, FMT_MESSAGES, FMT_TEXT } DataFormat;
DataFormat data_format_parse(const char *name, Err *e);  // "auto|alpaca|completion|messages|text"

typedef struct {
    DataFormat format;        // FMT_AUTO: detect from the keys of each line
    Template tpl;
    Template chat_tpl;        // messages rows when tpl is TPL_AUTO: this template (TPL_AUTO:
                              // chatml); `lora train` sets it from template_detect of the model
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
