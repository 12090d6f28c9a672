/*
 * inspect's vmdk checks. format_inspector's: a sparse header's version and
 * descriptor location, its footer (streamOptimized with the grain directory
 * at the end), and the descriptor (createType monolithicSparse or
 * streamOptimized; every line a comment, a ddb line, a key=value header or
 * an extent; no '/' in an extent line; at least one extent). instar's own: a
 * descriptor longer than INSPECT_DESC_MAX, a text descriptor whose extents
 * name other files, a parent (parentFileNameHint), and qemu's refusal to
 * open it (vmdk_open, which never opens an extent file here).
 */
#include "inspect.h"
#include "../vmdk/vmdk.h"

#define GD_AT_END 0xffffffffffffffffull

static bool is_space(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

static bool has_prefix(const char *p, uint64_t n, const char *word)
{
    uint64_t k = strlen(word);
    return n >= k && memcmp(p, word, k) == 0;
}

/* The footer test format_inspector runs when the header says the grain directory is at the end. */
static int footer(struct inspect *in)
{
    const uint8_t *h = in->head, *t = in->tail; /* t: marker, footer header, end-of-stream marker */
    const uint8_t *f = t + 512, *eos = t + 1024;
    uint32_t which = 0;
    if (memcmp(h, f, 4) != 0) which = VMDK_FOOT_SIGNATURE;
    else if (le32(h + 4) != le32(f + 4)) which = VMDK_FOOT_VERSION;
    else if (le64(h + 28) != le64(f + 28) || le64(h + 36) != le64(f + 36)) which = VMDK_FOOT_DESCRIPTOR;
    else if (le64(f + 56) == GD_AT_END) which = VMDK_FOOT_ANOTHER;
    else {
        bool zero = true;
        for (int i = 16; i < 512; i++) zero = zero && t[i] == 0;
        if (le32(t + 8) != 0 || le32(t + 12) != 3 || !zero) which = VMDK_FOOT_MARKER;
        else {
            for (int i = 0; i < 512; i++) zero = zero && eos[i] == 0;
            if (!zero) which = VMDK_FOOT_EOS;
        }
    }
    if (in->size < 512 + INSPECT_TAIL) which = VMDK_FOOT_MARKER;
    return which ? inspect_finding(in, INSP_VMDK_FOOTER, which, 0, 0, NULL, 0) : 0;
}

/* instar: every extent line of a text descriptor names a file other than
 * this one (qemu opens it): its quoted name, as written. */
static int extent_files(struct inspect *in, const char *text, uint64_t n)
{
    uint32_t k = 0;
    for (uint64_t at = 0; at < n;) {
        uint64_t end = at;
        while (end < n && text[end] != '\n') end++;
        uint64_t s = at;
        at = end + 1;
        while (s < end && is_space((uint8_t)text[s])) s++;
        const char *l = text + s;
        uint64_t len = end - s, w = 0;
        while (w < len && l[w] != ' ') w++;
        if (!((w == 2 && (l[0] | 0x20) == 'r' && (l[1] | 0x20) == 'w') ||
              (w == 6 && memcmp(l, "RDONLY", 6) == 0) || (w == 8 && memcmp(l, "NOACCESS", 8) == 0)))
            continue;
        uint64_t q1 = w;
        while (q1 < len && l[q1] != '"') q1++;
        uint64_t q2 = q1 + 1;
        while (q2 < len && l[q2] != '"') q2++;
        if (q2 >= len) continue;
        if (inspect_finding(in, INSP_VMDK_EXTENT_FILE, k++, 0, 0, l + q1 + 1, q2 - q1 - 1)) return -1;
    }
    return 0;
}

/* format_inspector's descriptor check over text[0, n) (lower-cased here). */
static int descriptor(struct inspect *in, char *text, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
        if ((uint8_t)text[i] >= 0x80) return inspect_finding(in, INSP_VMDK_NO_DESCRIPTOR, 1, 0, 0, NULL, 0);
        if (text[i] >= 'A' && text[i] <= 'Z') text[i] = (char)(text[i] + 32);
    }
    /* createType="..." closed within 64 bytes, else "formatnotfound" */
    const char *type = "formatnotfound";
    uint64_t type_len = 14;
    for (uint64_t i = 0; i + 12 <= n; i++) {
        if (memcmp(text + i, "createtype=\"", 12) != 0) continue;
        uint64_t j = i + 12;
        while (j < n && text[j] != '"') j++;
        if (j < n && j - (i + 12) < 64) {
            type = text + i + 12;
            type_len = j - (i + 12);
        }
        break;
    }
    if (!((type_len == 16 && memcmp(type, "monolithicsparse", 16) == 0) ||
          (type_len == 15 && memcmp(type, "streamoptimized", 15) == 0)))
        return inspect_finding(in, INSP_VMDK_SUBFORMAT, 0, 0, 0, type, type_len);
    bool bad = false, path = false;
    uint32_t extents = 0;
    for (uint64_t at = 0; at < n;) {
        uint64_t end = at;
        while (end < n && text[end] != '\n') end++;
        uint64_t s = at, e = end;
        at = end + 1;
        while (s < e && is_space((uint8_t)text[s])) s++;
        while (e > s && is_space((uint8_t)text[e - 1])) e--;
        const char *l = text + s;
        uint64_t len = e - s;
        if (len == 0 || l[0] == '#' || has_prefix(l, len, "ddb")) continue;
        uint64_t eq = 0, sp = 0;
        while (eq < len && l[eq] != '=') eq++;
        while (sp < eq && l[sp] != ' ') sp++;
        if (eq < len && sp == eq) continue; /* key=value */
        uint64_t w = 0;
        while (w < len && l[w] != ' ') w++;
        if ((w == 2 && memcmp(l, "rw", 2) == 0) || (w == 6 && memcmp(l, "rdonly", 6) == 0) ||
            (w == 8 && memcmp(l, "noaccess", 8) == 0)) {
            extents++;
            bool slash = false;
            for (uint64_t k = 0; k < len; k++) slash = slash || l[k] == '/';
            if (slash && !path) {
                path = true;
                if (inspect_finding(in, INSP_VMDK_EXTENT_PATH, 0, 0, 0, l, len)) return -1;
            }
            continue;
        }
        if (!bad) {
            bad = true;
            if (inspect_finding(in, INSP_VMDK_BAD_LINE, 0, 0, 0, l, len)) return -1;
        }
    }
    if (!extents && inspect_finding(in, INSP_VMDK_NO_EXTENTS, 0, 0, 0, NULL, 0)) return -1;
    return 0;
}

int inspect_vmdk(struct inspect *in)
{
    const uint8_t *h = in->head;
    uint64_t desc_off = 0, desc_len = in->size;
    bool sparse = memcmp(h, "KDMV", 4) == 0, cowd = memcmp(h, "COWD", 4) == 0;
    bool desc_ok = !cowd;
    if (sparse) {
        uint32_t version = le32(h + 4);
        uint64_t sec = le64(h + 28), num = le64(h + 36);
        if (version < 1 || version > 3) {
            desc_ok = false;
            if (inspect_finding(in, INSP_VMDK_VERSION, version, 0, 0, NULL, 0)) return -1;
        }
        if (sec != 1) {
            desc_ok = false;
            if (inspect_finding(in, INSP_VMDK_DESC_LOCATION, sec > (UINT64_MAX >> 9) ? UINT64_MAX : sec << 9, 0, 0,
                                NULL, 0))
                return -1;
        }
        desc_off = 512;
        desc_len = num > (VMDK_DESC_MAX >> 9) + 1 ? VMDK_DESC_MAX : num << 9;
        if (le64(h + 56) == GD_AT_END && footer(in)) return -1;
    }
    if (desc_len > VMDK_DESC_MAX) desc_len = VMDK_DESC_MAX;
    if (desc_ok && desc_len == 0) desc_ok = false;
    if (!desc_ok) {
        if (inspect_finding(in, INSP_VMDK_NO_DESCRIPTOR, 0, 0, 0, NULL, 0)) return -1;
    } else {
        char *text = rt_alloc(desc_len + 1);
        if (!text) return rt_error(0, GERR_OUT_OF_MEMORY, desc_len, 0, 0);
        if (reader_read(in->r, desc_off, text, desc_len)) return inspect_open_failed(in);
        text[desc_len] = 0;
        uint64_t n = 0;
        while (n < desc_len && text[n]) n++;
        if (n > INSPECT_DESC_MAX && inspect_finding(in, INSP_VMDK_DESC_TOO_LONG, n, INSPECT_DESC_MAX, 0, NULL, 0))
            return -1;
        if (!sparse && extent_files(in, text, n)) return -1;
        if (descriptor(in, text, n)) return -1;
        rt_free(text);
    }
    static struct vmdk v;
    if (vmdk_open(&v, in->r, VMDK_OPEN_SCAN)) return inspect_open_failed(in);
    in->virtual_size = v.total_sectors << 9;
    in->flags |= INSPF_SIZE_KNOWN;
    if (v.has_parent && inspect_finding(in, INSP_VMDK_PARENT, 0, 0, 0, v.parent, v.parent_len)) return -1;
    return 0;
}
