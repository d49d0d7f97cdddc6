/* shapes: a small command-line calculator used as a coverage target.
 *
 *   shapes area circle R | area square S   -> prints an area
 *   shapes fact N                          -> N! by recursion
 *   shapes apply double|negate X           -> calls a transform through a pointer
 *   shapes lock                            -> runs a function whose first instruction
 *                                             has a LOCK prefix (uprobes refuse it)
 *   shapes crash                           -> computes 4!, then dies of SIGSEGV
 *   shapes serve                           -> reads "circle R" / "square S" lines from
 *                                             stdin until EOF, printing each area (a
 *                                             long-lived process to attach to)
 *
 * See EXPECTED.md for which functions each command runs, and how often.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Hand-written so that its very first instruction is `lock incl (%rdi)`: x86 uprobes
 * cannot probe that instruction, so bpfcov must move the probe to the `ret` after it. */
__asm__(".text\n"
        ".globl locked_increment\n"
        ".type locked_increment, @function\n"
        "locked_increment:\n"
        "    lock incl (%rdi)\n"
        "    ret\n"
        ".size locked_increment, .-locked_increment\n");
void locked_increment(int *counter);

static double circle_area(double r)
{
    return 3.14159265358979 * r * r;
}

static double square_area(double s)
{
    return s * s;
}

static double triangle_area(double b, double h) /* never reachable: no command uses it */
{
    return b * h / 2;
}

unsigned long factorial(unsigned n)
{
    if (n <= 1)
        return 1;
    return n * factorial(n - 1);
}

static double twice(double x)
{
    return 2 * x;
}

static double negate(double x)
{
    return -x;
}

typedef double (*transform_fn)(double);

double apply_transform(transform_fn fn, double x)
{
    return fn(x);
}

int unused_exported_helper(int x) /* exported but never called */
{
    return x * 7 + (int)triangle_area(x, x);
}

static int usage(void)
{
    fprintf(stderr, "usage: shapes area circle|square N | fact N | apply double|negate X | lock | serve | crash\n");
    return 2;
}

static int cmd_area(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    double v = atof(argv[1]);
    if (strcmp(argv[0], "circle") == 0)
        printf("%.3f\n", circle_area(v));
    else if (strcmp(argv[0], "square") == 0)
        printf("%.3f\n", square_area(v));
    else
        return usage();
    return 0;
}

static int cmd_apply(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    transform_fn fn = strcmp(argv[0], "double") == 0 ? twice : negate;
    printf("%.3f\n", apply_transform(fn, atof(argv[1])));
    return 0;
}

static int cmd_serve(void)
{
    char shape[16];
    double v;
    while (scanf("%15s %lf", shape, &v) == 2) {
        if (strcmp(shape, "circle") == 0)
            printf("%.3f\n", circle_area(v));
        else
            printf("%.3f\n", square_area(v));
        fflush(stdout);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    if (strcmp(argv[1], "area") == 0)
        return cmd_area(argc - 2, argv + 2);
    if (strcmp(argv[1], "fact") == 0 && argc > 2) {
        printf("%lu\n", factorial((unsigned)atoi(argv[2])));
        return 0;
    }
    if (strcmp(argv[1], "apply") == 0)
        return cmd_apply(argc - 2, argv + 2);
    if (strcmp(argv[1], "serve") == 0)
        return cmd_serve();
    if (strcmp(argv[1], "crash") == 0) {
        printf("%lu\n", factorial(4));
        fflush(stdout);
        volatile int *nowhere = NULL;
        return *nowhere; /* SIGSEGV: the tracer must keep what ran before */
    }
    if (strcmp(argv[1], "lock") == 0) {
        int counter = 0;
        for (int i = 0; i < 3; i++)
            locked_increment(&counter);
        printf("%d\n", counter);
        return 0;
    }
    return usage();
}
