// The adapter registry: many LoRA adapters over one base model, each with a scale, chosen
// per call. A lock guards the list; each adapter counts its users so that unloading one that
// a request is using frees it only when that request releases it.
#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "export/export.h"
#include "infer/infer.h"

struct AdapterEntry {
    AdapterInfo info;          // info.users: counted under the registry's lock
    LoraAdapter *lora;
    int unloaded;              // out of the list; freed when users drops to 0
};

struct AdapterRegistry {
    const Model *m;
    char base_name[ADAPTER_NAME_MAX];
    pthread_mutex_t mu;
    AdapterEntry **list;       // (n) in load order
    int n, cap;
};

static void entry_free(AdapterEntry *a) {
    if (!a) return;
    lora_free(a->lora);
    free(a);
}

AdapterRegistry *registry_new(const Model *m, const char *base_name, Err *e) {
    AdapterRegistry *r = xcalloc(1, sizeof *r, "adapter registry", e);
    if (!r) return NULL;
    r->m = m;
    snprintf(r->base_name, sizeof r->base_name, "%s", base_name && *base_name ? base_name : "base");
    pthread_mutex_init(&r->mu, NULL);
    return r;
}

void registry_free(AdapterRegistry *r) {
    if (!r) return;
    for (int i = 0; i < r->n; i++) entry_free(r->list[i]);
    free(r->list);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

const char *registry_base_name(const AdapterRegistry *r) { return r->base_name; }

static int valid_name(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n >= ADAPTER_NAME_MAX) return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '.' && s[i] != '_' && s[i] != '-') return 0;
    return 1;
}

int adapter_spec_parse(const char *spec, char *name, size_t name_n, char *path, size_t path_n,
                       float *scale, Err *e) {
    *scale = 1.0f;
    const char *eq = strchr(spec, '=');
    const char *p = eq ? eq + 1 : spec;
    size_t plen = strlen(p);
    // ":SCALE" at the end when what follows the last ':' is a number
    const char *colon = strrchr(p, ':');
    if (colon) {
        char *end;
        double s = strtod(colon + 1, &end);
        if (end != colon + 1 && !*end) {
            if (!isfinite(s)) return err_set(e, "adapter \"%s\": scale must be a finite number", spec);
            *scale = (float)s;
            plen = (size_t)(colon - p);
        }
    }
    if (plen == 0) return err_set(e, "adapter \"%s\": no path (expected name=path[:scale])", spec);
    if (plen >= path_n) return err_set(e, "adapter \"%s\": path too long", spec);
    memcpy(path, p, plen);
    path[plen] = 0;
    if (eq) {
        size_t nl = (size_t)(eq - spec);
        if (nl >= name_n) return err_set(e, "adapter \"%s\": name too long", spec);
        memcpy(name, spec, nl);
        name[nl] = 0;
    } else {
        // the path's last component, without trailing slashes
        size_t end = plen;
        while (end > 1 && path[end - 1] == '/') end--;
        size_t start = end;
        while (start > 0 && path[start - 1] != '/') start--;
        if (end - start >= name_n) return err_set(e, "adapter \"%s\": name too long", spec);
        memcpy(name, path + start, end - start);
        name[end - start] = 0;
    }
    if (!valid_name(name))
        return err_set(e, "adapter \"%s\": name \"%s\" must be 1-%d characters of A-Z a-z 0-9 . _ -", spec, name,
                       ADAPTER_NAME_MAX - 1);
    return 0;
}

// Index of name in the list, -1 if absent. Called with the lock held.
static int find(const AdapterRegistry *r, const char *name) {
    for (int i = 0; i < r->n; i++)
        if (!strcmp(r->list[i]->info.name, name)) return i;
    return -1;
}

static int taken(const AdapterRegistry *r, const char *name, Err *e) {
    if (!strcmp(name, r->base_name))
        return err_set(e, "adapter name \"%s\" is the base model's name", name);
    if (find(r, name) >= 0) return err_set(e, "an adapter named \"%s\" is already loaded", name);
    return 0;
}

int registry_load(AdapterRegistry *r, const char *name, const char *path, float scale, Err *e) {
    if (!valid_name(name))
        return err_set(e, "adapter name \"%s\" must be 1-%d characters of A-Z a-z 0-9 . _ -", name,
                       ADAPTER_NAME_MAX - 1);
    if (!isfinite(scale)) return err_set(e, "adapter %s: scale must be a finite number", name);
    pthread_mutex_lock(&r->mu);
    int rc = taken(r, name, e);
    pthread_mutex_unlock(&r->mu);
    if (rc) return -1;
    // the slow part (reading the file) runs without the lock
    AdapterEntry *a = xcalloc(1, sizeof *a, "adapter entry", e);
    if (!a) return -1;
    if (!(a->lora = adapter_load(path, r->m, e))) {
        free(a);
        return -1;
    }
    a->lora->scale *= scale;
    snprintf(a->info.name, sizeof a->info.name, "%s", name);
    snprintf(a->info.path, sizeof a->info.path, "%s", path);
    a->info.scale = scale;
    a->info.rank = a->lora->rank;
    a->info.alpha = a->lora->alpha;
    a->info.targets = a->lora->targets;
    pthread_mutex_lock(&r->mu);
    rc = taken(r, name, e);  // someone may have loaded the name meanwhile
    if (!rc && r->n == r->cap) {
        int cap = r->cap ? 2 * r->cap : 8;
        AdapterEntry **p = realloc(r->list, sizeof *p * (size_t)cap);
        if (!p) rc = err_set(e, "out of memory (adapter list)");
        else {
            r->list = p;
            r->cap = cap;
        }
    }
    if (!rc) r->list[r->n++] = a;
    pthread_mutex_unlock(&r->mu);
    if (rc) entry_free(a);
    return rc;
}

int registry_unload(AdapterRegistry *r, const char *name, Err *e) {
    pthread_mutex_lock(&r->mu);
    int i = find(r, name);
    AdapterEntry *a = NULL;
    if (i >= 0) {
        a = r->list[i];
        memmove(r->list + i, r->list + i + 1, sizeof *r->list * (size_t)(r->n - i - 1));
        r->n--;
        a->unloaded = 1;
        if (a->info.users > 0) a = NULL;  // the last user frees it
    }
    pthread_mutex_unlock(&r->mu);
    if (i < 0) return err_set(e, "no adapter named \"%s\" is loaded", name);
    entry_free(a);
    return 0;
}

int registry_acquire(AdapterRegistry *r, const char *name, const LoraAdapter **lora, AdapterEntry **ref,
                     Err *e) {
    *lora = NULL;
    *ref = NULL;
    if (!name || !*name || !strcmp(name, r->base_name)) return 0;
    pthread_mutex_lock(&r->mu);
    int i = find(r, name);
    if (i >= 0) {
        AdapterEntry *a = r->list[i];
        a->info.users++;
        *ref = a;
        *lora = a->info.scale == 0.0f ? NULL : a->lora;
    } else {
        // name what is available
        char avail[400];
        size_t used = (size_t)snprintf(avail, sizeof avail, "%s", r->base_name);
        for (int k = 0; k < r->n && used < sizeof avail; k++)
            used += (size_t)snprintf(avail + used, sizeof avail - used, ", %s", r->list[k]->info.name);
        err_set(e, "unknown model \"%s\" (loaded: %s)", name, avail);
    }
    pthread_mutex_unlock(&r->mu);
    return i >= 0 ? 0 : -1;
}

void registry_release(AdapterRegistry *r, AdapterEntry *ref) {
    if (!ref) return;
    pthread_mutex_lock(&r->mu);
    int last = --ref->info.users == 0 && ref->unloaded;
    pthread_mutex_unlock(&r->mu);
    if (last) entry_free(ref);
}

int registry_list(AdapterRegistry *r, AdapterInfo *out, int max) {
    pthread_mutex_lock(&r->mu);
    int n = r->n;
    for (int i = 0; i < n && i < max; i++) out[i] = r->list[i]->info;
    pthread_mutex_unlock(&r->mu);
    return n;
}
