#define _GNU_SOURCE
#include "CShims.h"

_Static_assert(sizeof(union ibv_gid) == 16, "a GID is 16 bytes");

int CShims_ibv_query_port(struct ibv_context *context, uint8_t port_num, struct ibv_port_attr *port_attr) {
    return ibv_query_port(context, port_num, port_attr);
}

struct ibv_mr *CShims_ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t length, int access) {
    return ibv_reg_mr(pd, addr, length, access);
}

// IB CM REQ carries 92 bytes of private data, of which rdma_cm's TCP port space header takes 36: 56 left.
// REP carries 196, REJ 148 (IBTA vol 1, 12.6).
const uint8_t CShims_RDMA_CM_CONNECT_PRIVATE_DATA_MAX = 56;
const uint8_t CShims_RDMA_CM_ACCEPT_PRIVATE_DATA_MAX = 196;
const uint8_t CShims_RDMA_CM_REJECT_PRIVATE_DATA_MAX = 148;
