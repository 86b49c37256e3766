/*
 * test_api: libberth's C API against a running daemon, one check per line of output.
 *
 *   test_api <pool_lo> <pool_hi> <port_base>   the full suite; the daemon's wildcard pool is
 *                                              pool_lo..pool_hi, specific reservations are
 *                                              taken from port_base..port_base+9
 *   test_api unavailable                       BERTH_SOCKET names no daemon: ECONNREFUSED
 *
 * Exits 0 when every check passed, 1 otherwise (each failed check says what it expected and
 * what it got). Run by tests/c.rs.
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "berth.h"

static int checks = 0;
static int failures = 0;
static unsigned pool_lo, pool_hi, port_base;

static const char *errno_name(int e) {
    switch (e) {
    case 0: return "0";
    case EINVAL: return "EINVAL";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case EADDRINUSE: return "EADDRINUSE";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    case ENOENT: return "ENOENT";
    case EACCES: return "EACCES";
    case EDQUOT: return "EDQUOT";
    case ECONNREFUSED: return "ECONNREFUSED";
    case EPROTO: return "EPROTO";
    case EIO: return "EIO";
    default: return strerror(e);
    }
}

/* A plain condition. */
#define CHECK(cond, ...) check((cond), __LINE__, #cond, __VA_ARGS__)
static void check(int ok, int line, const char *what, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void check(int ok, int line, const char *what, const char *fmt, ...) {
    checks++;
    if (ok) {
        return;
    }
    failures++;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL line %d: %s: ", line, what);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

/* `call` must fail with -1 and errno `want`, and leave a non-empty message. */
#define EXPECT_ERR(want, call) expect_err(__LINE__, #call, (want), (call))
static void expect_err(int line, const char *what, int want, int rc) {
    int err = errno; /* first: nothing may change it before it is read */
    const char *msg = berth_last_error_message();
    checks++;
    if (rc != -1 || err != want) {
        failures++;
        fprintf(stderr, "FAIL line %d: %s: want -1 with %s, got %d with %s (message \"%s\")\n",
                line, what, errno_name(want), rc, rc == 0 ? "-" : errno_name(err),
                msg ? msg : "(null)");
        return;
    }
    if (msg == NULL || msg[0] == '\0') {
        failures++;
        fprintf(stderr, "FAIL line %d: %s: failed with %s but the message is empty\n", line,
                what, errno_name(want));
        return;
    }
    printf("ok   %s -> %s: %s\n", what, errno_name(want), msg);
}

/* `call` must succeed (0) and leave the message "". Returns 0 when it did. */
#define EXPECT_OK(call) expect_ok(__LINE__, #call, (call))
static int expect_ok(int line, const char *what, int rc) {
    int err = errno;
    const char *msg = berth_last_error_message();
    checks++;
    if (rc != 0) {
        failures++;
        fprintf(stderr, "FAIL line %d: %s: want 0, got %d with %s (message \"%s\")\n", line,
                what, rc, errno_name(err), msg ? msg : "(null)");
        return -1;
    }
    if (msg == NULL || msg[0] != '\0') {
        failures++;
        fprintf(stderr, "FAIL line %d: %s: succeeded but the message is \"%s\", not \"\"\n",
                line, what, msg ? msg : "(null)");
        return -1;
    }
    printf("ok   %s\n", what);
    return 0;
}

/* Stops the run when a step that later checks depend on failed. */
static void require(int ok, int line) {
    if (!ok) {
        fprintf(stderr, "test_api: stopping after the failure at line %d (%d of %d checks failed)\n",
                line, failures, checks);
        exit(1);
    }
}
#define REQUIRE_OK(call) require(expect_ok(__LINE__, #call, (call)) == 0, __LINE__)

static berth_port_range range_of(unsigned start, unsigned count) {
    berth_port_range r = {(uint16_t)start, (uint16_t)count};
    return r;
}

static int new_socket(int family, int type) {
    int fd = socket(family, type, 0);
    if (fd < 0) {
        fprintf(stderr, "test_api: socket(%d, %d) failed: %s\n", family, type, strerror(errno));
        exit(1);
    }
    return fd;
}

/* The local port of `fd` (host order), 0 if it has none. */
static unsigned port_of(int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) {
        return 0;
    }
    if (ss.ss_family == AF_INET) {
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    }
    if (ss.ss_family == AF_INET6) {
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    return 0;
}

static int in_block(unsigned port, const berth_port_reservation_instance *r) {
    unsigned start = r->reservation.start_port;
    return port >= start && port < start + r->reservation.number_of_ports;
}

static struct sockaddr_in ipv4(uint32_t host_order_addr, unsigned port) {
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)port);
    sin.sin_addr.s_addr = htonl(host_order_addr);
    return sin;
}

static void test_invalid_arguments(void) {
    puts("-- invalid-argument (EINVAL)");
    berth_port_reservation_instance out;
    berth_port_range r = range_of(port_base, 0);
    EXPECT_ERR(EINVAL, berth_acquire_port_reservation(IPPROTO_TCP, &r, &out)); /* count 0 */
    r = range_of(65535, 2);
    EXPECT_ERR(EINVAL, berth_acquire_port_reservation(IPPROTO_UDP, &r, &out)); /* past 65535 */
    r = range_of(port_base, 1);
    EXPECT_ERR(EINVAL, berth_acquire_port_reservation(99, &r, &out));
    EXPECT_ERR(EINVAL, berth_acquire_port_reservation(IPPROTO_TCP, &r, NULL));
    EXPECT_ERR(EINVAL, berth_acquire_port_reservation(IPPROTO_TCP, NULL, &out));
    EXPECT_ERR(EINVAL, berth_release_port_reservation(0));

    int fd = new_socket(AF_INET, SOCK_STREAM);
    EXPECT_ERR(EINVAL, berth_associate_port_reservation(fd, 0, NULL, 0));
    EXPECT_ERR(EINVAL, berth_associate_port_reservation(-1, 1, NULL, 0));
    EXPECT_ERR(EINVAL, berth_associate_port_reservation(1000, 1, NULL, 0)); /* not open */
    struct sockaddr_in sin = ipv4(INADDR_LOOPBACK, 0);
    EXPECT_ERR(EINVAL, berth_associate_port_reservation(fd, 1, (struct sockaddr *)&sin, 4));
    struct sockaddr_in other = sin;
    other.sin_family = AF_UNIX;
    EXPECT_ERR(EINVAL,
               berth_associate_port_reservation(fd, 1, (struct sockaddr *)&other, sizeof other));
    close(fd);
}

static void test_conflicts(void) {
    puts("-- conflict (EADDRINUSE)");
    berth_port_reservation_instance a, b, u;
    berth_port_range r = range_of(port_base, 2);
    REQUIRE_OK(berth_acquire_port_reservation(IPPROTO_TCP, &r, &a));
    CHECK(a.reservation.start_port == port_base && a.reservation.number_of_ports == 2,
          "got %u+%u", a.reservation.start_port, a.reservation.number_of_ports);
    CHECK(a.token != 0, "token 0");
    /* Held by this very process: still a conflict. */
    r = range_of(port_base + 1, 1);
    EXPECT_ERR(EADDRINUSE, berth_acquire_port_reservation(IPPROTO_TCP, &r, &b));
    /* UDP is another port space. */
    if (EXPECT_OK(berth_acquire_port_reservation(IPPROTO_UDP, &r, &u)) == 0) {
        EXPECT_OK(berth_release_port_reservation(u.token));
    }
    EXPECT_OK(berth_release_port_reservation(a.token));
    /* Released: the ports are free again. */
    if (EXPECT_OK(berth_acquire_port_reservation(IPPROTO_TCP, &r, &b)) == 0) {
        EXPECT_OK(berth_release_port_reservation(b.token));
    }

    /* A port in use on the host, not reserved: a conflict too. */
    int busy = new_socket(AF_INET, SOCK_STREAM);
    struct sockaddr_in sin = ipv4(INADDR_ANY, port_base + 5);
    CHECK(bind(busy, (struct sockaddr *)&sin, sizeof sin) == 0, "bind %u: %s", port_base + 5,
          strerror(errno));
    r = range_of(port_base + 4, 3);
    EXPECT_ERR(EADDRINUSE, berth_acquire_port_reservation(IPPROTO_TCP, &r, &b));
    close(busy);
}

static void test_pool_exhausted(void) {
    puts("-- pool-exhausted (EADDRNOTAVAIL)");
    berth_port_reservation_instance out;
    berth_port_range r = range_of(0, pool_hi - pool_lo + 2);
    EXPECT_ERR(EADDRNOTAVAIL, berth_acquire_port_reservation(IPPROTO_TCP, &r, &out));
}

static void test_not_found(void) {
    puts("-- not-found (ENOENT)");
    EXPECT_ERR(ENOENT, berth_release_port_reservation(0x0123456789abcdefULL));
    berth_port_reservation_instance res;
    berth_port_range r = range_of(0, 1);
    REQUIRE_OK(berth_acquire_port_reservation(IPPROTO_UDP, &r, &res));
    REQUIRE_OK(berth_release_port_reservation(res.token));
    EXPECT_ERR(ENOENT, berth_release_port_reservation(res.token));
    int fd = new_socket(AF_INET, SOCK_DGRAM);
    EXPECT_ERR(ENOENT, berth_associate_port_reservation(fd, res.token, NULL, 0));
    close(fd);
}

static void test_associate_spreads_fills_and_frees(void) {
    puts("-- associate: distinct ports, reservation-full (EADDRINUSE), close frees");
    berth_port_reservation_instance res;
    berth_port_range r = range_of(0, 2);
    REQUIRE_OK(berth_acquire_port_reservation(IPPROTO_TCP, &r, &res));
    unsigned start = res.reservation.start_port;
    CHECK(start >= pool_lo && start + 1 <= pool_hi && res.reservation.number_of_ports == 2,
          "wildcard block %u+%u outside the pool %u-%u", start,
          res.reservation.number_of_ports, pool_lo, pool_hi);

    int s1 = new_socket(AF_INET, SOCK_STREAM);
    REQUIRE_OK(berth_associate_port_reservation(s1, res.token, NULL, 0));
    unsigned p1 = port_of(s1);
    CHECK(in_block(p1, &res), "first port %u", p1);

    int s2 = new_socket(AF_INET, SOCK_STREAM);
    REQUIRE_OK(berth_associate_port_reservation(s2, res.token, NULL, 0));
    unsigned p2 = port_of(s2);
    CHECK(in_block(p2, &res), "second port %u", p2);
    CHECK(p1 != p2, "both sockets got port %u", p1);

    int s3 = new_socket(AF_INET, SOCK_STREAM);
    EXPECT_ERR(EADDRINUSE, berth_associate_port_reservation(s3, res.token, NULL, 0));
    CHECK(port_of(s3) == 0, "the refused socket is bound to %u", port_of(s3));

    /* Closing a bound socket frees its port for the next associate. */
    close(s1);
    REQUIRE_OK(berth_associate_port_reservation(s3, res.token, NULL, 0));
    CHECK(port_of(s3) == p1, "after closing the socket on %u the next got %u", p1, port_of(s3));

    close(s2);
    close(s3);
    EXPECT_OK(berth_release_port_reservation(res.token));
}

static void test_addresses(void) {
    puts("-- associate: IPv6 and IPv4, wildcard and explicit ::1 / 127.0.0.1");
    berth_port_reservation_instance res;
    berth_port_range r = range_of(0, 3);
    REQUIRE_OK(berth_acquire_port_reservation(IPPROTO_UDP, &r, &res));

    int a = new_socket(AF_INET6, SOCK_DGRAM);
    EXPECT_OK(berth_associate_port_reservation(a, res.token, NULL, 0));
    struct sockaddr_in6 got6;
    socklen_t len = sizeof got6;
    CHECK(getsockname(a, (struct sockaddr *)&got6, &len) == 0 && got6.sin6_family == AF_INET6 &&
              memcmp(&got6.sin6_addr, &in6addr_any, sizeof in6addr_any) == 0,
          "IPv6 wildcard socket not bound to [::]");
    CHECK(in_block(port_of(a), &res), "IPv6 wildcard port %u", port_of(a));

    int b = new_socket(AF_INET6, SOCK_DGRAM);
    struct sockaddr_in6 loop6;
    memset(&loop6, 0, sizeof loop6);
    loop6.sin6_family = AF_INET6;
    loop6.sin6_addr = in6addr_loopback;
    loop6.sin6_port = 0; /* any free port of the reservation */
    EXPECT_OK(berth_associate_port_reservation(b, res.token, (struct sockaddr *)&loop6,
                                               sizeof loop6));
    len = sizeof got6;
    CHECK(getsockname(b, (struct sockaddr *)&got6, &len) == 0 &&
              memcmp(&got6.sin6_addr, &in6addr_loopback, sizeof in6addr_loopback) == 0,
          "socket not bound to [::1]");
    CHECK(in_block(port_of(b), &res), "[::1] port %u", port_of(b));

    /* A non-zero port asks for exactly that port of the reservation. */
    int c = new_socket(AF_INET, SOCK_DGRAM);
    /* The one port of the 3-port block that a and b left. */
    uint16_t exact = res.reservation.start_port;
    while (exact == port_of(a) || exact == port_of(b))
        exact++;
    struct sockaddr_in loop4 = ipv4(INADDR_LOOPBACK, exact);
    EXPECT_OK(berth_associate_port_reservation(c, res.token, (struct sockaddr *)&loop4,
                                               sizeof loop4));
    CHECK(port_of(c) == exact, "asked for port %u, got %u", exact, port_of(c));
    /* A port outside the reservation is refused, never replaced by another. */
    int e = new_socket(AF_INET, SOCK_DGRAM);
    struct sockaddr_in outside = ipv4(INADDR_LOOPBACK, (uint16_t)(res.reservation.start_port + 3));
    EXPECT_ERR(EINVAL, berth_associate_port_reservation(e, res.token, (struct sockaddr *)&outside,
                                                        sizeof outside));
    close(e);
    struct sockaddr_in got4;
    len = sizeof got4;
    CHECK(getsockname(c, (struct sockaddr *)&got4, &len) == 0 &&
              got4.sin_addr.s_addr == htonl(INADDR_LOOPBACK),
          "socket not bound to 127.0.0.1");
    CHECK(in_block(port_of(c), &res), "127.0.0.1 port %u", port_of(c));
    CHECK(port_of(a) != port_of(b) && port_of(b) != port_of(c) && port_of(a) != port_of(c),
          "ports %u %u %u not distinct", port_of(a), port_of(b), port_of(c));

    /* An IPv6 address for an IPv4 socket does not fit. */
    int d = new_socket(AF_INET, SOCK_DGRAM);
    EXPECT_ERR(EINVAL, berth_associate_port_reservation(d, res.token, (struct sockaddr *)&loop6,
                                                        sizeof loop6));
    close(a);
    close(b);
    close(c);
    close(d);
    EXPECT_OK(berth_release_port_reservation(res.token));
}

static void test_not_supported(void) {
    puts("-- not-supported (EOPNOTSUPP)");
    berth_port_reservation_instance res;
    berth_port_range r = range_of(0, 1);
    REQUIRE_OK(berth_acquire_port_reservation(IPPROTO_TCP, &r, &res));
    int unix_fd = new_socket(AF_UNIX, SOCK_STREAM);
    EXPECT_ERR(EOPNOTSUPP, berth_associate_port_reservation(unix_fd, res.token, NULL, 0));
    close(unix_fd);
    int dgram = new_socket(AF_INET, SOCK_DGRAM);
    EXPECT_ERR(EOPNOTSUPP, berth_associate_port_reservation(dgram, res.token, NULL, 0));
    close(dgram);
    int stream = new_socket(AF_INET6, SOCK_STREAM);
    EXPECT_OK(berth_associate_port_reservation(stream, res.token, NULL, 0));
    close(stream);
    EXPECT_OK(berth_release_port_reservation(res.token));
}

static void test_persistent(void) {
    puts("-- persistent: create, lookup, conflict, associate, delete (the test runs as root)");
    uint64_t token = 0, found = 0, other = 0;
    unsigned p = port_base + 20;
    EXPECT_OK(berth_create_persistent_tcp_port_reservation(p, 2, &token));
    CHECK(token != 0, "token %llu", (unsigned long long)token);
    EXPECT_OK(berth_lookup_persistent_tcp_port_reservation(p, 2, &found));
    CHECK(found == token, "lookup %llu != %llu", (unsigned long long)found,
          (unsigned long long)token);
    /* Lookup needs an exact match; the other protocol is another space. */
    EXPECT_ERR(ENOENT, berth_lookup_persistent_tcp_port_reservation(p, 1, &found));
    EXPECT_ERR(ENOENT, berth_lookup_persistent_udp_port_reservation(p, 2, &found));
    EXPECT_ERR(EADDRINUSE, berth_create_persistent_tcp_port_reservation(p + 1, 1, &other));
    berth_port_reservation_instance out;
    berth_port_range r = range_of(p, 1);
    EXPECT_ERR(EADDRINUSE, berth_acquire_port_reservation(IPPROTO_TCP, &r, &out));
    EXPECT_ERR(EINVAL, berth_create_persistent_udp_port_reservation(0, 1, &other));
    EXPECT_ERR(EINVAL, berth_create_persistent_udp_port_reservation(p, 0, &other));
    EXPECT_ERR(EINVAL, berth_create_persistent_udp_port_reservation(p, 1, NULL));
    /* An administrator binds from it. */
    int fd = new_socket(AF_INET, SOCK_STREAM);
    EXPECT_OK(berth_associate_port_reservation(fd, token, NULL, 0));
    close(fd);
    /* Persistent reservations are deleted, not released. */
    EXPECT_ERR(EINVAL, berth_release_port_reservation(token));
    EXPECT_OK(berth_delete_persistent_tcp_port_reservation(p, 2));
    EXPECT_ERR(ENOENT, berth_delete_persistent_tcp_port_reservation(p, 2));
    EXPECT_ERR(ENOENT, berth_lookup_persistent_tcp_port_reservation(p, 2, &found));
    EXPECT_OK(berth_create_persistent_udp_port_reservation(p, 3, &other));
    EXPECT_OK(berth_lookup_persistent_udp_port_reservation(p, 3, &found));
    CHECK(found == other, "udp lookup");
    EXPECT_OK(berth_delete_persistent_udp_port_reservation(p, 3));
}

static void test_forked_child_is_not_the_owner(void) {
    puts("-- a forked child is not the owner (EACCES)");
    berth_port_reservation_instance res;
    berth_port_range r = range_of(0, 2);
    REQUIRE_OK(berth_acquire_port_reservation(IPPROTO_TCP, &r, &res));
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        CHECK(0, "fork failed: %s", strerror(errno));
        return;
    }
    if (pid == 0) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        int rc = berth_associate_port_reservation(fd, res.token, NULL, 0);
        int err = errno;
        const char *msg = berth_last_error_message();
        if (rc == -1 && err == EACCES && msg[0] != '\0') {
            printf("ok   (child) berth_associate_port_reservation(parent's token) -> EACCES: %s\n",
                   msg);
            fflush(stdout);
            _exit(0);
        }
        fprintf(stderr, "FAIL (child): associate with the parent's token: want -1 with EACCES, got %d with %s (message \"%s\")\n",
                rc, rc == 0 ? "-" : errno_name(err), msg);
        fflush(stderr);
        _exit(1);
    }
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid, "waitpid: %s", strerror(errno));
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child ended with status 0x%x",
          status);
    /* The child neither released nor disturbed the parent's reservation or session. */
    int fd = new_socket(AF_INET, SOCK_STREAM);
    EXPECT_OK(berth_associate_port_reservation(fd, res.token, NULL, 0));
    CHECK(in_block(port_of(fd), &res), "port %u after the fork", port_of(fd));
    close(fd);
    EXPECT_OK(berth_release_port_reservation(res.token));
}

static void *fail_on_another_thread(void *arg) {
    (void)arg;
    static char seen[512];
    int rc = berth_release_port_reservation(0);
    snprintf(seen, sizeof seen, "%s", rc == -1 ? berth_last_error_message() : "");
    return seen;
}

static void test_last_error_is_per_thread(void) {
    puts("-- berth_last_error_message: per thread, \"\" after success");
    EXPECT_ERR(EINVAL, berth_release_port_reservation(0));
    CHECK(berth_last_error_message()[0] != '\0', "empty after a failure");
    berth_port_reservation_instance res;
    berth_port_range r = range_of(0, 1);
    REQUIRE_OK(berth_acquire_port_reservation(IPPROTO_UDP, &r, &res));
    CHECK(strcmp(berth_last_error_message(), "") == 0, "\"%s\" after a success",
          berth_last_error_message());
    pthread_t thread;
    void *seen = NULL;
    CHECK(pthread_create(&thread, NULL, fail_on_another_thread, NULL) == 0, "pthread_create");
    CHECK(pthread_join(thread, &seen) == 0, "pthread_join");
    CHECK(seen != NULL && ((char *)seen)[0] != '\0', "no message on the failing thread");
    CHECK(strcmp(berth_last_error_message(), "") == 0,
          "another thread's failure leaked into this thread's message: \"%s\"",
          berth_last_error_message());
    EXPECT_OK(berth_release_port_reservation(res.token));
}

static int run_unavailable(void) {
    puts("-- unavailable (ECONNREFUSED): no daemon at $BERTH_SOCKET");
    berth_port_reservation_instance out;
    berth_port_range r = range_of(0, 1);
    EXPECT_ERR(ECONNREFUSED, berth_acquire_port_reservation(IPPROTO_TCP, &r, &out));
    /* Every call that needs the daemon fails the same way; the next one tries again. */
    EXPECT_ERR(ECONNREFUSED, berth_acquire_port_reservation(IPPROTO_UDP, &r, &out));
    EXPECT_ERR(ECONNREFUSED, berth_release_port_reservation(42));
    int fd = new_socket(AF_INET, SOCK_STREAM);
    EXPECT_ERR(ECONNREFUSED, berth_associate_port_reservation(fd, 42, NULL, 0));
    close(fd);
    /* Bad arguments are found without a daemon. */
    r = range_of(1, 0);
    EXPECT_ERR(EINVAL, berth_acquire_port_reservation(IPPROTO_TCP, &r, &out));
    uint64_t token;
    EXPECT_ERR(ECONNREFUSED, berth_lookup_persistent_tcp_port_reservation(80, 1, &token));
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "unavailable") == 0) {
        run_unavailable();
    } else if (argc == 4) {
        pool_lo = (unsigned)strtoul(argv[1], NULL, 10);
        pool_hi = (unsigned)strtoul(argv[2], NULL, 10);
        port_base = (unsigned)strtoul(argv[3], NULL, 10);
        CHECK(strcmp(berth_last_error_message(), "") == 0, "message before any call");
        test_invalid_arguments();
        test_conflicts();
        test_pool_exhausted();
        test_not_found();
        test_associate_spreads_fills_and_frees();
        test_addresses();
        test_not_supported();
        test_persistent();
        test_forked_child_is_not_the_owner();
        test_last_error_is_per_thread();
    } else {
        fprintf(stderr, "usage: test_api <pool_lo> <pool_hi> <port_base> | test_api unavailable\n");
        return 2;
    }
    printf("test_api: %d checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
