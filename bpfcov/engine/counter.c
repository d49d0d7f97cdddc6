// The one BPF program bpfcov loads. It is attached to every probe of a traced object
// through uprobe_multi links (or, on kernels before 6.6, one perf-event link per probe);
// each probe's cookie is its index in the `counts` array, so a hit is one array slot and
// one atomic add: no hashing, no lookups by address.
//
// Compile-time settings (passed by the loader with -D):
//   MAX_PROBES    size of the counts array (the number of probes, at least 1)
//   HIT_MODE      report a probe's first and HOT_HITS-th hit through `hit_events`
//   FOLLOW        catch the traced processes' new children and their execs, and the
//                 command's exec when CGROUP_START is set, so user space can give each
//                 its own links (below)
//   CGROUP_START  a task of the cgroup v2 whose id is in `target_cgroup` that execs while
//                 not yet traced is the command of `bpfcov run`: catch it
//   LOADER_HOOK   also build on_loader_event, for the dynamic loader's _dl_debug_state
//   RAW_SYSCALLS  catch children on raw_syscalls:sys_exit (kernels without syscalls:*)
//   EMPTY_PROGRAM do nothing: bench/ prices the counting against the bare trap with it

#include <uapi/linux/ptrace.h>

// Mmapable, so user space reads every count with one memory copy instead of one syscall
// per probe (there can be hundreds of thousands).
BPF_F_TABLE("array", u32, u64, counts, MAX_PROBES, BPF_F_MMAPABLE);


#if defined(HIT_MODE) || defined(FOLLOW) || defined(LOADER_HOOK)
// Whether the program may stop processes for user space (1 while tracing). Cleared before
// bpfcov lets go of them, so that no process is stopped with nobody left to continue it.
BPF_ARRAY(may_stop, u32, 1);

static __always_inline int stopping_allowed(void)
{
    u32 zero = 0;
    u32 *allowed = may_stop.lookup(&zero);
    return allowed && *allowed;
}
#endif

#ifdef HIT_MODE
// Two moments of a probe's life are reported: its first hit, whose time lets user space
// measure how long the probe keeps trapping (CLOCK_MONOTONIC, as Python's
// time.monotonic_ns), and its HOT_HITS-th hit, which asks user space to take the probe out.
// Taking a probe out means replacing its link (tracer.py), which costs the traced process
// more than a few traps: a probe hit fewer times is left in place. Written only on those
// transitions, so the traffic is bounded by the number of probes, not of calls.
enum { HIT_FIRST = 1, HIT_HOT = 2 };  // bits: with HOT_HITS 1, a hit is both
struct hit_event {
    u32 probe;
    u32 kind;
    u64 ns;
    u32 pid;      // stopped at a hot hit, for user space to continue
    u32 unused;
};
BPF_RINGBUF_OUTPUT(hit_events, RINGBUF_PAGES);
// Records the ring had no room for: user space then reads the counts for what it missed.
BPF_ARRAY(lost_events, u64, 1);
#endif

int on_probe(struct pt_regs *ctx)
{
#ifdef EMPTY_PROGRAM
    return 0;
#endif
    // No check of who is running: every link has the pid of one traced process, so the
    // kernel runs this only for them (and puts no breakpoint in any other process).
    u32 index = (u32)bpf_get_attach_cookie(ctx);
    u64 *count = counts.lookup(&index);
    if (!count)
        return 0;
    // Atomic: many threads on many CPUs may hit the same probe, and counts must be exact.
    u64 before = __sync_fetch_and_add(count, 1);
#ifdef HIT_MODE
    u64 now = before + 1;
    if (now == 1 || now == HOT_HITS) {
        struct hit_event *event = hit_events.ringbuf_reserve(sizeof(struct hit_event));
        if (!event) {
            u32 zero = 0;
            u64 *lost = lost_events.lookup(&zero);
            if (lost)
                __sync_fetch_and_add(lost, 1);
            return 0;
        }
        event->probe = index;
        event->kind = (now == 1 ? HIT_FIRST : 0) | (now == HOT_HITS ? HIT_HOT : 0);
        event->ns = bpf_ktime_get_ns();
        event->pid = 0;
        event->unused = 0;
        if (now == HOT_HITS && stopping_allowed()) {
            // The process waits, stopped, while user space takes the probe out: a relink
            // while it runs contends with its every trap for its mmap lock, and takes
            // tens of times longer (tracer.py). Only with the event reserved: user space
            // must hear of every stop, to end it.
            bpf_send_signal(19 /* SIGSTOP */);
            event->pid = bpf_get_current_pid_tgid() >> 32;
        }
        hit_events.ringbuf_submit(event, 0);
    }
#endif
    return 0;
}

#if defined(FOLLOW) || defined(LOADER_HOOK)
// Processes stopped for user space, which attaches their links and then sends SIGCONT.
// The stop is sent before the event, so that SIGCONT always comes after it.
enum { EVENT_FORK = 1, EVENT_EXEC = 2, EVENT_LOADER = 3 };
struct process_event {
    u32 kind;
    u32 pid;
};
BPF_RINGBUF_OUTPUT(process_events, 16);

static __always_inline void stop_for_user_space(u32 kind, u32 pid)
{
    if (!stopping_allowed())
        return;
    bpf_send_signal(19 /* SIGSTOP */);
    struct process_event event = {kind, pid};
    process_events.ringbuf_output(&event, sizeof(event), 0);
}
#endif

#ifdef FOLLOW
// Thread group ids of the processes being traced (user space adds and removes them; a
// caught child is added here).
BPF_HASH(traced, u32, u8, MAX_PROCESSES);
// Children of traced processes that have not yet returned to user space.
BPF_HASH(newborn, u32, u8, MAX_PROCESSES);

// A process outside the trace never traps on bpfcov's probes: links carry pids. But a
// forked child inherits its parent's breakpoints and not its links, and the kernel removes
// a breakpoint that no link of the process wants at its first hit. So every child of a
// traced process is stopped before its first instruction and given links of its own.
//
// sched_process_fork runs in the parent, which bpf_send_signal cannot aim at the child;
// the child is marked here and stopped on its own return from the syscall below.
TRACEPOINT_PROBE(sched, sched_process_fork)
{
    u32 parent = bpf_get_current_pid_tgid() >> 32;
    if (!traced.lookup(&parent))
        return 0;
    u32 child = args->child_pid;
    u8 one = 1;
    newborn.update(&child, &one);
    return 0;
}

static __always_inline void catch_newborn(long ret)
{
    if (ret != 0)
        return;  // the parent's return, or a failure
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if ((u32)id != tgid)
        return;  // a new thread: it shares its process's links
    if (!newborn.lookup(&tgid))
        return;
    newborn.delete(&tgid);
    u8 one = 1;
    traced.update(&tgid, &one);
    stop_for_user_space(EVENT_FORK, tgid);
}

#ifdef RAW_SYSCALLS
TRACEPOINT_PROBE(raw_syscalls, sys_exit)
{
    long nr = args->id;
    if (nr == 56 || nr == 57 || nr == 58 || nr == 435)  // clone, fork, vfork, clone3
        catch_newborn(args->ret);
    return 0;
}
#else
TRACEPOINT_PROBE(syscalls, sys_exit_clone) { catch_newborn(args->ret); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_clone3) { catch_newborn(args->ret); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_fork) { catch_newborn(args->ret); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_vfork) { catch_newborn(args->ret); return 0; }
#endif

#ifdef CGROUP_START
BPF_ARRAY(target_cgroup, u64, 1);
#endif

// An exec is where a new program exists and has not yet run an instruction. A traced
// process that execs (a test runner starting a test) is stopped there, so that user space
// can probe the program it now runs: its links on libraries follow it across the exec, but
// the new executable has none. `bpfcov run` also catches its own command here: it starts
// in a cgroup of its own, and the first exec in it is the command's.
TRACEPOINT_PROBE(sched, sched_process_exec)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (traced.lookup(&tgid)) {
        stop_for_user_space(EVENT_EXEC, tgid);
        return 0;
    }
#ifdef CGROUP_START
    u32 zero = 0;
    u64 *wanted = target_cgroup.lookup(&zero);
    if (!wanted || *wanted != bpf_get_current_cgroup_id())
        return 0;
    u8 one = 1;
    traced.update(&tgid, &one);
    stop_for_user_space(EVENT_EXEC, tgid);
#endif
    return 0;
}
#endif

#ifdef LOADER_HOOK
// The dynamic loader calls _dl_debug_state (the debugger's r_brk hook) after it maps
// objects, at start-up and for dlopen, and before it runs their constructors. Stopping the
// process there lets user space attach to the new libraries before any of their code runs.
int on_loader_event(struct pt_regs *ctx)
{
    stop_for_user_space(EVENT_LOADER, bpf_get_current_pid_tgid() >> 32);
    return 0;
}
#endif
