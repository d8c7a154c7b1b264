#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
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

int CShims_bind_current_thread(const int *cpus, int count) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int i = 0; i < count; i++) {
        if (cpus[i] < 0 || cpus[i] >= CPU_SETSIZE) return EINVAL;
        CPU_SET(cpus[i], &set);
    }
    return pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

int CShims_current_thread_cpus(int *cpus, int capacity) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (pthread_getaffinity_np(pthread_self(), sizeof(set), &set) != 0) return -1;
    int n = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE && n < capacity; cpu++) {
        if (CPU_ISSET(cpu, &set)) cpus[n++] = cpu;
    }
    return n;
}

int CShims_name_current_thread(const char *name) {
    char truncated[16];
    strncpy(truncated, name, sizeof(truncated) - 1);
    truncated[sizeof(truncated) - 1] = 0;
    return pthread_setname_np(pthread_self(), truncated);
}
