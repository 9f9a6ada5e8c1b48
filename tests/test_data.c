// Tests for data/: the SentencePiece shim against llama.cpp's tokenizer vectors, the
// stories260K tokenizer, templates, JSONL parsing (formats, masks, errors), batching.
// The JSONL tests use a tiny tokenizer trained here with spm_train, so they never skip.
#include <libgen.h>
#include <sys/stat.h>

#include "data/data.h"
#include "tests/testutil.h"

static char g_tmp[512];  // <build dir>/tmp/test_data

static const char *tmp_path(char *buf, size_t n, const char *name) {
    snprintf(buf, n, "%s/%s", g_tmp, name);
    return buf;
}

static void write_text(const char *path, const char *s, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) { fprintf(stderr, "cannot write %s\n", path); exit(2); }
    fwrite(s, 1, len, f);
    fclose(f);
}

static const char *write_tmp(const char *name, const char *s) {
    static char buf[8][1100];
    static int k = 0;
    char *p = buf[k++ % 8];
    tmp_path(p, 1100, name);
    write_text(p, s, strlen(s));
    return p;
}

static char *decode_masked(const Tokenizer *tok, const Example *ex, int want) {
    int *ids = malloc(sizeof(int) * (ex->n + 1));
    int k = 0;
    for (int i = 0; i < ex->n; i++)
        if (ex->mask[i] == want) ids[k++] = ex->ids[i];
    Err e;
    char *s = tok_decode(tok, ids, k, &e);
    free(ids);
    return s;
}

static char *decode_all(const Tokenizer *tok, const int *ids, int n) {
    Err e;
    return tok_decode(tok, ids, n, &e);
}

// Text of ids as a stream of tok_piece_text calls, the token before ids[0] being prev.
static char *stream_text_after(const Tokenizer *tok, int prev, const int *ids, int n) {
    size_t cap = 64, len = 0;
    char *s = malloc(cap);
    s[0] = 0;
    char buf[256];
    for (int i = 0; i < n; i++) {
        const char *p = tok_piece_text(tok, prev, ids[i], buf, sizeof buf);
        size_t pl = strlen(p);
        while (len + pl + 1 > cap) { cap *= 2; s = realloc(s, cap); }
        memcpy(s + len, p, pl + 1);
        len += pl;
        prev = ids[i];
    }
    return s;
}

static char *stream_text(const Tokenizer *tok, const int *ids, int n) { return stream_text_after(tok, -1, ids, n); }

static int same_ids(const int *a, int na, const int *b, int nb) {
    return na == nb && (na == 0 || memcmp(a, b, sizeof(int) * (size_t)na) == 0);
}

// ---- real tokenizers from the shared models dir ------------------------------------------------
// Reads up to max space-separated ids from s.
static int parse_ids(const char *s, int *ids, int max) {
    int n = 0;
    for (char *end; n < max; s = end) {
        long v = strtol(s, &end, 10);
        if (end == s) break;
        ids[n++] = (int)v;
    }
    return n;
}

// Loads models/tok_rel when it and models/need[0..2] exist (else SKIP) and checks vocab size,
// BOS 1 and EOS 2; text[i] gets the contents of need[i].
static Tokenizer *load_real(const char *models, const char *name, const char *tok_rel, int vocab,
                            const char *const need[2], char *text[2]) {
    char tp[1024], np[1024];
    snprintf(tp, sizeof tp, "%s/%s", models, tok_rel);
    int have = file_exists(tp);
    for (int i = 0; i < 2; i++) have = have && file_exists(path_join(np, sizeof np, models, need[i]));
    if (!have) {
        SKIP(name, "%s or its test files absent", tok_rel);
        return NULL;
    }
    Err e = {{0}};
    Tokenizer *tok = tok_load(tp, &e);
    char cn[128];
    snprintf(cn, sizeof cn, "%s load", name);
    CHECK(cn, tok != NULL, "%s", e.msg);
    if (!tok) return NULL;
    snprintf(cn, sizeof cn, "%s specials", name);
    CHECK(cn, tok_vocab_size(tok) == vocab && tok_bos(tok) == 1 && tok_eos(tok) == 2, "vocab %d bos %d eos %d",
          tok_vocab_size(tok), tok_bos(tok), tok_eos(tok));
    for (int i = 0; i < 2; i++) {
        size_t len;
        text[i] = read_file(path_join(np, sizeof np, models, need[i]), &len, &e);
    }
    return tok;
}

// tok_encode(a) ++ tok_encode_cont(b) == tok_encode(a ++ b) where b starts a new word.
static int split_encode_matches(const Tokenizer *tok, const char *a, const char *b) {
    Err e;
    int *x = NULL, *y = NULL, *z = NULL;
    char whole[512];
    snprintf(whole, sizeof whole, "%s%s", a, b);
    int nx = tok_encode(tok, a, &x, &e), ny = tok_encode_cont(tok, b, &y, &e), nz = tok_encode(tok, whole, &z, &e);
    int ok = nx >= 0 && ny >= 0 && nx + ny == nz && memcmp(z, x, sizeof(int) * (size_t)nx) == 0 &&
             memcmp(z + nx, y, sizeof(int) * (size_t)ny) == 0;
    free(x); free(y); free(z);
    return ok;
}

// ---- llama.cpp vectors with the Llama-2 SentencePiece model -----------------------------------
static void test_vectors(const char *models) {
    const char *need[2] = {"tokenizers/vectors/ggml-vocab-llama-spm.gguf.inp",
                           "tokenizers/vectors/ggml-vocab-llama-spm.gguf.out"};
    char *text[2];
    Tokenizer *tok = load_real(models, "spm llama2", "tokenizers/llama2/tokenizer.model", 32000, need, text);
    if (!tok) return;
    Err e = {{0}};
    free(text[0]);
    free(text[1]);
    char vdir[1024];
    snprintf(vdir, sizeof vdir, "%s/tokenizers/vectors", models);
    TuVectors v;
    if (tu_vectors_read(vdir, "ggml-vocab-llama-spm", &v)) {
        CHECK("spm llama2 vectors", 0, "cannot read the llama-spm vectors in %s", vdir);
        tok_free(tok);
        return;
    }
    int n = 0, ok = 0, rt_n = 0, rt_ok = 0, st_ok = 0;
    char first_bad[200] = "";
    for (int i = 0; i < v.n; i++) {
        const char *p = v.text[i];
        int *ids = NULL;
        int k = tok_encode(tok, p, &ids, &e);
        n++;
        if (same_ids(ids, k, v.ids[i], v.n_ids[i])) ok++;
        else if (!first_bad[0]) snprintf(first_bad, sizeof first_bad, "string %d \"%.40s\": got %d ids, want %d", n, p, k, v.n_ids[i]);
        char *dec = decode_all(tok, ids, k);
        // with identity normalization and byte fallback, decoding gives the text back (the
        // dummy-prefix space is dropped again, also for strings starting with whitespace)
        rt_n++;
        if (dec && strcmp(dec, p) == 0) rt_ok++;
        char *st = stream_text(tok, ids, k);
        if (dec && strcmp(st, dec) == 0) st_ok++;
        else printf("  stream mismatch on string %d: [%s] vs [%s]\n", n, st, dec ? dec : "(null)");
        free(st);
        free(dec);
        free(ids);
    }
    printf("  llama-spm vectors: %d strings, %d match; round trip %d/%d; streaming %d/%d\n", n, ok, rt_ok, rt_n,
           st_ok, n);
    CHECK("spm llama2 vectors", n >= 40 && ok == n, "%d of %d strings match; first mismatch: %s", ok, n, first_bad);
    CHECK("spm llama2 decode(encode(s)) == s", rt_n >= 40 && rt_ok == rt_n, "%d of %d", rt_ok, rt_n);
    CHECK("spm llama2 streaming piece text == decode", st_ok == n, "%d of %d", st_ok, n);
    // continuation encode: no dummy prefix
    int *a = NULL, *b = NULL;
    int na = tok_encode(tok, "Hello", &a, &e), nb = tok_encode_cont(tok, "Hello", &b, &e);
    CHECK("spm llama2 encode vs encode_cont", na == 1 && a[0] == 15043 && nb == 1 && b[0] == 10994,
          "encode %d ids (%d), cont %d ids (%d)", na, na > 0 ? a[0] : -1, nb, nb > 0 ? b[0] : -1);
    free(a);
    free(b);
    CHECK("spm llama2 prompt ++ continuation == whole text",
          split_encode_matches(tok, "The capital of France is", " Paris.") &&
              split_encode_matches(tok, "### Response:\n", "Paris is the capital.") &&
              split_encode_matches(tok, "Q:", "  two spaces"),
          "split encoding differs");
    char buf[64];
    CHECK("spm llama2 piece text", strcmp(tok_piece_text(tok, 1, 15043, buf, sizeof buf), "Hello") == 0 &&
                                       strcmp(tok_piece_text(tok, 15043, 3186, buf, sizeof buf), " world") == 0 &&
                                       strcmp(tok_piece_text(tok, 3186, 13, buf, sizeof buf), "\n") == 0 &&
                                       strcmp(tok_piece_text(tok, 13, 2, buf, sizeof buf), "") == 0,
          "pieces of Hello / world / <0x0A> / </s> wrong");
    tu_vectors_free(&v);
    tok_free(tok);
}

// ---- stories260K's tok512 -----------------------------------------------------------------------
static void test_tok512(const char *models) {
    const char *need[2] = {"stories260K/expected_greedy_ids_first100.txt", "stories260K/expected_greedy.txt"};
    char *text[2];
    Tokenizer *tok = load_real(models, "tok512", "stories260K/tok512.model", 512, need, text);
    if (!tok) return;
    Err e = {{0}};
    char *idtxt = text[0], *greedy = text[1];
    int ids[200], n = parse_ids(idtxt, ids, 200);
    char *dec = decode_all(tok, ids, n);
    CHECK("tok512 decode greedy ids is a prefix of expected text",
          n == 100 && dec && strlen(dec) > 100 && strncmp(dec, greedy, strlen(dec)) == 0, "n %d, decoded [%.80s]", n,
          dec ? dec : "(null)");
    // streaming from BOS gives the same text
    int with_bos[201];
    with_bos[0] = 1;
    memcpy(with_bos + 1, ids, sizeof(int) * (size_t)n);
    char *st = stream_text(tok, with_bos, n + 1);
    CHECK("tok512 streaming == decode", dec && strcmp(st, dec) == 0, "[%.60s] vs [%.60s]", st, dec ? dec : "");
    // re-encoding the decoded story gives the same ids
    int *re = NULL;
    int nre = tok_encode(tok, dec ? dec : "", &re, &e);
    CHECK("tok512 encode(decode(ids)) == ids", same_ids(re, nre, ids, n), "%d ids vs %d", nre, n);
    free(re);
    free(st);
    free(dec);
    // this model removes extra whitespace: a continuation's leading space must survive
    CHECK("tok512 prompt ++ continuation == whole text",
          split_encode_matches(tok, "Lily saw a", " big red ball.") &&
              split_encode_matches(tok, "### Response:\n", "Lily saw a ball.") &&
              split_encode_matches(tok, "Once upon a time", ", there was a girl."),
          "split encoding differs");

    // an alpaca example with the real tokenizer: mask boundary exact
    const char *jl = write_tmp("tok512.jsonl", "{\"instruction\": \"Tell a story.\", \"output\": \"Lily saw a big red ball.\"}\n");
    DataOptions o;
    data_options_default(&o);
    Dataset *d = dataset_load(jl, tok, &o, &e);
    CHECK("tok512 alpaca load", d && d->n == 1, "%s", e.msg);
    if (d) {
        char *resp = decode_masked(tok, &d->ex[0], 1);
        CHECK("tok512 alpaca response tokens", resp && strcmp(resp, "Lily saw a big red ball.") == 0 &&
                                                   d->ex[0].ids[d->ex[0].n - 1] == 2 && d->ex[0].mask[d->ex[0].n - 1] == 1,
              "[%s]", resp ? resp : "");
        free(resp);
    }
    dataset_free(d);
    free(idtxt);
    free(greedy);
    tok_free(tok);
}

// ---- a tokenizer trained here -----------------------------------------------------------------
static Tokenizer *train_tiny(void) {
    char corpus[1100], prefix[1100], model[1200], cmd[4000];
    tmp_path(corpus, sizeof corpus, "corpus.txt");
    tmp_path(prefix, sizeof prefix, "tiny");
    snprintf(model, sizeof model, "%s.model", prefix);
    FILE *f = fopen(corpus, "w");
    if (!f) return NULL;
    static const char *words[] = {"the", "cat", "dog", "sat", "on", "mat", "Paris", "capital", "of", "France",
                                  "is", "what", "answer", "question", "Below", "instruction", "task", "response",
                                  "input", "write", "a", "story", "about", "red", "ball", "Lily", "big", "hello",
                                  "world", "translate", "to", "English", "Instruction", "Response", "Input", "user",
                                  "assistant", "system", "you", "are", "helpful"};
    int nw = (int)(sizeof words / sizeof *words);
    Rng r;
    rng_seed(&r, 7);
    for (int line = 0; line < 3000; line++) {
        int len = 3 + (int)rng_below(&r, 12);
        for (int i = 0; i < len; i++) fprintf(f, "%s%s", i ? " " : "", words[rng_below(&r, (uint32_t)nw)]);
        static const char *punct[] = {".", "?", "!", ",", ":", "#", "<|>", "()", "0123456789"};
        fprintf(f, "%s\n", punct[rng_below(&r, 9)]);
    }
    fclose(f);
    snprintf(cmd, sizeof cmd,
             "spm_train --input='%s' --model_prefix='%s' --vocab_size=400 --model_type=bpe --byte_fallback=true "
             "--normalization_rule_name=identity --remove_extra_whitespaces=false --character_coverage=1.0 "
             "--unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 --hard_vocab_limit=false > '%s.log' 2>&1",
             corpus, prefix, prefix);
    if (system(cmd) != 0) {
        printf("  spm_train failed: see %s.log\n", prefix);
        return NULL;
    }
    Err e = {{0}};
    Tokenizer *tok = tok_load(model, &e);
    if (!tok) printf("  %s\n", e.msg);
    return tok;
}

static Dataset *load_str(const Tokenizer *tok, const char *name, const char *content, const DataOptions *o, Err *e) {
    const char *p = write_tmp(name, content);
    return dataset_load(p, tok, o, e);
}

static int mask_sum(const Example *ex) {
    int s = 0;
    for (int i = 0; i < ex->n; i++) s += ex->mask[i];
    return s;
}

static void test_templates(const Tokenizer *tok) {
    char *p1 = template_format_prompt(TPL_ALPACA, "Name the capital.", "France");
    char *p2 = template_format_prompt(TPL_ALPACA, "Name the capital of France.", NULL);
    char *p3 = template_format_prompt(TPL_ALPACA, "Name the capital of France.", "");
    CHECK("alpaca prompt with input",
          strcmp(p1, "Below is an instruction that describes a task, paired with an input that provides further "
                     "context. Write a response that appropriately completes the request.\n\n### Instruction:\nName "
                     "the capital.\n\n### Input:\nFrance\n\n### Response:\n") == 0,
          "[%s]", p1);
    CHECK("alpaca prompt without input",
          strcmp(p2, "Below is an instruction that describes a task. Write a response that appropriately completes "
                     "the request.\n\n### Instruction:\nName the capital of France.\n\n### Response:\n") == 0 &&
              strcmp(p2, p3) == 0,
          "[%s]", p2);
    char *p4 = template_format_prompt(TPL_CHATML, "Hi", NULL);
    CHECK("chatml prompt", strcmp(p4, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n") == 0, "[%s]", p4);
    char *p5 = template_format_prompt(TPL_RAW, "Q: 2+2=", NULL);
    CHECK("raw prompt", strcmp(p5, "Q: 2+2=") == 0, "[%s]", p5);
    free(p1); free(p2); free(p3); free(p4); free(p5);
    Err e = {{0}};
    CHECK("template_parse", template_parse("chatml", &e) == TPL_CHATML && template_parse("auto", &e) == TPL_AUTO &&
                                (int)template_parse("vicuna", &e) == -1 && strstr(e.msg, "vicuna"),
          "%s", e.msg);
    CHECK("template_name", strcmp(template_name(TPL_ALPACA), "alpaca") == 0 && strcmp(template_name(TPL_RAW), "raw") == 0,
          "names");
    CHECK("data_format_parse", data_format_parse("messages", &e) == FMT_MESSAGES && (int)data_format_parse("csv", &e) == -1,
          "%s", e.msg);
    // template_encode of [user] = tok_encode(template_format_prompt) for every template
    ChatMsg um = {"user", "what is the capital of France?"};
    int all_same = 1;
    Template tpls[] = {TPL_ALPACA, TPL_CHATML, TPL_RAW};
    for (int i = 0; i < 3; i++) {
        int *a = NULL, *b = NULL;
        uint8_t *m = NULL;
        char *pr = template_format_prompt(tpls[i], um.content, NULL);
        int na = template_encode(tpls[i], tok, &um, 1, NULL, &a, &m, &e), nb = tok_encode(tok, pr, &b, &e);
        if (!same_ids(a, na, b, nb) || (na > 0 && m[0] != 0)) all_same = 0;
        free(a); free(b); free(m); free(pr);
    }
    CHECK("template_encode([user]) == encode(format_prompt)", all_same, "differs");
    ChatMsg bad = {"bot", "x"};
    int *a = NULL;
    uint8_t *m = NULL;
    CHECK("template_encode unknown role", template_encode(TPL_CHATML, tok, &bad, 1, NULL, &a, &m, &e) < 0 &&
                                              strstr(e.msg, "unknown role \"bot\""),
          "%s", e.msg);
}

static void test_formats(const Tokenizer *tok) {
    Err e = {{0}};
    DataOptions o;
    data_options_default(&o);
    CHECK("data_options_default", o.format == FMT_AUTO && o.tpl == TPL_AUTO && o.seq_len == 512 && !o.train_on_inputs &&
                                      o.add_bos && o.add_eos && !o.skip_bad_lines,
          "defaults");
    const int bos = tok_bos(tok), eos = tok_eos(tok);
    // alpaca, with and without input; blank lines are ignored but counted
    Dataset *d = load_str(tok, "alpaca.jsonl",
                          "{\"instruction\": \"What is the capital of France?\", \"input\": \"\", \"output\": \"Paris is the capital.\"}\n"
                          "\n"
                          "{\"instruction\": \"Translate to English\", \"input\": \"the cat sat\", \"output\": \"The cat sat on the mat.\", \"extra\": 3}\r\n",
                          &o, &e);
    CHECK("alpaca load", d && d->n == 2 && d->ex[0].line == 1 && d->ex[1].line == 3, "%s", e.msg);
    if (d && d->n == 2) {
        const char *instr[2] = {"What is the capital of France?", "Translate to English"};
        const char *inp[2] = {NULL, "the cat sat"};
        const char *outp[2] = {"Paris is the capital.", "The cat sat on the mat."};
        for (int i = 0; i < 2; i++) {
            const Example *ex = &d->ex[i];
            char *prompt = template_format_prompt(TPL_ALPACA, instr[i], inp[i]);
            int *pi = NULL, *ri = NULL;
            int np = tok_encode(tok, prompt, &pi, &e), nr = tok_encode_cont(tok, outp[i], &ri, &e);
            // what `lora generate --template` feeds (BOS + prompt) followed by the response and EOS
            int ok = ex->n == 1 + np + nr + 1 && ex->ids[0] == bos && ex->ids[ex->n - 1] == eos &&
                     memcmp(ex->ids + 1, pi, sizeof(int) * (size_t)np) == 0 &&
                     memcmp(ex->ids + 1 + np, ri, sizeof(int) * (size_t)nr) == 0;
            for (int t = 0; t < ex->n; t++) ok = ok && ex->mask[t] == (t >= 1 + np);
            char name[64];
            snprintf(name, sizeof name, "alpaca %d ids = BOS prompt response EOS, mask", i);
            CHECK(name, ok, "n %d, prompt %d, response %d", ex->n, np, nr);
            char *resp = decode_masked(tok, ex, 1), *pr = decode_masked(tok, ex, 0), *all = decode_all(tok, ex->ids, ex->n);
            char want_all[1024];
            snprintf(want_all, sizeof want_all, "%s%s", prompt, outp[i]);
            snprintf(name, sizeof name, "alpaca %d masked tokens decode to the response", i);
            CHECK(name, resp && strcmp(resp, outp[i]) == 0, "[%s]", resp ? resp : "");
            snprintf(name, sizeof name, "alpaca %d unmasked decode to the prompt, all to prompt+response", i);
            CHECK(name, pr && all && strcmp(pr, prompt) == 0 && strcmp(all, want_all) == 0, "[%s]", all ? all : "");
            char *st = stream_text(tok, ex->ids, ex->n);
            snprintf(name, sizeof name, "alpaca %d streaming text", i);
            CHECK(name, strcmp(st, want_all) == 0, "[%s]", st);
            free(st); free(resp); free(pr); free(all); free(pi); free(ri); free(prompt);
        }
    }
    dataset_free(d);

    // completion (raw): the completion's leading space is its own
    d = load_str(tok, "completion.jsonl", "{\"prompt\": \"The capital of France is\", \"completion\": \" Paris.\"}\n", &o, &e);
    CHECK("completion load", d && d->n == 1, "%s", e.msg);
    if (d) {
        // decoding the response ids alone would drop their first space (Decode's dummy-prefix
        // rule); as a continuation of the prompt they give exactly " Paris."
        const Example *ex = &d->ex[0];
        int s0 = 0;
        while (s0 < ex->n && !ex->mask[s0]) s0++;
        char *resp = stream_text_after(tok, ex->ids[s0 - 1], ex->ids + s0, ex->n - s0), *all = decode_all(tok, ex->ids, ex->n);
        CHECK("completion masks", resp && all && strcmp(resp, " Paris.") == 0 && strcmp(all, "The capital of France is Paris.") == 0,
              "[%s] [%s]", resp ? resp : "", all ? all : "");
        free(resp); free(all);
    }
    dataset_free(d);

    // messages (chatml): loss on assistant turns (+ <|im_end|>) and the final EOS only
    const char *conv = "{\"messages\": [{\"role\": \"system\", \"content\": \"You are helpful.\"}, "
                       "{\"role\": \"user\", \"content\": \"hello\"}, {\"role\": \"assistant\", \"content\": \"hello world\"}, "
                       "{\"role\": \"user\", \"content\": \"what is the answer?\"}, {\"role\": \"assistant\", \"content\": \"The answer is 42.\"}]}\n";
    d = load_str(tok, "messages.jsonl", conv, &o, &e);
    CHECK("messages load", d && d->n == 1, "%s", e.msg);
    if (d) {
        const Example *ex = &d->ex[0];
        // split the trained tokens into runs
        char *runs[4] = {0};
        int nrun = 0;
        for (int t = 0; t < ex->n;) {
            if (!ex->mask[t]) { t++; continue; }
            int s = t;
            while (t < ex->n && ex->mask[t]) t++;
            if (nrun < 4) runs[nrun] = decode_all(tok, ex->ids + s, t - s);
            nrun++;
        }
        CHECK("messages trained runs are the assistant replies",
              nrun == 2 && runs[0] && runs[1] && strcmp(runs[0], "hello world<|im_end|>") == 0 &&
                  strcmp(runs[1], "The answer is 42.<|im_end|>") == 0 && ex->ids[ex->n - 1] == eos && ex->mask[ex->n - 1],
              "%d runs: [%s] [%s]", nrun, runs[0] ? runs[0] : "", runs[1] ? runs[1] : "");
        char *all = decode_all(tok, ex->ids, ex->n);
        const char *want = "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n"
                           "<|im_start|>assistant\nhello world<|im_end|>\n<|im_start|>user\nwhat is the answer?<|im_end|>\n"
                           "<|im_start|>assistant\nThe answer is 42.<|im_end|>";
        CHECK("messages chatml text", all && strcmp(all, want) == 0, "[%s]", all ? all : "");
        free(all);
        for (int i = 0; i < 4; i++) free(runs[i]);
    }
    dataset_free(d);

    // messages in the alpaca template equal the alpaca row
    o.tpl = TPL_ALPACA;
    d = load_str(tok, "msg_alpaca.jsonl",
                 "{\"messages\": [{\"role\": \"user\", \"content\": \"What is the capital of France?\"}, {\"role\": \"assistant\", \"content\": \"Paris.\"}]}\n"
                 "{\"instruction\": \"What is the capital of France?\", \"output\": \"Paris.\"}\n",
                 &o, &e);
    CHECK("messages as alpaca == alpaca row", d && d->n == 2 && same_ids(d->ex[0].ids, d->ex[0].n, d->ex[1].ids, d->ex[1].n) &&
                                                   memcmp(d->ex[0].mask, d->ex[1].mask, (size_t)d->ex[0].n) == 0,
          "%s", e.msg);
    dataset_free(d);
    o.tpl = TPL_AUTO;

    // text: loss on everything but BOS
    d = load_str(tok, "text.jsonl", "{\"text\": \"Once upon a time, the cat sat on the mat.\\nThe end.\"}\n", &o, &e);
    CHECK("text load", d && d->n == 1, "%s", e.msg);
    if (d) {
        const Example *ex = &d->ex[0];
        char *all = decode_all(tok, ex->ids, ex->n);
        CHECK("text masks", ex->mask[0] == 0 && ex->ids[0] == bos && mask_sum(ex) == ex->n - 1 && all &&
                                strcmp(all, "Once upon a time, the cat sat on the mat.\nThe end.") == 0,
              "[%s]", all ? all : "");
        free(all);
    }
    dataset_free(d);

    // train_on_inputs, no BOS / EOS
    o.train_on_inputs = 1;
    o.add_bos = 0;
    o.add_eos = 0;
    d = load_str(tok, "toi.jsonl", "{\"instruction\": \"hello\", \"output\": \"world\"}\n", &o, &e);
    if (d) {
        const Example *ex = &d->ex[0];
        char *all = decode_all(tok, ex->ids, ex->n);
        char *want = template_format_prompt(TPL_ALPACA, "hello", NULL);
        size_t wl = strlen(want);
        CHECK("train_on_inputs, no BOS/EOS", ex->ids[0] != bos && ex->ids[ex->n - 1] != eos && mask_sum(ex) == ex->n - 1 &&
                                                 all && strncmp(all, want, wl) == 0 && strcmp(all + wl, "world") == 0,
              "[%s]", all ? all : "");
        free(all);
        free(want);
    } else {
        CHECK("train_on_inputs, no BOS/EOS", 0, "%s", e.msg);
    }
    dataset_free(d);
    data_options_default(&o);

    // forced format
    o.format = FMT_TEXT;
    d = load_str(tok, "forced.jsonl", "{\"instruction\": \"hello\", \"output\": \"world\"}\n", &o, &e);
    CHECK("forced text format on alpaca row", !d && strstr(e.msg, "forced.jsonl:1: missing field \"text\""), "%s", e.msg);
    dataset_free(d);
    o.format = FMT_COMPLETION;
    d = load_str(tok, "forced2.jsonl", "{\"prompt\": \"hello\", \"completion\": \"world\", \"text\": \"ignored\"}\n", &o, &e);
    CHECK("forced completion format", d && d->n == 1, "%s", e.msg);
    dataset_free(d);
    data_options_default(&o);
}

static void test_truncation(const Tokenizer *tok) {
    Err e = {{0}};
    DataOptions o;
    data_options_default(&o);
    o.seq_len = 16;
    char big[8192];
    int k = snprintf(big, sizeof big, "{\"text\": \"");
    for (int i = 0; i < 200; i++) k += snprintf(big + k, sizeof big - (size_t)k, "the cat sat on the mat ");
    char body[3100];
    snprintf(body, sizeof body, "%.3000s", big + 10);
    snprintf(big + k, sizeof big - (size_t)k, "\"}\n{\"text\": \"hello\"}\n{\"instruction\": \"%s\", \"output\": \"x\"}\n",
             body);
    Dataset *d = load_str(tok, "trunc.jsonl", big, &o, &e);
    // line 3: the prompt alone is longer than seq_len -> no trainable token -> skipped (warning)
    CHECK("truncation", d && d->n == 2 && d->ex[0].n == 16 && d->ex[1].n < 16 && d->n_truncated == 2 && d->n_skipped == 0,
          "%s n %d trunc %d", e.msg, d ? d->n : -1, d ? d->n_truncated : -1);
    dataset_free(d);
    // a file whose only example has nothing to train on is an error
    d = load_str(tok, "trunc2.jsonl", big + k + 2 + strlen("{\"text\": \"hello\"}\n"), &o, &e);
    CHECK("only untrainable example -> error", !d && strstr(e.msg, "no usable example"), "%s", e.msg);
    dataset_free(d);
    // a huge line (1 MB)
    size_t n = 1 << 20;
    char *huge = malloc(n + 64);
    size_t j = (size_t)sprintf(huge, "{\"text\": \"");
    for (; j < n; j++) huge[j] = "abcdefgh "[j % 9];
    strcpy(huge + j, "\"}\n");
    char hp[1100];
    write_text(tmp_path(hp, sizeof hp, "huge.jsonl"), huge, strlen(huge));
    o.seq_len = 64;
    d = dataset_load(hp, tok, &o, &e);
    CHECK("huge line", d && d->n == 1 && d->ex[0].n == 64 && d->n_truncated == 1, "%s", e.msg);
    dataset_free(d);
    free(huge);
}

typedef struct {
    const char *name, *content, *want;
} BadCase;

static void test_errors(const Tokenizer *tok) {
    const char *good = "{\"text\": \"hello world\"}\n\n";
    const BadCase cases[] = {
        {"e_json.jsonl", "{\"text\": \"hello\",, }", "e_json.jsonl:3: invalid JSON: "},
        {"e_trunc.jsonl", "{\"text\": \"hello", "e_trunc.jsonl:3: invalid JSON: "},
        {"e_trail.jsonl", "{\"text\": \"a\"} x", "e_trail.jsonl:3: invalid JSON: "},
        {"e_output.jsonl", "{\"instruction\": \"x\"}", "e_output.jsonl:3: missing field \"output\""},
        {"e_instr.jsonl", "{\"output\": \"x\"}", "e_instr.jsonl:3: missing field \"instruction\""},
        {"e_compl.jsonl", "{\"prompt\": \"x\"}", "e_compl.jsonl:3: missing field \"completion\""},
        {"e_msgs.jsonl", "{\"messages\": \"hi\"}", "e_msgs.jsonl:3: field \"messages\" must be an array, not a string"},
        {"e_msgs0.jsonl", "{\"messages\": []}", "e_msgs0.jsonl:3: field \"messages\" is an empty array"},
        {"e_msgel.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, 5]}", "e_msgel.jsonl:3: messages[1] must be an object, not a number"},
        {"e_role.jsonl", "{\"messages\": [{\"role\": \"bot\", \"content\": \"a\"}]}", "e_role.jsonl:3: messages[0]: unknown role \"bot\" (expected system, user or assistant)"},
        {"e_norole.jsonl", "{\"messages\": [{\"content\": \"a\"}]}", "e_norole.jsonl:3: messages[0]: missing field \"role\""},
        {"e_content.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": null}]}", "e_content.jsonl:3: messages[0]: field \"content\" must be a string, not null"},
        {"e_type.jsonl", "{\"instruction\": 5, \"output\": \"x\"}", "e_type.jsonl:3: field \"instruction\" must be a string, not a number"},
        {"e_null.jsonl", "{\"instruction\": \"a\", \"output\": null}", "e_null.jsonl:3: field \"output\" must be a string, not null"},
        {"e_input.jsonl", "{\"instruction\": \"a\", \"input\": [1], \"output\": \"b\"}", "e_input.jsonl:3: field \"input\" must be a string, not an array"},
        {"e_text.jsonl", "{\"text\": {\"a\": 1}}", "e_text.jsonl:3: field \"text\" must be a string, not an object"},
        {"e_arr.jsonl", "[1, 2]", "e_arr.jsonl:3: expected a JSON object, got an array"},
        {"e_str.jsonl", "\"text\"", "e_str.jsonl:3: expected a JSON object, got a string"},
        {"e_num.jsonl", "42", "e_num.jsonl:3: expected a JSON object, got a number"},
        {"e_nul.jsonl", "null", "e_nul.jsonl:3: expected a JSON object, got null"},
        {"e_keys.jsonl", "{\"foo\": 1}", "e_keys.jsonl:3: no known fields (expected \"instruction\"/\"output\", \"prompt\"/\"completion\", \"messages\" or \"text\")"},
        {"e_utf8.jsonl", "{\"text\": \"caf\xE9\"}", "e_utf8.jsonl:3: invalid JSON: "},
        {"e_single.jsonl", "{'text': 'a'}", "e_single.jsonl:3: invalid JSON: "},
    };
    int nc = (int)(sizeof cases / sizeof *cases);
    DataOptions o;
    data_options_default(&o);
    int all_ok = 1;
    char first[2000] = "";
    for (int i = 0; i < nc; i++) {
        char content[512];
        snprintf(content, sizeof content, "%s%s\n%s", good, cases[i].content, good);
        const char *p = write_tmp(cases[i].name, content);
        Err e = {{0}};
        Dataset *d = dataset_load(p, tok, &o, &e);
        char want[1200];
        snprintf(want, sizeof want, "%s/%s", g_tmp, cases[i].want);
        size_t wl = strlen(want);
        int prefix = want[wl - 1] == ' ';  // "invalid JSON: " + json-c's text
        int ok = !d && (prefix ? strncmp(e.msg, want, wl) == 0 && strlen(e.msg) > wl : strcmp(e.msg, want) == 0);
        if (!ok && !first[0]) snprintf(first, sizeof first, "got [%s] want [%s]", e.msg, want);
        if (!ok) all_ok = 0;
        printf("  %s\n", e.msg);
        dataset_free(d);
    }
    CHECK("malformed lines: exact FILE:LINE: reason", all_ok, "%s", first);

    // skip mode: every malformed line skipped and counted, the good ones kept
    size_t cap = 16384, len = 0;
    char *all = malloc(cap);
    all[0] = 0;
    for (int i = 0; i < nc; i++) len += (size_t)snprintf(all + len, cap - len, "%s\n{\"text\": \"line %d\"}\n", cases[i].content, i);
    o.skip_bad_lines = 1;
    Err e = {{0}};
    Dataset *d = load_str(tok, "skip.jsonl", all, &o, &e);
    CHECK("skip mode counts skipped lines", d && d->n == nc && d->n_skipped == nc && d->ex[0].line == 2 && d->ex[nc - 1].line == 2 * nc,
          "%s n %d skipped %d", e.msg, d ? d->n : -1, d ? d->n_skipped : -1);
    dataset_free(d);
    free(all);

    // empty, whitespace-only, missing, directory, garbage: errors, never a crash
    o.skip_bad_lines = 0;
    d = load_str(tok, "empty.jsonl", "", &o, &e);
    CHECK("empty file", !d && strstr(e.msg, "empty.jsonl: no usable example"), "%s", e.msg);
    d = load_str(tok, "blank.jsonl", "\n  \n\t\n\r\n", &o, &e);
    CHECK("blank lines only", !d && strstr(e.msg, "no usable example"), "%s", e.msg);
    d = dataset_load("/nonexistent/x.jsonl", tok, &o, &e);
    CHECK("missing file", !d && strstr(e.msg, "/nonexistent/x.jsonl: cannot open"), "%s", e.msg);
    d = dataset_load(g_tmp, tok, &o, &e);
    CHECK("directory", !d && strstr(e.msg, g_tmp), "%s", e.msg);
    char garbage[4096];
    Rng r;
    rng_seed(&r, 99);
    for (size_t i = 0; i < sizeof garbage; i++) garbage[i] = (char)rng_below(&r, 256);
    char gp[1100];
    write_text(tmp_path(gp, sizeof gp, "garbage.jsonl"), garbage, sizeof garbage);
    d = dataset_load(gp, tok, &o, &e);
    CHECK("binary garbage (error mode)", !d && strstr(e.msg, "garbage.jsonl:1: "), "%s", e.msg);
    o.skip_bad_lines = 1;
    d = dataset_load(gp, tok, &o, &e);
    CHECK("binary garbage (skip mode)", !d && strstr(e.msg, "no usable example"), "%s", e.msg);
    // the garbage with one good line appended: kept
    char *g2 = malloc(sizeof garbage + 64);
    memcpy(g2, garbage, sizeof garbage);
    size_t g2n = sizeof garbage + (size_t)sprintf(g2 + sizeof garbage, "\n{\"text\": \"ok\"}\n");
    write_text(gp, g2, g2n);
    d = dataset_load(gp, tok, &o, &e);
    CHECK("garbage + good line (skip mode)", d && d->n == 1 && d->n_skipped > 0, "%s", e.msg);
    dataset_free(d);
    free(g2);
    // empty strings and an assistant-less conversation
    o.skip_bad_lines = 0;
    d = load_str(tok, "emptystr.jsonl",
                 "{\"instruction\": \"\", \"input\": null, \"output\": \"\"}\n{\"prompt\": \"\", \"completion\": \"\"}\n"
                 "{\"messages\": [{\"role\": \"user\", \"content\": \"\"}]}\n{\"text\": \"\"}\n",
                 &o, &e);
    // alpaca, completion and text keep their EOS target; the user-only conversation has nothing
    // to train on and is skipped with a warning
    CHECK("empty strings", d && d->n == 3 && d->ex[0].line == 1 && d->ex[1].line == 2 && d->ex[2].line == 4, "%s n %d",
          e.msg, d ? d->n : -1);
    dataset_free(d);
    // tokenizer loading errors
    Tokenizer *t = tok_load("/nonexistent/tok.model", &e);
    CHECK("tok_load missing file", !t && strstr(e.msg, "/nonexistent/tok.model"), "%s", e.msg);
    t = tok_load(gp, &e);
    CHECK("tok_load garbage", !t && strstr(e.msg, "not a valid SentencePiece model"), "%s", e.msg);
    t = tok_load(write_tmp("tokenizer.json", "{\"model\": {}}"), &e);
    CHECK("tok_load tokenizer.json", !t && strstr(e.msg, "model.vocab is missing"), "%s", e.msg);
    t = tok_load(write_tmp("empty.model", ""), &e);
    CHECK("tok_load empty", !t && strstr(e.msg, "empty"), "%s", e.msg);
    int *ids = NULL;
    int bad[2] = {5, 100000};
    char *s = tok_decode(tok, bad, 2, &e);
    CHECK("tok_decode out-of-range id", !s && strstr(e.msg, "100000"), "%s", e.msg);
    char buf[16];
    CHECK("tok_piece_text out of range", strcmp(tok_piece_text(tok, -1, 100000, buf, sizeof buf), "") == 0 &&
                                            strcmp(tok_piece_text(tok, -1, -5, buf, sizeof buf), "") == 0,
          "not empty");
    free(ids);
}

// ---- batching -----------------------------------------------------------------------------------
static int which_example(const Dataset *d, const Batch *b, int r) {
    for (int i = 0; i < d->n; i++) {
        const Example *ex = &d->ex[i];
        if (ex->n <= b->T && memcmp(ex->ids, b->ids + (size_t)r * b->T, sizeof(int) * (size_t)ex->n) == 0) {
            int pad_ok = 1;
            for (int t = ex->n; t < b->T; t++) pad_ok = pad_ok && b->ids[(size_t)r * b->T + t] == -7;
            if (pad_ok) return i;
        }
    }
    return -1;
}

static void test_batching(const Tokenizer *tok) {
    Err e = {{0}};
    DataOptions o;
    data_options_default(&o);
    char content[4096];
    size_t k = 0;
    static const char *w[] = {"cat", "dog", "mat", "ball", "world", "story", "task", "answer", "Paris", "France"};
    for (int i = 0; i < 10; i++) {
        k += (size_t)snprintf(content + k, sizeof content - k, "{\"instruction\": \"write %d about the %s\", \"output\": \"", i, w[i]);
        for (int j = 0; j <= i; j++) k += (size_t)snprintf(content + k, sizeof content - k, "%s the %s ", j ? "and" : "", w[j]);
        k += (size_t)snprintf(content + k, sizeof content - k, "\"}\n");
    }
    Dataset *d = load_str(tok, "batch.jsonl", content, &o, &e);
    CHECK("batch dataset", d && d->n == 10, "%s", e.msg);
    if (!d) return;

    // padding and targets
    Batch b = {0};
    int rc = batch_from_range(d, 3, 4, -7, &b, &e);
    int maxn = 0, ntok = 0, ntg = 0, ok = rc == 0 && b.B == 4;
    for (int i = 3; i < 7; i++) {
        if (d->ex[i].n > maxn) maxn = d->ex[i].n;
        ntok += d->ex[i].n;
    }
    ok = ok && b.T == maxn && b.n_tokens == ntok;
    for (int r = 0; ok && r < 4; r++) {
        const Example *ex = &d->ex[3 + r];
        for (int t = 0; t < b.T; t++) {
            int id = b.ids[r * b.T + t], tg = b.targets[r * b.T + t];
            int want_id = t < ex->n ? ex->ids[t] : -7;
            int want_tg = t + 1 < ex->n && ex->mask[t + 1] ? ex->ids[t + 1] : -1;
            if (id != want_id || tg != want_tg) ok = 0;
            if (tg >= 0) ntg++;
        }
        if (b.targets[r * b.T + ex->n - 1] != -1 || b.targets[r * b.T + b.T - 1] != -1) ok = 0;
        // the last target of a row is EOS, predicted from the last response token
        if (b.targets[r * b.T + ex->n - 2] != tok_eos(tok)) ok = 0;
    }
    CHECK("batch padding and targets", ok && b.n_targets == ntg && ntg > 0, "rc %d B %d T %d (max %d) n_targets %d/%d", rc,
          b.B, b.T, maxn, b.n_targets, ntg);
    CHECK("batch_from_range out of range", batch_from_range(d, 8, 3, 0, &b, &e) < 0 && strstr(e.msg, "outside"), "%s", e.msg);

    // loader: determinism, epochs, coverage, seek
    DataLoader *l1 = loader_new(d, 3, 1, 1234, -7, &e), *l2 = loader_new(d, 3, 1, 1234, -7, &e);
    int seq[3][10], sizes_ok = 1, same = 1, cover = 1, ident = 1;
    Batch b1 = {0}, b2 = {0};
    int saved_epoch = -1, saved_pos = -1, saved_first = -1;
    for (int ep = 0; ep < 3; ep++) {
        int seen[10] = {0}, pos = 0;
        for (int bi = 0; bi < 4; bi++) {
            if (ep == 1 && bi == 2) { saved_epoch = l1->epoch; saved_pos = l1->pos; }
            loader_next(l1, &b1, &e);
            loader_next(l2, &b2, &e);
            if (b1.B != (bi < 3 ? 3 : 1)) sizes_ok = 0;
            if (b1.B != b2.B || b1.T != b2.T || memcmp(b1.ids, b2.ids, sizeof(int) * (size_t)(b1.B * b1.T)) != 0) same = 0;
            for (int r = 0; r < b1.B; r++) {
                int x = which_example(d, &b1, r);
                if (x < 0) { ident = 0; continue; }
                seen[x]++;
                if (pos < 10) seq[ep][pos++] = x;
                if (ep == 1 && bi == 2 && r == 0) saved_first = x;
            }
        }
        for (int i = 0; i < 10; i++) cover = cover && seen[i] == 1;
        if (l1->epoch != ep + 1 || l1->pos != 0) sizes_ok = 0;
    }
    CHECK("loader batches never mix epochs (3,3,3,1)", sizes_ok, "sizes/epoch counter wrong");
    CHECK("loader rows are dataset examples", ident, "a row matched no example");
    CHECK("loader visits every example once per epoch", cover, "coverage");
    CHECK("loader same seed same order", same, "differs");
    CHECK("loader epochs reshuffle", memcmp(seq[0], seq[1], sizeof seq[0]) != 0 && memcmp(seq[1], seq[2], sizeof seq[0]) != 0,
          "same order in two epochs");
    printf("  epoch orders: ");
    for (int ep = 0; ep < 3; ep++) {
        for (int i = 0; i < 10; i++) printf("%d", seq[ep][i]);
        printf(" ");
    }
    printf("\n");
    // seek back into epoch 1 and get the same batch
    loader_seek(l2, saved_epoch, saved_pos);
    loader_next(l2, &b2, &e);
    CHECK("loader seek resumes", saved_epoch == 1 && saved_pos == 6 && which_example(d, &b2, 0) == saved_first, "epoch %d pos %d",
          saved_epoch, saved_pos);
    // another seed: another order
    DataLoader *l3 = loader_new(d, 10, 1, 999, -7, &e);
    loader_next(l3, &b2, &e);
    int other[10];
    for (int r = 0; r < 10; r++) other[r] = which_example(d, &b2, r);
    CHECK("loader other seed other order", memcmp(other, seq[0], sizeof other) != 0, "same order");
    // no shuffle: file order
    DataLoader *l4 = loader_new(d, 4, 0, 1, -7, &e);
    loader_next(l4, &b2, &e);
    CHECK("loader without shuffle", which_example(d, &b2, 0) == 0 && which_example(d, &b2, 3) == 3, "not file order");
    CHECK("loader_new bad batch size", loader_new(d, 0, 1, 1, 0, &e) == NULL && strstr(e.msg, "batch size"), "%s", e.msg);
    loader_free(l1); loader_free(l2); loader_free(l3); loader_free(l4);
    batch_free(&b); batch_free(&b1); batch_free(&b2);
    dataset_free(d);
}

int main(int argc, char **argv) {
    (void)argc;
    // scratch dir: <build dir>/tmp/test_data, the build dir being the parent of tests/
    char exe[1024];
    snprintf(exe, sizeof exe, "%s", argv[0]);
    char *build = dirname(dirname(exe));
    snprintf(g_tmp, sizeof g_tmp, "%s/tmp/test_data", build);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", g_tmp, g_tmp);
    if (system(cmd) != 0) return 2;

    const char *models = tu_models_dir();
    if (models) {
        test_vectors(models);
        test_tok512(models);
    } else {
        SKIP("spm llama2 vectors", "no models dir");
        SKIP("tok512", "no models dir");
    }
    Tokenizer *tok = train_tiny();
    CHECK("spm_train tiny tokenizer", tok != NULL, "could not train/load (is the sentencepiece package installed?)");
    if (tok) {
        test_templates(tok);
        test_formats(tok);
        test_truncation(tok);
        test_errors(tok);
        test_batching(tok);
        tok_free(tok);
    }
    return tu_exit();
}
