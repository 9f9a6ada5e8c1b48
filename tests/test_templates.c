// Chat templates: each family renders a conversation exactly as the model's Jinja template
// does (hand-derived strings below, and the real templates rendered by jinja2 in
// tests/ref_templates.py when it is installed), the loss mask covers exactly the assistant
// replies and their end-of-turn marker, the generation prompt ends each prompt; the family
// is recognised from template strings, tokenizer_config.json files (real ones in
// ../shared/models/tokenizers), chat_template.jinja and GGUF metadata; every recipe loads.
#include <dirent.h>
#include <json-c/json.h>
#include <stdint.h>

#include "data/data.h"
#include "model/model.h"
#include "tests/testutil.h"
#include "train/train.h"

static const ChatMsg CONV[] = {
    {"system", "You are a pirate."},
    {"user", "Hello!"},
    {"assistant", "Ahoy, matey."},
    {"user", "What is 2+2?\n"},  // the trailing newline is trimmed by llama2, llama3 and gemma only
    {"assistant", "Four, says I."},
};
#define NCONV 5

static const Template ALL[] = {TPL_ALPACA, TPL_CHATML, TPL_RAW,    TPL_QWEN2,  TPL_QWEN25, TPL_SMOLLM2,
                               TPL_LLAMA2, TPL_LLAMA3, TPL_LLAMA32, TPL_ZEPHYR, TPL_PHI3,   TPL_GEMMA};
#define NALL ((int)(sizeof ALL / sizeof ALL[0]))

static int streq(const char *a, const char *b) { return a && b && strcmp(a, b) == 0; }

static int starts_with(const char *s, const char *p) { return s && strncmp(s, p, strlen(p)) == 0; }

static int ends_with(const char *s, const char *x) {
    size_t ls = s ? strlen(s) : 0, lx = strlen(x);
    return s && ls >= lx && strcmp(s + ls - lx, x) == 0;
}

// ---- rendering: HF's strings, derived by hand from the Jinja templates ---------------------------
static void check_render(const char *name, Template t, const ChatMsg *m, int n, int gen, const char *bos,
                         const char *eos, const char *want) {
    Err e = {{0}};
    char *got = template_render(t, m, n, NULL, gen, bos, eos, &e);
    CHECK(name, streq(got, want), "got [%s]%s", got ? got : e.msg, got ? "" : " (error)");
    free(got);
}

// CONV in ChatML (with its own system message: no default one)
#define CHATML_CONV                                                                                   \
    "<|im_start|>system\nYou are a pirate.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n"          \
    "<|im_start|>assistant\nAhoy, matey.<|im_end|>\n<|im_start|>user\nWhat is 2+2?\n<|im_end|>\n"   \
    "<|im_start|>assistant\nFour, says I.<|im_end|>\n"
// CONV after its system message in the llama3 templates
#define LLAMA3_TURNS                                                                                  \
    "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"                                 \
    "<|start_header_id|>assistant<|end_header_id|>\n\nAhoy, matey.<|eot_id|>"                      \
    "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"                           \
    "<|start_header_id|>assistant<|end_header_id|>\n\nFour, says I.<|eot_id|>"

static void test_render(void) {
    // the whole conversation (add_generation_prompt=False)
    check_render("render chatml", TPL_CHATML, CONV, NCONV, 0, "<s>", "</s>",
                 CHATML_CONV);
    check_render("render qwen2.5 with a system message", TPL_QWEN25, CONV, NCONV, 0, "", "<|im_end|>",
                 CHATML_CONV);
    check_render("render llama2", TPL_LLAMA2, CONV, NCONV, 0, "<s>", "</s>",
                 "<s>[INST] <<SYS>>\nYou are a pirate.\n<</SYS>>\n\nHello! [/INST] Ahoy, matey. </s>"
                 "<s>[INST] What is 2+2? [/INST] Four, says I. </s>");
    check_render("render llama3", TPL_LLAMA3, CONV, NCONV, 0, "<|begin_of_text|>", "<|eot_id|>",
                 "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a pirate.<|eot_id|>"
                 LLAMA3_TURNS);
    check_render("render llama3.2", TPL_LLAMA32, CONV, NCONV, 0, "<|begin_of_text|>", "<|eot_id|>",
                 "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                 "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou are a pirate.<|eot_id|>"
                 LLAMA3_TURNS);
    check_render("render zephyr", TPL_ZEPHYR, CONV, NCONV, 0, "<s>", "</s>",
                 "<|system|>\nYou are a pirate.</s>\n<|user|>\nHello!</s>\n<|assistant|>\nAhoy, matey.</s>\n"
                 "<|user|>\nWhat is 2+2?\n</s>\n<|assistant|>\nFour, says I.</s>\n");
    check_render("render phi3", TPL_PHI3, CONV, NCONV, 0, "<s>", "<|endoftext|>",
                 "<|system|>\nYou are a pirate.<|end|>\n<|user|>\nHello!<|end|>\n<|assistant|>\nAhoy, matey.<|end|>\n"
                 "<|user|>\nWhat is 2+2?\n<|end|>\n<|assistant|>\nFour, says I.<|end|>\n<|endoftext|>");
    check_render("render gemma", TPL_GEMMA, CONV, NCONV, 0, "<bos>", "<eos>",
                 "<bos><start_of_turn>user\nYou are a pirate.\n\nHello!<end_of_turn>\n"
                 "<start_of_turn>model\nAhoy, matey.<end_of_turn>\n<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n"
                 "<start_of_turn>model\nFour, says I.<end_of_turn>\n");
    // default system prompts injected when messages[0] is not a system message
    const ChatMsg *nosys = CONV + 1;
    check_render("render qwen2.5 default system + generation prompt", TPL_QWEN25, nosys, 1, 1, "", "<|im_end|>",
                 "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                 "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n");
    check_render("render smollm2 default system + generation prompt", TPL_SMOLLM2, nosys, 1, 1, "", "<|im_end|>",
                 "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                 "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n");
    check_render("render qwen2 default system + generation prompt", TPL_QWEN2, nosys, 1, 1, "", "<|im_end|>",
                 "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                 "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n");
    check_render("render llama3.2 empty system header", TPL_LLAMA32, nosys, 1, 1, "<|begin_of_text|>", "",
                 "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                 "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
                 "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
                 "<|start_header_id|>assistant<|end_header_id|>\n\n");
    // generation prompts after [system, user]
    struct { Template t; const char *end; } gp[] = {
        {TPL_CHATML, "Hello!<|im_end|>\n<|im_start|>assistant\n"},
        {TPL_LLAMA2, "Hello! [/INST]"},
        {TPL_LLAMA3, "Hello!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"},
        {TPL_LLAMA32, "Hello!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"},
        {TPL_ZEPHYR, "Hello!</s>\n<|assistant|>\n"},
        {TPL_PHI3, "Hello!<|end|>\n<|assistant|>\n"},
        {TPL_GEMMA, "Hello!<end_of_turn>\n<start_of_turn>model\n"},
        {TPL_ALPACA, "### Instruction:\nHello!\n\n### Response:\n"},
    };
    int ok = 1;
    for (size_t i = 0; i < sizeof gp / sizeof gp[0]; i++) {
        char *s = template_render(gp[i].t, CONV, 2, NULL, 1, "<s>", "</s>", NULL);
        if (!ends_with(s, gp[i].end)) {
            printf("  %s: [%s]\n", template_name(gp[i].t), s ? s : "(null)");
            ok = 0;
        }
        free(s);
    }
    CHECK("generation prompts end each template's prompt", ok, "see above");
    // roles the llama2 and gemma templates refuse (raise_exception in their Jinja)
    Err e = {{0}};
    ChatMsg midsys[] = {{"user", "a"}, {"assistant", "b"}, {"system", "c"}, {"user", "d"}};
    ChatMsg twice[] = {{"user", "a"}, {"user", "b"}};
    char *s1 = template_render(TPL_LLAMA2, midsys, 4, NULL, 1, "<s>", "</s>", &e);
    CHECK("llama2 refuses a system message after the first turn", !s1 && strstr(e.msg, "message 2") && strstr(e.msg, "llama2"),
          "%s", e.msg);
    char *s2 = template_render(TPL_GEMMA, twice, 2, NULL, 1, "<s>", "</s>", &e);
    CHECK("gemma refuses two user turns in a row", !s2 && strstr(e.msg, "message 1") && strstr(e.msg, "alternating"),
          "%s", e.msg);
    char *s3 = template_render(TPL_CHATML, twice, 2, NULL, 1, "<s>", "</s>", &e);
    CHECK("chatml takes any order", s3 != NULL, "%s", e.msg);
    ChatMsg bad = {"bot", "x"};
    char *s4 = template_render(TPL_PHI3, &bad, 1, NULL, 1, "<s>", "</s>", &e);
    CHECK("unknown role", !s4 && strstr(e.msg, "unknown role \"bot\""), "%s", e.msg);
    free(s1); free(s2); free(s3); free(s4);
    // alpaca's input goes with the first user message
    ChatMsg q = {"user", "Name the capital."};
    char *s5 = template_render(TPL_CHATML, &q, 1, "France", 1, "", "", &e);
    CHECK("input after the first user message", streq(s5, "<|im_start|>user\nName the capital.\n\nFrance<|im_end|>\n<|im_start|>assistant\n"),
          "[%s]", s5 ? s5 : e.msg);
    free(s5);
}

static void test_names(void) {
    Err e = {{0}};
    int ok = 1;
    for (int i = 0; i < NALL; i++)
        if (template_parse(template_name(ALL[i]), &e) != ALL[i]) ok = 0;
    CHECK("template names round trip", ok && template_parse("auto", &e) == TPL_AUTO, "%s", e.msg);
    CHECK("unknown template name", (int)template_parse("vicuna", &e) == -1 && strstr(e.msg, "vicuna") && strstr(e.msg, "gemma"),
          "%s", e.msg);
    CHECK("stop strings", streq(template_stop(TPL_QWEN25), "<|im_end|>") && streq(template_stop(TPL_LLAMA32), "<|eot_id|>") &&
                              streq(template_stop(TPL_PHI3), "<|end|>") && streq(template_stop(TPL_GEMMA), "<end_of_turn>") &&
                              !template_stop(TPL_LLAMA2) && !template_stop(TPL_ZEPHYR) && !template_stop(TPL_ALPACA),
          "stop strings differ");
}

// ---- the real templates through jinja2 -----------------------------------------------------------
// Runs tests/ref_templates.py ARGS with the first python that has jinja2; NULL if none.
static json_object *run_ref(const char *args, int need_jinja) {
    const char *pys[] = {"python3", "/usr/bin/python3"};
    char out[256], cmd[2048];
    snprintf(out, sizeof out, "build/tmp/test_templates/ref_out.json");
    for (int i = 0; i < 2; i++) {
        snprintf(cmd, sizeof cmd, "%s tests/ref_templates.py %s > %s 2>/dev/null", pys[i], args, out);
        if (system(cmd) == 0) return json_object_from_file(out);
        if (!need_jinja) break;
    }
    return NULL;
}

static json_object *msgs_json(const ChatMsg *m, int n) {
    json_object *a = json_object_new_array();
    for (int i = 0; i < n; i++) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "role", json_object_new_string(m[i].role));
        json_object_object_add(o, "content", json_object_new_string(m[i].content));
        json_object_array_add(a, o);
    }
    return a;
}

typedef struct {
    const char *ref;   // template name in ref_templates.py, or a tokenizer_config.json path
    Template t;
} RefTpl;

static void test_against_jinja(const char *models) {
    static const ChatMsg ws[] = {{"user", "  Spaces around  \n"}, {"assistant", "\n Ünïcödé ✓ reply \t"}};
    static const ChatMsg alt[] = {{"user", "q1"}, {"assistant", "a1"}, {"user", "q2"}};
    static const ChatMsg midsys[] = {{"system", "s"}, {"user", "q"}, {"assistant", "a"}, {"system", "s2"}, {"user", "q2"}};
    static const ChatMsg asst_first[] = {{"assistant", "a"}, {"user", "q"}};
    struct { const ChatMsg *m; int n; } convs[] = {
        {CONV, NCONV}, {CONV, 2}, {CONV + 1, 1}, {CONV + 1, 2}, {ws, 2}, {alt, 3}, {midsys, 5}, {asst_first, 2},
    };
    int nconv = (int)(sizeof convs / sizeof convs[0]);
    char q3[1200], l3[1200];
    RefTpl tpls[16];
    int nt = 0;
    const RefTpl fixed[] = {{"chatml", TPL_CHATML}, {"qwen2", TPL_QWEN2},   {"qwen2.5", TPL_QWEN25}, {"smollm2", TPL_SMOLLM2},
                            {"llama2", TPL_LLAMA2}, {"llama3", TPL_LLAMA3}, {"llama3.2", TPL_LLAMA32}, {"zephyr", TPL_ZEPHYR},
                            {"phi3", TPL_PHI3},     {"gemma", TPL_GEMMA},   {"gemma-2b-it", TPL_GEMMA}};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) tpls[nt++] = fixed[i];
    if (models) {
        snprintf(q3, sizeof q3, "%s/tokenizers/qwen3/tokenizer_config.json", models);
        snprintf(l3, sizeof l3, "%s/tokenizers/llama3/tokenizer_config.json", models);
        if (file_exists(q3)) tpls[nt++] = (RefTpl){q3, TPL_CHATML};
        if (file_exists(l3)) tpls[nt++] = (RefTpl){l3, TPL_LLAMA3};
    }
    json_object *cases = json_object_new_array();
    for (int i = 0; i < nt; i++)
        for (int c = 0; c < nconv; c++)
            for (int gen = 0; gen < 2; gen++) {
                json_object *o = json_object_new_object();
                json_object_object_add(o, "template", json_object_new_string(tpls[i].ref));
                json_object_object_add(o, "messages", msgs_json(convs[c].m, convs[c].n));
                json_object_object_add(o, "gen", json_object_new_int(gen));
                json_object_object_add(o, "bos", json_object_new_string("<s>"));
                json_object_object_add(o, "eos", json_object_new_string("</s>"));
                json_object_array_add(cases, o);
            }
    const char *cases_path = "build/tmp/test_templates/cases.json";
    json_object_to_file_ext(cases_path, cases, JSON_C_TO_STRING_PLAIN);
    json_object_put(cases);
    json_object *res = run_ref(cases_path, 1);
    if (!res) {
        SKIP("real Jinja templates", "no python3 with jinja2 (pip install jinja2 / apt install python3-jinja2)");
        return;
    }
    int k = 0, compared = 0, errors = 0, bad = 0, skipped = 0;
    for (int i = 0; i < nt; i++)
        for (int c = 0; c < nconv; c++)
            for (int gen = 0; gen < 2; gen++, k++) {
                json_object *r = json_object_array_get_idx(res, (size_t)k);
                // the shared Llama-3 file's template has no add_generation_prompt test: it always
                // ends with the assistant header; Qwen3's writes <think> blocks in replies after
                // the last user turn: compare those only where the templates agree
                int is_l3file = tpls[i].ref == l3, is_q3file = tpls[i].ref == q3;
                if ((is_l3file && !gen) || (is_q3file && (!gen || strcmp(convs[c].m[convs[c].n - 1].role, "user")))) {
                    skipped++;
                    continue;
                }
                Err e = {{0}};
                char *got = template_render(tpls[i].t, convs[c].m, convs[c].n, NULL, gen, "<s>", "</s>", &e);
                int want_err = json_object_is_type(r, json_type_object);
                const char *want = want_err ? NULL : json_object_get_string(r);
                int same = want_err ? got == NULL : streq(got, want);
                // gemma-2b-it refuses a system message; ours takes Gemma 3's way
                if (!same && strcmp(tpls[i].ref, "gemma-2b-it") == 0 && want_err && strcmp(convs[c].m[0].role, "system") == 0)
                    same = 1;
                if (!same && bad++ < 5) {
                    printf("  %s conv %d gen %d:\n    jinja [%s]\n    ours  [%s]\n", tpls[i].ref, c, gen, want ? want : "(error)",
                           got ? got : e.msg);
                }
                compared++;
                errors += want_err;
                free(got);
            }
    json_object_put(res);
    printf("  %d renders compared with jinja2 (%d refused by the template, %d not comparable)\n", compared, errors, skipped);
    CHECK("templates render as the real Jinja templates", bad == 0 && compared > 100, "%d of %d differ", bad, compared);
}

// ---- token ids and masks -------------------------------------------------------------------------
// Text of ids: chunks between BOS/EOS ids decoded, BOS/EOS written as bos/eos.
static char *ids_text(const Tokenizer *tok, const int *ids, int n, const char *bos, const char *eos) {
    size_t cap = 256, len = 0;
    char *s = malloc(cap);
    s[0] = 0;
    for (int i = 0; i < n;) {
        const char *piece = NULL;
        char *dec = NULL;
        if (ids[i] == tok_bos(tok) || ids[i] == tok_eos(tok)) {
            piece = ids[i] == tok_bos(tok) ? bos : eos;
            i++;
        } else {
            int j = i;
            while (j < n && ids[j] != tok_bos(tok) && ids[j] != tok_eos(tok)) j++;
            dec = tok_decode(tok, ids + i, j - i, NULL);
            piece = dec ? dec : "";
            i = j;
        }
        size_t l = strlen(piece);
        if (len + l + 1 > cap) {
            while (len + l + 1 > cap) cap *= 2;
            s = realloc(s, cap);
        }
        memcpy(s + len, piece, l + 1);
        len += l;
        free(dec);
    }
    return s;
}

// Texts of the runs of mask 1 (each as the text it adds after what precedes it).
static int mask_runs(const Tokenizer *tok, const int *ids, const uint8_t *mask, int n, char **runs, int max) {
    int nrun = 0;
    for (int t = 0; t < n;) {
        if (!mask[t]) { t++; continue; }
        int s = t;
        while (t < n && mask[t]) t++;
        if (nrun < max) {
            char *before = ids_text(tok, ids, s, "<s>", "</s>"), *upto = ids_text(tok, ids, t, "<s>", "</s>");
            size_t lb = strlen(before);
            runs[nrun] = strncmp(upto, before, lb) == 0 ? strdup(upto + lb) : strdup("(prefix mismatch)");
            free(before);
            free(upto);
        }
        nrun++;
    }
    return nrun;
}

static void test_masks(const Tokenizer *tok) {
    // expected trained runs of CONV, and what the template renders after the last reply's
    // marker (left out of the ids; the dataset appends EOS)
    struct { Template t; const char *r1, *r2, *tail; } cases[] = {
        {TPL_CHATML, "Ahoy, matey.<|im_end|>", "Four, says I.<|im_end|>", "\n"},
        {TPL_QWEN25, "Ahoy, matey.<|im_end|>", "Four, says I.<|im_end|>", "\n"},
        {TPL_SMOLLM2, "Ahoy, matey.<|im_end|>", "Four, says I.<|im_end|>", "\n"},
        {TPL_LLAMA2, " Ahoy, matey. </s>", " Four, says I. ", "</s>"},
        {TPL_LLAMA3, "Ahoy, matey.<|eot_id|>", "Four, says I.<|eot_id|>", ""},
        {TPL_LLAMA32, "Ahoy, matey.<|eot_id|>", "Four, says I.<|eot_id|>", ""},
        {TPL_ZEPHYR, "Ahoy, matey.</s>", "Four, says I.", "</s>\n"},
        {TPL_PHI3, "Ahoy, matey.<|end|>", "Four, says I.<|end|>", "\n</s>"},
        {TPL_GEMMA, "Ahoy, matey.<end_of_turn>", "Four, says I.<end_of_turn>", "\n"},
        {TPL_ALPACA, "Ahoy, matey.", "Four, says I.", ""},
        {TPL_RAW, "Ahoy, matey.", "Four, says I.", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        Template t = cases[i].t;
        Err e = {{0}};
        int *ids = NULL;
        uint8_t *mask = NULL;
        char name[128];
        int n = template_encode(t, tok, CONV, NCONV, NULL, &ids, &mask, &e);
        snprintf(name, sizeof name, "%s: mask covers exactly the assistant replies", template_name(t));
        if (n < 0) { CHECK(name, 0, "%s", e.msg); continue; }
        char *runs[4] = {0};
        int nrun = mask_runs(tok, ids, mask, n, runs, 4);
        CHECK(name, nrun == 2 && streq(runs[0], cases[i].r1) && streq(runs[1], cases[i].r2), "%d runs: [%s] [%s]", nrun,
              runs[0] ? runs[0] : "", runs[1] ? runs[1] : "");
        for (int r = 0; r < 4; r++) free(runs[r]);
        // the ids are the rendered text without the leading bos_token and the tail
        char *text = ids_text(tok, ids, n, "<s>", "</s>");
        char *full = template_render(t, CONV, NCONV, NULL, 0, "<s>", "</s>", &e);
        size_t lf = full ? strlen(full) : 0, lt = strlen(cases[i].tail);
        size_t from = starts_with(full, "<s>") ? 3 : 0;
        int same = full && ends_with(full, cases[i].tail) && strlen(text) == lf - from - lt &&
                   strncmp(text, full + from, lf - from - lt) == 0;
        snprintf(name, sizeof name, "%s: ids decode to the rendered conversation", template_name(t));
        CHECK(name, same, "\n    ids    [%s]\n    render [%s]", text, full ? full : e.msg);
        free(text);
        free(full);
        free(ids);
        free(mask);
        // generation prompt: [system, user] -> the render with add_generation_prompt, no target
        n = template_encode(t, tok, CONV, 2, NULL, &ids, &mask, &e);
        int any = 0;
        for (int k = 0; k < n; k++) any |= mask[k];
        text = n >= 0 ? ids_text(tok, ids, n, "<s>", "</s>") : NULL;
        full = template_render(t, CONV, 2, NULL, 1, "<s>", "</s>", &e);
        from = starts_with(full, "<s>") ? 3 : 0;
        snprintf(name, sizeof name, "%s: prompt ids end with the generation prompt", template_name(t));
        CHECK(name, n > 0 && !any && full && streq(text, full + from), "[%s] vs [%s]", text ? text : e.msg,
              full ? full + from : "");
        free(text);
        free(full);
        free(ids);
        free(mask);
    }
    // template_encode([user]) = tok_encode(template_format_prompt) (what `lora generate` feeds)
    ChatMsg um = {"user", "what is the capital of France?"};
    int all_same = 1;
    for (int i = 0; i < NALL; i++) {
        if (ALL[i] == TPL_ZEPHYR) continue;  // its prompt holds an EOS id: format_prompt writes "</s>"
        int *a = NULL, *b = NULL;
        uint8_t *m = NULL;
        Err e = {{0}};
        char *pr = template_format_prompt(ALL[i], um.content, NULL);
        int na = template_encode(ALL[i], tok, &um, 1, NULL, &a, &m, &e), nb = pr ? tok_encode(tok, pr, &b, &e) : -1;
        if (na < 0 || na != nb || memcmp(a, b, sizeof(int) * (size_t)na)) {
            printf("  %s: %d vs %d ids [%s]\n", template_name(ALL[i]), na, nb, pr ? pr : "");
            all_same = 0;
        }
        free(a); free(b); free(m); free(pr);
    }
    CHECK("template_encode([user]) == tok_encode(template_format_prompt)", all_same, "differs");
    char *zp = template_format_prompt(TPL_ZEPHYR, "hi", NULL);
    CHECK("zephyr format_prompt", streq(zp, "<|user|>\nhi</s>\n<|assistant|>\n"), "[%s]", zp ? zp : "");
    free(zp);
}

// The dataset lays out messages rows in chat_tpl when tpl is auto; other rows keep theirs.
static void test_dataset(const Tokenizer *tok) {
    char dir[256], path[512];
    tu_tmpdir("test_templates/ds", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/chat.jsonl", dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "{\"messages\": [{\"role\": \"system\", \"content\": \"You are a pirate.\"}, {\"role\": \"user\", "
               "\"content\": \"Hello!\"}, {\"role\": \"assistant\", \"content\": \"Ahoy, matey.\"}]}\n"
               "{\"instruction\": \"Hello!\", \"output\": \"Ahoy.\"}\n");
    fclose(f);
    DataOptions o;
    data_options_default(&o);
    o.chat_tpl = TPL_ZEPHYR;
    Err e = {{0}};
    Dataset *d = dataset_load(path, tok, &o, &e);
    CHECK("dataset with chat_tpl loads", d && d->n == 2, "%s", e.msg);
    if (!d) return;
    char *t0 = ids_text(tok, d->ex[0].ids, d->ex[0].n, "<s>", "</s>");
    char *t1 = ids_text(tok, d->ex[1].ids, d->ex[1].n, "<s>", "</s>");
    char *runs[2] = {0};
    int nrun = mask_runs(tok, d->ex[0].ids, d->ex[0].mask, d->ex[0].n, runs, 2);
    CHECK("messages row in the model's template",
          streq(t0, "<s><|system|>\nYou are a pirate.</s>\n<|user|>\nHello!</s>\n<|assistant|>\nAhoy, matey.</s>") &&
              nrun == 1 && streq(runs[0], "Ahoy, matey.</s>"),
          "[%s] %d runs [%s]", t0, nrun, runs[0] ? runs[0] : "");
    CHECK("alpaca row keeps the alpaca template", starts_with(t1, "<s>Below is an instruction") && ends_with(t1, "Ahoy.</s>"),
          "[%s]", t1);
    free(t0); free(t1); free(runs[0]); free(runs[1]);
    dataset_free(d);
}

// Special tokens of a BPE tokenizer: the markers are single ids (needs tokenizer.json support).
static void test_special_ids(const char *models) {
    char path[1200];
    struct { const char *dir; Template t; const char *marker; } cases[] = {
        {"qwen3", TPL_CHATML, "<|im_end|>"},
        {"llama3", TPL_LLAMA3, "<|eot_id|>"},
    };
    for (int i = 0; i < 2; i++) {
        char name[128];
        snprintf(name, sizeof name, "%s: end-of-turn marker is one special id", cases[i].dir);
        snprintf(path, sizeof path, "%s/tokenizers/%s/tokenizer.json", models ? models : "", cases[i].dir);
        if (!models || !file_exists(path)) { SKIP(name, "%s absent", path); continue; }
        Err e = {{0}};
        Tokenizer *tok = tok_load(path, &e);
        if (!tok) { SKIP(name, "tokenizer.json not loadable yet: %s", e.msg); continue; }
        int *mk = NULL, *ids = NULL;
        uint8_t *mask = NULL;
        int nm = tok_encode(tok, cases[i].marker, &mk, &e);
        int n = template_encode(cases[i].t, tok, CONV, NCONV, NULL, &ids, &mask, &e);
        if (nm != 1 || n < 0) {
            CHECK(name, 0, "marker -> %d ids, conversation -> %d (%s)", nm, n, e.msg);
        } else {
            // every message ends with the marker; the last one is the caller's EOS when it is EOS
            int count = 0, in_mask = 0;
            for (int k = 0; k < n; k++)
                if (ids[k] == mk[0]) { count++; in_mask += mask[k]; }
            int want = NCONV - (mk[0] == tok_eos(tok));
            int *reply = NULL;
            int nr = tok_encode_cont(tok, "Ahoy, matey.", &reply, &e), found = 0;
            for (int k = 1; k + nr < n && !found; k++)
                found = memcmp(ids + k, reply, sizeof(int) * (size_t)nr) == 0 && ids[k + nr] == mk[0] && mask[k] &&
                        mask[k + nr] && !mask[k - 1];
            int want_masked = 2 - (mk[0] == tok_eos(tok));  // the two replies' markers
            CHECK(name, count == want && in_mask == want_masked && found,
                  "marker id %d seen %d times (want %d), %d in the mask (want %d); reply run found %d", mk[0], count, want,
                  in_mask, want_masked, found);
            free(reply);
        }
        free(mk); free(ids); free(mask);
        tok_free(tok);
    }
}

// ---- recognising the family ----------------------------------------------------------------------
static void test_detect(const char *models) {
    // the real templates, from tests/ref_templates.py (shared with the Jinja comparison)
    json_object *all = run_ref("--dump", 0);
    if (!all) {
        CHECK("template strings from tests/ref_templates.py", 0, "cannot run tests/ref_templates.py --dump");
    } else {
        struct { const char *name; Template t; } want[] = {
            {"chatml", TPL_CHATML}, {"qwen2", TPL_QWEN2},   {"qwen2.5", TPL_QWEN25}, {"smollm2", TPL_SMOLLM2},
            {"llama2", TPL_LLAMA2}, {"llama3", TPL_LLAMA3}, {"llama3.2", TPL_LLAMA32}, {"zephyr", TPL_ZEPHYR},
            {"phi3", TPL_PHI3},     {"gemma", TPL_GEMMA},   {"gemma-2b-it", TPL_GEMMA},
        };
        int ok = 1;
        for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
            json_object *v = NULL;
            json_object_object_get_ex(all, want[i].name, &v);
            Template got = template_detect_string(v ? json_object_get_string(v) : NULL);
            if (got != want[i].t) {
                printf("  %s detected as %s\n", want[i].name, template_name(got));
                ok = 0;
            }
        }
        CHECK("detect the family of each real template string", ok, "see above");
        json_object_put(all);
    }
    // not recognised: Mistral's [INST] without <<SYS>>, an unknown default system prompt
    const char *mistral = "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + "
                          "message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + "
                          "eos_token}}{% endif %}{% endfor %}";
    const char *mybot = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ "
                        "'<|im_start|>system\\nYou are MyBot.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + "
                        "'\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}";
    CHECK("unrecognised templates", template_detect_string(mistral) == TPL_AUTO && template_detect_string(mybot) == TPL_AUTO &&
                                        template_detect_string("") == TPL_AUTO && template_detect_string(NULL) == TPL_AUTO &&
                                        template_detect_string("{{ messages }}") == TPL_AUTO,
          "a template was recognised");

    // the real tokenizer_config.json files
    if (!models) {
        SKIP("detect real tokenizer_config.json", "no ../shared/models");
    } else {
        char d[1200], cfg[1200];
        snprintf(cfg, sizeof cfg, "%s/tokenizers/llama3/tokenizer_config.json", models);
        snprintf(d, sizeof d, "%s/tokenizers/llama3", models);
        Template l3 = template_detect(d);
        snprintf(d, sizeof d, "%s/tokenizers/qwen3/tokenizer.json", models);  // a file beside it
        Template q3 = template_detect(d);
        snprintf(d, sizeof d, "%s/tokenizers/smollm2", models);  // tokenizer.json only: no template
        Template sm = template_detect(d);
        if (!file_exists(cfg)) SKIP("detect real tokenizer_config.json", "%s absent", cfg);
        else CHECK("detect real tokenizer_config.json", l3 == TPL_LLAMA3 && q3 == TPL_CHATML && sm == TPL_AUTO,
                   "llama3 -> %s, qwen3 -> %s, smollm2 -> %s", template_name(l3), template_name(q3), template_name(sm));
    }

    // files the test writes: a list-form chat_template, chat_template.jinja, GGUF metadata
    char dir[256], path[512];
    tu_tmpdir("test_templates/detect", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"<|im_start|>\"}, {\"name\": \"default\", "
               "\"template\": \"{{ bos_token }}{%% for m in messages %%}<start_of_turn>{{ m.content }}{%% endfor %%}\"}]}\n");
    fclose(f);
    Template t1 = template_detect(dir);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    f = fopen(path, "w");
    fprintf(f, "{\"model_max_length\": 2048}\n");  // no chat_template here: chat_template.jinja
    fclose(f);
    snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
    f = fopen(path, "w");
    fprintf(f, "{%% for message in messages %%}{{'<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n'}}"
               "{%% endfor %%}<|user|><|assistant|>");
    fclose(f);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    Template t2 = template_detect(path);
    CHECK("detect list-form chat_template and chat_template.jinja", t1 == TPL_GEMMA && t2 == TPL_PHI3, "%s, %s",
          template_name(t1), template_name(t2));
    Err e = {{0}};
    GgufWriter *w = ggw_new(&e);
    snprintf(path, sizeof path, "%s/model.gguf", dir);
    int rc = w ? ggw_set_str(w, "general.architecture", "llama", &e) : -1;
    if (!rc) rc = ggw_set_str(w, "tokenizer.chat_template",
                              "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                              "'<|im_end|>\\n'}}{% endfor %}",
                              &e);
    if (!rc) rc = ggw_save(w, path, &e);
    ggw_free(w);
    snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
    remove(path);
    snprintf(path, sizeof path, "%s/model.gguf", dir);
    Template t3 = rc ? TPL_AUTO : template_detect(path);
    CHECK("detect tokenizer.chat_template of a GGUF file", rc == 0 && t3 == TPL_CHATML, "%s %s", template_name(t3), e.msg);
    snprintf(path, sizeof path, "%s/nothing", dir);
    CHECK("no template anywhere", template_detect(path) == TPL_AUTO && template_detect(NULL) == TPL_AUTO &&
                                      template_detect("/nonexistent/dir/model.gguf") == TPL_AUTO,
          "found one");
}

// ---- recipes -------------------------------------------------------------------------------------
static void test_recipes(void) {
    DIR *dir = opendir("recipes");
    CHECK("recipes directory", dir != NULL, "no recipes/");
    if (!dir) return;
    struct dirent *de;
    int n = 0, ok = 1;
    while ((de = readdir(dir))) {
        if (!ends_with(de->d_name, ".json")) continue;
        char path[1024];
        snprintf(path, sizeof path, "recipes/%s", de->d_name);
        TrainConfig c;
        train_config_default(&c);
        Err e = {{0}};
        if (train_config_load_json(&c, path, &e)) {
            printf("  %s\n", e.msg);
            ok = 0;
        }
        n++;
    }
    closedir(dir);
    CHECK("every recipes/*.json loads", ok && n >= 6, "%d recipes", n);
    struct { const char *file; Template t; } fam[] = {
        {"recipes/smollm2-135m-instruct.json", TPL_SMOLLM2},
        {"recipes/qwen2.5-0.5b-instruct.json", TPL_QWEN25},
        {"recipes/tinyllama-1.1b-chat.json", TPL_ZEPHYR},
        {"recipes/llama-3.2-1b-instruct.json", TPL_LLAMA32},
    };
    for (int i = 0; i < 4; i++) {
        TrainConfig c;
        train_config_default(&c);
        Err e = {{0}};
        int rc = train_config_load_json(&c, fam[i].file, &e);
        char name[160];
        snprintf(name, sizeof name, "%s: the family's template", fam[i].file);
        CHECK(name, rc == 0 && c.data_opts.tpl == fam[i].t && c.model[0] && c.rank > 0, "%s (template %s)", e.msg,
              template_name(c.data_opts.tpl));
    }
}

int main(void) {
    char tmp[256];
    tu_tmpdir("test_templates", tmp, sizeof tmp);
    const char *models = tu_models_dir();
    test_names();
    test_render();
    test_against_jinja(models);
    test_detect(models);
    test_recipes();
    char tp[1200];
    snprintf(tp, sizeof tp, "%s/tokenizers/llama2/tokenizer.model", models ? models : "");
    Err e = {{0}};
    Tokenizer *tok = models && file_exists(tp) ? tok_load(tp, &e) : NULL;
    if (!tok) {
        SKIP("masks with the Llama-2 tokenizer", "%s absent", tp);
    } else {
        test_masks(tok);
        test_dataset(tok);
        tok_free(tok);
    }
    test_special_ids(models);
    return tu_exit();
}
