#ifndef REMORA_CLIBUV_SHIM_H
#define REMORA_CLIBUV_SHIM_H
#include <uv.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <string.h>
#include <errno.h>
#include <signal.h>
#include <unistd.h>

/* Helpers for what Swift cannot import or call conveniently. */

/* Creates a non-blocking TCP socket bound to `addr`, ready for uv_tcp_open + uv_listen.
 * `first` binds without SO_REUSEPORT, so the bind fails when anything else holds the port, and
 * sets SO_REUSEPORT only afterwards; the worker siblings then bind the same port with it set
 * (libuv 1.44 has no flag for SO_REUSEPORT). Returns the fd, or -errno. */
static inline int remora_reuseport_socket(const struct sockaddr *addr, int first) {
    int domain = addr->sa_family;
    int fd = socket(domain, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        (!first && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0)) {
        int e = errno; close(fd); return -e;
    }
    if (domain == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);   /* accepted sockets inherit it */
    socklen_t len = domain == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    if (bind(fd, addr, len) != 0) { int e = errno; close(fd); return -e; }
    if (first && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
        int e = errno; close(fd); return -e;
    }
    /* Listening at once makes the port exclusive right away (two bound, non-listening sockets
     * with SO_REUSEADDR may share a port); uv_listen later only sets the backlog again. */
    if (listen(fd, 1024) != 0) { int e = errno; close(fd); return -e; }
    return fd;
}

/* The destination a connection had before iptables REDIRECT sent it here (netfilter's
 * SO_ORIGINAL_DST for IPv4, IP6T_SO_ORIGINAL_DST for IPv6; both are option 80, at SOL_IP and
 * SOL_IPV6). Written into `out`, and the connection's local address (where it was accepted) into
 * `local`; returns 0, or -errno (ENOENT: no NAT entry, the connection was not redirected). The
 * constants are spelled out: <linux/netfilter_ipv4.h> clashes with <netinet/in.h>. */
#define REMORA_SO_ORIGINAL_DST 80
static inline int remora_original_dst(uv_tcp_t *t, struct sockaddr_storage *out, struct sockaddr_storage *local) {
    uv_os_fd_t fd;
    if (uv_fileno((const uv_handle_t *)t, &fd) != 0) return -EBADF;
    memset(local, 0, sizeof *local);
    socklen_t len = sizeof *local;
    if (getsockname(fd, (struct sockaddr *)local, &len) != 0) return -errno;
    memset(out, 0, sizeof *out);
    len = sizeof *out;
    int r = local->ss_family == AF_INET6
        ? getsockopt(fd, SOL_IPV6, REMORA_SO_ORIGINAL_DST, out, &len)
        : getsockopt(fd, SOL_IP, REMORA_SO_ORIGINAL_DST, out, &len);
    return r == 0 ? 0 : -errno;
}

static inline uv_stream_t *remora_stream(uv_tcp_t *t) { return (uv_stream_t *)t; }
static inline uv_handle_t *remora_handle_tcp(uv_tcp_t *t) { return (uv_handle_t *)t; }
static inline uv_handle_t *remora_handle_timer(uv_timer_t *t) { return (uv_handle_t *)t; }
static inline uv_handle_t *remora_handle_async(uv_async_t *t) { return (uv_handle_t *)t; }
static inline uv_handle_t *remora_handle_signal(uv_signal_t *t) { return (uv_handle_t *)t; }
static inline uv_handle_t *remora_handle_fs_event(uv_fs_event_t *t) { return (uv_handle_t *)t; }
static inline uv_handle_t *remora_handle_stream(uv_stream_t *t) { return (uv_handle_t *)t; }

static inline int remora_sockaddr_port(const struct sockaddr *sa) {
    if (sa->sa_family == AF_INET) return ntohs(((const struct sockaddr_in *)sa)->sin_port);
    if (sa->sa_family == AF_INET6) return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
    return 0;
}

/* Writes the numeric address (no port) of `sa` into dst; returns its length or 0. */
static inline int remora_sockaddr_ip(const struct sockaddr *sa, char *dst, size_t cap) {
    int r = -1;
    if (sa->sa_family == AF_INET) r = uv_ip4_name((const struct sockaddr_in *)sa, dst, cap);
    else if (sa->sa_family == AF_INET6) r = uv_ip6_name((const struct sockaddr_in6 *)sa, dst, cap);
    if (r != 0) return 0;
    return (int)strlen(dst);
}

/* Whether TCP_NODELAY is on for the socket of `t` (an accepted socket inherits it from its
 * listening socket on Linux: `Listener` checks the first one and then skips the setsockopt). */
static inline int remora_tcp_nodelay_is_on(uv_tcp_t *t) {
    uv_os_fd_t fd;
    if (uv_fileno((const uv_handle_t *)t, &fd) != 0) return 0;
    int v = 0;
    socklen_t len = sizeof v;
    return getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, &len) == 0 && v != 0;
}

/* The libuv handles one TCP connection always has, in one allocation: the socket and its timer. */
typedef struct remora_conn_handles {
    uv_tcp_t tcp;
    uv_timer_t timer;
} remora_conn_handles;

/* The requests libuv wants embedded (one write, connect and shutdown at a time), in a second
 * allocation made on first need: an accepted connection whose writes all leave through
 * uv_try_write never makes it (368 bytes an idle keep-alive connection does not hold). */
typedef struct remora_conn_requests {
    uv_write_t write_req;
    uv_connect_t connect_req;
    uv_shutdown_t shutdown_req;
} remora_conn_requests;

static inline uv_write_t *remora_cr_write(remora_conn_requests *r) { return &r->write_req; }
static inline uv_connect_t *remora_cr_connect(remora_conn_requests *r) { return &r->connect_req; }
static inline uv_shutdown_t *remora_cr_shutdown(remora_conn_requests *r) { return &r->shutdown_req; }

static inline void remora_ignore_sigpipe(void) { signal(SIGPIPE, SIG_IGN); }

#endif
