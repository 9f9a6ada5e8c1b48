// JSON helpers over json-c: reading config files with clear errors, typed optional members,
// writing atomically, floats printed shortest-exact.
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"

json_object *json_read_file(const char *path, Err *e) {
    size_t len;
    char *text = read_file(path, &len, e);
    if (!text) return NULL;
    json_tokener *tok = json_tokener_new();
    if (!tok) {
        free(text);
        err_set(e, "out of memory parsing %s", path);
        return NULL;
    }
    json_object *root = json_tokener_parse_ex(tok, text, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    size_t rest = end;
    while (rest < len && strchr(" \t\r\n", text[rest])) rest++;
    if (!root || jerr != json_tokener_success || rest < len) {
        size_t at = (!root || jerr != json_tokener_success) ? end : rest;
        int line = 1;
        for (size_t i = 0; i < at && i < len; i++) line += text[i] == '\n';
        const char *why = root && jerr == json_tokener_success ? "unexpected text after the JSON value"
                          : jerr == json_tokener_continue || jerr == json_tokener_success
                              ? "unexpected end of file"
                              : json_tokener_error_desc(jerr);
        err_set(e, "%s:%d: invalid JSON: %s", path, line, why);
        json_object_put(root);
        free(text);
        return NULL;
    }
    free(text);
    return root;
}

int json_write_file(const char *path, json_object *obj, Err *e) {
    const char *s = json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PRETTY |
                                                            JSON_C_TO_STRING_SPACED |
                                                            JSON_C_TO_STRING_NOSLASHESCAPE);
    if (!s) return err_set(e, "%s: out of memory writing JSON", path);
    size_t n = strlen(s);
    char *buf = xmalloc(n + 2, path, e);
    if (!buf) return -1;
    memcpy(buf, s, n);
    buf[n] = '\n';
    int rc = write_file_atomic(path, buf, n + 1, e);
    free(buf);
    return rc;
}

json_object *json_new_float(float v) {
    char buf[32];
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v) break;
    }
    return json_object_new_double_s((double)v, buf);
}

// Member key when present and not null.
static json_object *member(const json_object *obj, const char *key) {
    json_object *v = NULL;
    if (!obj || !json_object_object_get_ex(obj, key, &v)) return NULL;
    return json_object_is_type(v, json_type_null) ? NULL : v;
}

int json_opt_int(const json_object *obj, const char *key, const char *file, int64_t *out, Err *e) {
    json_object *v = member(obj, key);
    if (!v) return 0;
    if (!json_object_is_type(v, json_type_int))
        return err_set(e, "%s: \"%s\" must be an integer (got %s)", file, key,
                       json_object_to_json_string(v));
    *out = json_object_get_int64(v);
    return 1;
}

int json_opt_num(const json_object *obj, const char *key, const char *file, double *out, Err *e) {
    json_object *v = member(obj, key);
    if (!v) return 0;
    if (!json_object_is_type(v, json_type_int) && !json_object_is_type(v, json_type_double))
        return err_set(e, "%s: \"%s\" must be a number (got %s)", file, key,
                       json_object_to_json_string(v));
    *out = json_object_get_double(v);
    return 1;
}

int json_opt_bool(const json_object *obj, const char *key, const char *file, int *out, Err *e) {
    json_object *v = member(obj, key);
    if (!v) return 0;
    if (!json_object_is_type(v, json_type_boolean))
        return err_set(e, "%s: \"%s\" must be true or false (got %s)", file, key,
                       json_object_to_json_string(v));
    *out = json_object_get_boolean(v) ? 1 : 0;
    return 1;
}

int json_opt_str(const json_object *obj, const char *key, const char *file, const char **out,
                 Err *e) {
    json_object *v = member(obj, key);
    if (!v) return 0;
    if (!json_object_is_type(v, json_type_string))
        return err_set(e, "%s: \"%s\" must be a string (got %s)", file, key,
                       json_object_to_json_string(v));
    *out = json_object_get_string(v);
    return 1;
}
