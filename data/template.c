// template — prompt templates: how an instruction / a conversation becomes text, and how
// that text becomes token ids with an exact loss-mask boundary.
//
// A conversation is laid out as segments, each either prompt (mask 0) or response (mask 1)
// and either text or the tokenizer's BOS / EOS token (the Jinja templates' bos_token and
// eos_token); adjacent text segments of the same kind are joined. Each text segment is
// encoded on its own and the ids are concatenated, so the boundary between prompt and
// response is exactly a token boundary. The first text segment, and one after a BOS, is
// encoded with tok_encode (SentencePiece adds its dummy-prefix space at the start of the
// text, as for any text, and as Meta's Llama-2 reference code encodes each turn); every
// other one with tok_encode_cont (no dummy prefix), because it continues the text: after
// "### Response:\n" the response "Paris" is "Paris", not " Paris". So decode(prompt ids ++
// response ids) is exactly prompt ++ response, and the prompt ids are exactly
// tok_encode(prompt), which is what `lora generate --template` feeds the model (after BOS);
// the ids it then generates are the ids training taught it, ending with EOS.
//
// The chat templates are the models' own Jinja chat_template strings (tokenizer_config.json
// on the Hugging Face hub), each rendered by hand:
//   chatml    Qwen3 and any plain ChatML: '<|im_start|>' + role + '\n' + content + '<|im_end|>\n'
//   qwen2     Qwen1.5/Qwen2-Instruct: chatml, "You are a helpful assistant." when messages[0]
//             is not a system message
//   qwen2.5   Qwen2.5-Instruct: chatml, "You are Qwen, created by Alibaba Cloud. You are a
//             helpful assistant." when messages[0] is not a system message
//   smollm2   SmolLM2-Instruct: chatml, "You are a helpful AI assistant named SmolLM, trained
//             by Hugging Face" when messages[0] is not a system message
//   llama2    Llama-2-chat: bos_token + '[INST] ' + content.strip() + ' [/INST]' for a user
//             turn (the first one led by '<<SYS>>\n' + system + '\n<</SYS>>\n\n'),
//             ' ' + content.strip() + ' ' + eos_token for a reply; roles must alternate
//   llama3    Meta-Llama-3-Instruct: bos_token, then '<|start_header_id|>' + role +
//             '<|end_header_id|>\n\n' + content|trim + '<|eot_id|>'
//   llama3.2  Llama-3.1/3.2-Instruct: bos_token + a system header that is always there:
//             "Cutting Knowledge Date: December 2023\nToday Date: " + date + "\n\n" + system|trim;
//             the date is the template's fallback "26 Jul 2024" (transformers >= 4.43 passes
//             today's date through strftime_now, which would make training data depend on
//             the day it is built)
//   zephyr    zephyr-7b-beta, TinyLlama-1.1B-Chat-v1.0: '<|' + role + '|>\n' + content +
//             eos_token, then the "\n" the template leaves after each {{ }} line
//   phi3      Phi-3-mini-4k-instruct: '<|' + role + '|>\n' + content + '<|end|>\n'; eos_token at
//             the end when there is no generation prompt
//   gemma     gemma-2b-it / Gemma 3: bos_token + '<start_of_turn>' + (user|model) + '\n' +
//             content|trim + '<end_of_turn>\n'; roles must alternate; a first system message
//             is written before the first user turn + "\n\n" (Gemma 3; gemma-2b-it refuses it)
#include <json-c/json.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>

#include "data/data.h"
#include "model/model.h"

static const char ALPACA_HEADER[] =
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.";
static const char ALPACA_HEADER_INPUT[] =
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.";

static const char QWEN2_SYSTEM[] = "You are a helpful assistant.";
static const char QWEN25_SYSTEM[] = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
static const char SMOLLM2_SYSTEM[] = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
static const char LLAMA32_SYSTEM_HEAD[] = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n";

static const struct {
    Template t;
    const char *name;
} NAMES[] = {
    {TPL_AUTO, "auto"},         {TPL_ALPACA, "alpaca"}, {TPL_CHATML, "chatml"},   {TPL_RAW, "raw"},
    {TPL_QWEN2, "qwen2"},       {TPL_QWEN25, "qwen2.5"}, {TPL_SMOLLM2, "smollm2"}, {TPL_LLAMA2, "llama2"},
    {TPL_LLAMA3, "llama3"},     {TPL_LLAMA32, "llama3.2"}, {TPL_ZEPHYR, "zephyr"}, {TPL_PHI3, "phi3"},
    {TPL_GEMMA, "gemma"},
};
#define N_NAMES ((int)(sizeof NAMES / sizeof NAMES[0]))

Template template_parse(const char *name, Err *e) {
    for (int i = 0; name && i < N_NAMES; i++)
        if (strcmp(name, NAMES[i].name) == 0) return NAMES[i].t;
    err_set(e,
            "unknown template \"%s\" (expected auto, alpaca, chatml, raw, qwen2, qwen2.5, smollm2, llama2, llama3, "
            "llama3.2, zephyr, phi3 or gemma)",
            name ? name : "");
    return (Template)-1;
}

const char *template_name(Template t) {
    for (int i = 0; i < N_NAMES; i++)
        if (NAMES[i].t == t) return NAMES[i].name;
    return "?";
}

static int is_chatml(Template t) { return t == TPL_CHATML || t == TPL_QWEN2 || t == TPL_QWEN25 || t == TPL_SMOLLM2; }

const char *template_stop(Template t) {
    if (is_chatml(t)) return "<|im_end|>";
    if (t == TPL_LLAMA3 || t == TPL_LLAMA32) return "<|eot_id|>";
    if (t == TPL_PHI3) return "<|end|>";
    if (t == TPL_GEMMA) return "<end_of_turn>";
    return NULL;
}

// ---- segments -----------------------------------------------------------------------------------
enum { SEG_TEXT, SEG_BOS, SEG_EOS };

typedef struct {
    char *text;         // SEG_TEXT only
    size_t len, cap;
    int train;
    int kind;
} Seg;

typedef struct {
    Seg *seg;
    int n, cap;
    int failed;         // out of memory
} Segs;

static Seg *segs_push(Segs *ss, int train, int kind) {
    if (ss->n == ss->cap) {
        int cap = ss->cap ? 2 * ss->cap : 8;
        Seg *p = realloc(ss->seg, (size_t)cap * sizeof *p);
        if (!p) { ss->failed = 1; return NULL; }
        ss->seg = p;
        ss->cap = cap;
    }
    ss->seg[ss->n] = (Seg){NULL, 0, 0, train, kind};
    return &ss->seg[ss->n++];
}

// Appends s[0..len) to the last segment when it is text with the same train flag, else
// starts a new one.
static void segs_addn(Segs *ss, const char *s, size_t len, int train) {
    if (ss->failed || len == 0) return;
    Seg *g = ss->n > 0 ? &ss->seg[ss->n - 1] : NULL;
    if (!g || g->kind != SEG_TEXT || g->train != train)
        if (!(g = segs_push(ss, train, SEG_TEXT))) return;
    if (g->len + len + 1 > g->cap) {
        size_t cap = (g->len + len + 1) * 2;
        char *p = realloc(g->text, cap);
        if (!p) { ss->failed = 1; return; }
        g->text = p;
        g->cap = cap;
    }
    memcpy(g->text + g->len, s, len);
    g->len += len;
    g->text[g->len] = '\0';
}

static void segs_add(Segs *ss, const char *s, int train) { segs_addn(ss, s, strlen(s), train); }

// The tokenizer's BOS or EOS (bos_token / eos_token in the Jinja templates).
static void segs_special(Segs *ss, int kind, int train) {
    if (!ss->failed) segs_push(ss, train, kind);
}

// s with Python's str.strip() / Jinja's |trim of ASCII whitespace.
static void segs_add_trimmed(Segs *ss, const char *s, int train) {
    size_t a = 0, b = strlen(s);
    while (a < b && strchr(" \t\n\r\v\f", s[a])) a++;
    while (b > a && strchr(" \t\n\r\v\f", s[b - 1])) b--;
    segs_addn(ss, s + a, b - a, train);
}

static void segs_free(Segs *ss) {
    for (int i = 0; i < ss->n; i++) free(ss->seg[i].text);
    free(ss->seg);
    memset(ss, 0, sizeof *ss);
}

// open + role + close: the header of a turn ("<|im_start|>" "user" "\n"), prompt text
static void segs_header(Segs *ss, const char *open, const char *role, const char *close) {
    segs_add(ss, open, 0);
    segs_add(ss, role, 0);
    segs_add(ss, close, 0);
}

static int is_role(const ChatMsg *m, const char *role) { return m->role && strcmp(m->role, role) == 0; }
static const char *content_of(const ChatMsg *m) { return m->content ? m->content : ""; }

// ---- one renderer per family --------------------------------------------------------------------
// msgs are checked (roles) and the first user message already carries alpaca's input.

static void render_alpaca(Segs *ss, const ChatMsg *msgs, int n, const char *input, int gen) {
    // header "\n\n### Instruction:\n" user ["\n\n### Input:\n" input] "\n\n### Response:\n"
    // reply; a first system message replaces the header, a later one is plain prompt text.
    int has_input = input && *input, first_user = 1, i0 = 0;
    const char *header = has_input ? ALPACA_HEADER_INPUT : ALPACA_HEADER;
    if (n > 0 && is_role(&msgs[0], "system")) { header = content_of(&msgs[0]); i0 = 1; }
    segs_add(ss, header, 0);
    for (int i = i0; i < n; i++) {
        const ChatMsg *m = &msgs[i];
        if (is_role(m, "assistant")) {
            segs_add(ss, "\n\n### Response:\n", 0);
            segs_add(ss, content_of(m), 1);
        } else if (is_role(m, "user")) {
            segs_add(ss, "\n\n### Instruction:\n", 0);
            segs_add(ss, content_of(m), 0);
            if (first_user && has_input) {
                segs_add(ss, "\n\n### Input:\n", 0);
                segs_add(ss, input, 0);
            }
            first_user = 0;
        } else {
            segs_add(ss, "\n\n", 0);
            segs_add(ss, content_of(m), 0);
        }
    }
    if (gen) segs_add(ss, "\n\n### Response:\n", 0);
}

static void render_chatml(Segs *ss, Template t, const ChatMsg *msgs, int n, int gen) {
    const char *def = t == TPL_QWEN2 ? QWEN2_SYSTEM : t == TPL_QWEN25 ? QWEN25_SYSTEM : t == TPL_SMOLLM2 ? SMOLLM2_SYSTEM : NULL;
    if (def && n > 0 && !is_role(&msgs[0], "system")) segs_header(ss, "<|im_start|>system\n", def, "<|im_end|>\n");
    for (int i = 0; i < n; i++) {
        int reply = is_role(&msgs[i], "assistant");
        segs_header(ss, "<|im_start|>", msgs[i].role, "\n");
        segs_add(ss, content_of(&msgs[i]), reply);
        segs_add(ss, "<|im_end|>", reply);
        segs_add(ss, "\n", 0);
    }
    if (gen) segs_add(ss, "<|im_start|>assistant\n", 0);
}

// Roles after an optional first system message must go user, assistant, user, ... (the
// llama2 and gemma templates raise_exception otherwise).
static int check_alternating(Template t, const ChatMsg *msgs, int n, int i0, Err *e) {
    for (int i = i0; i < n; i++) {
        const char *want = (i - i0) % 2 == 0 ? "user" : "assistant";
        if (!is_role(&msgs[i], want))
            return err_set(e,
                           "message %d: the %s template needs roles alternating user/assistant/user/... after an "
                           "optional first system message, got \"%s\" where \"%s\" belongs",
                           i, template_name(t), msgs[i].role, want);
    }
    return 0;
}

static int render_llama2(Segs *ss, const ChatMsg *msgs, int n, Err *e) {
    int i0 = n > 0 && is_role(&msgs[0], "system") ? 1 : 0;
    if (check_alternating(TPL_LLAMA2, msgs, n, i0, e)) return -1;
    for (int i = i0; i < n; i++) {
        const char *c = content_of(&msgs[i]);
        if (is_role(&msgs[i], "user")) {
            segs_special(ss, SEG_BOS, 0);
            segs_add(ss, "[INST] ", 0);
            if (i == i0 && i0 == 1) {
                // content = '<<SYS>>\n' + system + '\n<</SYS>>\n\n' + user, then .strip()
                const char *sys = content_of(&msgs[0]);
                size_t ls = strlen(sys), lc = strlen(c);
                char *all = malloc(ls + lc + 32);
                if (!all) { ss->failed = 1; return 0; }
                snprintf(all, ls + lc + 32, "<<SYS>>\n%s\n<</SYS>>\n\n%s", sys, c);
                segs_add_trimmed(ss, all, 0);
                free(all);
            } else {
                segs_add_trimmed(ss, c, 0);
            }
            segs_add(ss, " [/INST]", 0);
        } else {
            segs_add(ss, " ", 1);
            segs_add_trimmed(ss, c, 1);
            segs_add(ss, " ", 1);
            segs_special(ss, SEG_EOS, 1);
        }
    }
    return 0;
}

static void render_llama3(Segs *ss, Template t, const ChatMsg *msgs, int n, int gen) {
    int i0 = 0;
    if (t == TPL_LLAMA32) {
        // the system header is always there; messages[0], when a system message, goes in it
        segs_special(ss, SEG_BOS, 0);
        segs_add(ss, "<|start_header_id|>system<|end_header_id|>\n\n", 0);
        segs_add(ss, LLAMA32_SYSTEM_HEAD, 0);
        if (n > 0 && is_role(&msgs[0], "system")) {
            segs_add_trimmed(ss, content_of(&msgs[0]), 0);
            i0 = 1;
        }
        segs_add(ss, "<|eot_id|>", 0);
    } else if (n > 0) {
        segs_special(ss, SEG_BOS, 0);  // bos_token + the first message
    }
    for (int i = i0; i < n; i++) {
        int reply = is_role(&msgs[i], "assistant");
        segs_header(ss, "<|start_header_id|>", msgs[i].role, "<|end_header_id|>\n\n");
        segs_add_trimmed(ss, content_of(&msgs[i]), reply);
        segs_add(ss, "<|eot_id|>", reply);
    }
    if (gen) segs_add(ss, "<|start_header_id|>assistant<|end_header_id|>\n\n", 0);
}

static void render_zephyr_phi3(Segs *ss, Template t, const ChatMsg *msgs, int n, int gen) {
    for (int i = 0; i < n; i++) {
        int reply = is_role(&msgs[i], "assistant");
        segs_header(ss, "<|", msgs[i].role, "|>\n");
        segs_add(ss, content_of(&msgs[i]), reply);
        if (t == TPL_ZEPHYR) segs_special(ss, SEG_EOS, reply);
        else segs_add(ss, "<|end|>", reply);
        segs_add(ss, "\n", 0);
    }
    // zephyr writes its generation prompt inside the loop (`loop.last and add_generation_prompt`)
    if (gen && (t == TPL_PHI3 || n > 0)) segs_add(ss, "<|assistant|>\n", 0);
    if (!gen && t == TPL_PHI3) segs_special(ss, SEG_EOS, 0);
}

static int render_gemma(Segs *ss, const ChatMsg *msgs, int n, int gen, Err *e) {
    int i0 = n > 0 && is_role(&msgs[0], "system") ? 1 : 0;
    if (check_alternating(TPL_GEMMA, msgs, n, i0, e)) return -1;
    segs_special(ss, SEG_BOS, 0);
    for (int i = i0; i < n; i++) {
        int reply = is_role(&msgs[i], "assistant");
        segs_add(ss, reply ? "<start_of_turn>model\n" : "<start_of_turn>user\n", 0);
        if (i == i0 && i0 == 1) {
            segs_add(ss, content_of(&msgs[0]), 0);
            segs_add(ss, "\n\n", 0);
        }
        segs_add_trimmed(ss, content_of(&msgs[i]), reply);
        segs_add(ss, "<end_of_turn>", reply);
        segs_add(ss, "\n", 0);
    }
    if (gen) segs_add(ss, "<start_of_turn>model\n", 0);
    return 0;
}

// Lays out msgs in template t (not TPL_AUTO). input: alpaca input of the first user message.
// gen: add the generation prompt (the opening of the next reply).
static int build_segments(Template t, const ChatMsg *msgs, int n, const char *input, int gen, Segs *ss, Err *e) {
    memset(ss, 0, sizeof *ss);
    if (n < 0 || (n > 0 && !msgs)) return err_set(e, "invalid conversation (%d messages)", n);
    for (int i = 0; i < n; i++) {
        if (!is_role(&msgs[i], "system") && !is_role(&msgs[i], "user") && !is_role(&msgs[i], "assistant"))
            return err_set(e, "message %d: unknown role \"%s\" (expected system, user or assistant)", i,
                           msgs[i].role ? msgs[i].role : "");
    }
    // the first user message carries the input: content + "\n\n" + input (alpaca: its own block)
    ChatMsg *copy = NULL;
    char *joined = NULL;
    if (input && *input && t != TPL_ALPACA) {
        int u = 0;
        while (u < n && !is_role(&msgs[u], "user")) u++;
        if (u < n) {
            size_t lc = strlen(content_of(&msgs[u])), li = strlen(input);
            copy = malloc((size_t)n * sizeof *copy);
            joined = malloc(lc + li + 3);
            if (!copy || !joined) {
                free(copy);
                free(joined);
                return err_set(e, "out of memory formatting a conversation");
            }
            memcpy(copy, msgs, (size_t)n * sizeof *copy);
            memcpy(joined, content_of(&msgs[u]), lc);
            memcpy(joined + lc, "\n\n", 2);
            memcpy(joined + lc + 2, input, li + 1);
            copy[u].content = joined;
            msgs = copy;
        }
    }
    int rc = 0;
    if (t == TPL_ALPACA) {
        render_alpaca(ss, msgs, n, input, gen);
    } else if (is_chatml(t)) {
        render_chatml(ss, t, msgs, n, gen);
    } else if (t == TPL_RAW) {
        // contents as they are
        for (int i = 0; i < n; i++) segs_add(ss, content_of(&msgs[i]), is_role(&msgs[i], "assistant"));
    } else if (t == TPL_LLAMA2) {
        rc = render_llama2(ss, msgs, n, e);
    } else if (t == TPL_LLAMA3 || t == TPL_LLAMA32) {
        render_llama3(ss, t, msgs, n, gen);
    } else if (t == TPL_ZEPHYR || t == TPL_PHI3) {
        render_zephyr_phi3(ss, t, msgs, n, gen);
    } else if (t == TPL_GEMMA) {
        rc = render_gemma(ss, msgs, n, gen, e);
    } else {
        rc = err_set(e, "invalid template %d", (int)t);
    }
    free(copy);
    free(joined);
    if (rc == 0 && ss->failed) rc = err_set(e, "out of memory formatting a conversation");
    if (rc) segs_free(ss);
    return rc;
}

// Concatenated text of segments [from, to), BOS/EOS written as bos/eos.
static char *segs_text(const Segs *ss, int from, int to, const char *bos, const char *eos, Err *e) {
    size_t len = 0, lb = bos ? strlen(bos) : 0, le = eos ? strlen(eos) : 0;
    for (int i = from; i < to; i++) len += ss->seg[i].kind == SEG_TEXT ? ss->seg[i].len : ss->seg[i].kind == SEG_BOS ? lb : le;
    char *s = xmalloc(len + 1, "rendered conversation", e);
    if (!s) return NULL;
    size_t k = 0;
    for (int i = from; i < to; i++) {
        const Seg *g = &ss->seg[i];
        const char *p = g->kind == SEG_TEXT ? g->text : g->kind == SEG_BOS ? bos : eos;
        size_t l = g->kind == SEG_TEXT ? g->len : g->kind == SEG_BOS ? lb : le;
        if (l) memcpy(s + k, p, l);
        k += l;
    }
    s[k] = '\0';
    return s;
}

char *template_render(Template t, const ChatMsg *msgs, int n, const char *input, int gen, const char *bos,
                      const char *eos, Err *e) {
    if (t == TPL_AUTO) t = TPL_CHATML;
    Segs ss;
    if (build_segments(t, msgs, n, input, gen, &ss, e) != 0) return NULL;
    char *s = segs_text(&ss, 0, ss.n, bos, eos, e);
    segs_free(&ss);
    return s;
}

char *template_format_prompt(Template t, const char *instruction, const char *input) {
    if (t == TPL_AUTO) t = TPL_ALPACA;
    ChatMsg m = {"user", instruction ? instruction : ""};
    Segs ss;
    if (build_segments(t, &m, 1, input, t != TPL_RAW, &ss, NULL) != 0) return NULL;
    int from = ss.n > 0 && ss.seg[0].kind == SEG_BOS ? 1 : 0;
    char *s = segs_text(&ss, from, ss.n, "<s>", "</s>", NULL);
    segs_free(&ss);
    return s;
}

// ---- encoding -----------------------------------------------------------------------------------
typedef struct {
    int *ids;
    uint8_t *mask;
    int n, cap;
} IdBuf;

static int idbuf_add(IdBuf *b, const int *ids, int k, int train, Err *e) {
    if (b->n + k > b->cap || !b->ids) {
        int cap = b->cap ? b->cap : 64;
        while (b->n + k > cap) cap *= 2;
        int *ni = realloc(b->ids, (size_t)cap * sizeof *ni);
        if (!ni) return err_set(e, "out of memory encoding a conversation");
        b->ids = ni;
        uint8_t *nm = realloc(b->mask, (size_t)cap);
        if (!nm) return err_set(e, "out of memory encoding a conversation");
        b->mask = nm;
        b->cap = cap;
    }
    if (k == 0) return 0;
    memcpy(b->ids + b->n, ids, (size_t)k * sizeof *ids);
    memset(b->mask + b->n, train ? 1 : 0, (size_t)k);
    b->n += k;
    return 0;
}

int template_encode(Template t, const Tokenizer *tok, const ChatMsg *msgs, int n, const char *input,
                    int **ids_out, uint8_t **mask_out, Err *e) {
    *ids_out = NULL;
    *mask_out = NULL;
    if (t == TPL_AUTO) t = TPL_CHATML;
    int ends_with_reply = n > 0 && msgs && is_role(&msgs[n - 1], "assistant");
    Segs ss;
    if (build_segments(t, msgs, n, input, !ends_with_reply, &ss, e) != 0) return -1;
    // the caller adds BOS; after the last reply, only its end-of-turn marker is kept
    int from = ss.n > 0 && ss.seg[0].kind == SEG_BOS ? 1 : 0, to = ss.n;
    if (ends_with_reply)
        while (to > from && !ss.seg[to - 1].train) to--;
    int drop_eos = ends_with_reply && to > from && ss.seg[to - 1].kind == SEG_EOS;
    if (drop_eos) to--;
    IdBuf b = {0};
    int rc = idbuf_add(&b, NULL, 0, 0, e), start = 1;  // allocates: an empty conversation has ids too
    for (int i = from; i < to && rc == 0; i++) {
        const Seg *g = &ss.seg[i];
        if (g->kind != SEG_TEXT) {
            int id = g->kind == SEG_BOS ? tok_bos(tok) : tok_eos(tok);
            if (id >= 0) rc = idbuf_add(&b, &id, 1, g->train, e);
            start = g->kind == SEG_BOS;
            continue;
        }
        int *part = NULL;
        int k = start ? tok_encode(tok, g->text, &part, e) : tok_encode_cont(tok, g->text, &part, e);
        start = 0;
        if (k < 0) { rc = -1; break; }
        rc = idbuf_add(&b, part, k, g->train, e);
        free(part);
    }
    // a final end-of-turn marker that is the tokenizer's EOS (<|im_end|> of Qwen-Instruct) is
    // the caller's EOS
    if (rc == 0 && ends_with_reply && !drop_eos && b.n > 0 && b.mask[b.n - 1] && b.ids[b.n - 1] == tok_eos(tok))
        b.n--;
    segs_free(&ss);
    if (rc != 0) {
        free(b.ids);
        free(b.mask);
        return -1;
    }
    *ids_out = b.ids;
    *mask_out = b.mask;
    return b.n;
}

// ---- recognising a model's template -------------------------------------------------------------
// Does the chatml template s inject a default system prompt other than the known ones?
// (a string literal continuing after "<|im_start|>system\n" instead of closing there)
static int chatml_unknown_default(const char *s) {
    const char *key = "<|im_start|>system\n";
    for (const char *p = strstr(s, key); p; p = strstr(p + 1, key)) {
        char c = p[strlen(key)];
        if (c != '\'' && c != '"') return 1;
    }
    return 0;
}

Template template_detect_string(const char *tpl) {
    if (!tpl) return TPL_AUTO;
    // Jinja literals write a newline as "\n" (backslash, n) or as the character itself
    size_t len = strlen(tpl);
    char *s = malloc(len + 1);
    if (!s) return TPL_AUTO;
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        if (tpl[i] == '\\' && tpl[i + 1] == 'n') { s[k++] = '\n'; i++; }
        else s[k++] = tpl[i];
    }
    s[k] = '\0';
    Template t = TPL_AUTO;
    if (strstr(s, "<|im_start|>")) {
        if (strstr(s, QWEN25_SYSTEM)) t = TPL_QWEN25;
        else if (strstr(s, SMOLLM2_SYSTEM)) t = TPL_SMOLLM2;
        else if (strstr(s, "<|im_start|>system\nYou are a helpful assistant.<|im_end|>")) t = TPL_QWEN2;
        else if (!chatml_unknown_default(s)) t = TPL_CHATML;
    } else if (strstr(s, "<|start_header_id|>")) {
        t = strstr(s, "Cutting Knowledge Date") ? TPL_LLAMA32 : TPL_LLAMA3;
    } else if (strstr(s, "<start_of_turn>")) {
        t = TPL_GEMMA;
    } else if (strstr(s, "<|user|>") && strstr(s, "<|assistant|>")) {
        if (strstr(s, "<|end|>")) t = TPL_PHI3;
        else if (strstr(s, "eos_token") || strstr(s, "</s>")) t = TPL_ZEPHYR;
    } else if (strstr(s, "[INST]") && strstr(s, "<<SYS>>")) {
        t = TPL_LLAMA2;
    }
    free(s);
    return t;
}

// The chat_template of a tokenizer_config.json: a string, or a list of {name, template}
// whose "default" entry is the one used.
static Template detect_config(const char *path) {
    json_object *root = json_object_from_file(path), *v = NULL;
    Template t = TPL_AUTO;
    if (root && json_object_object_get_ex(root, "chat_template", &v)) {
        if (json_object_is_type(v, json_type_string)) {
            t = template_detect_string(json_object_get_string(v));
        } else if (json_object_is_type(v, json_type_array)) {
            for (size_t i = 0; i < json_object_array_length(v); i++) {
                json_object *it = json_object_array_get_idx(v, i), *name, *tp;
                if (json_object_object_get_ex(it, "name", &name) && json_object_object_get_ex(it, "template", &tp) &&
                    strcmp(json_object_get_string(name), "default") == 0)
                    t = template_detect_string(json_object_get_string(tp));
            }
        }
    }
    json_object_put(root);
    return t;
}

static int ends_with(const char *s, const char *suffix) {
    size_t ls = strlen(s), lx = strlen(suffix);
    return ls >= lx && strcmp(s + ls - lx, suffix) == 0;
}

Template template_detect(const char *path) {
    if (!path || !*path) return TPL_AUTO;
    if (ends_with(path, ".gguf") && file_exists(path) && !is_directory(path)) {
        Gguf *g = gguf_open(path, NULL);
        Template t = g ? template_detect_string(gguf_get_str(g, "tokenizer.chat_template")) : TPL_AUTO;
        gguf_close(g);
        if (t != TPL_AUTO) return t;
    }
    char dir[1024], file[1100];
    if (is_directory(path)) {
        snprintf(dir, sizeof dir, "%s", path);
    } else {
        char tmp[1024];
        snprintf(tmp, sizeof tmp, "%s", path);
        snprintf(dir, sizeof dir, "%s", dirname(tmp));
    }
    Template t = TPL_AUTO;
    path_join(file, sizeof file, dir, "tokenizer_config.json");
    if (file_exists(file)) t = detect_config(file);
    path_join(file, sizeof file, dir, "chat_template.jinja");  // transformers >= 4.47 writes it apart
    if (t == TPL_AUTO && file_exists(file)) {
        char *s = read_file(file, NULL, NULL);
        t = template_detect_string(s);
        free(s);
    }
    return t;
}
