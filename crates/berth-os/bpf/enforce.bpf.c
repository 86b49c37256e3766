// SPDX-License-Identifier: GPL-2.0 OR MIT
//
// Enforce mode: cgroup-BPF programs that keep a reservation's ports for its owner cgroup.
//
// `owners` maps (network-namespace cookie, port, protocol) to the id of the cgroup that owns
// the port. A bind of an owned port from a task of any other cgroup fails with EADDRINUSE, the
// error unmodified programs already handle: `bind4`/`bind6` see the port asked for,
// `post_bind4`/`post_bind6` the port a `bind()` ended on (a `bind(0)`'s too). Ports the kernel
// assigns without a `bind()` call (`connect()`, `listen()` or `sendto()` on an unbound socket)
// are not checked here: `ip_local_reserved_ports` keeps owned ports out of those. A task of the
// owner cgroup or of any cgroup below it is the owner (compared by ancestor id at the owner's
// level); tasks of an exempt cgroup (the daemon's, which binds for its clients) pass. Nothing else matches: port 0 is never looked up, a key carries every field, and an
// entry whose owner is 0 is treated as absent (systemd's SocketBindAllow= once denied nothing
// for years because a zeroed entry meant "any").
//
// Built with Debian's clang: clang -target bpf -O2 -g -mcpu=v3 (build.rs).

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define EADDRINUSE 98

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

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 131072);  // every port of both protocols in one namespace
    __type(key, struct key);
    __type(value, struct owner);
} owners SEC(".maps");

// Cgroups whose tasks bind any port (the daemon's own): id -> 1.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16);
    __type(key, __u64);
    __type(value, __u8);
} exempt SEC(".maps");

// 1: allowed; 0: refused with EADDRINUSE.
static __always_inline int allowed(__u64 netns, __u16 port, __u32 protocol)
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
    if (bpf_get_current_ancestor_cgroup_id((int)o->level) == o->cgroup)
        return 1;
    __u64 current = bpf_get_current_cgroup_id();
    if (bpf_map_lookup_elem(&exempt, &current))
        return 1;
    bpf_set_retval(-EADDRINUSE);
    return 0;
}

SEC("cgroup/bind4")
int berth_bind4(struct bpf_sock_addr *ctx)
{
    return allowed(bpf_get_netns_cookie(ctx), bpf_ntohs((__u16)ctx->user_port), ctx->protocol);
}

SEC("cgroup/bind6")
int berth_bind6(struct bpf_sock_addr *ctx)
{
    return allowed(bpf_get_netns_cookie(ctx), bpf_ntohs((__u16)ctx->user_port), ctx->protocol);
}

SEC("cgroup/post_bind4")
int berth_post_bind4(struct bpf_sock *ctx)
{
    return allowed(bpf_get_netns_cookie(ctx), (__u16)ctx->src_port, ctx->protocol);
}

SEC("cgroup/post_bind6")
int berth_post_bind6(struct bpf_sock *ctx)
{
    return allowed(bpf_get_netns_cookie(ctx), (__u16)ctx->src_port, ctx->protocol);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
