/*
 * Opening a chain: each input through its format's layer_ops (formats.c),
 * input 0 probed the way qemu probes it, lower layers named by the host (it
 * resolved them through its allowlist), the top layer's external data file
 * attached when the host gave one, the chain ending at the first layer
 * without a backing file.
 */
#include "chain.h"
#include "formats.h"
#include "../probe/probe.h"

/* Opens input `input` as layer l with the format the host asked for (l is
 * zeroed but for want_recurse). A format this program has no driver for is
 * refused before anything is read; input 0 is probed (a PROBE record), lower
 * layers need a named format. Opening runs once per layer: cold, i.e.
 * compiled for size. */
static __attribute__((cold)) int layer_open(struct layer *l, uint32_t input, uint32_t requested)
{
    const struct layer_ops *ops = chain_format_ops(requested);
    if (requested != FMT_AUTO && !ops) return rt_error(input, GERR_BAD_PARAMS, 0, 0, 0);
    reader_from_input(&l->r, input);
    int f = (int)requested;
    if (input == 0) {
        f = probe_input(&l->r, requested);
        if (f < 0) return -1;
        ops = chain_format_ops((uint32_t)f);
        if (!ops) return rt_error(input, GERR_BAD_PARAMS, 0, 0, 0);
    } else if (requested == FMT_AUTO) {
        return rt_error(input, GERR_BAD_PARAMS, 1, 0, 0); /* the host names backing formats */
    }
    l->ops = ops;
    l->fmt = (uint32_t)f;
    l->data = &l->r;
    return ops->open(l);
}

__attribute__((cold)) int chain_open_range(struct chain *c, uint32_t first, uint32_t count, uint32_t data_input,
                                           uint32_t flags)
{
    const struct params *p = rt_params();
    uint32_t end;
    if (p->n_inputs < 1 || p->n_inputs > LIMIT_MAX_INPUTS || count < 1 || __builtin_add_overflow(first, count, &end) ||
        end > p->n_inputs || (data_input && data_input >= p->n_inputs))
        return rt_error(first, GERR_BAD_PARAMS, 0, 0, 0);
    c->n = 0;
    for (uint32_t i = first; i < end; i++) {
        if (data_input && i == data_input) break;
        if (i - first >= LIMIT_CHAIN_MAX) return rt_error(i, GERR_BAD_PARAMS, 0, 0, 0);
        struct chain_layer *cl = &c->layers[i - first];
        memset(cl, 0, sizeof *cl);
        /* qemu's block status recurses into the file (BDRV_BLOCK_RECURSE)
         * whenever want_zero is set: map, and convert's and compare's
         * bdrv_block_status_above. A fixed VHD's holes depend on it. */
        cl->l.want_recurse = true;
        if (layer_open(&cl->l, i, rt_input(i)->format)) return -1;
        c->n = i - first + 1;
        if (cl->l.data_file && !(flags & CHAIN_F_MAP)) {
            /* Only the top layer's data file can be attached. */
            if (i != first || !data_input) return rt_error(i, GERR_DATA_FILE_REQUIRED, 0, 0, 0);
            if (rt_input(data_input)->format != FMT_RAW) return rt_error(data_input, GERR_BAD_PARAMS, 2, 0, 0);
            reader_from_input(&cl->data_r, data_input);
            cl->l.data = &cl->data_r;
        }
        if (!cl->l.has_backing) break;
    }
    c->size = c->layers[0].l.length;
    return 0;
}

__attribute__((cold)) int chain_open(struct chain *c, uint32_t data_input)
{
    return chain_open_range(c, 0, rt_params()->n_inputs, data_input, 0);
}
