// `lora chat`: an interactive conversation on stdin over one loaded base, switching between
// adapters per reply (/adapter NAME), loading and unloading them at run time.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "train/train.h"

#define MAX_TURNS 4096

static const char CHAT_HELP[] =
    "commands:\n"
    "  /adapter NAME       answer with adapter NAME from now on (\"base\": no adapter)\n"
    "  /adapters           list the loaded adapters\n"
    "  /load NAME PATH     load an adapter (PATH[:scale])\n"
    "  /unload NAME        unload an adapter\n"
    "  /reset              forget the conversation\n"
    "  /quit               leave\n";

typedef struct {
    Model *m;
    Tokenizer *tok;
    AdapterRegistry *reg;
    Template tpl;
    GenConfig gen;
    const char *system;
    char current[ADAPTER_NAME_MAX];  // "" = base
    ChatMsg turns[MAX_TURNS];        // owned copies of the contents
    int n_turns;
    int n_replies;
} Chat;

static void chat_reset(Chat *c) {
    for (int i = 0; i < c->n_turns; i++) free((char *)c->turns[i].content);
    c->n_turns = 0;
}

static void list_adapters(Chat *c) {
    AdapterInfo info[64];
    int n = registry_list(c->reg, info, 64);
    printf("%s base (no adapter)\n", c->current[0] ? " " : "*");
    for (int i = 0; i < n && i < 64; i++) {
        char tg[160];
        printf("%s %s  %s  rank %d, alpha %g, scale %g, %s\n", strcmp(c->current, info[i].name) ? " " : "*",
               info[i].name, info[i].path, info[i].rank, info[i].alpha, info[i].scale,
               lora_targets_str(info[i].targets, tg, sizeof tg));
    }
}

static int emit_stdout(void *user, const char *text, size_t len) {
    (void)user;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

// A user message: the reply streamed to stdout, both kept in the conversation.
static void chat_reply(Chat *c, const char *line) {
    Err e = {{0}};
    if (c->n_turns + 2 > MAX_TURNS) {
        printf("(the conversation is too long: /reset)\n");
        return;
    }
    char *content = strdup(line);
    if (!content) return;
    c->turns[c->n_turns++] = (ChatMsg){"user", content};
    ChatMsg msgs[MAX_TURNS + 1];
    int n = 0;
    if (c->system && *c->system) msgs[n++] = (ChatMsg){"system", c->system};
    memcpy(msgs + n, c->turns, sizeof(ChatMsg) * (size_t)c->n_turns);
    n += c->n_turns;
    int *ids = NULL;
    const LoraAdapter *lora = NULL;
    AdapterEntry *ref = NULL;
    GenResult res = {0};
    GenConfig g = c->gen;
    g.sampler.seed = c->gen.sampler.seed + (uint64_t)c->n_replies++;
    int np = prompt_ids_chat(c->tok, c->tpl, msgs, n, 1, &ids, &e);
    int rc = np < 0 || registry_acquire(c->reg, c->current, &lora, &ref, &e) ||
             generate(c->m, lora, c->tok, ids, np, &g, emit_stdout, NULL, &res, &e);
    registry_release(c->reg, ref);
    free(ids);
    printf("\n");
    if (rc) {
        printf("(error: %s)\n", e.msg);
        free(content);
        c->n_turns--;  // forget the message that could not be answered
    } else {
        c->turns[c->n_turns++] = (ChatMsg){"assistant", res.text};
        res.text = NULL;  // kept in the conversation
    }
    gen_result_free(&res);
    fflush(stdout);
}

// A /command. Returns 1 to quit.
static int chat_command(Chat *c, char *line) {
    Err e = {{0}};
    char *save = NULL;
    char *cmd = strtok_r(line, " \t", &save);
    char *a1 = strtok_r(NULL, " \t", &save), *a2 = strtok_r(NULL, " \t", &save);
    if (!strcmp(cmd, "/quit") || !strcmp(cmd, "/exit")) return 1;
    if (!strcmp(cmd, "/help")) {
        fputs(CHAT_HELP, stdout);
    } else if (!strcmp(cmd, "/adapters")) {
        list_adapters(c);
    } else if (!strcmp(cmd, "/reset")) {
        chat_reset(c);
        printf("(conversation cleared)\n");
    } else if (!strcmp(cmd, "/adapter")) {
        const LoraAdapter *lora;
        AdapterEntry *ref;
        if (!a1) printf("(using %s)\n", c->current[0] ? c->current : "base");
        else if (!strcmp(a1, "base")) {
            c->current[0] = 0;
            printf("(using the base model)\n");
        } else if (registry_acquire(c->reg, a1, &lora, &ref, &e)) {
            printf("(error: %s)\n", e.msg);
        } else {
            registry_release(c->reg, ref);
            snprintf(c->current, sizeof c->current, "%s", a1);
            printf("(using adapter %s)\n", a1);
        }
    } else if (!strcmp(cmd, "/load")) {
        char name[ADAPTER_NAME_MAX], path[1024], spec[1200];
        float scale;
        if (!a1 || !a2) {
            printf("(usage: /load NAME PATH[:scale])\n");
        } else if (snprintf(spec, sizeof spec, "%s=%s", a1, a2) >= (int)sizeof spec ||
                   adapter_spec_parse(spec, name, sizeof name, path, sizeof path, &scale, &e) ||
                   registry_load(c->reg, name, path, scale, &e)) {
            printf("(error: %s)\n", e.msg[0] ? e.msg : "path too long");
        } else {
            printf("(loaded %s from %s; /adapter %s to use it)\n", name, path, name);
        }
    } else if (!strcmp(cmd, "/unload")) {
        if (!a1) printf("(usage: /unload NAME)\n");
        else if (registry_unload(c->reg, a1, &e)) printf("(error: %s)\n", e.msg);
        else {
            if (!strcmp(c->current, a1)) c->current[0] = 0;
            printf("(unloaded %s)\n", a1);
        }
    } else {
        printf("(unknown command %s; /help lists them)\n", cmd);
    }
    return 0;
}

int cmd_chat(int argc, char **argv) {
    CliFlag f[] = {{"model", 0, 0},       {"tokenizer", 0, 0},    {"adapter", 0, 0},   {"template", 0, 0},
                   {"system", 0, 0},      {"max-tokens", 0, 0},   {"temperature", 0, 0}, {"seed", 0, 0},
                   {"top-k", 0, 0},       {"top-p", 0, 0},        {"min-p", 0, 0},     {"repetition-penalty", 0, 0},
                   {"stop", 0, 0},        {"ignore-eos", 0, 1},   {"threads", 0, 0}, {"quant", 0, 0}};
    const int nf = sizeof f / sizeof f[0];
    Err e = {{0}};
    int threads;
    Chat c;
    memset(&c, 0, sizeof c);
    if (cli_parse(argc, argv, f, nf, &e) || cli_int(f, nf, "threads", 0, &e, &threads) ||
        cli_gen_config(f, nf, argc, argv, 256, 0.7f, &c.gen, &e))
        return cli_fail(&e);
    const char *model_path = cli_get(f, nf, "model", NULL);
    if (!model_path) {
        err_set(&e, "chat needs --model");
        return cli_fail(&e);
    }
    int tpl = cli_template(f, nf, &e);  // --template, the model's own, or alpaca
    if (tpl < 0) return cli_fail(&e);
    c.tpl = (Template)tpl;
    gen_add_template_stops(&c.gen, c.tpl);
    QuantType quant;
    if (cli_quant(f, nf, argc, argv, &quant, &e)) return cli_fail(&e);
    c.system = cli_get(f, nf, "system", NULL);
    if (threads > 0) set_num_threads(threads);
    int rc = 1;
    if (!(c.m = model_load_quant(model_path, quant_name(quant), &e))) goto done;
    if (!(c.tok = load_tokenizer_for(model_path, cli_get(f, nf, "tokenizer", NULL), &e))) goto done;
    if (!(c.reg = registry_new(c.m, "base", &e))) goto done;
    int na = cli_load_adapters(c.reg, argc, argv, &e);
    if (na < 0) goto done;
    if (na > 0) {
        AdapterInfo first;
        registry_list(c.reg, &first, 1);
        snprintf(c.current, sizeof c.current, "%s", first.name);
    }
    int echo = !isatty(STDIN_FILENO);  // a script on stdin: show what was read
    printf("lora chat: %s, template %s, %d adapter%s loaded; /help for commands\n", model_path,
           template_name(c.tpl), na, na == 1 ? "" : "s");
    char *line = NULL;
    size_t cap = 0;
    for (;;) {
        printf("[%s]> ", c.current[0] ? c.current : "base");
        fflush(stdout);
        ssize_t n = getline(&line, &cap, stdin);
        if (n < 0) {
            printf("\n");
            break;
        }
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        if (echo) printf("%s\n", line);
        if (n == 0) continue;
        if (line[0] == '/') {
            if (chat_command(&c, line)) break;
        } else {
            chat_reply(&c, line);
        }
    }
    free(line);
    rc = 0;
done:
    if (rc) cli_fail(&e);
    chat_reset(&c);
    registry_free(c.reg);
    tok_free(c.tok);
    model_free(c.m);
    return rc;
}
