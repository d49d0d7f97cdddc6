/* libshape.so: a shared library the plugin host links at build time. */
#include "libshape.h"

int shape_sides(const char *name)
{
    if (name[0] == 't')
        return 3;
    return 4;
}

int shape_unused(int x) /* never called */
{
    return x - 1;
}
