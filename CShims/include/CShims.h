// CShims: the parts of libibverbs and librdmacm that Swift cannot call directly.
//
// Only macros and macro-dispatched inline functions are wrapped here, each as a real C function with the
// `CShims_` prefix. Everything else (ibv_post_send, ibv_poll_cq, rdma_* ...) Swift imports from the system
// headers re-exported below. No business logic lives in C. Besides verbs: the GNU thread calls the LND's service
// threads need (CPU affinity, thread names), which glibc declares only under _GNU_SOURCE and partly as macros.
#ifndef CSHIMS_H
#define CSHIMS_H

#include <stddef.h>
#include <stdint.h>
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>
#include <sys/eventfd.h>

/// `ibv_query_port` is a macro that Swift resolves to a compat symbol with a different struct layout.
int CShims_ibv_query_port(struct ibv_context *context, uint8_t port_num, struct ibv_port_attr *port_attr);

/// `ibv_reg_mr` is a macro; calling it from C takes the `ibv_reg_mr_iova2` path with the right flags.
struct ibv_mr *CShims_ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t length, int access);

/// The verbs library's version of the RDMA-CM private-data limits (bytes), per operation on an RC/TCP port space.
extern const uint8_t CShims_RDMA_CM_CONNECT_PRIVATE_DATA_MAX;
extern const uint8_t CShims_RDMA_CM_ACCEPT_PRIVATE_DATA_MAX;
extern const uint8_t CShims_RDMA_CM_REJECT_PRIVATE_DATA_MAX;

/// Binds the calling thread to the `count` CPUs in `cpus` (`pthread_setaffinity_np` with a `CPU_SET`-built
/// mask). Returns 0 or the errno value.
int CShims_bind_current_thread(const int *cpus, int count);

/// Writes the CPUs the calling thread may run on into `cpus` (at most `capacity`); returns how many, or -1.
int CShims_current_thread_cpus(int *cpus, int capacity);

/// Names the calling thread (`pthread_setname_np`; the kernel keeps 15 bytes). Returns 0 or the errno value.
int CShims_name_current_thread(const char *name);

#endif
