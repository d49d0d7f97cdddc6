/* launcher PROGRAM [ARGS...]: what a test runner does, at its smallest. It forks, the
 * child execs PROGRAM with ARGS (the program, not this binary, does the work), and the
 * parent waits and exits with the child's status. `launcher -s PROGRAM ...` uses
 * posix_spawn instead, as make and many runners do (vfork and exec in one call).
 * Expected: main 1, run_forked or run_spawned 1, report_status 1. */
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

__attribute__((noinline)) static pid_t run_forked(char **argv)
{
    pid_t pid = fork();
    if (pid == 0) {
        execvp(argv[0], argv);
        perror(argv[0]);
        _exit(127);
    }
    return pid;
}

__attribute__((noinline)) static pid_t run_spawned(char **argv)
{
    pid_t pid;
    if (posix_spawnp(&pid, argv[0], NULL, NULL, argv, environ) != 0) {
        perror(argv[0]);
        return -1;
    }
    return pid;
}

__attribute__((noinline)) static int report_status(int status)
{
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    fprintf(stderr, "launcher: the program was killed by signal %d\n", WTERMSIG(status));
    return 128 + WTERMSIG(status);
}

int main(int argc, char **argv)
{
    int spawned = argc > 1 && strcmp(argv[1], "-s") == 0;
    char **program = argv + 1 + spawned;
    if (!*program) {
        fprintf(stderr, "usage: launcher [-s] PROGRAM [ARGS...]\n");
        return 2;
    }
    pid_t pid = spawned ? run_spawned(program) : run_forked(program);
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) < 0)
        return 127;
    return report_status(status);
}
