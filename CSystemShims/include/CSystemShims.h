// CSystemShims: the GNU C library calls that LNet's service threads need and Swift cannot call directly.
//
// glibc declares these only under _GNU_SOURCE (pthread_setaffinity_np, pthread_setname_np, ppoll) or as macros
// (CPU_SET, CPU_ISSET), and <sys/eventfd.h> is not part of Swift's Glibc module. Each is wrapped as a real C
// function with the `CSystemShims_` prefix, as CNIOLinux does for swift-nio. No business logic lives in C. The
// verbs and rdma_cm shims are CShims' (which links libibverbs and librdmacm; this one links nothing).
#ifndef CSYSTEMSHIMS_H
#define CSYSTEMSHIMS_H

#include <poll.h>
#include <stdint.h>
#include <sys/eventfd.h>

/// Binds the calling thread to the `count` CPUs in `cpus` (`pthread_setaffinity_np` with a `CPU_SET`-built
/// mask). Returns 0 or the errno value.
int CSystemShims_bind_current_thread(const int *cpus, int count);

/// Writes the CPUs the calling thread may run on into `cpus` (at most `capacity`); returns how many, or -1.
int CSystemShims_current_thread_cpus(int *cpus, int capacity);

/// Names the calling thread (`pthread_setname_np`; the kernel keeps 15 bytes). Returns 0 or the errno value.
int CSystemShims_name_current_thread(const char *name);

// sched_getcpu(3): the CPU the calling thread runs on now (-1 on error).
int CSystemShims_current_cpu(void);

// A per-thread integer (a C `__thread` variable, -1 until set): the CPU partition a service thread serves.
void CSystemShims_set_thread_partition(int partition);
int CSystemShims_thread_partition(void);

/// `ppoll` with a timeout in nanoseconds (negative: no limit) and no signal mask change. Returns what ppoll
/// returns (-1 with errno set on failure).
int CSystemShims_poll(struct pollfd *fds, unsigned long count, int64_t timeout_ns);

#endif
