// SPDX-License-Identifier: GPL-2.0 OR MIT
//
// Enforce mode: cgroup-BPF programs that keep a reservation's ports for its owner cgroup.
//
// `owners` maps (network-namespace cookie, port, protocol) to the cgroup that owns the port. A
// bind of an owned port from a task of any other cgroup fails with EADDRINUSE, the error
// unmodified programs already handle: `bind4`/`bind6` see the port asked for,
// `post_bind4`/`post_bind6` the port a `bind()` ended on (a `bind(0)`'s too). A task of the
// owner cgroup or of any cgroup below it is the owner (compared by ancestor id at the owner's
// level); tasks of an exempt cgroup (the daemon's, which binds for its clients) pass.
//
// Ports given back within the last minute (TIME_WAIT) are picked last.
//
// `blocks` maps (namespace, cgroup, protocol) to the block that cgroup's `bind(0)` — and, when
// the block says so, the automatic bind of `connect()` (`connect4`/`connect6`) — draws from:
// `bind4`/`bind6` rewrite port 0 to a port of the block that no socket of the owner has
// claimed. A claim (`claims`: port -> socket cookie) is made when a port is picked and when an
// owner's socket is bound to an owned port, kept in the socket's storage, and dropped when the
// socket is released (`sock_release`). With every port claimed, `bind(0)` is left to the kernel.
//
// Ports the kernel assigns without a `bind()` call (`connect()`, `listen()` or `sendto()` on an
// unbound socket) are not checked here: `ip_local_reserved_ports` keeps owned ports out of them.
//
// Nothing else matches: port 0 is never looked up, a key carries every field, an entry whose
// owner is 0 or whose block is empty is treated as absent (systemd's SocketBindAllow= once
// denied nothing for years because a zeroed entry meant "any"). Every refusal is counted per
// port with its last sample (`refusals`). Past the daemon's lease (`lease`: a monotonic-clock
// deadline the daemon renews) nothing is refused: a daemon gone for good never leaves a port
// refused to everyone.
//
// Built with Debian's clang: clang -target bpf -O2 -g -mcpu=v3 (build.rs).

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define EADDRINUSE 98
// A cgroup's depth is searched this far for an owner of a block (cgroup v2 nests deeper only
// in unusual hosts; a deeper owner's bind(0) is left to the kernel).
#define MAX_LEVEL 32
// Ports of a block tried per bind(0): the pick starts at a rotating cursor.
#define MAX_TRIES 128

// Return values of a bind hook: 1 lets the bind go on; 3 (Linux 5.12+) also lets it bind a port
// below ip_unprivileged_port_start without CAP_NET_BIND_SERVICE — given to owners, whose
// reservation the daemon granted under its privileged-port policy.
#define ALLOW 1
#define ALLOW_PRIVILEGED 3

struct key {
    __u64 netns;    // bpf_get_netns_cookie of the socket's namespace
    __u16 port;     // host byte order
    __u8 protocol;  // IPPROTO_TCP or IPPROTO_UDP
    __u8 pad[5];    // always zero
};

struct owner {
    __u64 cgroup;   // cgroup v2 id (the cgroup directory's inode number); 0 never owns
    __u32 level;    // its depth below the hierarchy's root (the root is 0)
    __u32 pad;      // always zero
};

struct block_key {
    __u64 netns;
    __u64 cgroup;   // the owner's id
    __u8 protocol;
    __u8 pad[7];    // always zero
};

struct block {
    __u16 first;    // the block's first port; 0 never names a block
    __u16 count;    // its number of ports; 0 never names a block
    __u32 next;     // a rotating cursor (atomic), where the next pick starts
    __u32 flags;    // STEER_CONNECT: connect() on an unbound socket is bound into the block too
    __u32 pad;      // always zero
};

#define STEER_CONNECT 1

struct refusal {
    __u64 count;    // refusals of this port since it was owned
    __u64 when;     // the last one's time, CLOCK_MONOTONIC nanoseconds
    __u64 cgroup;   // the refused task's cgroup
    __u32 pid;      // the refused task's thread-group id (in the initial pid namespace)
    __u8 comm[16];  // its command name
    __u32 uid;      // its real user id (in the initial user namespace)
};

// The socket's claim, kept in its storage so that its release drops it.
struct claim {
    __u64 netns;
    __u16 port;
    __u8 protocol;
    __u8 pad[5];
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(map_flags, BPF_F_NO_PREALLOC);  // memory for the entries there are, not the most
    __uint(max_entries, 131072);  // every port of both protocols in one namespace
    __type(key, struct key);
    __type(value, struct owner);
} owners SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(map_flags, BPF_F_NO_PREALLOC);  // memory for the entries there are, not the most
    __uint(max_entries, 16384);
    __type(key, struct block_key);
    __type(value, struct block);
} blocks SEC(".maps");

// A port's claim: the socket holding it, or none since `released` — a port given back less than
// QUIET_NS ago is picked only when no other port of the block is free (a TCP server that closed
// first leaves TIME_WAIT connections on it, which a new bind without SO_REUSEADDR runs into).
struct held {
    __u64 cookie;   // the claiming socket's cookie; 0: nobody's
    __u64 released; // when its last socket went (CLOCK_MONOTONIC ns); 0: never held
};

#define QUIET_NS (60ULL * 1000 * 1000 * 1000)

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(map_flags, BPF_F_NO_PREALLOC);  // memory for the entries there are, not the most
    __uint(max_entries, 131072);
    __type(key, struct key);
    __type(value, struct held);
} claims SEC(".maps");

// Least recently refused ports make room: a bind loop over many ports floods nothing.
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 8192);
    __type(key, struct key);
    __type(value, struct refusal);
} refusals SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_SK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, int);
    __type(value, struct claim);
} socket_claims SEC(".maps");

// Cgroups whose tasks bind any port (the daemon's own): id -> 1.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(map_flags, BPF_F_NO_PREALLOC);  // memory for the entries there are, not the most
    __uint(max_entries, 16);
    __type(key, __u64);
    __type(value, __u8);
} exempt SEC(".maps");

// The daemon's lease: the CLOCK_MONOTONIC nanosecond past which nothing is refused.
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} lease SEC(".maps");

static __always_inline int leased(void)
{
    __u32 zero = 0;
    __u64 *until = bpf_map_lookup_elem(&lease, &zero);
    return until && bpf_ktime_get_ns() < *until;
}

static __always_inline void count_refusal(struct key *k)
{
    struct refusal fresh = {};
    struct refusal *r = bpf_map_lookup_elem(&refusals, k);
    if (!r) {
        bpf_map_update_elem(&refusals, k, &fresh, BPF_NOEXIST);
        r = bpf_map_lookup_elem(&refusals, k);
        if (!r)
            return;
    }
    __sync_fetch_and_add(&r->count, 1);
    r->when = bpf_ktime_get_ns();
    r->cgroup = bpf_get_current_cgroup_id();
    r->pid = (__u32)(bpf_get_current_pid_tgid() >> 32);
    r->uid = (__u32)bpf_get_current_uid_gid();
    bpf_get_current_comm(&r->comm, sizeof(r->comm));
}

// 2: the caller owns the port; 1: nobody it must yield to; 0: refused with EADDRINUSE.
static __always_inline int judge(__u64 netns, __u16 port, __u32 protocol)
{
    if (port == 0)
        return 1;
    struct key k = {};
    k.netns = netns;
    k.port = port;
    k.protocol = (__u8)protocol;
    struct owner *o = bpf_map_lookup_elem(&owners, &k);
    if (!o || o->cgroup == 0)
        return 1;
    // The owner at any depth: compared level by level rather than at a stored depth, which
    // differs from the daemon's view under a cgroup namespace or a mount below the root.
    for (int level = 1; level <= MAX_LEVEL; level++) {
        __u64 id = bpf_get_current_ancestor_cgroup_id(level);
        if (id == 0)
            break;
        if (id == o->cgroup)
            return 2;
    }
    __u64 current = bpf_get_current_cgroup_id();
    if (bpf_map_lookup_elem(&exempt, &current))
        return 1;
    if (!leased())
        return 1;
    count_refusal(&k);
    bpf_set_retval(-EADDRINUSE);
    return 0;
}

// Records that the socket `sk` holds `port`: its claim, and the note its release reads.
static __always_inline void claim(struct bpf_sock *sk, __u64 cookie, __u64 netns, __u16 port,
                                  __u32 protocol)
{
    struct key k = {};
    k.netns = netns;
    k.port = port;
    k.protocol = (__u8)protocol;
    struct held h = {};
    h.cookie = cookie;
    bpf_map_update_elem(&claims, &k, &h, BPF_ANY);
    struct claim *note = bpf_sk_storage_get(&socket_claims, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (note) {
        note->netns = netns;
        note->port = port;
        note->protocol = (__u8)protocol;
    }
}

// The block of the calling task's nearest owning cgroup, or NULL.
static __always_inline struct block *block_of_caller(__u64 netns, __u32 protocol)
{
    struct block_key bk = {};
    bk.netns = netns;
    bk.protocol = (__u8)protocol;
    struct block *found = 0;
    for (int level = 1; level <= MAX_LEVEL; level++) {
        __u64 id = bpf_get_current_ancestor_cgroup_id(level);
        if (id == 0)
            break;
        bk.cgroup = id;
        struct block *b = bpf_map_lookup_elem(&blocks, &bk);
        if (b && b->first != 0 && b->count != 0)
            found = b;
    }
    return found;
}

// Claims an unclaimed port of block `b` for the socket `cookie`, starting at the block's
// rotating cursor; 0 when every port tried is claimed.
static __always_inline void give_back(struct key *k, __u64 cookie);

static __always_inline __u16 pick(struct block *b, struct key *k, __u64 cookie)
{
    __u32 first = b->first;
    __u32 count = b->count;
    if (first == 0 || count == 0 || first + count > 65536)
        return 0;
    __u32 start = __sync_fetch_and_add(&b->next, 1);
    __u64 now = bpf_ktime_get_ns();
    // Ports never held, or quiet for QUIET_NS, first; failing those, the first port given back
    // more recently (a bind there may meet TIME_WAIT connections, but the block is all there is).
    __u16 recent = 0;
    for (__u32 i = 0; i < MAX_TRIES; i++) {
        if (i >= count)
            break;
        k->port = (__u16)(first + (start + i) % count);
        // BPF_NOEXIST: of two binds racing for one port, one claims it.
        struct held fresh = {};
        fresh.cookie = cookie;
        if (bpf_map_update_elem(&claims, k, &fresh, BPF_NOEXIST) == 0)
            return k->port;
        struct held *h = bpf_map_lookup_elem(&claims, k);
        if (!h || h->cookie != 0)
            continue;
        if (h->released != 0 && now - h->released < QUIET_NS) {
            if (recent == 0)
                recent = k->port;
            continue;
        }
        if (__sync_val_compare_and_swap(&h->cookie, 0, cookie) == 0)
            return k->port;
    }
    if (recent == 0)
        return 0;
    k->port = recent;
    struct held *h = bpf_map_lookup_elem(&claims, k);
    if (h && __sync_val_compare_and_swap(&h->cookie, 0, cookie) == 0)
        return recent;
    return 0;
}

// Rewrites a bind(0) of an owner's task to an unclaimed port of its block.
static __always_inline int steer(struct bpf_sock_addr *ctx, __u64 netns)
{
    struct block *b = block_of_caller(netns, ctx->protocol);
    if (!b)
        return ALLOW;
    __u64 cookie = bpf_get_socket_cookie(ctx);
    struct key k = {};
    k.netns = netns;
    k.protocol = (__u8)ctx->protocol;
    __u16 port = pick(b, &k, cookie);
    if (port == 0)
        return ALLOW;
    struct claim *note = bpf_sk_storage_get(&socket_claims, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (note) {
        note->netns = netns;
        note->port = port;
        note->protocol = k.protocol;
    }
    ctx->user_port = bpf_htons(port);
    return ALLOW_PRIVILEGED;
}

// Binds an unbound socket's connect() into its owner's block, when the block asks for it: an
// unclaimed port, bound with bpf_bind() before the kernel would pick one. A few ports are tried
// (one may be busy with TIME_WAIT connections); with none bindable the kernel picks as usual.
static __always_inline int steer_connect(struct bpf_sock_addr *ctx, int v6)
{
    struct bpf_sock *sk = ctx->sk;
    if (!sk || sk->src_port != 0)
        return 1;
    __u64 netns = bpf_get_netns_cookie(ctx);
    struct block *b = block_of_caller(netns, ctx->protocol);
    if (!b || !(b->flags & STEER_CONNECT))
        return 1;
    __u64 cookie = bpf_get_socket_cookie(ctx);
    struct key k = {};
    k.netns = netns;
    k.protocol = (__u8)ctx->protocol;
    for (int attempt = 0; attempt < 4; attempt++) {
        __u16 port = pick(b, &k, cookie);
        if (port == 0)
            return 1;
        int bound;
        if (v6) {
            struct sockaddr_in6 sa = {};
            sa.sin6_family = 10; // AF_INET6
            sa.sin6_port = bpf_htons(port);
            bound = bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa));
        } else {
            struct sockaddr_in sa = {};
            sa.sin_family = 2; // AF_INET
            sa.sin_port = bpf_htons(port);
            bound = bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa));
        }
        if (bound == 0) {
            struct claim *note = bpf_sk_storage_get(&socket_claims, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
            if (note) {
                note->netns = netns;
                note->port = port;
                note->protocol = k.protocol;
            }
            return 1;
        }
        // Busy after all (TIME_WAIT connections): quiet for a while, like a port given back.
        give_back(&k, cookie);
    }
    return 1;
}

SEC("cgroup/connect4")
int berth_connect4(struct bpf_sock_addr *ctx)
{
    return steer_connect(ctx, 0);
}

SEC("cgroup/connect6")
int berth_connect6(struct bpf_sock_addr *ctx)
{
    return steer_connect(ctx, 1);
}

static __always_inline int on_bind(struct bpf_sock_addr *ctx)
{
    __u64 netns = bpf_get_netns_cookie(ctx);
    __u16 port = bpf_ntohs((__u16)ctx->user_port);
    if (port == 0)
        return steer(ctx, netns);
    switch (judge(netns, port, ctx->protocol)) {
    case 2:
        return ALLOW_PRIVILEGED;
    case 1:
        return ALLOW;
    default:
        return 0;
    }
}

SEC("cgroup/bind4")
int berth_bind4(struct bpf_sock_addr *ctx)
{
    return on_bind(ctx);
}

SEC("cgroup/bind6")
int berth_bind6(struct bpf_sock_addr *ctx)
{
    return on_bind(ctx);
}

static __always_inline int on_post_bind(struct bpf_sock *ctx)
{
    __u64 netns = bpf_get_netns_cookie(ctx);
    __u16 port = (__u16)ctx->src_port;
    switch (judge(netns, port, ctx->protocol)) {
    case 2:
        claim(ctx, bpf_get_socket_cookie(ctx), netns, port, ctx->protocol);
        return 1;
    case 1:
        return 1;
    default:
        return 0;
    }
}

SEC("cgroup/post_bind4")
int berth_post_bind4(struct bpf_sock *ctx)
{
    return on_post_bind(ctx);
}

SEC("cgroup/post_bind6")
int berth_post_bind6(struct bpf_sock *ctx)
{
    return on_post_bind(ctx);
}

// A socket released gives its claim back (only its own: a later socket may hold the port).
SEC("cgroup/sock_release")
int berth_sock_release(struct bpf_sock *ctx)
{
    struct claim *note = bpf_sk_storage_get(&socket_claims, ctx, 0, 0);
    if (!note || note->port == 0)
        return 1;
    struct key k = {};
    k.netns = note->netns;
    k.port = note->port;
    k.protocol = note->protocol;
    give_back(&k, bpf_get_socket_cookie(ctx));
    return 1;
}

// Gives back the claim of `k` held by the socket `cookie` (only its own: a later socket may
// hold the port), marking when.
static __always_inline void give_back(struct key *k, __u64 cookie)
{
    struct held *h = bpf_map_lookup_elem(&claims, k);
    if (h && cookie != 0 && __sync_val_compare_and_swap(&h->cookie, cookie, 0) == cookie)
        h->released = bpf_ktime_get_ns();
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
