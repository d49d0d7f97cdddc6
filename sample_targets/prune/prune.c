/* A program whose pruning plan is known: see EXPECTED.md. Built at -O0 so that every
 * function keeps its own code and every call stays a call.
 *
 *   prune        runs main, report, dispatch and say_hello
 *   prune wide   also runs wide_report (and its helper wide_format)
 */
#include <stdio.h>
#include <string.h>

#define NOINLINE __attribute__((noinline))

/* Never called, and nothing refers to them: a linker with --gc-sections would drop them.
 * Not static, or the compiler would drop them itself. */
NOINLINE int orphan_leaf(int x) { return x * 3 + 1; }
NOINLINE int orphan_root(int x) { return orphan_leaf(x) + orphan_leaf(x + 1); }

/* Data only cold_report reads: freed with it. */
static const int cold_table[64] = {1, 2, 3, 5, 8, 13, 21, 34};

/* Shared by two never-executed callers: neither alone frees it. */
NOINLINE int shared_helper(int x) { return x ^ 0x5a; }

NOINLINE int cold_only_helper(int x) { return cold_table[x & 63] + shared_helper(x); }

/* Called only on an untaken path of main: cold. Its cluster is cold_only_helper and
 * cold_table; shared_helper is not its alone. */
NOINLINE int cold_report(int x) { return cold_only_helper(x) * 2; }

/* Reached only from never_called_branch, which is itself reached only from rare_path. */
NOINLINE int deep_dead(int x) { return x - 7; }
NOINLINE int never_called_branch(int x) { return deep_dead(x) + shared_helper(x); }
NOINLINE int rare_path(int x) { return never_called_branch(x) + 1; }

static NOINLINE void say_hello(void) { puts("hello"); }
static NOINLINE void say_goodbye(void) { puts("goodbye"); }

/* A table of handlers that running code reads: an unused entry is cold. */
static void (*const handlers[])(void) = {say_hello, say_goodbye};

NOINLINE void dispatch(int which) { handlers[which](); }

NOINLINE void wide_format(char *out) { strcpy(out, "wide"); }
NOINLINE void wide_report(void)
{
    char buf[16];
    wide_format(buf);
    puts(buf);
}

NOINLINE int report(int argc)
{
    if (argc > 200)
        return rare_path(argc);
    if (argc > 100)
        return cold_report(argc);
    return 0;
}

int main(int argc, char **argv)
{
    dispatch(0);
    if (argc > 1 && strcmp(argv[1], "wide") == 0)
        wide_report();
    return report(argc);
}
