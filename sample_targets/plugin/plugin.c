/* plugin.so: loaded at run time with dlopen by the host. */
#include <stdio.h>

int plugin_run(int x)
{
    printf("plugin says %d\n", x * 10);
    return x * 10;
}

int plugin_never(void) /* exported, never called */
{
    return 42;
}
