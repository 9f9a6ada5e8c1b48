// `lora serve`: an OpenAI-style HTTP server over one loaded base model and any number of
// adapters, chosen per request by "model" (libmicrohttpd, one thread per connection).
//
//   GET    /v1/models                 the base and the loaded adapters
//   POST   /v1/completions            {"model","prompt",max_tokens,temperature,top_p,top_k,
//                                       min_p,repetition_penalty,seed,stop,stream,template}
//   POST   /v1/chat/completions       {"model","messages":[{"role","content"}], ...same}
//   POST   /adapters                  {"name","path"[,"scale"]}: path inside --adapter-dir
//   DELETE /adapters/NAME
//
// Each request has its own tape, KV cache and sampler; the model is read-only and the
// adapter registry counts users, so an adapter unloaded during a request outlives it. Every
// bad request gets a JSON error {"error":{"message","type","code"}} with a 4xx status.
#include <errno.h>
#include <json-c/json.h>
#include <limits.h>
#include <microhttpd.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "train/train.h"

#define MAX_BODY (1 << 20)
#define MAX_MESSAGES 1024

typedef struct {
    Model *m;
    Tokenizer *tok;
    AdapterRegistry *reg;
    Template chat_tpl;         // template of /v1/chat/completions
    int default_max_tokens;
    char adapter_dir[PATH_MAX];  // realpath; "" = POST /adapters disabled
    long next_id;              // request ids (atomic)
} Server;

typedef struct {
    char *body;
    size_t len;
    int too_large;
} Req;

// ---- responses ----------------------------------------------------------------------------
static enum MHD_Result send_text(struct MHD_Connection *c, unsigned code, const char *type, const char *s) {
    size_t n = strlen(s);
    char *copy = malloc(n + 1);
    if (!copy) return MHD_NO;
    memcpy(copy, s, n + 1);
    struct MHD_Response *r = MHD_create_response_from_buffer(n, copy, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(copy);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    enum MHD_Result ok = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return ok;
}

static const char *json_str(json_object *o) {
    return json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
}

// Sends obj (taken) as JSON with status code.
static enum MHD_Result send_json(struct MHD_Connection *c, unsigned code, json_object *obj) {
    enum MHD_Result ok = send_text(c, code, "application/json", json_str(obj));
    json_object_put(obj);
    return ok;
}

static json_object *error_obj(unsigned code, const char *msg) {
    json_object *err = json_object_new_object(), *o = json_object_new_object();
    json_object_object_add(err, "message", json_object_new_string(msg));
    json_object_object_add(err, "type", json_object_new_string(code >= 500 ? "server_error" : "invalid_request_error"));
    json_object_object_add(err, "code", json_object_new_int((int)code));
    json_object_object_add(o, "error", err);
    return o;
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned code, const char *msg) {
    return send_json(c, code, error_obj(code, msg));
}

// ---- request parameters -------------------------------------------------------------------
typedef struct {
    const char *model;         // NULL = the base
    GenConfig gen;
    int stream;
    json_object *root;         // owns the strings above
} Params;

// Reads the sampling fields of a request body into p. 0, or -1 with Err.
static int read_params(const Server *s, json_object *root, Params *p, Err *e) {
    const char *W = "request";
    memset(p, 0, sizeof *p);
    p->root = root;
    gen_config_default(&p->gen);
    p->gen.max_tokens = s->default_max_tokens;
    int64_t mt = p->gen.max_tokens, seed = 42, top_k = 0;
    double temp = 1.0, top_p = 1.0, min_p = 0.0, rep = 1.0;
    if (json_opt_str(root, "model", W, &p->model, e) < 0 || json_opt_int(root, "max_tokens", W, &mt, e) < 0 ||
        json_opt_num(root, "temperature", W, &temp, e) < 0 || json_opt_num(root, "top_p", W, &top_p, e) < 0 ||
        json_opt_int(root, "top_k", W, &top_k, e) < 0 || json_opt_num(root, "min_p", W, &min_p, e) < 0 ||
        json_opt_num(root, "repetition_penalty", W, &rep, e) < 0 || json_opt_int(root, "seed", W, &seed, e) < 0 ||
        json_opt_bool(root, "stream", W, &p->stream, e) < 0 ||
        json_opt_bool(root, "ignore_eos", W, &p->gen.ignore_eos, e) < 0)
        return -1;
    int64_t n_choices = 1;
    if (json_opt_int(root, "n", W, &n_choices, e) < 0) return -1;
    if (n_choices != 1) return err_set(e, "request: \"n\" must be 1 (one choice per request)");
    if (mt < 0 || mt > INT_MAX) return err_set(e, "request: \"max_tokens\" must be >= 0");
    if (top_k < 0 || top_k > INT_MAX) return err_set(e, "request: \"top_k\" must be >= 0");
    p->gen.max_tokens = (int)mt;
    SamplerConfig *sc = &p->gen.sampler;
    sc->temperature = (float)temp;
    sc->top_p = (float)top_p;
    sc->top_k = (int)top_k;
    sc->min_p = (float)min_p;
    sc->repetition_penalty = (float)rep;
    sc->seed = (uint64_t)seed;
    if (sampler_config_check(sc, e)) return -1;
    json_object *stop;
    if (json_object_object_get_ex(root, "stop", &stop) && !json_object_is_type(stop, json_type_null)) {
        if (json_object_is_type(stop, json_type_string)) {
            p->gen.stop[p->gen.n_stop++] = json_object_get_string(stop);
        } else if (json_object_is_type(stop, json_type_array)) {
            size_t n = json_object_array_length(stop);
            if (n > GEN_MAX_STOP - 1) return err_set(e, "request: at most %d stop strings", GEN_MAX_STOP - 1);
            for (size_t i = 0; i < n; i++) {
                json_object *x = json_object_array_get_idx(stop, i);
                if (!json_object_is_type(x, json_type_string))
                    return err_set(e, "request: \"stop\" must be a string or an array of strings");
                p->gen.stop[p->gen.n_stop++] = json_object_get_string(x);
            }
        } else {
            return err_set(e, "request: \"stop\" must be a string or an array of strings");
        }
    }
    return 0;
}

// Prompt ids of a completion request ("prompt": a string, or an array of one string, laid
// out by its "template", raw by default); *tpl gets that template.
static int completion_prompt(const Server *s, json_object *root, int **ids, Template *tpl, Err *e) {
    json_object *p;
    if (!json_object_object_get_ex(root, "prompt", &p) || json_object_is_type(p, json_type_null))
        return err_set(e, "request: missing \"prompt\"");
    if (json_object_is_type(p, json_type_array) && json_object_array_length(p) == 1)
        p = json_object_array_get_idx(p, 0);
    if (!json_object_is_type(p, json_type_string))
        return err_set(e, "request: \"prompt\" must be a string");
    const char *tname = "raw";
    if (json_opt_str(root, "template", "request", &tname, e) < 0) return -1;
    int t = (int)template_parse(tname, e);
    if (t < 0) return -1;
    *tpl = (Template)t;
    return prompt_ids_text(s->tok, (Template)t, json_object_get_string(p), 1, ids, e);
}

// Prompt ids of a chat request ("messages": [{"role","content"}...]) in the server's template.
static int chat_prompt(const Server *s, json_object *root, int **ids, Err *e) {
    json_object *arr;
    if (!json_object_object_get_ex(root, "messages", &arr) || !json_object_is_type(arr, json_type_array))
        return err_set(e, "request: \"messages\" must be an array of {\"role\", \"content\"}");
    size_t n = json_object_array_length(arr);
    if (n == 0 || n > MAX_MESSAGES) return err_set(e, "request: \"messages\" must hold 1 to %d messages", MAX_MESSAGES);
    ChatMsg *msgs = xcalloc(n, sizeof *msgs, "messages", e);
    if (!msgs) return -1;
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        json_object *m = json_object_array_get_idx(arr, i);
        char where[64];
        snprintf(where, sizeof where, "request: messages[%zu]", i);
        if (!json_object_is_type(m, json_type_object)) rc = err_set(e, "%s must be an object", where);
        else if (json_opt_str(m, "role", where, &msgs[i].role, e) < 0 ||
                 json_opt_str(m, "content", where, &msgs[i].content, e) < 0)
            rc = -1;
        else if (!msgs[i].role || !msgs[i].content)
            rc = err_set(e, "%s needs \"role\" and \"content\" strings", where);
    }
    if (!rc) rc = prompt_ids_chat(s->tok, s->chat_tpl, msgs, (int)n, 1, ids, e);
    free(msgs);
    return rc;
}

// ---- completions --------------------------------------------------------------------------
typedef struct {
    Server *s;
    Generator *g;
    AdapterEntry *ref;
    int chat;
    char model[ADAPTER_NAME_MAX];
    char id[48];
    long created;
    char *buf;                 // pending bytes of the event stream
    size_t len, off, cap;
    int stage;                 // 0 generating, 1 [DONE] queued, 2 ended
} Stream;

static int buf_add(Stream *st, const char *s, size_t n) {
    if (st->len + n > st->cap) {
        size_t cap = (st->len + n) * 2 + 256;
        char *p = realloc(st->buf, cap);
        if (!p) return -1;
        st->buf = p;
        st->cap = cap;
    }
    memcpy(st->buf + st->len, s, n);
    st->len += n;
    return 0;
}

// The choice object of a response or stream chunk. text NULL: a chunk without text.
static json_object *choice(int chat, int stream, const char *text, size_t len, const char *finish) {
    json_object *ch = json_object_new_object();
    json_object_object_add(ch, "index", json_object_new_int(0));
    if (chat) {
        json_object *msg = json_object_new_object();
        if (!stream) json_object_object_add(msg, "role", json_object_new_string("assistant"));
        if (text) json_object_object_add(msg, "content", json_object_new_string_len(text, (int)len));
        json_object_object_add(ch, stream ? "delta" : "message", msg);
    } else {
        json_object_object_add(ch, "text", json_object_new_string_len(text ? text : "", text ? (int)len : 0));
    }
    json_object_object_add(ch, "finish_reason", finish ? json_object_new_string(finish) : NULL);
    return ch;
}

static json_object *envelope(int chat, int stream, const char *id, long created, const char *model,
                             json_object *ch) {
    json_object *o = json_object_new_object();
    json_object_object_add(o, "id", json_object_new_string(id));
    json_object_object_add(o, "object", json_object_new_string(chat ? (stream ? "chat.completion.chunk" : "chat.completion")
                                                                     : "text_completion"));
    json_object_object_add(o, "created", json_object_new_int64(created));
    json_object_object_add(o, "model", json_object_new_string(model));
    json_object *arr = json_object_new_array();
    json_object_array_add(arr, ch);
    json_object_object_add(o, "choices", arr);
    return o;
}

// Appends "data: {chunk}\n\n" (obj taken).
static int stream_event(Stream *st, json_object *obj) {
    const char *s = json_str(obj);
    int rc = buf_add(st, "data: ", 6) || buf_add(st, s, strlen(s)) || buf_add(st, "\n\n", 2);
    json_object_put(obj);
    return rc;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *out, size_t max) {
    (void)pos;
    Stream *st = cls;
    while (st->off == st->len) {
        st->off = st->len = 0;
        if (st->stage == 2) return MHD_CONTENT_READER_END_OF_STREAM;
        if (st->stage == 1) {
            if (buf_add(st, "data: [DONE]\n\n", 14)) return MHD_CONTENT_READER_END_WITH_ERROR;
            st->stage = 2;
            continue;
        }
        const char *text;
        size_t n;
        Err e = {{0}};
        int rc = gen_next(st->g, &text, &n, &e), bad = 0;
        if (rc < 0) {
            bad = stream_event(st, error_obj(500, e.msg));
            st->stage = 1;
        } else {
            if (n) bad = stream_event(st, envelope(st->chat, 1, st->id, st->created, st->model,
                                                   choice(st->chat, 1, text, n, NULL)));
            if (rc == 0) {
                bad = bad || stream_event(st, envelope(st->chat, 1, st->id, st->created, st->model,
                                                       choice(st->chat, 1, NULL, 0,
                                                              finish_reason_name(gen_finish(st->g)))));
                st->stage = 1;
            }
        }
        if (bad) return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t n = st->len - st->off < max ? st->len - st->off : max;
    memcpy(out, st->buf + st->off, n);
    st->off += n;
    return (ssize_t)n;
}

static void stream_free(void *cls) {
    Stream *st = cls;
    gen_free(st->g);
    registry_release(st->s->reg, st->ref);
    free(st->buf);
    free(st);
}

static enum MHD_Result handle_completion(Server *s, struct MHD_Connection *c, json_object *root, int chat) {
    Err e = {{0}};
    Params p;
    int *ids = NULL;
    if (read_params(s, root, &p, &e)) return send_error(c, 400, e.msg);
    const LoraAdapter *lora;
    AdapterEntry *ref;
    if (registry_acquire(s->reg, p.model, &lora, &ref, &e)) return send_error(c, 404, e.msg);
    const char *model = p.model && *p.model ? p.model : registry_base_name(s->reg);
    Template tpl = s->chat_tpl;
    int np = chat ? chat_prompt(s, root, &ids, &e) : completion_prompt(s, root, &ids, &tpl, &e);
    if (np >= 0) gen_add_template_stops(&p.gen, tpl);  // the reply ends at the template's end of turn
    char id[48];
    snprintf(id, sizeof id, "%s-%ld", chat ? "chatcmpl" : "cmpl", __atomic_add_fetch(&s->next_id, 1, __ATOMIC_RELAXED));
    long created = (long)time(NULL);
    enum MHD_Result ok;
    if (np < 0) {
        ok = send_error(c, 400, e.msg);
    } else if (p.stream) {
        Stream *st = xcalloc(1, sizeof *st, "stream", &e);
        Generator *g = st ? gen_new(s->m, lora, s->tok, ids, np, &p.gen, &e) : NULL;
        if (!g) {
            unsigned code = st ? 400 : 500;
            free(st);
            ok = send_error(c, code, e.msg);
        } else {
            *st = (Stream){.s = s, .g = g, .ref = ref, .chat = chat, .created = created};
            snprintf(st->model, sizeof st->model, "%s", model);
            snprintf(st->id, sizeof st->id, "%s", id);
            ref = NULL;  // the stream releases it
            if (chat) {  // the first chunk names the role
                json_object *ch = choice(1, 1, NULL, 0, NULL), *delta;
                json_object_object_get_ex(ch, "delta", &delta);
                json_object_object_add(delta, "role", json_object_new_string("assistant"));
                stream_event(st, envelope(1, 1, id, created, model, ch));
            }
            struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, st,
                                                                       stream_free);
            if (!r) {
                stream_free(st);
                ok = MHD_NO;
            } else {
                MHD_add_response_header(r, "Content-Type", "text/event-stream");
                MHD_add_response_header(r, "Cache-Control", "no-cache");
                ok = MHD_queue_response(c, 200, r);
                MHD_destroy_response(r);
            }
        }
    } else {
        GenResult res;
        if (generate(s->m, lora, s->tok, ids, np, &p.gen, NULL, NULL, &res, &e)) {
            ok = send_error(c, 400, e.msg);
        } else {
            json_object *o = envelope(chat, 0, id, created, model,
                                      choice(chat, 0, res.text, res.len, finish_reason_name(res.finish)));
            json_object *u = json_object_new_object();
            json_object_object_add(u, "prompt_tokens", json_object_new_int(np));
            json_object_object_add(u, "completion_tokens", json_object_new_int(res.n));
            json_object_object_add(u, "total_tokens", json_object_new_int(np + res.n));
            json_object_object_add(o, "usage", u);
            gen_result_free(&res);
            ok = send_json(c, 200, o);
        }
    }
    registry_release(s->reg, ref);
    free(ids);
    return ok;
}

// ---- models and adapters ------------------------------------------------------------------
static json_object *model_obj(const char *id, const char *kind) {
    json_object *o = json_object_new_object();
    json_object_object_add(o, "id", json_object_new_string(id));
    json_object_object_add(o, "object", json_object_new_string("model"));
    json_object_object_add(o, "created", json_object_new_int(0));
    json_object_object_add(o, "owned_by", json_object_new_string("lora.c"));
    json_object_object_add(o, "kind", json_object_new_string(kind));
    return o;
}

static json_object *adapter_obj(const AdapterInfo *a) {
    json_object *o = model_obj(a->name, "adapter");
    char tg[160];
    json_object_object_add(o, "path", json_object_new_string(a->path));
    json_object_object_add(o, "scale", json_new_float(a->scale));
    json_object_object_add(o, "rank", json_object_new_int(a->rank));
    json_object_object_add(o, "alpha", json_new_float(a->alpha));
    json_object_object_add(o, "targets", json_object_new_string(lora_targets_str(a->targets, tg, sizeof tg)));
    return o;
}

static enum MHD_Result handle_models(Server *s, struct MHD_Connection *c) {
    AdapterInfo info[256];
    int n = registry_list(s->reg, info, 256);
    json_object *o = json_object_new_object(), *arr = json_object_new_array();
    json_object_object_add(o, "object", json_object_new_string("list"));
    json_object_array_add(arr, model_obj(registry_base_name(s->reg), "base"));
    for (int i = 0; i < n && i < 256; i++) json_object_array_add(arr, adapter_obj(&info[i]));
    json_object_object_add(o, "data", arr);
    return send_json(c, 200, o);
}

static enum MHD_Result handle_load(Server *s, struct MHD_Connection *c, json_object *root) {
    Err e = {{0}};
    if (!s->adapter_dir[0])
        return send_error(c, 403, "loading adapters at run time is disabled: start the server with --adapter-dir DIR");
    const char *name = NULL, *path = NULL;
    double scale = 1.0;
    if (json_opt_str(root, "name", "request", &name, &e) < 0 || json_opt_str(root, "path", "request", &path, &e) < 0 ||
        json_opt_num(root, "scale", "request", &scale, &e) < 0)
        return send_error(c, 400, e.msg);
    if (!name || !path) return send_error(c, 400, "request: needs \"name\" and \"path\" strings");
    // a relative path is inside the adapter directory; the resolved path must stay inside it
    char full[PATH_MAX + 1100], real[PATH_MAX];
    if (path[0] == '/') snprintf(full, sizeof full, "%s", path);
    else snprintf(full, sizeof full, "%s/%s", s->adapter_dir, path);
    size_t dl = strlen(s->adapter_dir);
    if (!realpath(full, real)) {
        err_set(&e, "adapter path \"%s\": %s", path, strerror(errno));
        return send_error(c, errno == ENOENT ? 404 : 400, e.msg);
    }
    if (strncmp(real, s->adapter_dir, dl) != 0 || real[dl] != '/') {
        err_set(&e, "adapter path \"%s\" is outside the adapter directory %s", path, s->adapter_dir);
        return send_error(c, 403, e.msg);
    }
    if (registry_load(s->reg, name, real, (float)scale, &e)) {
        int exists = strstr(e.msg, "already loaded") || strstr(e.msg, "base model's name");
        return send_error(c, exists ? 409 : 400, e.msg);
    }
    AdapterInfo info[256];
    int n = registry_list(s->reg, info, 256);
    for (int i = 0; i < n && i < 256; i++)
        if (!strcmp(info[i].name, name)) return send_json(c, 201, adapter_obj(&info[i]));
    return send_error(c, 409, "the adapter was unloaded meanwhile");
}

static enum MHD_Result handle_unload(Server *s, struct MHD_Connection *c, const char *name) {
    Err e = {{0}};
    if (!s->adapter_dir[0])
        return send_error(c, 403, "unloading adapters at run time is disabled: start the server with --adapter-dir DIR");
    if (registry_unload(s->reg, name, &e)) return send_error(c, 404, e.msg);
    json_object *o = json_object_new_object();
    json_object_object_add(o, "id", json_object_new_string(name));
    json_object_object_add(o, "deleted", json_object_new_boolean(1));
    return send_json(c, 200, o);
}

// ---- routing ------------------------------------------------------------------------------
static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                               const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    (void)version;
    Server *s = cls;
    Req *q = *con_cls;
    if (!q) {  // headers only: set up the body buffer
        if (!(q = calloc(1, sizeof *q))) return MHD_NO;
        *con_cls = q;
        return MHD_YES;
    }
    if (*upload_size) {
        if (!q->too_large && q->len + *upload_size <= MAX_BODY) {
            char *p = realloc(q->body, q->len + *upload_size + 1);
            if (!p) return MHD_NO;
            q->body = p;
            memcpy(q->body + q->len, upload, *upload_size);
            q->len += *upload_size;
            q->body[q->len] = 0;
        } else {
            q->too_large = 1;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    int get = !strcmp(method, "GET"), post = !strcmp(method, "POST"), del = !strcmp(method, "DELETE");
    if (!strcmp(url, "/v1/models") || !strcmp(url, "/models")) {
        if (!get) return send_error(c, 405, "use GET for /v1/models");
        return handle_models(s, c);
    }
    if (!strcmp(url, "/health")) return send_text(c, 200, "application/json", "{\"status\":\"ok\"}");
    if (!strncmp(url, "/adapters/", 10)) {
        if (!del) return send_error(c, 405, "use DELETE /adapters/NAME");
        return handle_unload(s, c, url + 10);
    }
    int compl = !strcmp(url, "/v1/completions"), chat = !strcmp(url, "/v1/chat/completions");
    int load = !strcmp(url, "/adapters");
    if (!compl && !chat && !load) {
        char msg[300];
        snprintf(msg, sizeof msg, "no such endpoint: %s %.200s", method, url);
        return send_error(c, 404, msg);
    }
    if (!post) return send_error(c, 405, "use POST");
    if (q->too_large) return send_error(c, 413, "request body larger than 1 MiB");
    enum json_tokener_error jerr = json_tokener_success;
    json_object *root = q->body ? json_tokener_parse_verbose(q->body, &jerr) : NULL;
    if (!root || !json_object_is_type(root, json_type_object)) {
        char msg[200];
        snprintf(msg, sizeof msg, "request body must be a JSON object%s%s", root ? "" : ": ",
                 root ? "" : (q->body ? json_tokener_error_desc(jerr) : "empty body"));
        json_object_put(root);
        return send_error(c, 400, msg);
    }
    enum MHD_Result ok = load ? handle_load(s, c, root) : handle_completion(s, c, root, chat);
    json_object_put(root);
    return ok;
}

static void request_done(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode t) {
    (void)cls, (void)c, (void)t;
    Req *q = *con_cls;
    if (q) {
        free(q->body);
        free(q);
    }
    *con_cls = NULL;
}

// The server's name for the base: the model path's last component without .gguf/.bin.
static void base_name_of(const char *path, char *out, size_t n) {
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", path);
    size_t l = strlen(tmp);
    while (l > 1 && tmp[l - 1] == '/') tmp[--l] = 0;
    const char *b = strrchr(tmp, '/');
    b = b ? b + 1 : tmp;
    snprintf(out, n, "%.100s", b);
    char *dot = strrchr(out, '.');
    if (dot && (!strcmp(dot, ".gguf") || !strcmp(dot, ".bin"))) *dot = 0;
    for (char *p = out; *p; p++)
        if (!(*p == '.' || *p == '_' || *p == '-' || (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') ||
              (*p >= 'A' && *p <= 'Z')))
            *p = '_';
    if (!*out) snprintf(out, n, "base");
}

int cmd_serve(int argc, char **argv) {
    CliFlag f[] = {{"model", 0, 0},  {"tokenizer", 0, 0},   {"adapter", 0, 0},     {"host", 0, 0},
                   {"port", 0, 0},   {"adapter-dir", 0, 0}, {"template", 0, 0},    {"name", 0, 0},
                   {"max-tokens", 0, 0}, {"threads", 0, 0}, {"quant", 0, 0}};
    const int nf = sizeof f / sizeof f[0];
    Err e = {{0}};
    int port, threads;
    Server s;
    memset(&s, 0, sizeof s);
    if (cli_parse(argc, argv, f, nf, &e) || cli_int(f, nf, "port", 8080, &e, &port) ||
        cli_int(f, nf, "threads", 0, &e, &threads) || cli_int(f, nf, "max-tokens", 256, &e, &s.default_max_tokens))
        return cli_fail(&e);
    const char *model_path = cli_get(f, nf, "model", NULL), *host = cli_get(f, nf, "host", "127.0.0.1");
    if (!model_path) {
        err_set(&e, "serve needs --model");
        return cli_fail(&e);
    }
    if (port < 0 || port > 65535) {
        err_set(&e, "--port must be in [0, 65535] (0 = any free port)");
        return cli_fail(&e);
    }
    int tpl = cli_template(f, nf, &e);
    if (tpl < 0) return cli_fail(&e);
    s.chat_tpl = (Template)tpl;
    QuantType quant;
    if (cli_quant(f, nf, argc, argv, &quant, &e)) return cli_fail(&e);
    const char *adir = cli_get(f, nf, "adapter-dir", NULL);
    if (adir && !realpath(adir, s.adapter_dir)) {
        err_set(&e, "--adapter-dir %s: %s", adir, strerror(errno));
        return cli_fail(&e);
    }
    if (threads > 0) set_num_threads(threads);
    // the listening address
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    int gai = getaddrinfo(host, portstr, &hints, &ai);
    if (gai) {
        err_set(&e, "--host %s: %s", host, gai_strerror(gai));
        return cli_fail(&e);
    }
    // SIGINT/SIGTERM are taken by sigwait below: blocked before any thread starts (OpenMP's
    // while loading, the server's), so that every thread inherits the mask
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    int rc = 1;
    struct MHD_Daemon *d = NULL;
    char base[ADAPTER_NAME_MAX];
    base_name_of(model_path, base, sizeof base);
    const char *bn = cli_get(f, nf, "name", base);
    if (!(s.m = model_load_quant(model_path, quant_name(quant), &e))) goto done;
    if (!(s.tok = load_tokenizer_for(model_path, cli_get(f, nf, "tokenizer", NULL), &e))) goto done;
    if (!(s.reg = registry_new(s.m, bn, &e)) || cli_load_adapters(s.reg, argc, argv, &e) < 0) goto done;
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    d = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, handler, &s, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                         MHD_OPTION_NOTIFY_COMPLETED, request_done, NULL, MHD_OPTION_CONNECTION_LIMIT,
                         (unsigned)64, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600, MHD_OPTION_END);
    if (!d) {
        err_set(&e, "cannot listen on %s:%d (in use, or not an address of this machine?)", host, port);
        goto done;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    AdapterInfo info[256];
    int na = registry_list(s.reg, info, 256);
    printf("lora serve: listening on http://%s%s%s:%u (base \"%s\"; %d adapter%s%s", ai->ai_family == AF_INET6 ? "[" : "",
           host, ai->ai_family == AF_INET6 ? "]" : "", di ? di->port : (unsigned)port, bn, na, na == 1 ? "" : "s",
           na ? ":" : "");
    for (int i = 0; i < na && i < 256; i++) printf(" %s", info[i].name);
    printf(")%s\n", s.adapter_dir[0] ? "" : "; POST /adapters disabled (no --adapter-dir)");
    fflush(stdout);
    int sig = 0;
    sigwait(&sigs, &sig);
    printf("lora serve: stopping (signal %d)\n", sig);
    rc = 0;
done:
    if (rc) cli_fail(&e);
    if (d) MHD_stop_daemon(d);
    freeaddrinfo(ai);
    registry_free(s.reg);
    tok_free(s.tok);
    model_free(s.m);
    return rc;
}
