// The one BPF program bpfcov loads. It is attached to every probe of a traced object
// through uprobe_multi links; each probe's cookie is its index in the `counts` array, so a
// hit is one array slot and one atomic add: no hashing, no lookups by address.
//
// Compile-time settings (passed by the loader with -D):
//   MAX_PROBES    size of the counts array (the number of probes, at least 1)
//   HIT_MODE      report a probe's first hit through the `first_hits` ring buffer
//   CGROUP_FILTER count only tasks whose cgroup v2 id equals the `target_cgroup` entry
//   LOADER_HOOK   also build on_loader_event, for the dynamic loader's _dl_debug_state
//   EMPTY_PROGRAM do nothing: bench/ prices the counting against the bare trap with it

#include <uapi/linux/ptrace.h>

// Mmapable, so user space reads every count with one memory copy instead of one syscall
// per probe (there can be hundreds of thousands).
BPF_F_TABLE("array", u32, u64, counts, MAX_PROBES, BPF_F_MMAPABLE);

#ifdef CGROUP_FILTER
BPF_ARRAY(target_cgroup, u64, 1);

// True when the current task belongs to the traced command's cgroup.
static __always_inline int in_target_cgroup(void)
{
    u32 zero = 0;
    u64 *wanted = target_cgroup.lookup(&zero);
    return wanted && *wanted == bpf_get_current_cgroup_id();
}
#endif

#ifdef HIT_MODE
// Written only on a probe's 0 -> 1 transition, so its traffic is bounded by the number of
// probes, not by the number of calls. The payload is the probe index.
BPF_RINGBUF_OUTPUT(first_hits, RINGBUF_PAGES);
#endif

int on_probe(struct pt_regs *ctx)
{
#ifdef EMPTY_PROGRAM
    return 0;
#endif
#ifdef CGROUP_FILTER
    if (!in_target_cgroup())
        return 0;
#endif
    u32 index = (u32)bpf_get_attach_cookie(ctx);
    u64 *count = counts.lookup(&index);
    if (!count)
        return 0;
    // Atomic: many threads on many CPUs may hit the same probe, and counts must be exact.
    u64 before = __sync_fetch_and_add(count, 1);
#ifdef HIT_MODE
    if (before == 0)
        first_hits.ringbuf_output(&index, sizeof(index), 0);
#endif
    return 0;
}

#ifdef LOADER_HOOK
// The dynamic loader calls _dl_debug_state (the debugger's r_brk hook) after it maps
// objects for dlopen and before it runs their constructors. Stopping the process there
// lets user space attach to a new library before any of its code runs; user space sends
// SIGCONT once the probes are in place. The payload is the stopped process's pid.
BPF_RINGBUF_OUTPUT(loader_events, 16);

int on_loader_event(struct pt_regs *ctx)
{
#ifdef CGROUP_FILTER
    if (!in_target_cgroup())
        return 0;
#endif
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    // The stop is sent before the event, so user space's SIGCONT always comes after it.
    bpf_send_signal(19 /* SIGSTOP */);
    loader_events.ringbuf_output(&pid, sizeof(pid), 0);
    return 0;
}
#endif
