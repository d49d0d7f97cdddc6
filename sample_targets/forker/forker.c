/* forker K: the parent forks K workers, each runs worker_task() once and exits; the
 * parent never runs worker_task itself. With `forker K exec`, each worker instead execs
 * /bin/true after worker_task (the exec'd program is not this binary).
 * Expected: main 1, spawn K, worker_task K, parent_summary 1. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

__attribute__((noinline)) int worker_task(int id)
{
    return id * id;
}

static pid_t spawn(int id, int do_exec)
{
    pid_t pid = fork();
    if (pid == 0) {
        int r = worker_task(id);
        if (do_exec)
            execl("/bin/true", "true", (char *)NULL);
        exit(r & 0x7f); /* exit, not _exit: gcov writes its counts at exit */
    }
    return pid;
}

__attribute__((noinline)) void parent_summary(int k, int total)
{
    printf("%d workers, total %d\n", k, total);
}

int main(int argc, char **argv)
{
    int k = argc > 1 ? atoi(argv[1]) : 3;
    int do_exec = argc > 2 && strcmp(argv[2], "exec") == 0;
    int total = 0;
    for (int i = 0; i < k; i++)
        spawn(i, do_exec);
    for (int i = 0; i < k; i++) {
        int status;
        if (wait(&status) > 0 && WIFEXITED(status))
            total += WEXITSTATUS(status);
    }
    parent_summary(k, total);
    return 0;
}
