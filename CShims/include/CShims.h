// CShims: the parts of libibverbs and librdmacm that Swift cannot call directly.
//
// Only macros and macro-dispatched inline functions are wrapped here, each as a real C function with the
// `CShims_` prefix. Everything else (ibv_post_send, ibv_poll_cq, rdma_* ...) Swift imports from the system
// headers re-exported below. No business logic lives in C. The GNU thread calls the service threads need
// (CPU affinity, thread names) are CSystemShims', below LNet, which knows nothing of verbs.
#ifndef CSHIMS_H
#define CSHIMS_H

#include <stddef.h>
#include <stdint.h>
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

/// `ibv_query_port` is a macro that Swift resolves to a compat symbol with a different struct layout.
int CShims_ibv_query_port(struct ibv_context *context, uint8_t port_num, struct ibv_port_attr *port_attr);

/// `ibv_reg_mr` is a macro; calling it from C takes the `ibv_reg_mr_iova2` path with the right flags.
struct ibv_mr *CShims_ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t length, int access);

/// The verbs library's version of the RDMA-CM private-data limits (bytes), per operation on an RC/TCP port space.
extern const uint8_t CShims_RDMA_CM_CONNECT_PRIVATE_DATA_MAX;
extern const uint8_t CShims_RDMA_CM_ACCEPT_PRIVATE_DATA_MAX;
extern const uint8_t CShims_RDMA_CM_REJECT_PRIVATE_DATA_MAX;

#endif
