/* Spins forever: only the watchdog can end this run. */
#include "hostile.h"

int op_main(void)
{
    for (;;)
        __asm__ volatile("pause");
}
