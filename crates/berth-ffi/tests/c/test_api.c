/*
 * test_api: libberth's C API against a running daemon, one check per line of output. Every
 * failure is checked three ways: -1, errno, and berth_last_error_kind() (errno alone cannot
 * tell conflict from reservation-full); every success leaves the kind NONE and the message "".
 *
 *   test_api <pool_lo> <pool_hi> <port_base>   the full suite, run by an administrator (root);
 *                                              the daemon's wildcard pool is pool_lo..pool_hi,
 *                                              specific reservations are taken from
 *                                              port_base..port_base+22
 *   test_api not-admin                         run by a user who does not administer the
 *                                              daemon, which has a quota of 2 reservations and
 *                                              3 ports per user
 *   test_api own-daemon <port_base>            run by the user the daemon runs as (a per-user
 *                                              daemon), who administers it
 *   test_api unavailable                       BERTH_SOCKET names no daemon: ECONNREFUSED
 *
 * Exits 0 when every check passed, 1 otherwise (each failed check says what it expected and
 * what it got). Run by tests/c.rs, also built with AddressSanitizer; everything it allocates
 * it frees, so that a leak report means a leak.
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

static const char *kind_name(berth_error_kind kind) {
    switch (kind) {
    case BERTH_ERROR_KIND_NONE: return "NONE";
    case BERTH_ERROR_KIND_INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case BERTH_ERROR_KIND_NOT_SUPPORTED: return "NOT_SUPPORTED";
    case BERTH_ERROR_KIND_CONFLICT: return "CONFLICT";
    case BERTH_ERROR_KIND_POOL_EXHAUSTED: return "POOL_EXHAUSTED";
    case BERTH_ERROR_KIND_RESERVATION_FULL: return "RESERVATION_FULL";
    case BERTH_ERROR_KIND_NOT_FOUND: return "NOT_FOUND";
    case BERTH_ERROR_KIND_PERMISSION_DENIED: return "PERMISSION_DENIED";
    case BERTH_ERROR_KIND_QUOTA_EXCEEDED: return "QUOTA_EXCEEDED";
    case BERTH_ERROR_KIND_UNAVAILABLE: return "UNAVAILABLE";
    case BERTH_ERROR_KIND_INCOMPATIBLE: return "INCOMPATIBLE";
    case BERTH_ERROR_KIND_INTERNAL: return "INTERNAL";
    default: return "(not a berth_error_kind)";
    }
}

/* The errno of each kind, as docs/associate.md lists them. */
static int errno_of(berth_error_kind kind) {
    switch (kind) {
    case BERTH_ERROR_KIND_INVALID_ARGUMENT: return EINVAL;
    case BERTH_ERROR_KIND_NOT_SUPPORTED: return EOPNOTSUPP;
    case BERTH_ERROR_KIND_CONFLICT: return EADDRINUSE;
    case BERTH_ERROR_KIND_POOL_EXHAUSTED: return EADDRNOTAVAIL;
    case BERTH_ERROR_KIND_RESERVATION_FULL: return EADDRINUSE;
    case BERTH_ERROR_KIND_NOT_FOUND: return ENOENT;
    case BERTH_ERROR_KIND_PERMISSION_DENIED: return EACCES;
    case BERTH_ERROR_KIND_QUOTA_EXCEEDED: return EDQUOT;
    case BERTH_ERROR_KIND_UNAVAILABLE: return ECONNREFUSED;
    case BERTH_ERROR_KIND_INCOMPATIBLE: return EPROTO;
    case BERTH_ERROR_KIND_INTERNAL: return EIO;
    default: return 0;
    }
}

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

/* `call` must fail with -1, the errno of kind BERTH_ERROR_KIND_<want> and that kind from
 * berth_last_error_kind(), and leave a non-empty message. */
#define EXPECT_ERR(want, call) expect_err(__LINE__, #call, BERTH_ERROR_KIND_##want, (call))
static void expect_err(int line, const char *what, berth_error_kind want, int rc) {
    int err = errno; /* first: nothing may change it before it is read */
    berth_error_kind kind = berth_last_error_kind();
    const char *msg = berth_last_error_message();
    /* Reading one does not reset the other: both describe the last call. */
    berth_error_kind again = berth_last_error_kind();
    checks++;
    if (rc != -1 || err != errno_of(want) || kind != want) {
        failures++;
        fprintf(stderr,
                "FAIL line %d: %s: want -1 with %s (%s), got %d with %s (%s) (message \"%s\")\n",
                line, what, errno_name(errno_of(want)), kind_name(want), rc,
                rc == 0 ? "-" : errno_name(err), kind_name(kind), msg ? msg : "(null)");
        return;
    }
    if (again != kind) {
        failures++;
        fprintf(stderr, "FAIL line %d: %s: the kind was %s, then %s after reading the message\n",
                line, what, kind_name(kind), kind_name(again));
        return;
    }
    if (msg == NULL || msg[0] == '\0') {
        failures++;
        fprintf(stderr, "FAIL line %d: %s: failed with %s but the message is empty\n", line,
                what, kind_name(want));
        return;
    }
    printf("ok   %s -> %s (%s): %s\n", what, errno_name(err), kind_name(kind), msg);
}

/* `call` must succeed (0) and leave the message "" and the kind NONE. Returns 0 when it did. */
#define EXPECT_OK(call) expect_ok(__LINE__, #call, (call))
static int expect_ok(int line, const char *what, int rc) {
    int err = errno;
    berth_error_kind kind = berth_last_error_kind();
    const char *msg = berth_last_error_message();
    checks++;
    if (rc != 0) {
        failures++;
        fprintf(stderr, "FAIL line %d: %s: want 0, got %d with %s (%s) (message \"%s\")\n",
                line, what, rc, errno_name(err), kind_name(kind), msg ? msg : "(null)");
        return -1;
    }
    if (msg == NULL || msg[0] != '\0' || kind != BERTH_ERROR_KIND_NONE) {
        failures++;
        fprintf(stderr,
                "FAIL line %d: %s: succeeded but the message is \"%s\" and the kind %s, not \"\" "
                "and NONE\n",
                line, what, msg ? msg : "(null)", kind_name(kind));
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
    EXPECT_ERR(INVALID_ARGUMENT, berth_acquire_port_reservation(IPPROTO_TCP, &r, &out));
    r = range_of(65535, 2); /* past 65535 */
    EXPECT_ERR(INVALID_ARGUMENT, berth_acquire_port_reservation(IPPROTO_UDP, &r, &out));
    r = range_of(port_base, 1);
    EXPECT_ERR(INVALID_ARGUMENT, berth_acquire_port_reservation(99, &r, &out));
    EXPECT_ERR(INVALID_ARGUMENT, berth_acquire_port_reservation(IPPROTO_TCP, &r, NULL));
    EXPECT_ERR(INVALID_ARGUMENT, berth_acquire_port_reservation(IPPROTO_TCP, NULL, &out));
    EXPECT_ERR(INVALID_ARGUMENT, berth_release_port_reservation(0));

    int fd = new_socket(AF_INET, SOCK_STREAM);
    EXPECT_ERR(INVALID_ARGUMENT, berth_associate_port_reservation(fd, 0, NULL, 0));
    EXPECT_ERR(INVALID_ARGUMENT, berth_associate_port_reservation(-1, 1, NULL, 0));
    EXPECT_ERR(INVALID_ARGUMENT, berth_associate_port_reservation(1000, 1, NULL, 0)); /* not open */
    struct sockaddr_in sin = ipv4(INADDR_LOOPBACK, 0);
    EXPECT_ERR(INVALID_ARGUMENT,
               berth_associate_port_reservation(fd, 1, (struct sockaddr *)&sin, 4));
    struct sockaddr_in other = sin;
    other.sin_family = AF_UNIX;
    EXPECT_ERR(INVALID_ARGUMENT,
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
    EXPECT_ERR(CONFLICT, berth_acquire_port_reservation(IPPROTO_TCP, &r, &b));
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
    EXPECT_ERR(CONFLICT, berth_acquire_port_reservation(IPPROTO_TCP, &r, &b));
    close(busy);
}

static void test_pool_exhausted(void) {
    puts("-- pool-exhausted (EADDRNOTAVAIL)");
    berth_port_reservation_instance out;
    berth_port_range r = range_of(0, pool_hi - pool_lo + 2);
    EXPECT_ERR(POOL_EXHAUSTED, berth_acquire_port_reservation(IPPROTO_TCP, &r, &out));
}

static void test_options(void) {
    puts("-- options: a label and bounds (berth_acquire_port_reservation_ex)");
    berth_port_reservation_instance a, b, c;
    berth_port_range r = range_of(0, 2);
    berth_acquire_options opt;
    memset(&opt, 0, sizeof opt);
    opt.size = sizeof opt;
    opt.label = "c test: options";
    opt.within_first = (uint16_t)(port_base + 24);
    opt.within_last = (uint16_t)(port_base + 27);
    REQUIRE_OK(berth_acquire_port_reservation_ex(IPPROTO_TCP, &r, &opt, &a));
    CHECK(a.reservation.start_port == port_base + 24 && a.reservation.number_of_ports == 2,
          "got %u+%u", a.reservation.start_port, a.reservation.number_of_ports);
    /* Held, as every reservation of the C API: associate binds from it. */
    int fd = new_socket(AF_INET, SOCK_STREAM);
    EXPECT_OK(berth_associate_port_reservation(fd, a.token, NULL, 0));
    CHECK(in_block(port_of(fd), &a), "bound to %u", port_of(fd));
    close(fd);
    REQUIRE_OK(berth_acquire_port_reservation_ex(IPPROTO_TCP, &r, &opt, &b));
    CHECK(b.reservation.start_port == port_base + 26, "got %u", b.reservation.start_port);
    EXPECT_ERR(POOL_EXHAUSTED, berth_acquire_port_reservation_ex(IPPROTO_TCP, &r, &opt, &c));
    EXPECT_OK(berth_release_port_reservation(a.token));
    EXPECT_OK(berth_release_port_reservation(b.token));
    /* No options: the pool, as berth_acquire_port_reservation. */
    r = range_of(0, 1);
    if (EXPECT_OK(berth_acquire_port_reservation_ex(IPPROTO_UDP, &r, NULL, &c)) == 0) {
        CHECK(c.reservation.start_port >= pool_lo && c.reservation.start_port <= pool_hi,
              "got %u outside the pool", c.reservation.start_port);
        EXPECT_OK(berth_release_port_reservation(c.token));
    }
    /* Invalid options. */
    opt.size = 4;
    EXPECT_ERR(INVALID_ARGUMENT, berth_acquire_port_reservation_ex(IPPROTO_TCP, &r, &opt, &c));
    opt.size = sizeof opt;
    opt.label = "two\nlines";
    EXPECT_ERR(INVALID_ARGUMENT, berth_acquire_port_reservation_ex(IPPROTO_TCP, &r, &opt, &c));
    opt.label = "\xff\xfe not UTF-8";
    EXPECT_ERR(INVALID_ARGUMENT, berth_acquire_port_reservation_ex(IPPROTO_TCP, &r, &opt, &c));
    opt.label = NULL;
    opt.within_first = (uint16_t)(port_base + 27);
    opt.within_last = (uint16_t)(port_base + 24);
    EXPECT_ERR(INVALID_ARGUMENT, berth_acquire_port_reservation_ex(IPPROTO_TCP, &r, &opt, &c));
    opt.within_first = (uint16_t)(port_base + 24);
    opt.within_last = (uint16_t)(port_base + 27);
    r = range_of(port_base + 24, 1); /* a start and bounds */
    EXPECT_ERR(INVALID_ARGUMENT, berth_acquire_port_reservation_ex(IPPROTO_TCP, &r, &opt, &c));
    EXPECT_ERR(INVALID_ARGUMENT, berth_acquire_port_reservation_ex(IPPROTO_TCP, &r, &opt, NULL));

    /* A name: one live reservation per name; a bad name is invalid. */
    memset(&opt, 0, sizeof opt);
    opt.size = sizeof opt;
    opt.name = "c-test/web";
    opt.within_first = (uint16_t)(port_base + 28);
    opt.within_last = (uint16_t)(port_base + 31);
    r = range_of(0, 1);
    REQUIRE_OK(berth_acquire_port_reservation_ex(IPPROTO_TCP, &r, &opt, &a));
    CHECK(a.reservation.start_port == port_base + 28, "got %u", a.reservation.start_port);
    EXPECT_ERR(CONFLICT, berth_acquire_port_reservation_ex(IPPROTO_TCP, &r, &opt, &b));
    EXPECT_OK(berth_release_port_reservation(a.token));
    /* Released: the name gets its block again. */
    if (EXPECT_OK(berth_acquire_port_reservation_ex(IPPROTO_TCP, &r, &opt, &a)) == 0) {
        CHECK(a.reservation.start_port == port_base + 28, "got %u", a.reservation.start_port);
        /* Found by name, at once and by a wait. */
        if (EXPECT_OK(berth_lookup_named_port_reservation(IPPROTO_TCP, "c-test/web", &b)) == 0)
            CHECK(b.token == a.token && b.reservation.start_port == a.reservation.start_port,
                  "looked up %u", b.reservation.start_port);
        if (EXPECT_OK(berth_wait_named_port_reservation(IPPROTO_TCP, "c-test/web", 0, 1000, &b)) == 0)
            CHECK(b.token == a.token, "waited for another token");
        EXPECT_ERR(NOT_FOUND, berth_lookup_named_port_reservation(IPPROTO_UDP, "c-test/web", &b));
        EXPECT_OK(berth_release_port_reservation(a.token));
    }
    EXPECT_ERR(NOT_FOUND, berth_lookup_named_port_reservation(IPPROTO_TCP, "c-test/none", &b));
    EXPECT_ERR(NOT_FOUND, berth_wait_named_port_reservation(IPPROTO_TCP, "c-test/none", 0, 50, &b));
    EXPECT_ERR(INVALID_ARGUMENT, berth_lookup_named_port_reservation(IPPROTO_TCP, "Bad", &b));
    EXPECT_ERR(INVALID_ARGUMENT, berth_lookup_named_port_reservation(IPPROTO_TCP, NULL, &b));

    /* A port this process bound by itself, published under a name. */
    int srv = new_socket(AF_INET, SOCK_STREAM);
    struct sockaddr_in at = ipv4(INADDR_LOOPBACK, port_base + 31);
    CHECK(bind(srv, (struct sockaddr *)&at, sizeof at) == 0 && listen(srv, 1) == 0, "bind %u: %s",
          port_base + 31, strerror(errno));
    if (EXPECT_OK(berth_publish_port_reservation(srv, "c-test/pub", &a)) == 0) {
        CHECK(a.reservation.start_port == port_base + 31 && a.reservation.number_of_ports == 1,
              "published %u+%u", a.reservation.start_port, a.reservation.number_of_ports);
        if (EXPECT_OK(berth_lookup_named_port_reservation(IPPROTO_TCP, "c-test/pub", &b)) == 0)
            CHECK(b.token == a.token, "looked up another token");
        EXPECT_ERR(CONFLICT, berth_publish_port_reservation(srv, "c-test/pub2", &b));
        EXPECT_OK(berth_release_port_reservation(a.token));
    }
    close(srv);
    int unbound = new_socket(AF_INET, SOCK_STREAM);
    EXPECT_ERR(INVALID_ARGUMENT, berth_publish_port_reservation(unbound, "c-test/x", &b));
    EXPECT_ERR(INVALID_ARGUMENT, berth_publish_port_reservation(unbound, NULL, &b));
    close(unbound);
    opt.name = "Not A Name";
    EXPECT_ERR(INVALID_ARGUMENT, berth_acquire_port_reservation_ex(IPPROTO_TCP, &r, &opt, &b));
}

static void test_not_found(void) {
    puts("-- not-found (ENOENT)");
    EXPECT_ERR(NOT_FOUND, berth_release_port_reservation(0x0123456789abcdefULL));
    berth_port_reservation_instance res;
    berth_port_range r = range_of(0, 1);
    REQUIRE_OK(berth_acquire_port_reservation(IPPROTO_UDP, &r, &res));
    REQUIRE_OK(berth_release_port_reservation(res.token));
    EXPECT_ERR(NOT_FOUND, berth_release_port_reservation(res.token));
    int fd = new_socket(AF_INET, SOCK_DGRAM);
    EXPECT_ERR(NOT_FOUND, berth_associate_port_reservation(fd, res.token, NULL, 0));
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
    EXPECT_ERR(RESERVATION_FULL, berth_associate_port_reservation(s3, res.token, NULL, 0));
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
    EXPECT_ERR(INVALID_ARGUMENT, berth_associate_port_reservation(
                                     e, res.token, (struct sockaddr *)&outside, sizeof outside));
    /* A port of the reservation that is bound already: that port or nothing. */
    struct sockaddr_in taken = ipv4(INADDR_LOOPBACK, exact);
    EXPECT_ERR(RESERVATION_FULL, berth_associate_port_reservation(
                                     e, res.token, (struct sockaddr *)&taken, sizeof taken));
    CHECK(port_of(e) == 0, "the refused socket is bound to %u", port_of(e));
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
    EXPECT_ERR(INVALID_ARGUMENT, berth_associate_port_reservation(
                                     d, res.token, (struct sockaddr *)&loop6, sizeof loop6));
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
    EXPECT_ERR(NOT_SUPPORTED, berth_associate_port_reservation(unix_fd, res.token, NULL, 0));
    close(unix_fd);
    int dgram = new_socket(AF_INET, SOCK_DGRAM);
    EXPECT_ERR(NOT_SUPPORTED, berth_associate_port_reservation(dgram, res.token, NULL, 0));
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
    EXPECT_ERR(NOT_FOUND, berth_lookup_persistent_tcp_port_reservation(p, 1, &found));
    EXPECT_ERR(NOT_FOUND, berth_lookup_persistent_udp_port_reservation(p, 2, &found));
    EXPECT_ERR(CONFLICT, berth_create_persistent_tcp_port_reservation(p + 1, 1, &other));
    berth_port_reservation_instance out;
    berth_port_range r = range_of(p, 1);
    EXPECT_ERR(CONFLICT, berth_acquire_port_reservation(IPPROTO_TCP, &r, &out));
    EXPECT_ERR(INVALID_ARGUMENT, berth_create_persistent_udp_port_reservation(0, 1, &other));
    EXPECT_ERR(INVALID_ARGUMENT, berth_create_persistent_udp_port_reservation(p, 0, &other));
    EXPECT_ERR(INVALID_ARGUMENT, berth_create_persistent_udp_port_reservation(p, 1, NULL));
    /* An administrator binds from it. */
    int fd = new_socket(AF_INET, SOCK_STREAM);
    EXPECT_OK(berth_associate_port_reservation(fd, token, NULL, 0));
    close(fd);
    /* Persistent reservations are deleted, not released. */
    EXPECT_ERR(INVALID_ARGUMENT, berth_release_port_reservation(token));
    EXPECT_OK(berth_delete_persistent_tcp_port_reservation(p, 2));
    EXPECT_ERR(NOT_FOUND, berth_delete_persistent_tcp_port_reservation(p, 2));
    EXPECT_ERR(NOT_FOUND, berth_lookup_persistent_tcp_port_reservation(p, 2, &found));
    EXPECT_OK(berth_create_persistent_udp_port_reservation(p, 3, &other));
    EXPECT_OK(berth_lookup_persistent_udp_port_reservation(p, 3, &found));
    CHECK(found == other, "udp lookup");
    EXPECT_OK(berth_delete_persistent_udp_port_reservation(p, 3));
}

/*
 * A forked child is another process: it may not bind from its parent's reservation, whoever it
 * is (a runtime reservation is bound from by its owner only). Releasing it is another matter:
 * administrators may release anyone's reservation, and a child that is one (root, or any
 * process of the user a per-user daemon runs as) does release its parent's. `admin` says
 * which this run is.
 */
static void test_forked_child(int admin) {
    printf("-- a forked child is not the owner (EACCES), and %s\n",
           admin ? "as an administrator it may release the parent's reservation"
                 : "not an administrator, it may not release it either");
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
        int before = failures;
        int fd = new_socket(AF_INET, SOCK_STREAM);
        EXPECT_ERR(PERMISSION_DENIED, berth_associate_port_reservation(fd, res.token, NULL, 0));
        CHECK(port_of(fd) == 0, "(child) the refused socket is bound to %u", port_of(fd));
        close(fd);
        if (admin) {
            EXPECT_OK(berth_release_port_reservation(res.token));
        } else {
            EXPECT_ERR(PERMISSION_DENIED, berth_release_port_reservation(res.token));
        }
        fflush(stdout);
        fflush(stderr);
        /* _exit: the parent's atexit handlers (and a sanitizer's leak check over the state
         * the child inherited and must not touch) are not the child's. */
        _exit(failures == before ? 0 : 1);
    }
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid, "waitpid: %s", strerror(errno));
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child ended with status 0x%x",
          status);
    int fd = new_socket(AF_INET, SOCK_STREAM);
    if (admin) {
        /* The child's release was an administrator's: the reservation is gone for its owner
         * too, who learns it from its next call about it. */
        EXPECT_ERR(NOT_FOUND, berth_associate_port_reservation(fd, res.token, NULL, 0));
        EXPECT_ERR(NOT_FOUND, berth_release_port_reservation(res.token));
    } else {
        /* The child neither released nor disturbed the parent's reservation or session. */
        EXPECT_OK(berth_associate_port_reservation(fd, res.token, NULL, 0));
        CHECK(in_block(port_of(fd), &res), "port %u after the fork", port_of(fd));
        EXPECT_OK(berth_release_port_reservation(res.token));
    }
    close(fd);
}

/* What a failing call on another thread left in that thread's last error. */
struct seen {
    char message[512];
    berth_error_kind kind;
};

static void *fail_on_another_thread(void *arg) {
    struct seen *seen = arg;
    int rc = berth_release_port_reservation(0);
    seen->kind = berth_last_error_kind();
    snprintf(seen->message, sizeof seen->message, "%s", rc == -1 ? berth_last_error_message() : "");
    return NULL;
}

static void test_last_error_is_per_thread(void) {
    puts("-- berth_last_error_message and berth_last_error_kind: per thread, \"\"/NONE after "
         "success");
    EXPECT_ERR(INVALID_ARGUMENT, berth_release_port_reservation(0));
    CHECK(berth_last_error_message()[0] != '\0', "empty after a failure");
    berth_port_reservation_instance res;
    berth_port_range r = range_of(0, 1);
    REQUIRE_OK(berth_acquire_port_reservation(IPPROTO_UDP, &r, &res));
    CHECK(strcmp(berth_last_error_message(), "") == 0, "\"%s\" after a success",
          berth_last_error_message());
    CHECK(berth_last_error_kind() == BERTH_ERROR_KIND_NONE, "kind %s after a success",
          kind_name(berth_last_error_kind()));
    pthread_t thread;
    struct seen seen = {"", BERTH_ERROR_KIND_NONE};
    CHECK(pthread_create(&thread, NULL, fail_on_another_thread, &seen) == 0, "pthread_create");
    CHECK(pthread_join(thread, NULL) == 0, "pthread_join");
    CHECK(seen.message[0] != '\0', "no message on the failing thread");
    CHECK(seen.kind == BERTH_ERROR_KIND_INVALID_ARGUMENT, "kind %s on the failing thread",
          kind_name(seen.kind));
    CHECK(strcmp(berth_last_error_message(), "") == 0,
          "another thread's failure leaked into this thread's message: \"%s\"",
          berth_last_error_message());
    CHECK(berth_last_error_kind() == BERTH_ERROR_KIND_NONE,
          "another thread's failure leaked into this thread's kind: %s",
          kind_name(berth_last_error_kind()));
    EXPECT_OK(berth_release_port_reservation(res.token));
}

/* Run by a user who does not administer the daemon; its quota is 2 reservations, 3 ports. */
static void test_not_an_administrator(void) {
    puts("-- permission-denied (EACCES) and quota-exceeded (EDQUOT): not an administrator");
    uint64_t token = 0;
    EXPECT_ERR(PERMISSION_DENIED,
               berth_create_persistent_tcp_port_reservation(port_base, 1, &token));
    EXPECT_ERR(PERMISSION_DENIED, berth_delete_persistent_udp_port_reservation(port_base, 1));
    /* Lookup is open to everyone. */
    EXPECT_ERR(NOT_FOUND, berth_lookup_persistent_tcp_port_reservation(port_base, 1, &token));

    berth_port_reservation_instance a, b, c;
    berth_port_range two = range_of(0, 2), one = range_of(0, 1);
    REQUIRE_OK(berth_acquire_port_reservation(IPPROTO_TCP, &two, &a));
    EXPECT_ERR(QUOTA_EXCEEDED, berth_acquire_port_reservation(IPPROTO_UDP, &two, &b)); /* 4 ports */
    REQUIRE_OK(berth_acquire_port_reservation(IPPROTO_UDP, &one, &b));
    EXPECT_ERR(QUOTA_EXCEEDED, berth_acquire_port_reservation(IPPROTO_TCP, &one, &c)); /* 3rd */
    EXPECT_OK(berth_release_port_reservation(a.token));
    EXPECT_OK(berth_release_port_reservation(b.token));
    /* Released: the quota is free again. */
    if (EXPECT_OK(berth_acquire_port_reservation(IPPROTO_TCP, &two, &c)) == 0) {
        EXPECT_OK(berth_release_port_reservation(c.token));
    }
}

/* Run by the user the daemon runs as: a per-user daemon's own user administers it. */
static void test_own_daemon(void) {
    puts("-- the daemon's own user administers it (a per-user daemon)");
    uint64_t token = 0, found = 0;
    unsigned p = port_base;
    REQUIRE_OK(berth_create_persistent_tcp_port_reservation(p, 2, &token));
    EXPECT_OK(berth_lookup_persistent_tcp_port_reservation(p, 2, &found));
    CHECK(found == token, "lookup %llu != %llu", (unsigned long long)found,
          (unsigned long long)token);
    EXPECT_OK(berth_delete_persistent_tcp_port_reservation(p, 2));
    EXPECT_ERR(NOT_FOUND, berth_lookup_persistent_tcp_port_reservation(p, 2, &found));
}

static int run_unavailable(void) {
    puts("-- unavailable (ECONNREFUSED): no daemon at $BERTH_SOCKET");
    berth_port_reservation_instance out;
    berth_port_range r = range_of(0, 1);
    EXPECT_ERR(UNAVAILABLE, berth_acquire_port_reservation(IPPROTO_TCP, &r, &out));
    /* Every call that needs the daemon fails the same way; the next one tries again. */
    EXPECT_ERR(UNAVAILABLE, berth_acquire_port_reservation(IPPROTO_UDP, &r, &out));
    EXPECT_ERR(UNAVAILABLE, berth_release_port_reservation(42));
    int fd = new_socket(AF_INET, SOCK_STREAM);
    EXPECT_ERR(UNAVAILABLE, berth_associate_port_reservation(fd, 42, NULL, 0));
    close(fd);
    /* Bad arguments are found without a daemon. */
    r = range_of(1, 0);
    EXPECT_ERR(INVALID_ARGUMENT, berth_acquire_port_reservation(IPPROTO_TCP, &r, &out));
    uint64_t token;
    EXPECT_ERR(UNAVAILABLE, berth_lookup_persistent_tcp_port_reservation(80, 1, &token));
    return 0;
}

int main(int argc, char **argv) {
    CHECK(strcmp(berth_last_error_message(), "") == 0, "message before any call");
    CHECK(berth_last_error_kind() == BERTH_ERROR_KIND_NONE, "kind %s before any call",
          kind_name(berth_last_error_kind()));
    if (argc == 2 && strcmp(argv[1], "unavailable") == 0) {
        run_unavailable();
    } else if (argc == 3 && strcmp(argv[1], "not-admin") == 0) {
        port_base = (unsigned)strtoul(argv[2], NULL, 10);
        test_not_an_administrator();
        test_forked_child(0);
    } else if (argc == 3 && strcmp(argv[1], "own-daemon") == 0) {
        port_base = (unsigned)strtoul(argv[2], NULL, 10);
        test_own_daemon();
        test_forked_child(1);
    } else if (argc == 4) {
        pool_lo = (unsigned)strtoul(argv[1], NULL, 10);
        pool_hi = (unsigned)strtoul(argv[2], NULL, 10);
        port_base = (unsigned)strtoul(argv[3], NULL, 10);
        test_invalid_arguments();
        test_conflicts();
        test_pool_exhausted();
        test_not_found();
        test_options();
        test_associate_spreads_fills_and_frees();
        test_addresses();
        test_not_supported();
        test_persistent();
        test_forked_child(1); /* run as root: an administrator */
        test_last_error_is_per_thread();
    } else {
        fprintf(stderr, "usage: test_api <pool_lo> <pool_hi> <port_base> | test_api not-admin "
                        "<port_base> | test_api own-daemon <port_base> | test_api unavailable\n");
        return 2;
    }
    printf("test_api: %d checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
