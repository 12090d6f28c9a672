/*
 * inspect: an upload gate's verdict on input 0 (guest/inspect/). With
 * INSPOP_F_STREAM the input is a stream's bounded window: its first arg[0]
 * bytes and its end from arg[1] on; a check that needs a byte in between
 * reports INSP_INCOMPLETE instead of reading it.
 */
#include "../inspect/inspect.h"

int op_main(void)
{
    const struct params *p = rt_params();
    if (p->n_inputs != 1) return rt_error(0, GERR_BAD_PARAMS, 0, 0, 0);
    static struct reader in, r;
    static struct inspect_window w;
    reader_from_input(&in, 0);
    bool stream = (p->flags & INSPOP_F_STREAM) != 0;
    inspect_window_init(&w, &r, &in, stream, p->arg[0], p->arg[1]);
    return inspect_run(&r);
}
