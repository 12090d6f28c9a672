/*
 * A bounded JSON tokenizer for the LUKS2 metadata area (guest/luks2/): the
 * text is at most the JSON area (hdr_size - 4096 bytes), the values at most
 * `cap` tokens, nesting at most `max_depth` levels; anything past a bound
 * is an error, never a longer run. Tokens are stored in document order
 * (pre-order) with the index just past each value's subtree, so walking
 * an object's members is linear and lookups never recurse.
 */
#ifndef INSTAR_LUKS2_JSON_H
#define INSTAR_LUKS2_JSON_H
#include <stdint.h>
#include <stdbool.h>

enum { JT_OBJECT = 1, JT_ARRAY = 2, JT_STRING = 3, JT_PRIM = 4 };

struct jtok {
    uint32_t type;
    uint32_t start, end; /* strings: the bytes between the quotes; others: the whole value */
    uint32_t size;       /* members (objects) or elements (arrays) */
    uint32_t next;       /* index of the token after this value's subtree */
};

struct json {
    const char *s;
    uint32_t len;
    struct jtok *t;
    uint32_t n, cap, max_depth;
    uint32_t err_at; /* byte offset of a syntax error */
};

enum { JSON_OK = 0, JSON_E_SYNTAX = -1, JSON_E_TOKENS = -2, JSON_E_DEPTH = -3 };

/* Tokenizes s[0, len): one value, then only whitespace (or NULs: the area's padding). */
int json_parse(struct json *j, const char *s, uint32_t len, struct jtok *toks, uint32_t cap, uint32_t max_depth);
/* The value of member `key` of object token `obj`, or -1. */
int json_get(const struct json *j, int obj, const char *key);
/* Element `i` of array `arr`, or member value `i` of object `obj` (its key at index - 1), or -1. */
int json_child(const struct json *j, int parent, uint32_t i);
/* A string token's text unescaped into out (NUL-terminated); -1 if not a string, too long or not ASCII. */
int json_str(const struct json *j, int tok, char *out, uint32_t cap);
/* The key token of object member i. */
int json_key(const struct json *j, int obj, uint32_t i);
/* A string token equals s (raw compare; keys cryptsetup writes carry no escapes). */
bool json_str_is(const struct json *j, int tok, const char *s);
/* An unsigned decimal: a JSON number (prim) or a string of digits (LUKS2 writes
 * 64-bit values as strings); 0 on success, -1 otherwise (no sign, no overflow). */
int json_u64(const struct json *j, int tok, uint64_t *v);

#endif
