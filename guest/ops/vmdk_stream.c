/* vmdk_stream (ops.VMDK_STREAM): one window of a streamOptimized VMDK read
 * from stdin in one pass; guest/vmdk/stream.c does the work. */
#include "../vmdk/vmdk.h"

int op_main(void)
{
    return vmdk_stream_run();
}
