// template — prompt templates: how an instruction / a conversation becomes text, and how
// that text becomes token ids with an exact loss-mask boundary.
//
// A conversation is laid out as text segments, each either prompt (mask 0) or response
// (mask 1); adjacent segments of the same kind are joined. Each segment is encoded on its
// own and the ids are concatenated, so the boundary between prompt and response is exactly
// a token boundary. The first segment is encoded with tok_encode (SentencePiece adds its
// dummy-prefix space at the start of the text, as for any text); every later segment with
// tok_encode_cont (no dummy prefix), because it continues the text: after "### Response:\n"
// the response "Paris" is "Paris", not " Paris". So decode(prompt ids ++ response ids) is
// exactly prompt ++ response, and the prompt ids are exactly tok_encode(prompt), which is
// what `lora generate --template` feeds the model (after BOS); the ids it then generates are
// the ids training taught it, ending with EOS.
#include <stdlib.h>
#include <string.h>

#include "data/data.h"

static const char ALPACA_HEADER[] =
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.";
static const char ALPACA_HEADER_INPUT[] =
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.";

Template template_parse(const char *name, Err *e) {
    if (name && strcmp(name, "auto") == 0) return TPL_AUTO;
    if (name && strcmp(name, "alpaca") == 0) return TPL_ALPACA;
    if (name && strcmp(name, "chatml") == 0) return TPL_CHATML;
    if (name && strcmp(name, "raw") == 0) return TPL_RAW;
    err_set(e, "unknown template \"%s\" (expected auto, alpaca, chatml or raw)", name ? name : "");
    return (Template)-1;
}

const char *template_name(Template t) {
    switch (t) {
    case TPL_AUTO: return "auto";
    case TPL_ALPACA: return "alpaca";
    case TPL_CHATML: return "chatml";
    case TPL_RAW: return "raw";
    }
    return "?";
}

// ---- segments -----------------------------------------------------------------------------------
typedef struct {
    char *text;
    size_t len, cap;
    int train;
} Seg;

typedef struct {
    Seg *seg;
    int n, cap;
    int failed;         // out of memory
    int any;            // any text added yet
} Segs;

// Appends s to the last segment when it has the same train flag, else starts a new one.
static void segs_add(Segs *ss, const char *s, int train) {
    size_t len = strlen(s);
    if (ss->failed || len == 0) return;
    if (ss->n == 0 || ss->seg[ss->n - 1].train != train) {
        if (ss->n == ss->cap) {
            int cap = ss->cap ? 2 * ss->cap : 8;
            Seg *p = realloc(ss->seg, (size_t)cap * sizeof *p);
            if (!p) { ss->failed = 1; return; }
            ss->seg = p;
            ss->cap = cap;
        }
        ss->seg[ss->n++] = (Seg){NULL, 0, 0, train};
    }
    Seg *g = &ss->seg[ss->n - 1];
    if (g->len + len + 1 > g->cap) {
        size_t cap = (g->len + len + 1) * 2;
        char *p = realloc(g->text, cap);
        if (!p) { ss->failed = 1; return; }
        g->text = p;
        g->cap = cap;
    }
    memcpy(g->text + g->len, s, len + 1);
    g->len += len;
    ss->any = 1;
}

static void segs_free(Segs *ss) {
    for (int i = 0; i < ss->n; i++) free(ss->seg[i].text);
    free(ss->seg);
}

static int is_role(const ChatMsg *m, const char *role) { return m->role && strcmp(m->role, role) == 0; }

// Lays out msgs in template t (not TPL_AUTO). input: alpaca input of the first user message.
static int build_segments(Template t, const ChatMsg *msgs, int n, const char *input, Segs *ss, Err *e) {
    memset(ss, 0, sizeof *ss);
    int has_input = input && *input, first_user = 1;
    for (int i = 0; i < n; i++) {
        if (!is_role(&msgs[i], "system") && !is_role(&msgs[i], "user") && !is_role(&msgs[i], "assistant"))
            return err_set(e, "message %d: unknown role \"%s\" (expected system, user or assistant)", i,
                           msgs[i].role ? msgs[i].role : "");
    }
    const char *last_role = n > 0 ? msgs[n - 1].role : "";
    if (t == TPL_ALPACA) {
        // header "\n\n### Instruction:\n" user ["\n\n### Input:\n" input] "\n\n### Response:\n"
        // reply; a first system message replaces the header, a later one is plain prompt text.
        const char *header = has_input ? ALPACA_HEADER_INPUT : ALPACA_HEADER;
        int i0 = 0;
        if (n > 0 && is_role(&msgs[0], "system")) { header = msgs[0].content; i0 = 1; }
        segs_add(ss, header, 0);
        for (int i = i0; i < n; i++) {
            const ChatMsg *m = &msgs[i];
            const char *c = m->content ? m->content : "";
            if (is_role(m, "assistant")) {
                segs_add(ss, "\n\n### Response:\n", 0);
                segs_add(ss, c, 1);
            } else if (is_role(m, "user")) {
                segs_add(ss, "\n\n### Instruction:\n", 0);
                segs_add(ss, c, 0);
                if (first_user && has_input) {
                    segs_add(ss, "\n\n### Input:\n", 0);
                    segs_add(ss, input, 0);
                }
                first_user = 0;
            } else {
                segs_add(ss, "\n\n", 0);
                segs_add(ss, c, 0);
            }
        }
        if (strcmp(last_role, "assistant") != 0) segs_add(ss, "\n\n### Response:\n", 0);
    } else if (t == TPL_CHATML) {
        // <|im_start|>role\ncontent<|im_end|> joined by "\n"; a reply is trained together with
        // its <|im_end|>.
        for (int i = 0; i < n; i++) {
            const ChatMsg *m = &msgs[i];
            int reply = is_role(m, "assistant");
            if (i > 0) segs_add(ss, "\n", 0);
            segs_add(ss, "<|im_start|>", 0);
            segs_add(ss, m->role, 0);
            segs_add(ss, "\n", 0);
            segs_add(ss, m->content ? m->content : "", reply);
            if (is_role(m, "user") && first_user && has_input) {
                segs_add(ss, "\n\n", 0);
                segs_add(ss, input, 0);
            }
            if (is_role(m, "user")) first_user = 0;
            segs_add(ss, "<|im_end|>", reply);
        }
        if (strcmp(last_role, "assistant") != 0) segs_add(ss, n > 0 ? "\n<|im_start|>assistant\n" : "<|im_start|>assistant\n", 0);
    } else if (t == TPL_RAW) {
        // contents as they are; a first user message's input follows it after "\n\n".
        for (int i = 0; i < n; i++) {
            const ChatMsg *m = &msgs[i];
            segs_add(ss, m->content ? m->content : "", is_role(m, "assistant"));
            if (is_role(m, "user") && first_user && has_input) {
                segs_add(ss, "\n\n", 0);
                segs_add(ss, input, 0);
            }
            if (is_role(m, "user")) first_user = 0;
        }
    } else {
        return err_set(e, "invalid template %d", (int)t);
    }
    if (ss->failed) {
        segs_free(ss);
        return err_set(e, "out of memory formatting a conversation");
    }
    return 0;
}

char *template_format_prompt(Template t, const char *instruction, const char *input) {
    if (t == TPL_AUTO) t = TPL_ALPACA;
    ChatMsg m = {"user", instruction ? instruction : ""};
    Segs ss;
    if (build_segments(t, &m, 1, input, &ss, NULL) != 0) return NULL;
    size_t len = 0;
    for (int i = 0; i < ss.n; i++) len += ss.seg[i].len;
    char *s = malloc(len + 1);
    if (s) {
        size_t k = 0;
        for (int i = 0; i < ss.n; i++) { memcpy(s + k, ss.seg[i].text, ss.seg[i].len); k += ss.seg[i].len; }
        s[k] = '\0';
    }
    segs_free(&ss);
    return s;
}

int template_encode(Template t, const Tokenizer *tok, const ChatMsg *msgs, int n, const char *input,
                    int **ids_out, uint8_t **mask_out, Err *e) {
    *ids_out = NULL;
    *mask_out = NULL;
    if (t == TPL_AUTO) t = TPL_CHATML;
    if (n < 0 || (n > 0 && !msgs)) return err_set(e, "invalid conversation (%d messages)", n);
    Segs ss;
    if (build_segments(t, msgs, n, input, &ss, e) != 0) return -1;
    int total = 0, cap = 64, rc = 0;
    int *ids = xmalloc((size_t)cap * sizeof *ids, "token ids", e);
    uint8_t *mask = xmalloc((size_t)cap, "loss mask", e);
    if (!ids || !mask) rc = -1;
    for (int i = 0; i < ss.n && rc == 0; i++) {
        int *part = NULL;
        // first segment: start of text (dummy prefix); later ones continue it
        int k = i == 0 ? tok_encode(tok, ss.seg[i].text, &part, e) : tok_encode_cont(tok, ss.seg[i].text, &part, e);
        if (k < 0) { rc = -1; break; }
        if (total + k > cap) {
            while (total + k > cap) cap *= 2;
            int *ni = realloc(ids, (size_t)cap * sizeof *ids);
            if (ni) ids = ni;
            uint8_t *nm = ni ? realloc(mask, (size_t)cap) : NULL;
            if (nm) mask = nm;
            if (!ni || !nm) { free(part); rc = err_set(e, "out of memory encoding a conversation"); break; }
        }
        memcpy(ids + total, part, (size_t)k * sizeof *ids);
        memset(mask + total, ss.seg[i].train ? 1 : 0, (size_t)k);
        total += k;
        free(part);
    }
    segs_free(&ss);
    if (rc != 0) {
        free(ids);
        free(mask);
        return -1;
    }
    *ids_out = ids;
    *mask_out = mask;
    return total;
}
