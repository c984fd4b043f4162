// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * natra.bpf.c - Natra's data path: one SCHED_CLS program per direction on a
 * Pod's host-side veth (natra_to_pod on egress, natra_from_pod on ingress).
 *
 * Owns: the per-frame algorithm of docs/design.md, step for step and in the
 * same order (parse, count, sketch with conservative update, heavy census,
 * aggregate GCRA with a mice reserve, per-flow fair-share GCRA, CE marking).
 * The numpy model in reference/ is its executable specification; every value
 * here is u64/u32 integer arithmetic identical to the model's.
 *
 * Rules kept:
 *  - every frame is keyed and counted; nothing bypasses the policy;
 *  - bounds are checked before every packet read, every loop has a stated bound;
 *  - a counter for every way out (natra_counters, per CPU);
 *  - no helper call while a direction's spin lock is held: every map lookup,
 *    the frame's flow-table slot included, happens before the lock, and each
 *    frame is decided in one locked section (design.md, "Concurrency");
 *  - a passing frame returns NATRA_TCX_NEXT so the rest of a tcx chain (another
 *    CNI, a policy agent) still runs; under clsact the same value is
 *    TC_ACT_UNSPEC, which also continues with the next filter.
 *
 * What can race: the clock is read before the lock, so two CPUs may enter the
 * lock with slightly out-of-order times; drain() and roll() never move state
 * backwards, so this only delays draining (tighter than the limit).  The lock
 * is the resilient one (bpf_res_spin_lock; NATRA_COMPAT_LOCK builds take
 * bpf_spin_lock for kernels before 6.15); if it ever gives up, the frame passes
 * as PASS_ERROR and LOCK_FAILED counts it.  A flow slot (an array element, found
 * from the key's hash) is only read and changed under its direction's lock;
 * both directions share the table, so two frames of different directions may
 * touch one slot at once only when their flows' hashes meet in it (the worst
 * case is one frame charged to the wrong share).  Per-CPU counters only add up.
 *
 * Builds: -DNATRA_COMPAT_LOCK takes bpf_spin_lock (natra_compat.bpf.o, loaded
 * where the kernel lacks bpf_res_spin_lock); -DNATRA_PARSE_ONLY keeps only the parser and the frame counters (the
 * benchmark's baseline); -DNATRA_TRACE adds one natra_trace_rec per frame in a
 * ring buffer (tests replaying real traffic); -DNATRA_SHARED is the shared
 * interim build (natra_shared*.bpf.o): one copy, verified once per node, that
 * finds a Pod's five maps through the device the frame is on (skb->ifindex,
 * the Pod's host veth: its slot, then maps of maps), so a Pod can be limited
 * before its own copy is verified.  Its algorithm is this same code.
 * -DNATRA_MEASURE_NO_LOCK drops the lock, for measuring its cost only.
 *
 * Must not know: how it is loaded, attached or pinned; Kubernetes.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "natra.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#ifndef NATRA_COMPAT_LOCK
#define NATRA_RES_LOCK /* natra.h declared natra_lock_t as struct bpf_res_spin_lock */
#endif

/* The clock that numbers shaping's sketch windows: CLOCK_MONOTONIC_COARSE
 * (bpf_ktime_get_coarse_ns, kernels 5.11+), or in the compat build, which
 * serves older kernels too, the fine clock. */
#ifdef NATRA_COMPAT_LOCK
#define natra_window_clock_ns() bpf_ktime_get_ns()
#else
#define natra_window_clock_ns() bpf_ktime_get_coarse_ns()
#endif

#ifndef NATRA_PARSE_ONLY
#ifdef NATRA_RES_LOCK
extern int bpf_res_spin_lock(struct bpf_res_spin_lock *lock) __ksym;
extern void bpf_res_spin_unlock(struct bpf_res_spin_lock *lock) __ksym;
#endif

/* Take / release a direction's lock; a non-zero return means not taken. */
#ifdef NATRA_MEASURE_NO_LOCK
/* Measurement only (bench/peer_cost.py --lock-cost builds it in a temporary
 * directory): the lock's calls removed, to show what the lock costs a frame.
 * Never built by `make` nor loaded by the plugin: without the lock neither
 * R*t+B nor "no false negatives" holds when CPUs share a direction. */
static __always_inline int natra_lock(struct natra_state *st)
{
	return 0;
}

static __always_inline void natra_unlock(struct natra_state *st)
{
}
#else
static __always_inline int natra_lock(struct natra_state *st)
{
#ifdef NATRA_RES_LOCK
	return bpf_res_spin_lock(&st->lock);
#else
	bpf_spin_lock(&st->lock);
	return 0;
#endif
}

static __always_inline void natra_unlock(struct natra_state *st)
{
#ifdef NATRA_RES_LOCK
	bpf_res_spin_unlock(&st->lock);
#else
	bpf_spin_unlock(&st->lock);
#endif
}
#endif /* NATRA_MEASURE_NO_LOCK */
#endif /* !NATRA_PARSE_ONLY */

/* TCX_NEXT is -1; this system's uapi headers predate tcx, so name it here. */
#define NATRA_TCX_NEXT (-1)

_Static_assert(sizeof(struct natra_flow_key) == 40, "flow key is hashed as ten u32 words");
_Static_assert(sizeof(struct natra_config) == 80, "natra_config layout");
_Static_assert(sizeof(struct natra_cell) == 24, "natra_cell layout");
_Static_assert(sizeof(struct natra_slot) == 16, "natra_slot layout");
_Static_assert(sizeof(struct natra_state) == 40 + 16 * NATRA_MAX_CLASSES, "natra_state layout");
_Static_assert((NATRA_MAX_CLASSES & (NATRA_MAX_CLASSES - 1)) == 0, "slot index is masked");
_Static_assert(sizeof(struct natra_flow) == 64, "natra_flow layout: one cache line");
_Static_assert(sizeof(struct natra_counters) == 8 * NATRA_NCOUNTERS, "natra_counters layout");
_Static_assert(sizeof(struct natra_trace_rec) == 16, "natra_trace_rec layout");

/* ---- Maps ------------------------------------------------------------------ */

#ifndef NATRA_SHARED /* the shared build finds these per Pod, below */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NATRA_NDIRS);
	__type(key, __u32);
	__type(value, struct natra_config);
} natra_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NATRA_NDIRS);
	__type(key, __u32);
	__type(value, struct natra_state);
} natra_state SEC(".maps");

/* Placeholder size: the loader sets 2 * depth * width before loading. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct natra_cell);
} natra_sketch SEC(".maps");

/* Placeholder size: the loader sets the Pod's flow slots before loading.
 * BPF_F_MMAPABLE (kernels 5.5+) for where the values start, not for mmap: a
 * plain array's values start 312 bytes into the kernel's struct bpf_array,
 * 56 bytes into a cache line, so every 64-byte slot would straddle two lines
 * and a heavy frame would miss twice; an mmapable array's values start on a
 * page, so each slot is one line (docs/datapath-cost.md, "Slots on cache
 * lines"). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct natra_flow);
} natra_flows SEC(".maps");

/* Placeholder size: as natra_flows. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct natra_flow_key);
} natra_flow_keys SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NATRA_NDIRS);
	__type(key, __u32);
	__type(value, struct natra_counters);
} natra_counters SEC(".maps");
#endif

#ifdef NATRA_SHARED
/* The shared build.  natra_if_slot names the slot of each Pod it limits, by
 * its host veth's ifindex; each outer map holds, per slot, one map of the
 * kind above (the loader gives each a map made from the own build as its
 * inner template, so a copy serves one shape: sketch and flow-table size).
 * Slots are filled with fresh maps ahead of need, because entering a map in a
 * map of maps from user space waits for an RCU grace period; naming a Pod's
 * slot in the plain hash waits for none. */
#define NATRA_SHARED_PODS 4096
#define NATRA_SHARED_SLOTS 256
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NATRA_SHARED_PODS);
	__type(key, __u32);
	__type(value, __u32);
} natra_if_slot SEC(".maps");

/* A direct-mapped cache in front of natra_if_slot: entry ifindex % size holds
 * ifindex | slot << 32 for a Pod bound there, 0 when free.  User space enters
 * a Pod in the hash, then here when its entry is free, and takes it out here
 * before the slot is refilled; a Pod whose entry another holds is found in the
 * hash.  The verifier inlines an array lookup, where a hash lookup costs ~30
 * ns per frame (docs/design.md, "The shared interim program"). */
#define NATRA_SHARED_CACHE 4096
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NATRA_SHARED_CACHE);
	__type(key, __u32);
	__type(value, __u64);
} natra_if_cache SEC(".maps");

#define NATRA_OUTER(name)                                  \
	struct {                                           \
		__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);  \
		__uint(max_entries, NATRA_SHARED_SLOTS);   \
		__uint(key_size, sizeof(__u32));           \
		__uint(value_size, sizeof(__u32));         \
	} name SEC(".maps")
NATRA_OUTER(natra_slot_config);
NATRA_OUTER(natra_slot_state);
NATRA_OUTER(natra_slot_sketch);
NATRA_OUTER(natra_slot_flows);
NATRA_OUTER(natra_slot_flow_keys);
NATRA_OUTER(natra_slot_counters);
#define NATRA_SLOT_PARAM , __u32 slot
#define NATRA_SLOT_ARG , slot
#define NATRA_MAP_STATE m_state
#define NATRA_MAP_SKETCH m_sketch
#define NATRA_MAP_FLOWS m_flows
#define NATRA_MAP_FLOW_KEYS m_flow_keys
#define NATRA_MAP_CONFIG m_config
#define NATRA_MAP_COUNTERS m_counters
#else
#define NATRA_MAP_STATE (&natra_state)
#define NATRA_MAP_SKETCH (&natra_sketch)
#define NATRA_MAP_FLOWS (&natra_flows)
#define NATRA_MAP_FLOW_KEYS (&natra_flow_keys)
#define NATRA_MAP_CONFIG (&natra_config)
#define NATRA_MAP_COUNTERS (&natra_counters)
#define NATRA_SLOT_PARAM
#define NATRA_SLOT_ARG
#endif

#ifdef NATRA_TRACE
/* 1 MiB holds ~43k records (24 B each with the ring's header): a replay test's
 * whole capture between two reads. */
#define NATRA_TRACE_RING_BYTES (1 << 20)
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, NATRA_TRACE_RING_BYTES);
} natra_trace SEC(".maps");
#endif

/* ---- Parsing ----------------------------------------------------------------- */

#define NATRA_ETH_HLEN 14
#define NATRA_IPV4_MIN_HLEN 20
#define NATRA_IPV6_HLEN 40
#define NATRA_PORTS_LEN 4        /* sport + dport: the first 4 bytes of TCP/UDP/SCTP */
#define NATRA_TCP_DOFF_AT 12     /* TCP byte whose high nibble is the header length in words */
#define NATRA_TCP_MIN_HLEN 20
#define NATRA_UDP_HLEN 8
#define NATRA_IPV6_EXT_MIN_HLEN 8 /* every IPv6 extension header is a multiple of 8 */
#define NATRA_IPV6_FRAG_HLEN 8
#define NATRA_IPV4_MF 0x2000
#define NATRA_IPV4_OFFSET_MASK 0x1fff
#define NATRA_ECN_MASK 0x03
/* L4 protocols whose first 4 bytes are the ports (linux/in.h not included). */
#define NATRA_IPPROTO_TCP 6
#define NATRA_IPPROTO_UDP 17
#define NATRA_IPPROTO_SCTP 132
#define NATRA_NEXTHDR_HOP 0
#define NATRA_NEXTHDR_ROUTING 43
#define NATRA_NEXTHDR_FRAGMENT 44
#define NATRA_NEXTHDR_DEST 60
/* Offsets beyond this are never read: it covers an IPv6 header and four
 * extension headers of the largest size ((255 + 1) * 8 bytes each), and keeps
 * the verifier's packet-offset arithmetic far below its 64 KiB limit. */
#define NATRA_MAX_PARSE_OFF (NATRA_ETH_HLEN + NATRA_IPV6_HLEN + NATRA_MAX_IPV6_EXT * 2048)
/* A frame whose headers are not all in the linear part of the skb (rare: the
 * stack keeps headers linear) is pulled once, this far, and parsed again. */
#define NATRA_PULL_LEN 512

/* Where the parser found the IP header, for CE marking. */
#define NATRA_L3_NONE 0
#define NATRA_L3_IPV4 1
#define NATRA_L3_IPV6 2

struct parsed {
	union {
		struct natra_flow_key key;
		__u32 words[10]; /* the key as the hash reads it: ten LE u32 blocks */
	};
	__u8 ecn;      /* ECN field of the IP header, 0 without one */
	__u8 l3;       /* NATRA_L3_* */
	__u8 short_linear; /* a read failed although skb->len says the bytes exist */
	__u16 hdr_end; /* bytes through the TCP/UDP header (repeated per GSO segment); 0 unknown */
};

static __always_inline int is_ported(__u8 proto)
{
	return proto == NATRA_IPPROTO_TCP || proto == NATRA_IPPROTO_UDP || proto == NATRA_IPPROTO_SCTP;
}

static __always_inline int is_ipv6_ext(__u8 nh)
{
	return nh == NATRA_NEXTHDR_HOP || nh == NATRA_NEXTHDR_ROUTING ||
	       nh == NATRA_NEXTHDR_FRAGMENT || nh == NATRA_NEXTHDR_DEST;
}

/* Reading [off, off + n) would leave the linear data: note whether the frame
 * itself is that short (a real truncation) or only its linear part is. */
static __always_inline void missed(struct parsed *p, __u32 off, __u32 n, __u32 frame_len)
{
	if (off + n <= frame_len)
		p->short_linear = 1;
}

/* Ports of an unfragmented TCP/UDP/SCTP header at `off`; others keep ports 0. */
static __always_inline void parse_ports(struct parsed *p, void *data, void *data_end,
					__u32 off, __u32 frame_len)
{
	__u8 *l4;

	if (!is_ported(p->key.proto))
		return;
	if (off > NATRA_MAX_PARSE_OFF)
		goto truncated;
	l4 = data + off;
	if ((void *)(l4 + NATRA_PORTS_LEN) > data_end) {
		missed(p, off, NATRA_PORTS_LEN, frame_len);
		goto truncated;
	}
	__builtin_memcpy(&p->key.sport, l4, 2);
	__builtin_memcpy(&p->key.dport, l4 + 2, 2);
	/* Header bytes each GSO segment repeats on the wire (design.md "Units"). */
	if (p->key.proto == NATRA_IPPROTO_TCP) {
		if ((void *)(l4 + NATRA_TCP_DOFF_AT + 1) <= data_end) {
			__u32 doff = (__u32)(l4[NATRA_TCP_DOFF_AT] >> 4) * 4;

			if (doff >= NATRA_TCP_MIN_HLEN)
				p->hdr_end = off + doff;
		}
	} else if (p->key.proto == NATRA_IPPROTO_UDP) {
		if ((void *)(l4 + NATRA_UDP_HLEN) <= data_end)
			p->hdr_end = off + NATRA_UDP_HLEN;
	}
	return;
truncated:
	p->key.flags |= NATRA_KEY_TRUNCATED;
}

static __always_inline void parse_ipv4(struct parsed *p, void *data, void *data_end, __u32 frame_len)
{
	struct iphdr *ip = data + NATRA_ETH_HLEN;
	__u32 ihl;

	if ((void *)ip + NATRA_IPV4_MIN_HLEN > data_end) {
		missed(p, NATRA_ETH_HLEN, NATRA_IPV4_MIN_HLEN, frame_len);
		goto truncated;
	}
	ihl = (__u32)ip->ihl * 4;
	if (ihl < NATRA_IPV4_MIN_HLEN)
		goto truncated;
	if ((void *)ip + ihl > data_end) {
		missed(p, NATRA_ETH_HLEN, ihl, frame_len);
		goto truncated;
	}
	p->ecn = ip->tos & NATRA_ECN_MASK;
	p->l3 = NATRA_L3_IPV4;
	p->key.proto = ip->protocol;
	p->key.saddr[10] = 0xff;
	p->key.saddr[11] = 0xff;
	__builtin_memcpy(&p->key.saddr[12], &ip->saddr, 4);
	p->key.daddr[10] = 0xff;
	p->key.daddr[11] = 0xff;
	__builtin_memcpy(&p->key.daddr[12], &ip->daddr, 4);
	if (ip->frag_off & bpf_htons(NATRA_IPV4_MF | NATRA_IPV4_OFFSET_MASK)) {
		p->key.flags = NATRA_KEY_FRAGMENT;
		return;
	}
	parse_ports(p, data, data_end, NATRA_ETH_HLEN + ihl, frame_len);
	return;
truncated:
	p->key.flags = NATRA_KEY_TRUNCATED;
}

static __always_inline void parse_ipv6(struct parsed *p, void *data, void *data_end, __u32 frame_len)
{
	struct ipv6hdr *ip6 = data + NATRA_ETH_HLEN;
	__u32 off = NATRA_ETH_HLEN + NATRA_IPV6_HLEN;
	__u8 nh;
	int i;

	if ((void *)ip6 + NATRA_IPV6_HLEN > data_end) {
		missed(p, NATRA_ETH_HLEN, NATRA_IPV6_HLEN, frame_len);
		p->key.flags = NATRA_KEY_TRUNCATED;
		return;
	}
	p->ecn = (ip6->flow_lbl[0] >> 4) & NATRA_ECN_MASK;
	p->l3 = NATRA_L3_IPV6;
	p->key.flags = NATRA_KEY_IPV6;
	__builtin_memcpy(p->key.saddr, &ip6->saddr, 16);
	__builtin_memcpy(p->key.daddr, &ip6->daddr, 16);
	nh = ip6->nexthdr;

	/* Bound: at most NATRA_MAX_IPV6_EXT extension headers are walked. */
#pragma unroll
	for (i = 0; i < NATRA_MAX_IPV6_EXT; i++) {
		__u8 *ext;
		__u32 hlen;

		if (!is_ipv6_ext(nh))
			goto ports;
		if (off > NATRA_MAX_PARSE_OFF)
			goto truncated;
		ext = data + off;
		if ((void *)(ext + NATRA_IPV6_EXT_MIN_HLEN) > data_end) {
			missed(p, off, NATRA_IPV6_EXT_MIN_HLEN, frame_len);
			goto truncated;
		}
		hlen = nh == NATRA_NEXTHDR_FRAGMENT ? NATRA_IPV6_FRAG_HLEN : ((__u32)ext[1] + 1) * 8;
		if ((void *)(ext + hlen) > data_end) {
			missed(p, off, hlen, frame_len);
			goto truncated;
		}
		if (nh == NATRA_NEXTHDR_FRAGMENT) {
			p->key.flags |= NATRA_KEY_FRAGMENT;
			p->key.proto = ext[0];
			return;
		}
		nh = ext[0];
		off += hlen;
	}
	/* A fifth extension header: give up on the ports. */
	if (is_ipv6_ext(nh))
		goto truncated;
ports:
	p->key.proto = nh;
	parse_ports(p, data, data_end, off, frame_len);
	return;
truncated:
	p->key.proto = nh;
	p->key.flags |= NATRA_KEY_TRUNCATED;
}

/* design.md "The flow key": every frame gets a key. */
static __always_inline void parse_frame(struct __sk_buff *skb, struct parsed *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 frame_len = skb->len;
	struct ethhdr *eth = data;

	__builtin_memset(p, 0, sizeof(*p));
	if ((void *)(eth + 1) > data_end) {
		missed(p, 0, NATRA_ETH_HLEN, frame_len);
		p->key.flags = NATRA_KEY_TRUNCATED;
		return;
	}
	p->key.ethertype = eth->h_proto;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		parse_ipv4(p, data, data_end, frame_len);
	else if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		parse_ipv6(p, data, data_end, frame_len);
}

/* Parse; if the headers straddle the skb's linear part, pull and parse again. */
static __always_inline void parse_skb(struct __sk_buff *skb, struct parsed *p)
{
	parse_frame(skb, p);
	if (p->short_linear) {
		__u32 pull = skb->len < NATRA_PULL_LEN ? skb->len : NATRA_PULL_LEN;

		bpf_skb_pull_data(skb, pull);
		parse_frame(skb, p);
	}
}

/* ---- Counting ---------------------------------------------------------------- */

static __always_inline void count_frame(struct natra_counters *ctr, const struct parsed *p, __u32 skb_len)
{
	ctr->c[NATRA_C_FRAMES] += 1;
	ctr->c[NATRA_C_BYTES] += skb_len;
	if (p->key.ethertype == bpf_htons(ETH_P_IP))
		ctr->c[NATRA_C_IPV4] += 1;
	else if (p->key.ethertype == bpf_htons(ETH_P_IPV6))
		ctr->c[NATRA_C_IPV6] += 1;
	else
		ctr->c[NATRA_C_NON_IP] += 1;
	if (p->key.flags & NATRA_KEY_FRAGMENT)
		ctr->c[NATRA_C_FRAGMENT] += 1;
	if (p->key.flags & NATRA_KEY_TRUNCATED)
		ctr->c[NATRA_C_TRUNCATED] += 1;
}

#ifndef NATRA_PARSE_ONLY

/* ---- Hashing: vector multiply-shift over the ten key words (natra.h) ------------ */

#define MURMUR_FMIX1 0x85ebca6bu
#define MURMUR_FMIX2 0xc2b2ae35u
#define NATRA_KEY_WORDS 10

/* MurmurHash3's finaliser: spreads each row's column over all 32 bits. */
static __always_inline __u32 fmix32(__u32 h)
{
	h ^= h >> 16;
	h *= MURMUR_FMIX1;
	h ^= h >> 13;
	h *= MURMUR_FMIX2;
	h ^= h >> 16;
	return h;
}

/* The high half of b + sum m_i * w_i (mod 2^64).  The ten products are
 * independent, so the hash costs one multiplication's latency and a few adds,
 * where a chained hash (MurmurHash3) costs ten rounds one after another; the
 * multipliers are constants, so products of constant words fold away. */
static __always_inline __u32 flow_hash(const __u32 *words, __u32 seed)
{
	__u64 sum = NATRA_HASH_WORD(seed, NATRA_HASH_OFFSET);
	int i;

	/* Bound: the key is exactly NATRA_KEY_WORDS words. */
#pragma unroll
	for (i = 0; i < NATRA_KEY_WORDS; i++)
		sum += (__u64)words[i] * NATRA_HASH_WORD(seed, i);
	return sum >> 32;
}

/* Bytes 8-11 of an IPv4-mapped address (00 00 ff ff) read as a LE u32. */
#define NATRA_V4_MAPPED_WORD 0xffff0000u

/* h1 and h2 (forced odd) of a key.  For an IPv4 key six of the ten words are
 * known constants (the IPv4-mapped prefixes), so the compiler folds their
 * products: the same hash, less work on the common path. */
static __always_inline void key_hashes(const struct parsed *p, __u32 *h1, __u32 *h2)
{
	if (p->l3 == NATRA_L3_IPV4) {
		__u32 w[NATRA_KEY_WORDS] = {
			0, 0, NATRA_V4_MAPPED_WORD, p->words[3],
			0, 0, NATRA_V4_MAPPED_WORD, p->words[7],
			p->words[8], p->words[9],
		};

		*h1 = flow_hash(w, NATRA_HASH_SEED1);
		*h2 = flow_hash(w, NATRA_HASH_SEED2) | 1;
		return;
	}
	*h1 = flow_hash(p->words, NATRA_HASH_SEED1);
	*h2 = flow_hash(p->words, NATRA_HASH_SEED2) | 1;
}

/* ---- Arithmetic of design.md ------------------------------------------------------ */

/* GCRA drain in nano-bits; never moves `last` backwards, never overflows. */
static __always_inline void drain(__u64 *backlog, __u64 *last, __u64 now, __u64 rate)
{
	if (now > *last) {
		__u64 dt = now - *last;

		if (dt > *backlog / rate)
			*backlog = 0;
		else
			*backlog -= dt * rate;
		*last = now;
	}
}

/* Lazy window roll of one sketch cell. */
static __always_inline void roll(struct natra_cell *cell, __u64 epoch)
{
	if (cell->epoch < epoch) {
		cell->prev = cell->epoch + 1 == epoch ? cell->cur : 0;
		cell->cur = 0;
		cell->epoch = epoch;
	}
}

/* ---- CE marking ------------------------------------------------------------------- */

#define NATRA_IPV4_TOS_WORD_OFF NATRA_ETH_HLEN /* version/IHL and TOS: one 16-bit word */
#define NATRA_IPV4_CSUM_OFF (NATRA_ETH_HLEN + 10)
#define NATRA_IPV6_TCLASS_LOW_OFF (NATRA_ETH_HLEN + 1) /* low TC nibble + flow label */
#define NATRA_IPV6_ECN_BITS 0x30                        /* ECN bits inside that byte */

/* Set CE; returns 0 on success.  IPv4 updates the header checksum the way the
 * kernel's csum_replace2 does (bpf_l3_csum_replace on the 16-bit word); the
 * header's one's-complement sum is unchanged, so skb->csum needs no update. */
static __always_inline int mark_ce(struct __sk_buff *skb, __u8 l3)
{
	if (l3 == NATRA_L3_IPV4) {
		__u16 old_word, new_word;

		if (bpf_skb_load_bytes(skb, NATRA_IPV4_TOS_WORD_OFF, &old_word, 2))
			return -1;
		new_word = old_word | bpf_htons(NATRA_ECN_MASK);
		if (bpf_l3_csum_replace(skb, NATRA_IPV4_CSUM_OFF, old_word, new_word, 2))
			return -1;
		return bpf_skb_store_bytes(skb, NATRA_IPV4_TOS_WORD_OFF, &new_word, 2, 0) ? -1 : 0;
	}
	if (l3 == NATRA_L3_IPV6) {
		__u8 b;

		if (bpf_skb_load_bytes(skb, NATRA_IPV6_TCLASS_LOW_OFF, &b, 1))
			return -1;
		b |= NATRA_IPV6_ECN_BITS;
		/* No IPv6 header checksum; a CHECKSUM_COMPLETE skb->csum follows the byte. */
		return bpf_skb_store_bytes(skb, NATRA_IPV6_TCLASS_LOW_OFF, &b, 1, BPF_F_RECOMPUTE_CSUM) ? -1 : 0;
	}
	return -1;
}

/* ---- The policy --------------------------------------------------------------------- */

/* Load a word whose value is not needed yet, so that its cache and TLB misses
 * start now: they then overlap each other and the clock read instead of
 * stalling the locked section one by one.  With many flows a frame's sketch
 * cells and flow slot are rarely cached (design.md, "The heavy-flow table");
 * the empty asm keeps the load. */
static __always_inline void touch(const __u64 *word)
{
	__u64 v = *(const volatile __u64 *)word;

	asm volatile("" : : "r"(v));
}

struct step {
	__u64 now;      /* ns */
	__u64 epoch;    /* now / window_ns */
	__u64 len;      /* bytes charged: the wire length (GSO headers per segment), capped */
	__u64 skb_len;  /* bytes as the interface counts them (counters, per-flow bytes) */
	__u64 cost;     /* nano-bits: len * NATRA_NBIT_PER_BYTE */
	__u64 new_cur;  /* sketch estimate of the key in this window, this frame included */
	int heavy;
	__u32 cls;      /* shaping: HTB class minor of the frame; 0 = not classified */
};

/* The sketch step and heavy census (design.md), under the lock.  `cells` hold
 * `depth` valid pointers; rows past depth repeat row 0 and are skipped. */
static __always_inline void sketch_step(struct natra_cell **cells, __u32 depth,
					const struct natra_config *cfg, struct natra_state *st,
					struct step *s)
{
	__u64 cur_min = ~0ULL, prev_min = ~0ULL;
	int r;

	/* Bound: NATRA_MAX_DEPTH rows, unrolled. */
#pragma unroll
	for (r = 0; r < NATRA_MAX_DEPTH; r++) {
		if (r < depth) {
			roll(cells[r], s->epoch);
			if (cells[r]->cur < cur_min)
				cur_min = cells[r]->cur;
			if (cells[r]->prev < prev_min)
				prev_min = cells[r]->prev;
		}
	}
	s->new_cur = cur_min + s->len;
#pragma unroll
	for (r = 0; r < NATRA_MAX_DEPTH; r++) {
		if (r < depth && cells[r]->cur < s->new_cur)
			cells[r]->cur = s->new_cur;
	}
	s->heavy = s->new_cur >= cfg->threshold_bytes || prev_min >= cfg->threshold_bytes;

	if (s->epoch > st->epoch) {
		st->heavy_prev = s->epoch == st->epoch + 1 ? st->heavy_now : 0;
		st->heavy_now = 0;
		st->epoch = s->epoch;
	}
}

/* A mouse pays from the whole bucket (reserve included). */
static __always_inline int decide_mouse(const struct natra_config *cfg, struct natra_state *st,
					const struct step *s)
{
	__u64 f;

	drain(&st->backlog_nbit, &st->last_ns, s->now, cfg->rate_bps);
	f = st->backlog_nbit + s->cost;
	if (f <= cfg->tau_nbit) {
		st->backlog_nbit = f;
		return NATRA_V_PASS_MOUSE;
	}
	return NATRA_V_DROP_MOUSE;
}

/* A heavy frame: never into the reserve; in the yellow zone only within its
 * fair share; ECT frames there are marked.  `flow` may be NULL (no entry). */
static __always_inline int decide_heavy(const struct natra_config *cfg, struct natra_state *st,
					struct natra_flow *flow, const struct step *s, __u8 ecn)
{
	__u64 heavy_line = cfg->heavy_line_nbit;
	__u64 early_line = cfg->early_line_nbit;
	__u64 f, fb = 0, fcost = 0;
	__u32 n;
	int over_share = 0, verdict;

	if (flow) {
		if (flow->counted_epoch < s->epoch + 1) {
			flow->counted_epoch = s->epoch + 1;
			if (st->heavy_now != 0xffffffffu)
				st->heavy_now += 1;
		}
		n = st->heavy_now > st->heavy_prev ? st->heavy_now : st->heavy_prev;
		if (n < 1)
			n = 1;
		if (n > NATRA_MAX_SHARE_FLOWS)
			n = NATRA_MAX_SHARE_FLOWS;
		drain(&st->backlog_nbit, &st->last_ns, s->now, cfg->rate_bps);
		drain(&flow->backlog_nbit, &flow->last_ns, s->now, cfg->rate_bps);
		flow->estimate_bytes = s->new_cur;
		fb = flow->backlog_nbit < heavy_line ? flow->backlog_nbit : heavy_line;
		fcost = s->cost * n;
		over_share = fcost > heavy_line - fb;
	} else {
		drain(&st->backlog_nbit, &st->last_ns, s->now, cfg->rate_bps);
	}
	f = st->backlog_nbit + s->cost;

	if (f > heavy_line) {
		verdict = NATRA_V_DROP_HEAVY;
	} else if (f > early_line && over_share) {
		verdict = NATRA_V_DROP_SHARE;
	} else {
		st->backlog_nbit = f;
		if (flow)
			flow->backlog_nbit = over_share ? heavy_line : fb + fcost;
		/* Mark only when the aggregate is past the early line AND the flow's own
		 * share bucket is past its mark line (a quarter of the yellow zone below
		 * the heavy line): a flow within its share, or still draining after slow
		 * start, is left alone (docs/design.md). */
		__u64 mark_line = heavy_line - ((heavy_line - early_line) >> 2);

		verdict = (f > early_line && (cfg->flags & NATRA_CFG_ECN) && ecn != 0 &&
			   (!flow || flow->backlog_nbit > mark_line))
				  ? NATRA_V_MARK : NATRA_V_PASS_HEAVY;
	}
	if (flow) {
		if (verdict == NATRA_V_PASS_HEAVY || verdict == NATRA_V_MARK)
			flow->passed_bytes += s->skb_len;
		else
			flow->dropped_bytes += s->skb_len;
		if (verdict == NATRA_V_MARK)
			flow->marked_packets += 1;
	}
	return verdict;
}

/* The slot a heavy frame is decided with, under the lock (natra.h, "Heavy
 * flow"; design.md, "The heavy-flow table"): its own; else, while another live
 * flow (counted in this window or the last) holds it, that flow's, shared;
 * else it takes the slot, zeroed, with its key. */
static __always_inline void claim_slot(struct natra_flow *flow, struct natra_flow_key *owner,
				       __u32 h1, __u32 h2, const struct natra_flow_key *key,
				       __u64 epoch, struct natra_counters *ctr)
{
	if (flow->h1 == h1 && flow->h2 == h2)
		return;
	if (flow->counted_epoch && flow->counted_epoch >= epoch) {
		ctr->c[NATRA_C_FLOW_OVERFLOW] += 1;
		return;
	}
	*flow = (struct natra_flow){ .h1 = h1, .h2 = h2 };
	__builtin_memcpy(owner, key, sizeof(*key));
	ctr->c[NATRA_C_FLOW_NEW] += 1;
}

/* ---- Shaping: classify; the direction's HTB queues and paces ------------------------- */

#define NATRA_SLOT_MASK (NATRA_MAX_CLASSES - 1)

/* The heavy class (0..classes-1) of the flow whose h1 is given, under the lock:
 * the class it owns while that is live; else the first class from h1 % classes
 * on that no live flow owns, which it then owns; else, when every class is
 * owned by another live flow, h1 % classes, shared (design.md, "Shaping"). */
static __always_inline __u32 heavy_class(struct natra_state *st, __u32 h1, __u64 epoch, __u32 classes)
{
	struct natra_slot *slot;
	__u32 n = classes, start, i;
	int found = -1, free = -1;

	if (n < 1)
		n = 1;
	if (n > NATRA_MAX_CLASSES)
		n = NATRA_MAX_CLASSES;
	start = h1 % n;
	/* Bound: NATRA_MAX_CLASSES slots. */
	for (i = 0; i < NATRA_MAX_CLASSES; i++) {
		__u32 j = start + i;
		int live;

		if (i >= n)
			break;
		if (j >= n)
			j -= n;
		slot = &st->slots[j & NATRA_SLOT_MASK];
		live = epoch < slot->until_epoch;
		if (live && slot->flow_hash == h1) {
			found = j;
			break;
		}
		if (!live && free < 0)
			free = j;
	}
	if (found < 0) {
		if (free < 0)
			return start;
		found = free;
		st->slots[found & NATRA_SLOT_MASK].flow_hash = h1;
	}
	slot = &st->slots[found & NATRA_SLOT_MASK];
	if (slot->until_epoch < epoch + 2)
		slot->until_epoch = epoch + 2;
	return found;
}

/* Everything after parsing and counting, for an enabled direction. */
static __always_inline int police(struct __sk_buff *skb, __u32 dir, const struct natra_config *cfg,
				  struct parsed *p, struct natra_counters *ctr, struct step *s NATRA_SLOT_PARAM)
{
	struct natra_cell *cells[NATRA_MAX_DEPTH];
	struct natra_state *st;
	struct natra_flow *flow;
	struct natra_flow_key *owner;
	__u32 width = cfg->width, depth = cfg->depth;
	__u32 h1, h2, base, slot_index;
	int r, verdict;

#ifdef NATRA_SHARED
	void *m_state = bpf_map_lookup_elem(&natra_slot_state, &slot);
	void *m_sketch = bpf_map_lookup_elem(&natra_slot_sketch, &slot);
	void *m_flows = bpf_map_lookup_elem(&natra_slot_flows, &slot);
	void *m_flow_keys = bpf_map_lookup_elem(&natra_slot_flow_keys, &slot);

	if (!m_state || !m_sketch || !m_flows || !m_flow_keys)
		return NATRA_V_PASS_ERROR;
#endif
	if (depth < 1 || depth > NATRA_MAX_DEPTH || width == 0)
		return NATRA_V_PASS_ERROR;
	st = bpf_map_lookup_elem(NATRA_MAP_STATE, &dir);
	if (!st)
		return NATRA_V_PASS_ERROR;

	key_hashes(p, &h1, &h2);
	base = dir * depth * width;
	/* Bound: NATRA_MAX_DEPTH rows, unrolled; lookups, and an early load of each
	 * cell (touch), before the clock and the lock. */
#pragma unroll
	for (r = 0; r < NATRA_MAX_DEPTH; r++) {
		if (r < depth) {
			__u32 idx = base + r * width + (fmix32(h1 + (__u32)r * h2) & (width - 1));
			struct natra_cell *c = bpf_map_lookup_elem(NATRA_MAP_SKETCH, &idx);

			if (!c)
				return NATRA_V_PASS_ERROR;
			cells[r] = c;
			touch(&c->epoch);
		} else {
			cells[r] = cells[0];
		}
	}

	/* Policing: an early load of the slot a heavy frame would be decided with
	 * too.  The pointer is not kept: found again below, after shaping has
	 * returned, it leaves the verifier fewer states to walk. */
	if (!(cfg->flags & NATRA_CFG_SHAPE)) {
		slot_index = h1 & (cfg->flow_slots - 1);
		flow = bpf_map_lookup_elem(NATRA_MAP_FLOWS, &slot_index);
		if (flow)
			touch(&flow->counted_epoch);
	}

	/* Shaping reads the clock only to number sketch windows (the qdisc keeps
	 * the rate), so a tick-grained clock serves: it lags by less than a tick
	 * and reads no cycle counter.  Policing drains its buckets by the
	 * nanosecond: a clock lagging by up to a tick lets up to R * tick more
	 * through, so it reads one only where the plan took R * tick off the
	 * bucket (NATRA_CFG_COARSE_CLOCK), else the fine one.  Of the two
	 * tick-grained clocks the tick clock (natra.h) is the cheap one; the
	 * coarse clock serves where the loader wrote no tick_ns. */
	if (cfg->flags & NATRA_CFG_TEST_CLOCK)
		s->now = skb->tstamp;
	else if (cfg->tick_ns)
		s->now = bpf_jiffies64() * cfg->tick_ns; /* the tick clock (natra.h) */
	else if (cfg->flags & (NATRA_CFG_SHAPE | NATRA_CFG_COARSE_CLOCK))
		s->now = natra_window_clock_ns();
	else
		s->now = bpf_ktime_get_ns();
	s->epoch = s->now / cfg->window_ns;

	if (cfg->flags & NATRA_CFG_SHAPE) {
		/* Shaping: the sketch names mice and heavy flows, each heavy flow gets a
		 * class; no bucket, census or flow table (the qdisc does the rest).
		 * NATRA_CFG_UNLOCKED (natra.h): the sketch step runs without the lock,
		 * and only a heavy frame takes it, for its class. */
		__u32 unlocked = cfg->flags & NATRA_CFG_UNLOCKED;

		/* Keep the choice in one register: the verifier then sees that the
		 * lock is released exactly where it was taken. */
		asm volatile("" : "+r"(unlocked));
		if (!unlocked && natra_lock(st))
			goto lock_failed;
		sketch_step(cells, depth, cfg, st, s);
		if (!s->heavy) {
			if (!unlocked)
				natra_unlock(st);
			s->cls = NATRA_CLASS_MICE;
			return NATRA_V_PASS_MOUSE;
		}
		if (unlocked && natra_lock(st))
			goto lock_failed;
		s->cls = NATRA_CLASS_HEAVY_BASE + heavy_class(st, h1, s->epoch, cfg->classes);
		natra_unlock(st);
		return NATRA_V_PASS_HEAVY;
	}

	/* The slot a heavy frame is decided with and its owner's key, found before
	 * the lock (for the own build the verifier inlines these array lookups). */
	slot_index = h1 & (cfg->flow_slots - 1);
	flow = bpf_map_lookup_elem(NATRA_MAP_FLOWS, &slot_index);
	owner = bpf_map_lookup_elem(NATRA_MAP_FLOW_KEYS, &slot_index);

	if (natra_lock(st))
		goto lock_failed;
	sketch_step(cells, depth, cfg, st, s);
	if (!s->heavy) {
		verdict = decide_mouse(cfg, st, s);
		natra_unlock(st);
		return verdict;
	}
	if (flow && owner) {
		claim_slot(flow, owner, h1, h2, &p->key, s->epoch, ctr);
	} else {
		flow = NULL;
		ctr->c[NATRA_C_FLOW_MISSING] += 1;
	}
	verdict = decide_heavy(cfg, st, flow, s, p->ecn);
	natra_unlock(st);
	return verdict;
lock_failed:
	ctr->c[NATRA_C_LOCK_FAILED] += 1;
	return NATRA_V_PASS_ERROR;
}

#endif /* !NATRA_PARSE_ONLY */

/* ---- Entry --------------------------------------------------------------------------- */

static __always_inline int handle(struct __sk_buff *skb, __u32 dir)
{
	struct natra_counters *ctr;
	struct parsed p;
	__u32 skb_len = skb->len;
#ifndef NATRA_PARSE_ONLY
	struct natra_config *cfg;
	struct step s = {};
	int verdict;
#endif

#ifdef NATRA_SHARED
	__u32 ifindex = skb->ifindex;
	__u32 at = ifindex & (NATRA_SHARED_CACHE - 1);
	__u64 *cached = bpf_map_lookup_elem(&natra_if_cache, &at);
	/* One 8-byte load: the ifindex and the slot of one write. */
	__u64 entry = cached ? *(volatile __u64 *)cached : 0;
	__u32 slot;
	void *m_counters, *m_config;

	if (entry && (__u32)entry == ifindex) {
		slot = entry >> 32;
	} else {
		__u32 *slot_of = bpf_map_lookup_elem(&natra_if_slot, &ifindex);

		if (!slot_of)
			return NATRA_TCX_NEXT; /* not (or no longer) a Pod of this copy: fail open */
		slot = *slot_of;
	}
	m_counters = bpf_map_lookup_elem(&natra_slot_counters, &slot);
	m_config = bpf_map_lookup_elem(&natra_slot_config, &slot);
	if (!m_counters || !m_config)
		return NATRA_TCX_NEXT;
#endif
	parse_skb(skb, &p);
	/* Keep the parsed frame in memory, as one struct.  Its key is only ever
	 * copied whole (into a flow slot's owner), so clang would otherwise split
	 * `p` into scalars, and the parser's byte stores into the key become shifts
	 * and masks: 900 more instructions per program, ~10 ns per frame measured. */
	asm volatile("" : : "r"(&p));
	ctr = bpf_map_lookup_elem(NATRA_MAP_COUNTERS, &dir);
	if (!ctr)
		return NATRA_TCX_NEXT; /* cannot happen for dir < 2; fail open */
	count_frame(ctr, &p, skb_len);

#ifdef NATRA_PARSE_ONLY
	return NATRA_TCX_NEXT;
#else
	/* Charge what the frame occupies on the wire: a GSO super-packet's skb->len
	 * holds its headers once, the wire carries them once per segment (a qdisc
	 * charges the same, qdisc_pkt_len_init). */
	{
		__u64 charge = skb_len;
		__u32 segs = skb->gso_segs;

		if (segs > 1 && p.hdr_end)
			charge += (__u64)(segs - 1) * p.hdr_end;
		s.len = charge < NATRA_MAX_ACCOUNTED_LEN ? charge : NATRA_MAX_ACCOUNTED_LEN;
		s.skb_len = skb_len;
	}
	s.cost = s.len * NATRA_NBIT_PER_BYTE;
	cfg = bpf_map_lookup_elem(NATRA_MAP_CONFIG, &dir);
	if (!cfg)
		verdict = NATRA_V_PASS_ERROR;
	else if (!(cfg->flags & NATRA_CFG_ENABLED))
		verdict = NATRA_V_PASS_UNLIMITED;
	else
		verdict = police(skb, dir, cfg, &p, ctr, &s NATRA_SLOT_ARG);

	verdict &= NATRA_NVERDICTS - 1;
	ctr->c[NATRA_C_VERDICT_BASE + 2 * verdict] += 1;
	ctr->c[NATRA_C_VERDICT_BASE + 2 * verdict + 1] += skb_len;

	if (verdict == NATRA_V_MARK && mark_ce(skb, p.l3))
		ctr->c[NATRA_C_MARK_FAILED] += 1;

#ifdef NATRA_TRACE
	{
		struct natra_trace_rec rec = {
			.now_ns = s.now,
			.len = skb_len,
			.dir = dir,
			.verdict = verdict,
			.heavy = s.heavy,
			.cls = s.cls,
		};

		bpf_ringbuf_output(&natra_trace, &rec, sizeof(rec), 0);
	}
#endif

	/* Shaping: name the class; frames out of the Pod go to the IFB that queues
	 * them (a redirect ends the tcx chain for that frame). */
	if (s.cls && cfg) {
		skb->priority = (cfg->qdisc_major << 16) | s.cls;
		if (cfg->redirect_ifindex)
			return bpf_redirect(cfg->redirect_ifindex, 0);
	}

	/* Drop only what the policy refused; everything else continues the chain. */
	if (verdict == NATRA_V_DROP_MOUSE || verdict == NATRA_V_DROP_HEAVY ||
	    verdict == NATRA_V_DROP_SHARE)
		return TC_ACT_SHOT;
	return NATRA_TCX_NEXT;
#endif
}

/* Traffic into the Pod: host-veth egress. */
SEC("tc")
int natra_to_pod(struct __sk_buff *skb)
{
	return handle(skb, NATRA_DIR_TO_POD);
}

/* Traffic out of the Pod: host-veth ingress. */
SEC("tc")
int natra_from_pod(struct __sk_buff *skb)
{
	return handle(skb, NATRA_DIR_FROM_POD);
}
