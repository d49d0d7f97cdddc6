/* inlines N: functions that gcc -O2 inlines, for bpfcov's inlined-function tests.
 * See EXPECTED.md for what runs how often.
 *   helper       inlined into main's loop, which runs N times; no out-of-line copy
 *   rare_path    inlined only into a branch main never takes (N is never above 1000000)
 *   folded       inlined and then computed away: it leaves no code
 *   both         inlined into main once, and also called out of line through a pointer
 */
#include <stdio.h>
#include <stdlib.h>

volatile int sink;

static inline void helper(int i)
{
    sink = i * 3 + 1;
}

static void rare_path(int n)
{
    sink = n;
    fprintf(stderr, "inlines: N=%d is too large\n", n);
}

static inline int folded(int x)
{
    return x - x;
}

int both(int x)
{
    sink = x + 7;
    return sink;
}

int (*volatile call_both)(int) = both;

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 10;
    if (n > 1000000) {
        rare_path(n);
        return 1;
    }
    for (int i = 0; i < n; i++)
        helper(i);
    int total = folded(n) + both(n);
    total += call_both(1) + call_both(2);
    printf("%d\n", total);
    return 0;
}
