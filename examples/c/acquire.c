/*
 * acquire: the Windows SIO_ACQUIRE_PORT_RESERVATION sample, ported to libberth.
 *
 *   acquire <family 4|6> <type stream|dgram> <protocol tcp|udp> <start> <count>
 *
 * Reserves <count> ports of <protocol> from <start> (0: any free block), creates a socket of
 * the given family and type, associates it with the reservation (which binds it to a free
 * port of the block), prints "port N" with the port it got, and releases the reservation.
 * On failure it prints libberth's message and strerror(errno) and exits 1.
 *
 * Where the Windows sample passes ports in network byte order and binds the socket itself
 * after SIO_ASSOCIATE_PORT_RESERVATION, libberth takes ports in host byte order and the
 * associate call does the bind.
 *
 * Build (from the repository root, after `cargo build -p berth-ffi`):
 *   cc -I crates/berth-ffi/include examples/c/acquire.c -L target/debug -lberth -o acquire
 * Run:
 *   LD_LIBRARY_PATH=target/debug ./acquire 4 stream tcp 0 4
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "berth.h"

static int usage(void) {
    fprintf(stderr,
            "usage: acquire <family 4|6> <type stream|dgram> <protocol tcp|udp> <start> <count>\n");
    return 2;
}

/* Reports the failure of `what` and returns the exit status. errno is read first. */
static int fail(const char *what) {
    int err = errno;
    fprintf(stderr, "acquire: %s failed: %s (%s)\n", what, berth_last_error_message(),
            strerror(err));
    return 1;
}

static int parse_port(const char *text, uint16_t *out) {
    char *end = NULL;
    errno = 0;
    unsigned long value = strtoul(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value > 65535) {
        return -1;
    }
    *out = (uint16_t)value;
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        return usage();
    }
    int family;
    if (strcmp(argv[1], "4") == 0) {
        family = AF_INET;
    } else if (strcmp(argv[1], "6") == 0) {
        family = AF_INET6;
    } else {
        return usage();
    }
    int type;
    if (strcmp(argv[2], "stream") == 0) {
        type = SOCK_STREAM;
    } else if (strcmp(argv[2], "dgram") == 0) {
        type = SOCK_DGRAM;
    } else {
        return usage();
    }
    int protocol;
    if (strcmp(argv[3], "tcp") == 0) {
        protocol = IPPROTO_TCP;
    } else if (strcmp(argv[3], "udp") == 0) {
        protocol = IPPROTO_UDP;
    } else {
        return usage();
    }
    berth_port_range range;
    if (parse_port(argv[4], &range.start_port) != 0 ||
        parse_port(argv[5], &range.number_of_ports) != 0) {
        return usage();
    }

    /* 1. Acquire the reservation (the Windows sample's SIO_ACQUIRE_PORT_RESERVATION). */
    berth_port_reservation_instance reservation;
    if (berth_acquire_port_reservation(protocol, &range, &reservation) != 0) {
        return fail("berth_acquire_port_reservation");
    }
    fprintf(stderr, "acquire: reserved %s ports %u-%u (token 0x%016llx)\n", argv[3],
            (unsigned)reservation.reservation.start_port,
            (unsigned)reservation.reservation.start_port +
                reservation.reservation.number_of_ports - 1u,
            (unsigned long long)reservation.token);

    /* 2. A second socket, associated with the reservation: bound to one of its ports. */
    int fd = socket(family, type, 0);
    if (fd < 0) {
        int err = errno;
        fprintf(stderr, "acquire: socket failed: %s\n", strerror(err));
        berth_release_port_reservation(reservation.token);
        return 1;
    }
    if (berth_associate_port_reservation(fd, reservation.token, NULL, 0) != 0) {
        int status = fail("berth_associate_port_reservation");
        close(fd);
        berth_release_port_reservation(reservation.token);
        return status;
    }

    /* 3. The port it got. */
    struct sockaddr_storage local;
    socklen_t len = sizeof local;
    if (getsockname(fd, (struct sockaddr *)&local, &len) != 0) {
        int err = errno;
        fprintf(stderr, "acquire: getsockname failed: %s\n", strerror(err));
        close(fd);
        berth_release_port_reservation(reservation.token);
        return 1;
    }
    unsigned port = family == AF_INET ? ntohs(((struct sockaddr_in *)&local)->sin_port)
                                      : ntohs(((struct sockaddr_in6 *)&local)->sin6_port);
    printf("port %u\n", port);
    fflush(stdout);

    /* 4. Release the reservation. The socket keeps its port until it is closed. */
    close(fd);
    if (berth_release_port_reservation(reservation.token) != 0) {
        return fail("berth_release_port_reservation");
    }
    return 0;
}
