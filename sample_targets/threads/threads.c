/* threads N M [exit]: N threads each call work() M times; prints the total.
 * Expected: main 1, worker N, work N*M (exact under any scheduling).
 * With "exit", the first thread calls exit(3) halfway through its loop instead: the whole
 * process ends from inside a thread, with status 3. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long iterations;
static int exit_from_thread;
static long *first_sum;

__attribute__((noinline)) long work(long x)
{
    return x * 3 + 1;
}

static void *worker(void *arg)
{
    long sum = 0;
    for (long i = 0; i < iterations; i++) {
        sum += work(i);
        if (exit_from_thread && arg == first_sum && i == iterations / 2)
            exit(3);
    }
    *(long *)arg = sum;
    return NULL;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 4;
    iterations = argc > 2 ? atol(argv[2]) : 1000;
    pthread_t *tids = calloc(n, sizeof *tids);
    long *sums = calloc(n, sizeof *sums);
    exit_from_thread = argc > 3 && strcmp(argv[3], "exit") == 0;
    first_sum = &sums[0];
    for (int i = 0; i < n; i++)
        pthread_create(&tids[i], NULL, worker, &sums[i]);
    long total = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(tids[i], NULL);
        total += sums[i];
    }
    printf("%ld\n", total);
    free(tids);
    free(sums);
    return 0;
}
