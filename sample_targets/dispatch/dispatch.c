/* Control flow that basic-block probes must get right: a switch compiled to a jump table,
 * an interpreter loop built on computed gotos (GNU C labels as values), and a call that
 * never returns, leaving the rest of its line's block unrun.
 *
 *   dispatch switch N      classify 0..N-1 through dense switches
 *   dispatch goto PROGRAM  run a tiny program: digits push, + adds, i adds the last operand
 *                          again (1 at first), * multiplies, p prints
 *   dispatch jump          call a function that longjmps out of its caller */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static jmp_buf escape;

static const char *classify(int op)
{
    switch (op % 12) {
    case 0:
        return "zero";
    case 1:
        return "one";
    case 2:
        return "two";
    case 3:
        return "three";
    case 4:
        return "four";
    case 5:
        return "five";
    case 6:
        return "six";
    case 7:
        return "seven";
    case 8:
        return "eight";
    case 9:
        return "nine";
    case 10:
        return "ten";
    default:
        return "many";
    }
}

/* Every case falls into the next: a jump into the middle of straight-line code, which
 * only the jump table tells. Volatile, so that the compiler keeps one add per case. */
static int fall_through(int op)
{
    volatile int steps = 0;
    switch (op % 8) {
    case 0:
        steps++;
        /* fall through */
    case 1:
        steps++;
        /* fall through */
    case 2:
        steps++;
        /* fall through */
    case 3:
        steps++;
        /* fall through */
    case 4:
        steps++;
        /* fall through */
    case 5:
        steps++;
        /* fall through */
    case 6:
        steps++;
        /* fall through */
    default:
        steps++;
    }
    return steps;
}

static long run_program(const char *program)
{
    static void *ops[256];
    long stack[64];
    long operand = 1;
    int depth = 0;
    for (int i = 0; i < 256; i++)
        ops[i] = &&bad;
    for (int c = '0'; c <= '9'; c++)
        ops[c] = &&push;
    ops['+'] = &&add;
    ops['i'] = &&again;
    ops['*'] = &&mul;
    ops['p'] = &&print;
    ops[0] = &&done;
    const char *pc = program;
    goto *ops[(unsigned char)*pc];
push:
    stack[depth++] = *pc - '0';
    goto *ops[(unsigned char)*++pc];
add:
    operand = stack[--depth];
    /* fall through: 'i' enters here by its computed goto, adding the last operand again */
again:
    stack[depth - 1] += operand;
    goto *ops[(unsigned char)*++pc];
mul:
    depth--;
    stack[depth - 1] *= stack[depth];
    goto *ops[(unsigned char)*++pc];
print:
    printf("%ld\n", stack[depth - 1]);
    goto *ops[(unsigned char)*++pc];
bad:
    fprintf(stderr, "bad op %c\n", *pc);
    return -1;
done:
    return depth ? stack[depth - 1] : 0;
}

/* Not inlined, and returns when `really` is 0: the compiler cannot drop the code after
 * its call as unreachable. */
static __attribute__((noinline)) void leave(int really)
{
    if (really)
        longjmp(escape, 1);
}

static int never_after_leave;

static void jump(int really)
{
    puts("before");
    leave(really);
    never_after_leave++;  /* in leave()'s block, were calls not block ends */
    puts("after");
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "switch") == 0) {
        int n = atoi(argv[2]);
        size_t letters = 0;
        for (int i = 0; i < n; i++)
            letters += strlen(classify(i)) + fall_through(i);
        printf("%zu\n", letters);
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "goto") == 0)
        return run_program(argv[2]) < 0;
    if (argc >= 2 && strcmp(argv[1], "jump") == 0) {
        if (setjmp(escape) == 0)
            jump(argc > 1);
        printf("%d\n", never_after_leave);
        return 0;
    }
    fprintf(stderr, "usage: dispatch switch N | goto PROGRAM | jump\n");
    return 2;
}
