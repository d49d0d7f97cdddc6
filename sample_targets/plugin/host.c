/* host PLUGIN.so N: calls the linked libshape, then dlopens PLUGIN.so and calls its
 * plugin_run N times. Expected: main 1, shape_sides 1, plugin_run N. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include "libshape.h"

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: host PLUGIN.so [N]\n");
        return 2;
    }
    int n = argc > 2 ? atoi(argv[2]) : 1;
    printf("triangle has %d sides\n", shape_sides("triangle"));
    void *handle = dlopen(argv[1], RTLD_NOW);
    if (!handle) {
        fprintf(stderr, "host: %s\n", dlerror());
        return 1;
    }
    int (*run)(int) = (int (*)(int))dlsym(handle, "plugin_run");
    for (int i = 0; i < n; i++)
        run(i);
    dlclose(handle);
    return 0;
}
