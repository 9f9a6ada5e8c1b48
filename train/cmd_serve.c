// `lora serve`: an OpenAI-style HTTP server over one loaded base model and any number of
// adapters, chosen per request by "model".
//
//   GET    /v1/models                 the base and the loaded adapters
//   GET    /health                    {"status","active","queued","connections",...}: the
//                                       scheduler's and the connections' state
//   POST   /v1/completions            {"model","prompt",max_tokens,temperature,top_p,top_k,
//                                       min_p,repetition_penalty,seed,stop,stream,
//                                       stream_options:{include_usage},template,ignore_eos}
//   POST   /v1/chat/completions       {"model","messages":[{"role","content"}], ...same}
//   POST   /adapters                  {"name","path"[,"scale"]}: path inside --adapter-dir
//   DELETE /adapters/NAME
//
// Threads: libmicrohttpd's one polling thread (epoll) handles every connection and never
// computes: it parses a request, tokenizes its prompt and puts it in a bounded queue, then
// suspends the connection. ONE scheduler thread owns the decoding Engine and does all the
// model compute (continuous batching): between steps it admits queued requests (up to
// --max-batch running; each gets its KV cache of prompt + max_tokens positions then), runs
// their prompts (engine_prefill, a chunk per step), then ONE engine_decode for every running
// request past its prompt, each with its own adapter, and picks each one's next token
// (gen_advance). Text for a client is buffered and its connection resumed; a streamed
// response's reader never blocks (it suspends the connection when nothing is buffered yet).
// A request whose client went away is dropped at the next step. A loader thread loads
// adapters (POST /adapters) so that disk reads never stall the polling thread; the registry
// counts users, so an adapter unloaded during a request outlives it. SIGINT/SIGTERM: stop
// accepting, answer every waiting client (an error event or a 503), exit.
//
// Every bad request gets a JSON error {"error":{"message","type","code"}} with a 4xx status;
// a full queue gets 503 with Retry-After.
#include <errno.h>
#include <json-c/json.h>
#include <limits.h>
#include <microhttpd.h>
#include <netdb.h>
#include <omp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "train/train.h"

#define MAX_BODY (1 << 20)
#define MAX_MESSAGES 1024
#define MAX_PENDING_LOADS 16
#define RETRY_AFTER "1"        // seconds, for a 503
#define PREFILL_CHUNK 512      // prompt tokens of one request per step (the engine's own chunk:
                               // a prompt is cut at the same places alone or with others)
#define PREFILL_BUDGET 512     // prompt tokens per scheduler step, all requests together

typedef struct Job Job;

typedef struct {
    Model *m;
    Tokenizer *tok;
    AdapterRegistry *reg;
    Engine *en;
    Template chat_tpl;         // template of /v1/chat/completions
    int default_max_tokens;
    int max_batch, ctx, queue_cap;
    int threads;               // the scheduler's OpenMP team (the Engine is sized for it)
    char adapter_dir[PATH_MAX];  // realpath; "" = POST /adapters disabled
    long next_id;              // request ids (atomic)
    volatile int stop_flag;    // engine_set_cancel: set when the server stops
    volatile int draining;     // the scheduler and loader are gone: no connection may wait now
                               // (MHD must not be stopped with a suspended connection)
    pthread_mutex_t mu;        // guards everything below
    pthread_cond_t cv;         // the scheduler's wake-up
    pthread_cond_t lcv;        // the loader's wake-up
    int stopping;
    Job *qhead, *qtail;        // requests waiting for a batch row
    int nqueued, nactive;
    Job *lhead, *ltail;        // adapters to load
    int nloads;
    Job *all;                  // every live job (answered or not)
    long served, cancelled, rejected, steps, rows, peak_batch;
} Server;

// ---- responses ----------------------------------------------------------------------------
// Sends s (copied) with status code; retry_after: a Retry-After header (or NULL).
static enum MHD_Result send_buf(struct MHD_Connection *c, unsigned code, const char *type, char *buf, size_t n,
                                const char *retry_after) {
    struct MHD_Response *r = MHD_create_response_from_buffer(n, buf, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(buf);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    if (retry_after) MHD_add_response_header(r, "Retry-After", retry_after);
    enum MHD_Result ok = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result send_text(struct MHD_Connection *c, unsigned code, const char *type, const char *s) {
    size_t n = strlen(s);
    char *copy = malloc(n + 1);
    if (!copy) return MHD_NO;
    memcpy(copy, s, n + 1);
    return send_buf(c, code, type, copy, n, code == 503 ? RETRY_AFTER : NULL);
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
    int include_usage;         // "stream_options": {"include_usage": true}: a last chunk with usage
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
    json_object *so;
    if (json_object_object_get_ex(root, "stream_options", &so) && !json_object_is_type(so, json_type_null)) {
        if (!json_object_is_type(so, json_type_object))
            return err_set(e, "request: \"stream_options\" must be an object");
        if (json_opt_bool(so, "include_usage", "request: stream_options", &p->include_usage, e) < 0) return -1;
    }
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

// ---- jobs: one request between the connection and the scheduler (or the loader) -----------
// A job is shared by its connection (until MHD reports the request ended), by its streamed
// response (until MHD frees it) and by the scheduler or loader (until the answer is
// complete); the last of them frees it. The connection handle is used only under the job's
// lock and only while the request is live (MHD calls request_done, which takes the lock,
// before it closes the socket or frees the connection).
enum { JOB_GEN, JOB_LOAD };

struct Job {
    Server *s;
    int kind;
    pthread_mutex_t mu;
    int refs;                  // (mu)
    struct MHD_Connection *c;  // (mu) NULL once the request ended (client gone or answered)
    int suspended;             // (mu) the connection waits for this job
    int done;                  // (mu) buf holds the whole answer (no more output)
    unsigned code;             // (mu) status of a non-streamed answer
    char *buf;                 // (mu) bytes for the client: the event stream, or the body
    size_t len, off, cap;
    Job *next;                 // queue link (s->mu)
    Job *all_prev, *all_next;  // s->all (s->mu)
    // the request (set before it is queued, read-only after)
    int chat, stream, include_usage;
    json_object *root;         // owns the stop strings of gen
    GenConfig gen;
    int *ids, np;
    const LoraAdapter *lora;
    AdapterEntry *ref;
    char model[ADAPTER_NAME_MAX];
    char id[48];
    long created;
    // the scheduler's
    Generator *g;
    int prefilling;            // its prompt is not all in yet
    int token;                 // the next token to feed
    // an adapter to load
    char name[ADAPTER_NAME_MAX];
    char path[PATH_MAX];
    float scale;
};

static Job *job_new(Server *s, int kind) {
    Job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->s = s;
    j->kind = kind;
    j->refs = 1;               // the connection's
    pthread_mutex_init(&j->mu, NULL);
    pthread_mutex_lock(&s->mu);
    j->all_next = s->all;
    if (s->all) s->all->all_prev = j;
    s->all = j;
    pthread_mutex_unlock(&s->mu);
    return j;
}

static void job_ref(Job *j) {
    pthread_mutex_lock(&j->mu);
    j->refs++;
    pthread_mutex_unlock(&j->mu);
}

// Never called with s->mu held.
static void job_unref(Job *j) {
    pthread_mutex_lock(&j->mu);
    int left = --j->refs;
    pthread_mutex_unlock(&j->mu);
    if (left) return;
    Server *s = j->s;
    pthread_mutex_lock(&s->mu);
    if (j->all_prev) j->all_prev->all_next = j->all_next;
    else s->all = j->all_next;
    if (j->all_next) j->all_next->all_prev = j->all_prev;
    pthread_mutex_unlock(&s->mu);
    gen_free(j->g);
    registry_release(s->reg, j->ref);
    json_object_put(j->root);
    free(j->ids);
    free(j->buf);
    pthread_mutex_destroy(&j->mu);
    free(j);
}

// Appends to the job's output. Called with j->mu held.
static int out_add(Job *j, const char *p, size_t n) {
    if (j->len + n > j->cap) {
        size_t cap = (j->len + n) * 2 + 256;
        char *q = realloc(j->buf, cap);
        if (!q) return -1;
        j->buf = q;
        j->cap = cap;
    }
    memcpy(j->buf + j->len, p, n);
    j->len += n;
    return 0;
}

// Wakes the job's connection when it waits for output. Called with j->mu held.
static void job_wake(Job *j) {
    if (j->suspended && j->c) {
        j->suspended = 0;
        MHD_resume_connection(j->c);
    }
}

// Appends "data: {obj}\n\n" (obj taken; NULL: "data: [DONE]\n\n") to a stream; done: the
// stream ends after it.
static void job_event(Job *j, json_object *obj, int done) {
    const char *p = obj ? json_str(obj) : "[DONE]";
    pthread_mutex_lock(&j->mu);
    if (out_add(j, "data: ", 6) || out_add(j, p, strlen(p)) || out_add(j, "\n\n", 2)) j->code = 500;
    if (done) j->done = 1;
    job_wake(j);
    pthread_mutex_unlock(&j->mu);
    json_object_put(obj);
}

// The whole answer of a non-streamed request (obj taken) with status code.
static void job_answer(Job *j, unsigned code, json_object *obj) {
    const char *p = json_str(obj);
    pthread_mutex_lock(&j->mu);
    j->len = j->off = 0;
    j->code = out_add(j, p, strlen(p)) ? 500 : code;
    j->done = 1;
    job_wake(j);
    pthread_mutex_unlock(&j->mu);
    json_object_put(obj);
}

// Is the job's client gone? Its request ended (MHD noticed), or its socket reports a hang-up
// (a suspended connection is not watched by MHD).
static int job_client_gone(Job *j) {
    int gone = 0;
    pthread_mutex_lock(&j->mu);
    if (!j->c) {
        gone = 1;
    } else {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(j->c, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (ci) {
            struct pollfd p = {.fd = ci->connect_fd, .events = POLLIN | POLLRDHUP};
            if (poll(&p, 1, 0) > 0) {
                if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) {
                    gone = 1;
                } else if (p.revents & POLLIN) {  // data or end of stream?
                    char b;
                    ssize_t n = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
                    gone = n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
                }
            }
        }
    }
    pthread_mutex_unlock(&j->mu);
    return gone;
}

// ---- answers from the scheduler -----------------------------------------------------------
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

static json_object *envelope(const Job *j, int stream, json_object *ch) {
    int chat = j->chat;
    json_object *o = json_object_new_object();
    json_object_object_add(o, "id", json_object_new_string(j->id));
    json_object_object_add(o, "object", json_object_new_string(chat ? (stream ? "chat.completion.chunk" : "chat.completion")
                                                                     : "text_completion"));
    json_object_object_add(o, "created", json_object_new_int64(j->created));
    json_object_object_add(o, "model", json_object_new_string(j->model));
    json_object *arr = json_object_new_array();
    json_object_array_add(arr, ch);
    json_object_object_add(o, "choices", arr);
    return o;
}

// Text that became final: a chunk for a stream (a non-streamed answer takes the whole text
// at the end).
static void job_text(Job *j, const char *text, size_t n) {
    if (j->stream && n) job_event(j, envelope(j, 1, choice(j->chat, 1, text, n, NULL)), 0);
}

static json_object *usage_obj(const Job *j) {
    int n;
    gen_ids(j->g, &n);
    json_object *u = json_object_new_object();
    json_object_object_add(u, "prompt_tokens", json_object_new_int(j->np));
    json_object_object_add(u, "completion_tokens", json_object_new_int(n));
    json_object_object_add(u, "total_tokens", json_object_new_int(j->np + n));
    return u;
}

// The generation ended normally: the last chunk (then one with the usage when asked) and
// [DONE], or the whole answer.
static void job_finish(Job *j) {
    const char *why = finish_reason_name(gen_finish(j->g));
    if (j->stream) {
        job_event(j, envelope(j, 1, choice(j->chat, 1, NULL, 0, why)), 0);
        if (j->include_usage) {  // as OpenAI: no choices, the usage
            json_object *o = envelope(j, 1, choice(j->chat, 1, NULL, 0, NULL));
            json_object_object_add(o, "choices", json_object_new_array());
            json_object_object_add(o, "usage", usage_obj(j));
            job_event(j, o, 0);
        }
        job_event(j, NULL, 1);
        return;
    }
    size_t len;
    const char *text = gen_text(j->g, &len);
    json_object *o = envelope(j, 0, choice(j->chat, 0, text, len, why));
    json_object_object_add(o, "usage", usage_obj(j));
    job_answer(j, 200, o);
}

// The request failed: an error event and [DONE], or the error as the answer.
static void job_fail(Job *j, unsigned code, const char *msg) {
    if (j->stream) {
        job_event(j, error_obj(code, msg), 0);
        job_event(j, NULL, 1);
    } else {
        job_answer(j, code, error_obj(code, msg));
    }
}

// The scheduler lets go of a job: its generator, its adapter, its reference.
static void job_retire(Job *j) {
    Server *s = j->s;
    gen_free(j->g);
    j->g = NULL;
    registry_release(s->reg, j->ref);
    j->ref = NULL;
    job_unref(j);
}

static int job_generated(const Job *j) {
    int n = 0;
    if (j->g) gen_ids(j->g, &n);
    return n;
}

// ---- the scheduler: continuous batching over one Engine ------------------------------------
// After the prompt (or a decode step): the next token, text for the client. Returns 1 while
// the request runs on, 0 when it left (finished or failed).
static int sched_advance(Server *s, Job *j) {
    Err e = {{0}};
    const char *text;
    size_t n;
    int rc = gen_advance(j->g, &text, &n, &j->token, &e);
    if (rc < 0) {
        job_fail(j, 500, e.msg);
    } else {
        job_text(j, text, n);
        if (rc == 1) return 1;
        job_finish(j);
        pthread_mutex_lock(&s->mu);
        s->served++;
        pthread_mutex_unlock(&s->mu);
    }
    job_retire(j);
    return 0;
}

// The client went away: its request ends here. Its connection, suspended while it waited
// (MHD does not watch a suspended connection), is woken with the end of the answer, so that
// MHD finds the socket closed and lets the connection go.
static void sched_cancel(Server *s, Job *j, const char *where) {
    fprintf(stderr, "lora serve: %s cancelled (client gone) %s after %d tokens\n", j->id, where, job_generated(j));
    job_fail(j, 499, "cancelled: the client went away");
    pthread_mutex_lock(&s->mu);
    s->cancelled++;
    pthread_mutex_unlock(&s->mu);
    job_retire(j);
}

// A newly admitted request: its generator and KV cache (prompt + max_tokens positions).
// Returns 1 when it joins the running requests (its prompt still to run), 0 when it left.
static int sched_admit(Server *s, Job *j) {
    Err e = {{0}};
    if (job_client_gone(j)) {
        sched_cancel(s, j, "in the queue");
        return 0;
    }
    j->g = gen_create(s->m, j->lora, s->tok, j->ids, j->np, &j->gen, &e);
    if (!j->g) {
        job_fail(j, strstr(e.msg, "memory") ? 503 : 400, e.msg);
        job_retire(j);
        return 0;
    }
    j->prefilling = 1;
    return 1;
}

// Prompts, in admission order, up to PREFILL_CHUNK tokens of each while this step's budget
// lasts, in ONE engine pass (gen_prefill_batch: a GGUF model runs all of them as rows of its
// decode steps): a long prompt is spread over several steps, between the decode steps of the
// others. A request whose prompt is all in gets its first token. act[0..na) -> the requests
// that run on (returned count); the others were answered.
static int sched_prefill(Server *s, Job **act, int na, Generator **gs, int *take, int *more, Job **batch) {
    int budget = PREFILL_BUDGET, nb = 0;
    for (int i = 0; i < na && budget > 0; i++) {
        Job *j = act[i];
        if (!j->prefilling) continue;
        int left = gen_prompt_left(j->g), t = left < PREFILL_CHUNK ? left : PREFILL_CHUNK;
        if (t > budget) t = budget;
        if (t < 1) continue;
        batch[nb] = j, gs[nb] = j->g, take[nb] = t, nb++;
        budget -= t;
    }
    if (nb == 0) return na;
    Err e = {{0}};
    int failed = gen_prefill_batch(gs, nb, s->en, take, more, &e);
    int k = 0, b = 0;
    for (int i = 0; i < na; i++) {
        Job *j = act[i];
        if (b >= nb || batch[b] != j) {  // not in this step's batch
            act[k++] = j;
            continue;
        }
        const int mb = more[b++];
        if (failed) {
            if (s->stop_flag) job_fail(j, 503, "the server is shutting down");
            else job_fail(j, 500, e.msg);
            job_retire(j);
        } else if (mb) {
            act[k++] = j;
        } else {
            j->prefilling = 0;
            if (sched_advance(s, j)) act[k++] = j;
        }
    }
    return k;
}

static void *scheduler_main(void *arg) {
    Server *s = arg;
    omp_set_num_threads(s->threads);  // this thread's team does all the compute
    engine_set_cancel(s->en, &s->stop_flag);
    int B = s->max_batch;
    Job **act = calloc((size_t)B, sizeof *act), **rows = calloc((size_t)B, sizeof *rows);
    const LoraAdapter **loras = calloc((size_t)B, sizeof *loras);
    KVCache **kvs = calloc((size_t)B, sizeof *kvs);
    float **logits = calloc((size_t)B, sizeof *logits);
    int *toks = calloc((size_t)B, sizeof *toks), *take = calloc((size_t)B, sizeof *take), *more = calloc((size_t)B, sizeof *more);
    Generator **gs = calloc((size_t)B, sizeof *gs);
    if (!act || !rows || !loras || !kvs || !logits || !toks || !take || !more || !gs) {
        fprintf(stderr, "lora serve: out of memory (scheduler)\n");
        abort();
    }
    int na = 0;  // running requests (act), in admission order
    for (;;) {
        // wait for work; drop queued requests whose client left; admit what fits
        Job *gone = NULL, *fresh = NULL, **fresh_tail = &fresh;
        pthread_mutex_lock(&s->mu);
        s->nactive = na;
        while (!s->stopping && na == 0 && !s->qhead) pthread_cond_wait(&s->cv, &s->mu);
        if (s->stopping) {
            pthread_mutex_unlock(&s->mu);
            break;
        }
        s->qtail = NULL;
        for (Job **pp = &s->qhead, *j; (j = *pp);) {
            if (job_client_gone(j)) {
                *pp = j->next;
                j->next = gone;
                gone = j;
                s->nqueued--;
            } else {
                s->qtail = j;
                pp = &j->next;
            }
        }
        for (int room = B - na; room > 0 && s->qhead; room--) {
            Job *j = s->qhead;
            s->qhead = j->next;
            if (!s->qhead) s->qtail = NULL;
            s->nqueued--;
            j->next = NULL;
            *fresh_tail = j;
            fresh_tail = &j->next;
        }
        s->nactive = na;
        pthread_mutex_unlock(&s->mu);
        while (gone) {
            Job *j = gone;
            gone = j->next;
            sched_cancel(s, j, "in the queue");
        }
        // running requests whose client left go now
        int k = 0;
        for (int i = 0; i < na; i++) {
            if (job_client_gone(act[i])) sched_cancel(s, act[i], act[i]->prefilling ? "during its prompt" : "while generating");
            else act[k++] = act[i];
        }
        na = k;
        while (fresh) {
            Job *j = fresh;
            fresh = j->next;
            j->next = NULL;
            if (sched_admit(s, j)) act[na++] = j;
        }
        pthread_mutex_lock(&s->mu);
        s->nactive = na;
        pthread_mutex_unlock(&s->mu);
        // this step's prompt chunks (a stop cancels them between chunks)
        if (!s->stop_flag) na = sched_prefill(s, act, na, gs, take, more, rows);
        if (s->stop_flag) continue;
        // one decode step for every request past its prompt, each with its own adapter
        int nr = 0;
        for (int i = 0; i < na; i++) {
            Job *j = act[i];
            if (j->prefilling) continue;
            rows[nr] = j;
            loras[nr] = gen_lora(j->g);
            kvs[nr] = gen_kv(j->g);
            toks[nr] = j->token;
            logits[nr] = gen_logits(j->g);
            nr++;
        }
        if (nr == 0) continue;
        Err e = {{0}};
        int failed = engine_decode(s->en, loras, kvs, toks, nr, logits, &e);
        pthread_mutex_lock(&s->mu);
        s->steps++;
        s->rows += nr;
        if (nr > s->peak_batch) s->peak_batch = nr;
        pthread_mutex_unlock(&s->mu);
        k = 0;
        for (int i = 0; i < na; i++) {
            Job *j = act[i];
            if (j->prefilling) {
                act[k++] = j;
                continue;
            }
            if (failed) {
                job_fail(j, 500, e.msg);
                job_retire(j);
            } else if (sched_advance(s, j)) {
                act[k++] = j;
            }
        }
        na = k;
    }
    // stopping: every running or waiting request gets an answer
    pthread_mutex_lock(&s->mu);
    Job *q = s->qhead;
    s->qhead = s->qtail = NULL;
    s->nqueued = 0;
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < na; i++) {
        job_fail(act[i], 503, "the server is shutting down");
        job_retire(act[i]);
    }
    while (q) {
        Job *j = q;
        q = j->next;
        job_fail(j, 503, "the server is shutting down");
        job_retire(j);
    }
    pthread_mutex_lock(&s->mu);
    s->nactive = 0;
    pthread_mutex_unlock(&s->mu);
    free(act), free(rows), free(loras), free(kvs), free(logits), free(toks), free(take), free(more), free(gs);
    return NULL;
}

// ---- the loader: adapters loaded off the polling thread ------------------------------------
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

static void load_one(Server *s, Job *j) {
    Err e = {{0}};
    if (registry_load(s->reg, j->name, j->path, j->scale, &e)) {
        int exists = strstr(e.msg, "already loaded") || strstr(e.msg, "base model's name");
        job_answer(j, exists ? 409 : 400, error_obj(exists ? 409 : 400, e.msg));
        return;
    }
    AdapterInfo info[256];
    int n = registry_list(s->reg, info, 256);
    for (int i = 0; i < n && i < 256; i++)
        if (!strcmp(info[i].name, j->name)) {
            job_answer(j, 201, adapter_obj(&info[i]));
            return;
        }
    job_answer(j, 409, error_obj(409, "the adapter was unloaded meanwhile"));
}

static void *loader_main(void *arg) {
    Server *s = arg;
    omp_set_num_threads(1);  // never a second team of compute threads
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!s->stopping && !s->lhead) pthread_cond_wait(&s->lcv, &s->mu);
        Job *j = s->lhead;
        if (j) {
            s->lhead = j->next;
            if (!s->lhead) s->ltail = NULL;
            s->nloads--;
        }
        int stopping = s->stopping;
        pthread_mutex_unlock(&s->mu);
        if (!j) break;
        if (stopping) job_answer(j, 503, error_obj(503, "the server is shutting down"));
        else load_one(s, j);
        job_unref(j);
    }
    return NULL;
}

// ---- the connection side ------------------------------------------------------------------
typedef struct {
    char *body;
    size_t len;
    int too_large;
    Job *job;                  // the request's job once queued
} Req;

// A non-streamed job's connection (called by MHD again after a resume): the answer when it
// is there, else the connection waits (suspended).
static enum MHD_Result job_respond(Job *j, struct MHD_Connection *c) {
    pthread_mutex_lock(&j->mu);
    if (!j->done && j->s->draining) {  // (never: every request has its answer by then)
        pthread_mutex_unlock(&j->mu);
        return send_error(c, 503, "the server is shutting down");
    }
    if (!j->done) {
        j->suspended = 1;
        MHD_suspend_connection(c);
        pthread_mutex_unlock(&j->mu);
        return MHD_YES;
    }
    char *buf = j->buf ? j->buf : strdup("");
    size_t len = j->len;
    unsigned code = j->code;
    j->buf = NULL;
    j->len = j->off = j->cap = 0;
    pthread_mutex_unlock(&j->mu);
    if (!buf) return MHD_NO;
    return send_buf(c, code, "application/json", buf, len, code == 503 ? RETRY_AFTER : NULL);
}

// A stream's reader: what is buffered, the end, or (nothing yet) the connection is suspended
// until the scheduler has text; never blocks.
static ssize_t stream_read(void *cls, uint64_t pos, char *out, size_t max) {
    (void)pos;
    Job *j = cls;
    ssize_t r;
    pthread_mutex_lock(&j->mu);
    if (j->off < j->len) {
        size_t n = j->len - j->off < max ? j->len - j->off : max;
        memcpy(out, j->buf + j->off, n);
        j->off += n;
        if (j->off == j->len) j->off = j->len = 0;
        r = (ssize_t)n;
    } else if (j->done) {
        r = j->code == 500 ? MHD_CONTENT_READER_END_WITH_ERROR : MHD_CONTENT_READER_END_OF_STREAM;
    } else if (j->c && !j->s->draining) {
        j->suspended = 1;
        MHD_suspend_connection(j->c);
        r = 0;
    } else {
        r = MHD_CONTENT_READER_END_WITH_ERROR;
    }
    pthread_mutex_unlock(&j->mu);
    return r;
}

static void stream_free(void *cls) { job_unref(cls); }

// Queues j (taken on success) for the scheduler (or the loader). 0, or 503 with *msg.
static int job_enqueue(Server *s, Job *j, const char **msg) {
    int load = j->kind == JOB_LOAD;
    job_ref(j);  // the scheduler's (the loader's)
    pthread_mutex_lock(&s->mu);
    int rc = 0;
    if (s->stopping) {
        *msg = "the server is shutting down";
        rc = 503;
    } else if (!load && s->nqueued >= s->queue_cap) {
        *msg = "too many requests waiting (--queue is full): retry later";
        rc = 503;
        s->rejected++;
    } else if (load && s->nloads >= MAX_PENDING_LOADS) {
        *msg = "too many adapters waiting to load: retry later";
        rc = 503;
    } else if (load) {
        if (s->ltail) s->ltail->next = j;
        else s->lhead = j;
        s->ltail = j;
        s->nloads++;
        pthread_cond_signal(&s->lcv);
    } else {
        if (s->qtail) s->qtail->next = j;
        else s->qhead = j;
        s->qtail = j;
        s->nqueued++;
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    if (rc) {
        pthread_mutex_lock(&j->mu);
        j->refs--;  // never the last: the connection holds one
        pthread_mutex_unlock(&j->mu);
    }
    return rc;
}

static enum MHD_Result handle_completion(Server *s, struct MHD_Connection *c, Req *q, json_object *root, int chat) {
    Err e = {{0}};
    Params p;
    int *ids = NULL;
    if (read_params(s, root, &p, &e)) return send_error(c, 400, e.msg);
    const LoraAdapter *lora;
    AdapterEntry *ref;
    if (registry_acquire(s->reg, p.model, &lora, &ref, &e)) return send_error(c, 404, e.msg);
    Template tpl = s->chat_tpl;
    int np = chat ? chat_prompt(s, root, &ids, &e) : completion_prompt(s, root, &ids, &tpl, &e);
    if (np >= 0) {
        gen_add_template_stops(&p.gen, tpl);  // the reply ends at the template's end of turn
        if (np < 1) np = err_set(&e, "empty prompt and no BOS token: nothing to condition on");
        else if (np >= s->ctx)
            np = err_set(&e, "prompt has %d tokens; the server's context (--ctx) is %d tokens", np, s->ctx);
    }
    Job *j = np < 0 ? NULL : job_new(s, JOB_GEN);
    if (!j) {
        registry_release(s->reg, ref);
        free(ids);
        return np < 0 ? send_error(c, 400, e.msg) : MHD_NO;
    }
    // prompt + max_tokens fit the context: the KV cache allocated at admission is that size
    if (p.gen.max_tokens > s->ctx - np) p.gen.max_tokens = s->ctx - np;
    j->chat = chat;
    j->stream = p.stream;
    j->include_usage = p.include_usage;
    j->root = json_object_get(root);
    j->gen = p.gen;
    j->ids = ids;
    j->np = np;
    j->lora = lora;
    j->ref = ref;
    j->c = c;
    snprintf(j->model, sizeof j->model, "%s", p.model && *p.model ? p.model : registry_base_name(s->reg));
    snprintf(j->id, sizeof j->id, "%s-%ld", chat ? "chatcmpl" : "cmpl",
             __atomic_add_fetch(&s->next_id, 1, __ATOMIC_RELAXED));
    j->created = (long)time(NULL);
    if (j->stream && chat) {  // the first chunk names the role
        json_object *ch = choice(1, 1, NULL, 0, NULL), *delta;
        json_object_object_get_ex(ch, "delta", &delta);
        json_object_object_add(delta, "role", json_object_new_string("assistant"));
        job_event(j, envelope(j, 1, ch), 0);
    }
    q->job = j;  // request_done drops the connection's reference
    const char *msg;
    int busy = job_enqueue(s, j, &msg);
    if (busy) {
        pthread_mutex_lock(&j->mu);
        j->len = j->off = 0;
        pthread_mutex_unlock(&j->mu);
        return send_error(c, (unsigned)busy, msg);
    }
    if (!j->stream) return job_respond(j, c);
    job_ref(j);  // the response's
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, j, stream_free);
    if (!r) {
        job_unref(j);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "text/event-stream");
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    enum MHD_Result ok = MHD_queue_response(c, 200, r);
    MHD_destroy_response(r);
    return ok;
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

static enum MHD_Result handle_health(Server *s, struct MHD_Connection *c) {
    json_object *o = json_object_new_object();
    pthread_mutex_lock(&s->mu);
    json_object_object_add(o, "status", json_object_new_string(s->stopping ? "stopping" : "ok"));
    json_object_object_add(o, "active", json_object_new_int(s->nactive));
    json_object_object_add(o, "queued", json_object_new_int(s->nqueued));
    json_object_object_add(o, "max_batch", json_object_new_int(s->max_batch));
    json_object_object_add(o, "queue", json_object_new_int(s->queue_cap));
    json_object_object_add(o, "ctx", json_object_new_int(s->ctx));
    json_object_object_add(o, "served", json_object_new_int64(s->served));
    json_object_object_add(o, "cancelled", json_object_new_int64(s->cancelled));
    json_object_object_add(o, "rejected", json_object_new_int64(s->rejected));
    json_object_object_add(o, "steps", json_object_new_int64(s->steps));
    json_object_object_add(o, "rows", json_object_new_int64(s->rows));
    json_object_object_add(o, "peak_batch", json_object_new_int64(s->peak_batch));
    pthread_mutex_unlock(&s->mu);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_DAEMON);
    const union MHD_DaemonInfo *di = ci ? MHD_get_daemon_info(ci->daemon, MHD_DAEMON_INFO_CURRENT_CONNECTIONS) : NULL;
    if (di) json_object_object_add(o, "connections", json_object_new_int((int)di->num_connections));
    return send_json(c, 200, o);
}

// Is path (absolute, no "." or ".." components) dir itself or below it?
static int below(const char *dir, const char *path) {
    size_t dl = strlen(dir);
    if (dl == 1) return path[0] == '/' && path[1];  // dir "/"
    return !strncmp(path, dir, dl) && path[dl] == '/' && path[dl + 1];
}

// The same answer for every path outside the directory, whether or not it exists.
#define OUTSIDE_MSG "adapter path must be inside the adapter directory (a path relative to it, without \"..\")"

static enum MHD_Result handle_load(Server *s, struct MHD_Connection *c, Req *q, json_object *root) {
    Err e = {{0}};
    if (!s->adapter_dir[0])
        return send_error(c, 403, "loading adapters at run time is disabled: start the server with --adapter-dir DIR");
    const char *name = NULL, *path = NULL;
    double scale = 1.0;
    if (json_opt_str(root, "name", "request", &name, &e) < 0 || json_opt_str(root, "path", "request", &path, &e) < 0 ||
        json_opt_num(root, "scale", "request", &scale, &e) < 0)
        return send_error(c, 400, e.msg);
    if (!name || !path) return send_error(c, 400, "request: needs \"name\" and \"path\" strings");
    if (strlen(name) >= ADAPTER_NAME_MAX) return send_error(c, 400, "request: adapter name too long");
    // lexically first (nothing outside the directory is looked at): an absolute path must
    // begin with the directory; no component may be ".."
    const char *rel = path;
    if (path[0] == '/') {
        if (!below(s->adapter_dir, path)) return send_error(c, 403, OUTSIDE_MSG);
        rel = path + strlen(s->adapter_dir) + (strlen(s->adapter_dir) > 1);
    }
    for (const char *p = rel; *p;) {
        size_t n = strcspn(p, "/");
        if (n == 2 && p[0] == '.' && p[1] == '.') return send_error(c, 403, OUTSIDE_MSG);
        p += n;
        while (*p == '/') p++;
    }
    char full[PATH_MAX + 1100], real[PATH_MAX];
    snprintf(full, sizeof full, "%s/%s", s->adapter_dir, rel);
    if (!realpath(full, real)) {
        err_set(&e, "adapter path \"%s\": %s", path, strerror(errno));
        return send_error(c, errno == ENOENT ? 404 : 400, e.msg);
    }
    if (!below(s->adapter_dir, real)) return send_error(c, 403, OUTSIDE_MSG);  // a symbolic link out
    Job *j = job_new(s, JOB_LOAD);
    if (!j) return MHD_NO;
    snprintf(j->name, sizeof j->name, "%s", name);
    snprintf(j->path, sizeof j->path, "%s", real);
    j->scale = (float)scale;
    j->c = c;
    q->job = j;
    const char *msg;
    int busy = job_enqueue(s, j, &msg);
    if (busy) return send_error(c, (unsigned)busy, msg);
    return job_respond(j, c);
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
        static __thread int single;  // this thread tokenizes, never computes: no OpenMP team
        if (!single) omp_set_num_threads(1), single = 1;
        if (!(q = calloc(1, sizeof *q))) return MHD_NO;
        *con_cls = q;
        return MHD_YES;
    }
    if (q->job) return job_respond(q->job, c);  // resumed: the answer is there
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
    if (!strcmp(url, "/health")) return handle_health(s, c);
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
    enum MHD_Result ok = load ? handle_load(s, c, q, root) : handle_completion(s, c, q, root, chat);
    json_object_put(root);
    return ok;
}

// The request ended (answered, client gone, timed out or the daemon stopping): the job no
// longer has a connection.
static void request_done(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode t) {
    (void)cls, (void)c, (void)t;
    Req *q = *con_cls;
    if (q) {
        if (q->job) {
            pthread_mutex_lock(&q->job->mu);
            q->job->c = NULL;
            q->job->suspended = 0;
            pthread_mutex_unlock(&q->job->mu);
            job_unref(q->job);
        }
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

// libmicrohttpd's messages (a client that went away mid-answer, a connection refused by
// the limits), marked as the server's.
static void http_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    fputs("lora serve: http: ", stderr);
    vfprintf(stderr, fmt, ap);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int cmd_serve(int argc, char **argv) {
    CliFlag f[] = {{"model", 0, 0},     {"tokenizer", 0, 0},  {"adapter", 0, 0},     {"host", 0, 0},
                   {"port", 0, 0},      {"adapter-dir", 0, 0}, {"template", 0, 0},   {"name", 0, 0},
                   {"max-tokens", 0, 0}, {"threads", 0, 0},   {"quant", 0, 0},       {"max-batch", 0, 0},
                   {"ctx", 0, 0},       {"queue", 0, 0},      {"max-conn-per-client", 0, 0},
                   {"max-conn", 0, 0},  {"timeout", 0, 0}};
    const int nf = sizeof f / sizeof f[0];
    Err e = {{0}};
    int port, threads, ctx, per_ip, max_conn, timeout;
    Server s;
    memset(&s, 0, sizeof s);
    if (cli_parse(argc, argv, f, nf, &e) || cli_int(f, nf, "port", 8080, &e, &port) ||
        cli_int(f, nf, "threads", 0, &e, &threads) || cli_int(f, nf, "max-tokens", 256, &e, &s.default_max_tokens) ||
        cli_int(f, nf, "max-batch", 8, &e, &s.max_batch) || cli_int(f, nf, "ctx", 0, &e, &ctx) ||
        cli_int(f, nf, "queue", 64, &e, &s.queue_cap) || cli_int(f, nf, "max-conn-per-client", 16, &e, &per_ip) ||
        cli_int(f, nf, "max-conn", 1024, &e, &max_conn) || cli_int(f, nf, "timeout", 10, &e, &timeout))
        return cli_fail(&e);
    const char *model_path = cli_get(f, nf, "model", NULL), *host = cli_get(f, nf, "host", "127.0.0.1");
    if (!model_path) err_set(&e, "serve needs --model");
    else if (port < 0 || port > 65535) err_set(&e, "--port must be in [0, 65535] (0 = any free port)");
    else if (s.max_batch < 1 || s.max_batch > 1024) err_set(&e, "--max-batch must be in [1, 1024]");
    else if (s.queue_cap < 1) err_set(&e, "--queue must be >= 1");
    else if (ctx < 0) err_set(&e, "--ctx must be >= 1 (0 = the model's context, at most 4096)");
    else if (per_ip < 1 || max_conn < 1) err_set(&e, "--max-conn and --max-conn-per-client must be >= 1");
    else if (timeout < 1) err_set(&e, "--timeout must be >= 1 second");
    else if (s.default_max_tokens < 0) err_set(&e, "--max-tokens must be >= 0");
    if (e.msg[0]) return cli_fail(&e);
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
    // room for the connections: the soft limit on open files raised to the hard one
    struct rlimit rl;
    if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < rl.rlim_max && rl.rlim_cur < (rlim_t)max_conn + 64) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    // SIGINT/SIGTERM are taken by sigwait below: blocked before any thread starts (OpenMP's
    // while loading, the server's), so that every thread inherits the mask
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    pthread_mutex_init(&s.mu, NULL);
    pthread_cond_init(&s.cv, NULL);
    pthread_cond_init(&s.lcv, NULL);
    int rc = 1, sched_started = 0, loader_started = 0;
    pthread_t sched_th, loader_th;
    struct MHD_Daemon *d = NULL;
    char base[ADAPTER_NAME_MAX];
    base_name_of(model_path, base, sizeof base);
    const char *bn = cli_get(f, nf, "name", base);
    if (!(s.m = model_load_quant(model_path, quant_name(quant), &e))) goto done;
    if (!(s.tok = load_tokenizer_for(model_path, cli_get(f, nf, "tokenizer", NULL), &e))) goto done;
    if (!(s.reg = registry_new(s.m, bn, &e)) || cli_load_adapters(s.reg, argc, argv, &e) < 0) goto done;
    int model_ctx = s.m->cfg.max_seq_len > 0 ? s.m->cfg.max_seq_len : 2048;
    if (ctx > model_ctx) {
        err_set(&e, "--ctx %d is longer than the model's context (%d positions)", ctx, model_ctx);
        goto done;
    }
    s.ctx = ctx ? ctx : model_ctx < 4096 ? model_ctx : 4096;
    s.threads = get_num_threads();
    omp_set_num_threads(s.threads);  // the Engine sizes its scratch for this many threads
    if (!(s.en = engine_new(s.m, s.max_batch, &e))) goto done;
    sched_started = !pthread_create(&sched_th, NULL, scheduler_main, &s);
    loader_started = sched_started && !pthread_create(&loader_th, NULL, loader_main, &s);
    if (!loader_started) {
        err_set(&e, "cannot start the server's threads");
        goto done;
    }
    // one polling thread (epoll) for every connection; suspended connections (waiting for
    // the scheduler) do not time out, idle ones do after --timeout seconds
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    d = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, handler, &s, MHD_OPTION_EXTERNAL_LOGGER, http_log, NULL,
                         MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_NOTIFY_COMPLETED, request_done, NULL,
                         MHD_OPTION_CONNECTION_LIMIT, (unsigned)max_conn, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                         (unsigned)per_ip, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)timeout, MHD_OPTION_END);
    if (!d) {
        err_set(&e, "cannot listen on %s:%d (in use, or not an address of this machine?)", host, port);
        goto done;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    AdapterInfo info[256];
    int na = registry_list(s.reg, info, 256);
    size_t per_pos = engine_kv_bytes_per_pos(&s.m->cfg);
    printf("lora serve: batches of up to %d requests (--max-batch), each up to %d positions (--ctx), %d more "
           "waiting (--queue); KV cache at most %d x %d x %zu B = %.1f MiB\n",
           s.max_batch, s.ctx, s.queue_cap, s.max_batch, s.ctx, per_pos,
           (double)s.max_batch * s.ctx * (double)per_pos / (1024.0 * 1024.0));
    printf("lora serve: listening on http://%s%s%s:%u (base \"%s\"; %d adapter%s%s", ai->ai_family == AF_INET6 ? "[" : "",
           host, ai->ai_family == AF_INET6 ? "]" : "", di ? di->port : (unsigned)port, bn, na, na == 1 ? "" : "s",
           na ? ":" : "");
    for (int i = 0; i < na && i < 256; i++) printf(" %s", info[i].name);
    printf(")%s\n", s.adapter_dir[0] ? "" : "; POST /adapters disabled (no --adapter-dir)");
    fflush(stdout);
    int sig = 0;
    sigwait(&sigs, &sig);
    printf("lora serve: stopping (signal %d)\n", sig);
    fflush(stdout);
    rc = 0;
done:
    if (rc) cli_fail(&e);
    if (d) {  // no new connections; the open ones get their answers below
        MHD_socket lfd = MHD_quiesce_daemon(d);
        if (lfd != MHD_INVALID_SOCKET) close(lfd);
    }
    pthread_mutex_lock(&s.mu);
    s.stopping = 1;
    s.stop_flag = 1;
    pthread_cond_broadcast(&s.cv);
    pthread_cond_broadcast(&s.lcv);
    pthread_mutex_unlock(&s.mu);
    if (sched_started) pthread_join(sched_th, NULL);
    if (loader_started) pthread_join(loader_th, NULL);
    s.draining = 1;
    if (d) {
        // every request has its answer now; give the clients up to a second to take them
        for (double t0 = now_s(); now_s() - t0 < 1.0;) {
            pthread_mutex_lock(&s.mu);
            int left = s.all != NULL;
            pthread_mutex_unlock(&s.mu);
            if (!left) break;
            usleep(5000);
        }
        pthread_mutex_lock(&s.mu);  // (MHD must not be stopped with a suspended connection)
        for (Job *j = s.all; j; j = j->all_next) {
            pthread_mutex_lock(&j->mu);
            job_wake(j);
            pthread_mutex_unlock(&j->mu);
        }
        pthread_mutex_unlock(&s.mu);
        MHD_stop_daemon(d);
    }
    freeaddrinfo(ai);
    engine_free(s.en);
    registry_free(s.reg);
    tok_free(s.tok);
    model_free(s.m);
    pthread_cond_destroy(&s.cv);
    pthread_cond_destroy(&s.lcv);
    pthread_mutex_destroy(&s.mu);
    return rc;
}
