/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * natra.h - the one description of every layout that the BPF program
 * (bpf/natra.bpf.c), the loader (natra/layout.py) and the reference model
 * (reference/) share.  Units are on every field.
 *
 * Rule kept here: a layout changes in this file first; natra/layout.py mirrors
 * it and tests/test_layout.py checks the mirror against the compiled object's
 * BTF, so the two can never drift silently.
 *
 * This header knows nothing about how maps are created or attached.  It is
 * included by BPF C and must stay free of user-space headers.
 */
#ifndef NATRA_H
#define NATRA_H

/* ---- Directions, named from the Pod's point of view ------------------- */
/* Traffic into the Pod: host-veth egress, kubernetes.io/ingress-bandwidth. */
#define NATRA_DIR_TO_POD 0
/* Traffic out of the Pod: host-veth ingress, kubernetes.io/egress-bandwidth. */
#define NATRA_DIR_FROM_POD 1
#define NATRA_NDIRS 2

/* ---- Named limits, each with the reason for its value ------------------ */
/* Rows of the sketch; the program unrolls its row loop to this bound. */
#define NATRA_MAX_DEPTH 8
/* Columns per row; a power of two so that a mask picks the column. 2^16
 * columns x 8 rows x 2 directions x 24 B = 25 MiB, the most one Pod may ask. */
#define NATRA_MAX_WIDTH 65536
/* Bytes one frame is charged at most.  skb->len of a GSO/BIG TCP super-packet
 * stays below 512 KiB; 1 MiB keeps len * 8e9 * NATRA_MAX_SHARE_FLOWS < 2^64. */
#define NATRA_MAX_ACCOUNTED_LEN (1u << 20)
/* The fair share divides the rate by at most this many heavy flows; keeps the
 * per-flow cost (cost * N) below 2^63. */
#define NATRA_MAX_SHARE_FLOWS 1024
/* Rate bounds in bit/s: 1 bit/s .. 1 Pbit/s.  The standard plugin accepts any
 * positive rate; drain() divides by the rate, so it must be at least 1, and
 * in nano-bits no other bound depends on how small it is (docs/design.md). */
#define NATRA_MIN_RATE_BPS 1ULL
#define NATRA_MAX_RATE_BPS 1000000000000000ULL
/* Burst bound in bits: tau = burst * 1e9 must stay below 2^64 with one frame
 * cost on top.  2^34 bits = 2 GiB of bytes; runtimes send at most ~2^32 bits. */
#define NATRA_MAX_BURST_BITS (1ULL << 34)
/* Extension headers walked in an IPv6 packet before giving up on the ports. */
#define NATRA_MAX_IPV6_EXT 4

#define NATRA_NS_PER_SEC 1000000000ULL
/* One byte costs this many nano-bits: 8 bits * 1e9. */
#define NATRA_NBIT_PER_BYTE 8000000000ULL

/* The flow-key hash (design.md, "The hash"): vector multiply-shift,
 *   hash(key, seed) = ((b + sum_i m_i * w_i) mod 2^64) >> 32
 * over the key's ten little-endian u32 words w_i, with the multipliers m_0..9
 * and the offset b the first eleven outputs of SplitMix64 seeded with `seed`
 * (output i = mix64(seed + (i + 1) * gamma)).  h1 = hash(key, SEED1),
 * h2 = hash(key, SEED2) | 1; row r of the sketch uses column
 * fmix32(h1 + r * h2) & (width - 1). */
#define NATRA_HASH_SEED1 0x4e415452u /* "NATR" */
#define NATRA_HASH_SEED2 0x41534b45u /* "ASKE" */
#define NATRA_SPLITMIX_GAMMA 0x9e3779b97f4a7c15ULL
#define NATRA_MIX64_A(z) (((z) ^ ((z) >> 30)) * 0xbf58476d1ce4e5b9ULL)
#define NATRA_MIX64_B(z) (((z) ^ ((z) >> 27)) * 0x94d049bb133111ebULL)
#define NATRA_MIX64_C(z) ((z) ^ ((z) >> 31))
/* Multiplier i (0..9) of the hash with this seed, or with i = 10 its offset;
 * a constant expression, folded by the compiler. */
#define NATRA_HASH_WORD(seed, i) \
	NATRA_MIX64_C(NATRA_MIX64_B(NATRA_MIX64_A((__u64)(seed) + ((__u64)(i) + 1) * NATRA_SPLITMIX_GAMMA)))
#define NATRA_HASH_OFFSET 10 /* NATRA_HASH_WORD(seed, 10) is b */

/* ---- Flow key: 40 bytes, hashed as ten little-endian 32-bit words -------- */
/* IPv4 addresses are stored IPv4-mapped (::ffff:a.b.c.d).  Ports and the
 * EtherType are copied in network byte order, exactly as on the wire.
 * Non-IP frames carry only the EtherType; truncated IP headers carry only the
 * EtherType and NATRA_KEY_TRUNCATED; fragments and truncated L4 headers carry
 * the addresses and protocol with ports 0. */
#define NATRA_KEY_IPV6 0x01
#define NATRA_KEY_FRAGMENT 0x02
#define NATRA_KEY_TRUNCATED 0x04

struct natra_flow_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;      /* network byte order; 0 when absent */
	__u16 dport;      /* network byte order; 0 when absent */
	__u16 ethertype;  /* network byte order, as in the Ethernet header */
	__u8 proto;       /* IP protocol / IPv6 final next header; 0 for non-IP */
	__u8 flags;       /* NATRA_KEY_* */
};

/* ---- Per-direction configuration (ARRAY natra_config, 2 entries) -------- */
#define NATRA_CFG_ENABLED 0x01    /* 0: direction not limited, frames counted and passed */
#define NATRA_CFG_ECN 0x02        /* mark CE on ECT heavy frames in the early zone */
#define NATRA_CFG_TEST_CLOCK 0x04 /* take `now` from __sk_buff.tstamp (tests only) */
/* Shaping mode: the program only classifies (skb->priority names an HTB class
 * of the direction's qdisc) and kernel queues pace; nothing is dropped here. */
#define NATRA_CFG_SHAPE 0x08
/* Policing reads a tick-grained clock (the tick clock below, or
 * CLOCK_MONOTONIC_COARSE), which lags the fine one by less than a timer tick:
 * the plan set it only where it took R x tick off the bucket, so R*t + B still
 * holds (design.md, "Units").
 * The tick clock: where natra_config.tick_ns is set (shaping, and policing
 * with this flag), `now` is jiffies x tick_ns.  The kernel inlines the jiffies
 * read into one load, where the coarse clock is a helper call (~15-20 ns a
 * frame); both move once per timer tick.  tick_ns 0 keeps the coarse clock. */
#define NATRA_CFG_COARSE_CLOCK 0x10
/* Shaping without the direction's lock (the `sketchLock: false` option): the
 * sketch's conservative update runs unserialised; only a heavy frame takes the
 * lock, for its class search.  Exact in one CPU's order; frames of two CPUs at
 * once may lose one frame's charge to a shared cell (design.md, "Shaping
 * without the lock").  Policing ignores it: its buckets need the lock. */
#define NATRA_CFG_UNLOCKED 0x20

/* ---- Shaping: the classes of a direction's HTB, by minor number ---------- */
/* The root class holds the Pod's limit (rate = ceil = R); the mice class has
 * strict priority over the heavy classes; heavy class k has minor
 * NATRA_CLASS_HEAVY_BASE + k and all heavy classes share by DRR. */
#define NATRA_CLASS_ROOT 1
#define NATRA_CLASS_MICE 2
#define NATRA_CLASS_HEAVY_BASE 16
/* Heavy classes per direction, each owned by one heavy flow at a time: up to
 * this many concurrent heavy flows get a queue of their own (exact fairness);
 * more share classes by hash.  A power of two (the slot index is masked). */
#define NATRA_MAX_CLASSES 32

struct natra_config {
	__u64 rate_bps;        /* bit/s, NATRA_MIN_RATE_BPS..NATRA_MAX_RATE_BPS */
	__u64 tau_nbit;        /* nano-bits: burst_bits * 1e9 (the bucket's depth) */
	__u64 heavy_line_nbit; /* nano-bits: tau - reserve; heavy frames stay below */
	__u64 early_line_nbit; /* nano-bits: above it heavy frames must be in share */
	__u64 window_ns;       /* ns: the sketch's window length, >= 1 */
	__u64 threshold_bytes; /* bytes per window that make a flow heavy, >= 1 */
	__u32 width;           /* sketch columns, power of two <= NATRA_MAX_WIDTH */
	__u32 depth;           /* sketch rows, 1..NATRA_MAX_DEPTH */
	__u32 flags;           /* NATRA_CFG_* */
	__u32 classes;         /* shaping: heavy classes, 1..NATRA_MAX_CLASSES */
	__u32 qdisc_major;     /* shaping: major number of the direction's HTB handle */
	__u32 redirect_ifindex;/* shaping out of the Pod: the IFB that queues; 0 = none */
	__u32 flow_slots;      /* policing: slots of natra_flows, a power of two (the loader's) */
	__u32 tick_ns;         /* ns per jiffy where `now` is the tick clock (below); 0 = not */
};

/* ---- Sketch cell (ARRAY natra_sketch, 2 * depth * width entries) -------- */
/* Entry index: dir * depth * width + row * width + column. */
struct natra_cell {
	__u64 epoch; /* window number (now / window_ns) the counts belong to */
	__u64 cur;   /* bytes in window `epoch` (conservative update) */
	__u64 prev;  /* bytes in window `epoch - 1` */
};

/* ---- Shaping: which heavy flow owns a heavy class ------------------------ */
/* A slot is live while epoch < until_epoch: its owner was last classified
 * heavy in window until_epoch - 2, so a flow that stops sending frees its
 * class within two windows.  0 = never used. */
struct natra_slot {
	__u32 flow_hash;   /* h1 (the flow-key hash with NATRA_HASH_SEED1) of the owner's key */
	__u32 pad;
	__u64 until_epoch; /* window number; live while now / window_ns < until_epoch */
};

/* ---- The lock of a direction's state ---------------------------------------- */
/* The default build takes the kernel's resilient queued spin lock
 * (bpf_res_spin_lock, kernels 6.15+): it does not disable interrupts, so it
 * costs ~27 ns less per locked section than bpf_spin_lock (docs/datapath-cost.md),
 * and it gives up (an error) instead of spinning forever.  natra_compat.bpf.o
 * is built with NATRA_COMPAT_LOCK for older kernels.  Both are 4 bytes: the
 * layout is the same. */
#if defined(__bpf__) && !defined(NATRA_COMPAT_LOCK)
struct bpf_res_spin_lock {
	__u32 val;
};
/* A macro, not a typedef: the verifier finds the lock by its struct's name. */
#define natra_lock_t struct bpf_res_spin_lock
#else
#define natra_lock_t struct bpf_spin_lock
#endif

/* ---- Per-direction state (ARRAY natra_state, 2 entries) ----------------- */
/* The aggregate bucket is a GCRA kept as a backlog in nano-bits: a frame of
 * len bytes costs len * 8e9, the backlog drains by rate_bps per ns.  All of it
 * is changed only under `lock`. */
struct natra_state {
	natra_lock_t lock;
	__u32 heavy_now;     /* distinct heavy flows seen in window `epoch` */
	__u32 heavy_prev;    /* ... in window `epoch - 1` */
	__u32 pad;
	__u64 epoch;         /* window of heavy_now */
	__u64 backlog_nbit;  /* nano-bits owed; <= tau_nbit after every admission */
	__u64 last_ns;       /* ns: time of the last drain (never decreases) */
	struct natra_slot slots[NATRA_MAX_CLASSES]; /* shaping: heavy class owners */
};

/* ---- Heavy flow (ARRAY natra_flows, flow_slots entries) ---------------- */
/* Only flows classified heavy use a slot; mice never touch the table.  A heavy
 * flow's slot is h1 & (flow_slots - 1).  The slot is the flow's while it stays
 * live (counted in this window or the last); a heavy flow whose slot another
 * live flow holds shares that slot's state (NATRA_C_FLOW_OVERFLOW); a slot
 * never used, or whose flow was idle a whole window, is taken zeroed
 * (NATRA_C_FLOW_NEW).  Direct mapping: one lookup the verifier inlines, no
 * helper under the lock, and the same slot in the model (docs/design.md).
 * 64 bytes, one cache line (the map is mmapable so that its values start on
 * a page: natra.bpf.c, natra_flows); the owner's key, written only when a flow takes
 * the slot and read only by tools, is apart in ARRAY natra_flow_keys at the
 * same index (struct natra_flow_key). */
struct natra_flow {
	__u32 h1;             /* the owner's key hashes (h2 odd); with the slot, its identity */
	__u32 h2;
	__u64 backlog_nbit;   /* nano-bits owed at the fair-share rate (cost * N) */
	__u64 last_ns;        /* ns: time of the last drain */
	__u64 counted_epoch;  /* window + 1 in which it was last counted in heavy_now; 0 = never used */
	__u64 estimate_bytes; /* sketch estimate (current window) at its last frame */
	__u64 passed_bytes;   /* bytes let through while heavy */
	__u64 dropped_bytes;  /* bytes dropped while heavy */
	__u64 marked_packets; /* frames marked CE */
};

/* ---- Verdicts: what the policy decided for one frame -------------------- */
#define NATRA_V_PASS_MOUSE 0
#define NATRA_V_PASS_HEAVY 1
#define NATRA_V_MARK 2        /* heavy, passed with CE set */
#define NATRA_V_DROP_MOUSE 3  /* the whole bucket (tau) could not pay */
#define NATRA_V_DROP_HEAVY 4  /* paying would cut into the mice reserve */
#define NATRA_V_DROP_SHARE 5  /* early zone and the flow is over its fair share */
#define NATRA_V_PASS_UNLIMITED 6
#define NATRA_V_PASS_ERROR 7  /* a map entry was missing: fail open, counted */
#define NATRA_NVERDICTS 8

/* ---- Counters (PERCPU_ARRAY natra_counters, 2 entries) ------------------ */
/* Verdict v counts packets at index 2*v and bytes at 2*v+1; parse counters
 * follow.  Bytes are skb->len (the whole frame, all GSO segments). */
#define NATRA_C_VERDICT_BASE 0
#define NATRA_C_FRAMES 16
#define NATRA_C_BYTES 17
#define NATRA_C_IPV4 18
#define NATRA_C_IPV6 19
#define NATRA_C_NON_IP 20
#define NATRA_C_FRAGMENT 21
#define NATRA_C_TRUNCATED 22
#define NATRA_C_FLOW_NEW 23     /* heavy flows that took a slot */
#define NATRA_C_FLOW_MISSING 24 /* heavy frame decided without a slot (the lookup failed) */
#define NATRA_C_MARK_FAILED 25  /* CE rewrite failed; the frame still passed */
/* A heavy frame whose slot another live heavy flow holds: the two share one
 * fair-share state, so the table has fewer slots than it needs (or, rarely,
 * two of few flows met in one slot). */
#define NATRA_C_FLOW_OVERFLOW 26
/* The resilient lock gave up (held 250 ms, or taken again on the same CPU,
 * neither of which the program's short sections do): the frame passed
 * undecided, counted as PASS_ERROR. */
#define NATRA_C_LOCK_FAILED 27
#define NATRA_NCOUNTERS 32

struct natra_counters {
	__u64 c[NATRA_NCOUNTERS];
};

/* ---- Trace record (RINGBUF natra_trace; test builds, -DNATRA_TRACE) ----- */
struct natra_trace_rec {
	__u64 now_ns;
	__u32 len;
	__u8 dir;
	__u8 verdict;
	__u8 heavy;
	__u8 cls;   /* shaping: the HTB class minor the frame went to; 0 = none */
};

#endif /* NATRA_H */
