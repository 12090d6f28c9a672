/*
 * The VMDK text descriptor, parsed the way qemu 7.2 parses it: the C string
 * (up to the first NUL, at most 1 MiB - 1 bytes), strstr for createType,
 * CID, parentCID and parentFileNameHint, and for each line glibc sscanf's
 * "%10s %ld %10s \"%511[^\n\r\"]\" %ld" (vmdk_parse_extents), including
 * its quirks: whitespace skipping runs across line ends, RDONLY/NOACCESS
 * and ZERO lines are skipped, unknown types are skipped. Every loop is
 * bounded by the buffer length; nothing here reads a file.
 */
#include "vmdk.h"

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

/* Position of needle in s[0, n) (a C string of length n), or -1. */
static int64_t find(const char *s, uint64_t n, const char *needle)
{
    uint64_t k = strlen(needle);
    if (k > n) return -1;
    for (uint64_t i = 0; i + k <= n; i++)
        if (memcmp(s + i, needle, k) == 0) return (int64_t)i;
    return -1;
}

/* A sscanf cursor over the C string s[0, n). */
struct scan {
    const char *s;
    uint64_t n, i;
};

static void skip_ws(struct scan *c)
{
    while (c->i < c->n && is_space(c->s[c->i])) c->i++;
}

/* %Ns: false on end of input. */
static bool scan_word(struct scan *c, char *out, uint32_t max)
{
    skip_ws(c);
    if (c->i >= c->n) return false;
    uint32_t k = 0;
    while (c->i < c->n && !is_space(c->s[c->i]) && k < max) out[k++] = c->s[c->i++];
    out[k] = 0;
    return true;
}

/* %ld (glibc: strtol semantics, saturating on overflow). */
static bool scan_i64(struct scan *c, int64_t *out)
{
    skip_ws(c);
    uint64_t i = c->i;
    bool neg = false;
    if (i < c->n && (c->s[i] == '+' || c->s[i] == '-')) neg = c->s[i++] == '-';
    if (i >= c->n || c->s[i] < '0' || c->s[i] > '9') return false;
    uint64_t v = 0;
    bool over = false;
    while (i < c->n && c->s[i] >= '0' && c->s[i] <= '9') {
        uint64_t d = (uint64_t)(c->s[i] - '0');
        if (v > (UINT64_MAX - d) / 10) over = true;
        else v = v * 10 + d;
        i++;
    }
    c->i = i;
    uint64_t lim = neg ? (1ull << 63) : (1ull << 63) - 1;
    if (over || v > lim) v = lim;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return true;
}

/* qemu's sscanf on one extent line; returns the number of conversions. */
static int scan_line(const char *s, uint64_t n, struct vmdk_desc_extent *d)
{
    struct scan c = {s, n, 0};
    int m = 0;
    d->name_len = 0;
    if (!scan_word(&c, d->access, 10)) return m;
    m++;
    if (!scan_i64(&c, &d->sectors)) return m;
    m++;
    if (!scan_word(&c, d->type, 10)) return m;
    m++;
    skip_ws(&c);
    if (c.i >= c.n || c.s[c.i] != '"') return m;
    c.i++;
    uint32_t k = 0;
    while (c.i < c.n && k < 511 && c.s[c.i] != '\n' && c.s[c.i] != '\r' && c.s[c.i] != '"') d->name[k++] = c.s[c.i++];
    if (k == 0) return m;
    d->name[k] = 0;
    d->name_len = (uint16_t)k;
    m++;
    if (c.i >= c.n || c.s[c.i] != '"') return m;
    c.i++;
    if (!scan_i64(&c, &d->flat_offset)) return m;
    return m + 1;
}

static bool eq(const char *a, const char *b)
{
    uint64_t k = strlen(b);
    return strlen(a) == k && memcmp(a, b, k) == 0;
}

static const char *const CREATE_TYPES[] = {"monolithicFlat", "vmfs", "vmfsSparse", "seSparse",
                                           "twoGbMaxExtentSparse", "twoGbMaxExtentFlat"};

int vmdk_parse_desc(struct vmdk *v, const char *buf, uint64_t len,
                    int (*add)(struct vmdk *v, const struct vmdk_desc_extent *d, void *ctx), void *ctx)
{
    /* vmdk_parse_description(buf, "createType", ct, 128) */
    int64_t at = find(buf, len, "createType");
    if (at < 0 || (uint64_t)at + 12 >= len) return vmdk_fail(v, VMDK_E_INVALID_DESC, 0, 0);
    uint64_t p = (uint64_t)at + 12, e = p;
    while (e < len && buf[e] != '"') e++;
    if (e == len || e - p + 1 > sizeof v->create_type) return vmdk_fail(v, VMDK_E_INVALID_DESC, 1, 0);
    memcpy(v->create_type, buf + p, e - p);
    v->create_type[e - p] = 0;
    v->create_type_len = (uint16_t)(e - p);
    bool known = false;
    for (uint32_t i = 0; i < sizeof CREATE_TYPES / sizeof CREATE_TYPES[0]; i++)
        if (eq(v->create_type, CREATE_TYPES[i])) known = true;
    if (!known) return vmdk_fail_text(v, VMDK_E_UNSUPPORTED_TYPE, v->create_type, v->create_type_len);

    static struct vmdk_desc_extent d;
    for (uint64_t line = 0; line < len;) {
        uint64_t next = line;
        while (next < len && buf[next] != '\n') next++;
        uint64_t end_of_line = next;
        if (next < len) next++;
        memset(&d, 0, sizeof d);
        d.flat_offset = -1;
        int m = scan_line(buf + line, len - line, &d);
        if (m >= 4 && eq(d.access, "RW")) {
            bool invalid = false;
            if (eq(d.type, "FLAT")) {
                invalid = m != 5 || d.flat_offset < 0;
            } else if (eq(d.type, "VMFS")) {
                if (m == 4) d.flat_offset = 0;
                else invalid = true;
            } else if (m != 4) {
                invalid = true;
            }
            if (invalid) return vmdk_fail_text(v, VMDK_E_INVALID_LINE, buf + line, end_of_line - line);
            bool typed = eq(d.type, "FLAT") || eq(d.type, "SPARSE") || eq(d.type, "VMFS") ||
                         eq(d.type, "VMFSSPARSE") || eq(d.type, "SESPARSE");
            if (d.sectors > 0 && typed && add(v, &d, ctx)) return -1;
        }
        line = next;
    }
    return 0;
}

/* sscanf("%x") into a uint32_t (strtoul semantics, then truncation). */
static bool scan_hex32(const char *s, uint64_t n, uint32_t *out)
{
    uint64_t i = 0;
    while (i < n && is_space(s[i])) i++;
    bool neg = false;
    if (i < n && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
    if (i + 1 < n && s[i] == '0' && (s[i + 1] == 'x' || s[i + 1] == 'X')) {
        bool hex_after = i + 2 < n && ((s[i + 2] >= '0' && s[i + 2] <= '9') || ((s[i + 2] | 32) >= 'a' && (s[i + 2] | 32) <= 'f'));
        if (hex_after) i += 2;
    }
    uint64_t v = 0;
    bool any = false, over = false;
    for (; i < n; i++) {
        char ch = s[i];
        uint32_t dgt;
        if (ch >= '0' && ch <= '9') dgt = (uint32_t)(ch - '0');
        else if ((ch | 32) >= 'a' && (ch | 32) <= 'f') dgt = (uint32_t)((ch | 32) - 'a' + 10);
        else break;
        any = true;
        if (v >> 60) over = true;
        else v = v * 16 + dgt;
    }
    if (!any) return false;
    if (over) v = UINT64_MAX;
    else if (neg) v = 0 - v;
    *out = (uint32_t)v;
    return true;
}

int vmdk_read_cids(struct vmdk *v, const char *desc, uint64_t len)
{
    /* vmdk_parent_open: strstr "parentFileNameHint", skip '="', up to '"' */
    int64_t at = find(desc, len, "parentFileNameHint");
    if (at >= 0) {
        uint64_t p = (uint64_t)at + 20;
        if (p > len) p = len; /* qemu reads the zeroed tail of its buffer */
        uint64_t e = p;
        while (e < len && desc[e] != '"') e++;
        if (e >= len || e - p > 4095) return vmdk_fail(v, VMDK_E_INVAL, 1, 0);
        if (e - p > sizeof v->parent) return vmdk_fail(v, VMDK_E_INVAL, 2, e - p);
        memcpy(v->parent, desc + p, e - p);
        v->parent_len = (uint16_t)(e - p);
        v->has_parent = true;
    }
    at = find(desc, len, "CID");
    if (at < 0 || !scan_hex32(desc + at + 4, (uint64_t)at + 4 <= len ? len - (uint64_t)at - 4 : 0, &v->cid))
        return vmdk_fail(v, VMDK_E_INVAL, 3, 0);
    at = find(desc, len, "parentCID");
    if (at < 0 || !scan_hex32(desc + at + 10, (uint64_t)at + 10 <= len ? len - (uint64_t)at - 10 : 0, &v->parent_cid))
        return vmdk_fail(v, VMDK_E_INVAL, 4, 0);
    return 0;
}
