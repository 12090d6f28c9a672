/*
 * The bounded JSON tokenizer (json.h). A recursive-descent parser whose
 * recursion is bounded by max_depth; every token is one slot of the
 * caller's array, so a hostile metadata area costs at most `cap` tokens and
 * one pass over its bytes.
 */
#include "json.h"
#include "rt.h"

static void skip_ws(struct json *j, uint32_t *p)
{
    while (*p < j->len && (j->s[*p] == ' ' || j->s[*p] == '\t' || j->s[*p] == '\n' || j->s[*p] == '\r')) (*p)++;
}

static int new_tok(struct json *j, uint32_t type, uint32_t start)
{
    if (j->n >= j->cap) return JSON_E_TOKENS;
    struct jtok *t = &j->t[j->n];
    t->type = type, t->start = start, t->end = start, t->size = 0, t->next = 0;
    return (int)j->n++;
}

static int syntax(struct json *j, uint32_t at)
{
    j->err_at = at;
    return JSON_E_SYNTAX;
}

static bool is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int parse_string(struct json *j, uint32_t *p)
{
    uint32_t at = *p;
    (*p)++; /* the opening quote */
    int t = new_tok(j, JT_STRING, *p);
    if (t < 0) return t;
    while (*p < j->len) {
        uint8_t c = (uint8_t)j->s[*p];
        if (c == '"') {
            j->t[t].end = *p;
            j->t[t].next = j->n;
            (*p)++;
            return t;
        }
        if (c < 0x20) return syntax(j, *p);
        if (c == '\\') {
            if (*p + 1 >= j->len) return syntax(j, *p);
            char e = j->s[*p + 1];
            if (e == 'u') {
                if (*p + 5 >= j->len) return syntax(j, *p);
                for (uint32_t i = 2; i < 6; i++)
                    if (!is_hex(j->s[*p + i])) return syntax(j, *p);
                *p += 6;
                continue;
            }
            if (e != '"' && e != '\\' && e != '/' && e != 'b' && e != 'f' && e != 'n' && e != 'r' && e != 't')
                return syntax(j, *p);
            *p += 2;
            continue;
        }
        (*p)++;
    }
    return syntax(j, at);
}

static int parse_prim(struct json *j, uint32_t *p)
{
    uint32_t start = *p;
    while (*p < j->len) {
        char c = j->s[*p];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' || c == '+' ||
              c == '.'))
            break;
        (*p)++;
    }
    if (*p == start) return syntax(j, start);
    int t = new_tok(j, JT_PRIM, start);
    if (t < 0) return t;
    j->t[t].end = *p;
    j->t[t].next = j->n;
    return t;
}

static int parse_value(struct json *j, uint32_t *p, uint32_t depth);

static int parse_container(struct json *j, uint32_t *p, uint32_t depth, bool object)
{
    if (depth >= j->max_depth) return JSON_E_DEPTH;
    int t = new_tok(j, object ? JT_OBJECT : JT_ARRAY, *p);
    if (t < 0) return t;
    char close = object ? '}' : ']';
    (*p)++;
    skip_ws(j, p);
    if (*p < j->len && j->s[*p] == close) {
        (*p)++;
    } else {
        for (;;) {
            if (object) {
                skip_ws(j, p);
                if (*p >= j->len || j->s[*p] != '"') return syntax(j, *p);
                int k = parse_string(j, p);
                if (k < 0) return k;
                skip_ws(j, p);
                if (*p >= j->len || j->s[*p] != ':') return syntax(j, *p);
                (*p)++;
            }
            int v = parse_value(j, p, depth + 1);
            if (v < 0) return v;
            j->t[t].size++;
            skip_ws(j, p);
            if (*p >= j->len) return syntax(j, *p);
            if (j->s[*p] == ',') {
                (*p)++;
                continue;
            }
            if (j->s[*p] == close) {
                (*p)++;
                break;
            }
            return syntax(j, *p);
        }
    }
    j->t[t].end = *p;
    j->t[t].next = j->n;
    return t;
}

static int parse_value(struct json *j, uint32_t *p, uint32_t depth)
{
    skip_ws(j, p);
    if (*p >= j->len) return syntax(j, *p);
    char c = j->s[*p];
    if (c == '{') return parse_container(j, p, depth, true);
    if (c == '[') return parse_container(j, p, depth, false);
    if (c == '"') return parse_string(j, p);
    return parse_prim(j, p);
}

int json_parse(struct json *j, const char *s, uint32_t len, struct jtok *toks, uint32_t cap, uint32_t max_depth)
{
    j->s = s, j->len = len, j->t = toks, j->n = 0, j->cap = cap, j->max_depth = max_depth, j->err_at = 0;
    uint32_t p = 0;
    skip_ws(j, &p);
    if (p >= len || s[p] != '{') return syntax(j, p);
    int r = parse_value(j, &p, 0);
    if (r < 0) return r;
    skip_ws(j, &p);
    for (; p < len; p++)
        if (s[p] != 0) return syntax(j, p);
    return JSON_OK;
}

int json_key(const struct json *j, int obj, uint32_t i)
{
    if (obj < 0 || j->t[obj].type != JT_OBJECT || i >= j->t[obj].size) return -1;
    uint32_t k = (uint32_t)obj + 1;
    for (uint32_t m = 0; m < i; m++) k = j->t[k + 1].next; /* skip key and value */
    return (int)k;
}

int json_child(const struct json *j, int parent, uint32_t i)
{
    if (parent < 0) return -1;
    if (j->t[parent].type == JT_OBJECT) {
        int k = json_key(j, parent, i);
        return k < 0 ? -1 : k + 1;
    }
    if (j->t[parent].type != JT_ARRAY || i >= j->t[parent].size) return -1;
    uint32_t k = (uint32_t)parent + 1;
    for (uint32_t m = 0; m < i; m++) k = j->t[k].next;
    return (int)k;
}

bool json_str_is(const struct json *j, int tok, const char *s)
{
    if (tok < 0 || j->t[tok].type != JT_STRING) return false;
    uint32_t n = j->t[tok].end - j->t[tok].start, i = 0;
    for (; i < n; i++)
        if (s[i] == 0 || s[i] != j->s[j->t[tok].start + i]) return false;
    return s[i] == 0;
}

int json_get(const struct json *j, int obj, const char *key)
{
    if (obj < 0 || j->t[obj].type != JT_OBJECT) return -1;
    uint32_t k = (uint32_t)obj + 1;
    for (uint32_t m = 0; m < j->t[obj].size; m++) {
        if (json_str_is(j, (int)k, key)) return (int)k + 1;
        k = j->t[k + 1].next;
    }
    return -1;
}

static uint32_t hexv(char c)
{
    if (c >= '0' && c <= '9') return (uint32_t)(c - '0');
    if (c >= 'a' && c <= 'f') return (uint32_t)(c - 'a' + 10);
    return (uint32_t)(c - 'A' + 10);
}

int json_str(const struct json *j, int tok, char *out, uint32_t cap)
{
    if (tok < 0 || j->t[tok].type != JT_STRING || cap == 0) return -1;
    uint32_t o = 0;
    for (uint32_t p = j->t[tok].start; p < j->t[tok].end;) {
        char c = j->s[p];
        if (c == '\\') {
            char e = j->s[p + 1]; /* the tokenizer checked every escape */
            if (e == 'u') {
                uint32_t v = hexv(j->s[p + 2]) << 12 | hexv(j->s[p + 3]) << 8 | hexv(j->s[p + 4]) << 4 |
                             hexv(j->s[p + 5]);
                if (v == 0 || v > 0x7f) return -1;
                c = (char)v;
                p += 6;
            } else {
                c = e == 'b' ? '\b' : e == 'f' ? '\f' : e == 'n' ? '\n' : e == 'r' ? '\r' : e == 't' ? '\t' : e;
                p += 2;
            }
        } else {
            if ((uint8_t)c > 0x7f) return -1;
            p++;
        }
        if (o + 1 >= cap) return -1;
        out[o++] = c;
    }
    out[o] = 0;
    return (int)o;
}

int json_u64(const struct json *j, int tok, uint64_t *v)
{
    if (tok < 0 || (j->t[tok].type != JT_STRING && j->t[tok].type != JT_PRIM)) return -1;
    uint32_t a = j->t[tok].start, b = j->t[tok].end;
    if (a == b || b - a > 20) return -1;
    uint64_t x = 0;
    for (uint32_t p = a; p < b; p++) {
        char c = j->s[p];
        if (c < '0' || c > '9') return -1;
        if (__builtin_mul_overflow(x, 10, &x) || __builtin_add_overflow(x, (uint64_t)(c - '0'), &x)) return -1;
    }
    *v = x;
    return 0;
}
