// Fast simulation harness: a Verilated accelerator top with an AXI4 slave memory
// model, an AXI4-Lite master and the clock loop all in C++, so no Python runs per
// cycle. Built into a shared library whose only exported symbols are the
// `fastsim_*` functions below (see version.map); sim/fast.py loads it with ctypes.
//
// The top must have ports clk, rst, s_axil__* (AXI4-Lite slave, 32-bit) and
// m_axi__* (AXI4 master, FASTSIM_BEAT_BYTES-byte data, with ids). Verilator
// names a port `m_axi__araddr` as the C++ member `m_axi___05Faraddr`.
//
// Cycle discipline: every input reaches the top through a flop (sim/fast.py
// `RegisteredPorts`), so the input ports written before a rising edge are the
// inputs of the cycle that edge starts, and the outputs settle in the clocked
// evaluation alone (Verilator has no input-combinational logic to re-evaluate).
// One call of tick() is one cycle: the rising edge that starts it (eval() with
// clk low, then high), then every handshake of the cycle is sampled (outputs
// from the model, inputs from `cur`, what the last edge latched) and the models
// consume them and write the next cycle's inputs to the ports. Between two
// tick()s the ports hold the next cycle's inputs, which callers may change
// (the AXI4-Lite master below). The memory model is "registered": its outputs
// never depend combinationally on the DUT's outputs in the same cycle.
//
// Memory model: bus address 0 is mem[0] (addresses are 64-bit here; the top's are
// AccelConfig.addr_bits wide); beats beyond the memory get DECERR and injected ranges
// SLVERR/DECERR (a failing write beat is not written). Up to 16
// bursts queue per direction; the first R beat comes `read_latency` cycles after
// AR is accepted and a B `write_latency` cycles after the burst's last W beat;
// R and W each move at most `bytes_per_cycle` bytes per cycle on average. W is
// accepted only once its AW has been (legal for a slave, and what our DMA does).
//
// Memory tiers (fastsim_set_host_tier, off by default, and then no cycle changes):
// bursts starting at or above `host_base` are host memory behind a slower link. Their
// first R beat (or their B) comes `host_latency` cycles after AR is accepted (after the
// last W beat) instead of the device latencies, and their beats move at
// `host_millibytes_per_cycle` / 1000 bytes a cycle, from a credit of their own, beside
// the device tier's `bytes_per_cycle`. Per tier the model counts bytes read and written
// (OKAY beats) and, while a host tier is set, busy cycles (a burst of the tier queued or
// in flight): fastsim_tier_counters. Reads with different ids may complete out of order
// and interleave (AXI4 allows both across ids): each beat comes from the oldest burst of
// some id that is ready and whose tier has credit (one id: the queue's order, as before),
// so a slow host burst of one master does not hold up a device burst of another.
//
// Bus chaos (fastsim_set_bus_chaos, off by default, and then no cycle changes):
// from a seeded splitmix64 stream, each burst gets up to `max_extra_latency` more
// cycles before its first R beat or its B, and with `stall_permille` per mille per
// cycle ARREADY, AWREADY or WREADY drops, or the next R beat or B is held back,
// for 1..kMaxStall cycles. A VALID, once raised, stays up until its handshake.
//
// Demand-filled (lazy) regions (fastsim_add_lazy_region): byte ranges whose contents
// the host produces only when the master first reaches them. When an AR or AW burst
// that touches one is accepted, the fill callback (fastsim_set_fill_callback, one per
// instance) is called with the region's id, synchronously, before any beat of that
// burst moves; the region is then ordinary memory. A callback returning non-zero is
// latched like a protocol violation, so the run stops on it.
//
// Protocol checker (always on; off only while fastsim_reset holds the reset): the
// master's AR/AW/W payload and VALID stay stable while VALID is up and READY low;
// every burst is INCR with full-width beats, 1..max_burst beats and no 4 KiB
// crossing; W beats belong to an accepted AW with WLAST on exactly its last beat;
// the model's queues never overflow. The first violation is latched (cycle and
// text, fastsim_protocol_error) and fastsim_run stops on it.
//
// RTL invariants (only in a model built with FASTSIM_CHECKS, from a design elaborated
// under rtl.checks.simulation_checks and compiled with --assert): a failed assertion
// prints its message and is latched like a protocol violation, so the run stops on it.
//
// Coverage (only in a model built with Verilator's --coverage, sim/coverage.py): when
// MOE_ACCEL_COVERAGE_DIR is set, fastsim_destroy writes the instance's coverage counts
// there as fastsim-<pid>-<library hash>-<n>.dat, and beside it <that name>.lib, this
// library's path, which ties the counts to their model's Verilog.

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#if VM_COVERAGE
#include <dlfcn.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <functional>
#endif
#include <algorithm>
#include <deque>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "Vtop.h"
#include "verilated.h"
#if VM_TRACE
#if VM_TRACE_FST
#include "verilated_fst_c.h"
using TraceFile = VerilatedFstC;
#else
#include "verilated_vcd_c.h"
using TraceFile = VerilatedVcdC;
#endif
#endif

#ifndef FASTSIM_BEAT_BYTES
#error "FASTSIM_BEAT_BYTES must be defined (bytes per AXI4 data beat)"
#endif

#define FASTSIM_API extern "C" __attribute__((visibility("default")))

#define M(sig) top->m_axi___05F##sig
#define L(sig) top->s_axil___05F##sig

namespace {

constexpr uint32_t kBeat = FASTSIM_BEAT_BYTES;
constexpr size_t kQueueDepth = 16;  // bursts the memory model accepts ahead
constexpr uint32_t kMaxStall = 16;  // longest random stall, in cycles
constexpr uint32_t kIncr = 1;       // AxBURST INCR
constexpr uint32_t kSizeCode = __builtin_ctz(kBeat);  // AxSIZE of a full-width beat

enum Resp : uint8_t { kOkay = 0, kSlvErr = 2, kDecErr = 3 };

// ---- moving beat data between memory and Verilator's signal types ----------
template <typename T>
void put_beat(T& sig, const uint8_t* src) {
    uint64_t v = 0;
    std::memcpy(&v, src, kBeat < sizeof(v) ? kBeat : sizeof(v));
    sig = static_cast<T>(v);
}
template <std::size_t W>
void put_beat(VlWide<W>& sig, const uint8_t* src) {
    for (std::size_t i = 0; i < W; ++i) {
        uint32_t w;
        std::memcpy(&w, src + 4 * i, 4);
        sig[i] = w;
    }
}
template <typename T>
void get_beat(const T& sig, uint8_t* dst) {
    uint64_t v = static_cast<uint64_t>(sig);
    std::memcpy(dst, &v, kBeat < sizeof(v) ? kBeat : sizeof(v));
}
template <std::size_t W>
void get_beat(const VlWide<W>& sig, uint8_t* dst) {
    for (std::size_t i = 0; i < W; ++i) {
        uint32_t w = sig[i];
        std::memcpy(dst + 4 * i, &w, 4);
    }
}
template <typename T>
void zero_beat(T& sig) {
    sig = 0;
}
template <std::size_t W>
void zero_beat(VlWide<W>& sig) {
    for (std::size_t i = 0; i < W; ++i) sig[i] = 0;
}

struct ReadBurst {
    uint64_t addr;
    uint32_t beats;
    uint32_t id;
    uint64_t ready_at;
    uint32_t tier;
    uint32_t done = 0;  // beats delivered
};

struct WriteBurst {
    uint64_t addr;
    uint32_t beats;
    uint32_t id;
    uint32_t done;
    uint8_t resp;
    uint32_t tier;
};

constexpr uint32_t kTiers = 2;     // 0: device memory, 1: host memory
constexpr uint64_t kMilli = 1000;  // host bandwidth credit is counted in millibytes

// What one tier moved: bytes read and written, cycles with a burst of it in flight.
struct TierCounters {
    uint64_t bytes_read = 0, bytes_written = 0, busy_cycles = 0;
};

struct Response {
    uint32_t id;
    uint8_t resp;
    uint64_t ready_at;
    uint32_t tier;
};

struct ErrorRange {
    uint64_t lo, hi;
    bool on_write;
    uint8_t resp;
};

// A byte range [lo, hi) not filled yet; `id` is what the fill callback gets.
struct LazyRegion {
    uint64_t lo, hi;
    uint32_t id;
};

using FillFn = int (*)(uint32_t id);

// Seeded random bus behaviour; all zero (the default) draws nothing and changes nothing.
struct Chaos {
    uint64_t state = 0;
    uint32_t permille = 0;
    uint32_t max_extra = 0;
    uint32_t ar = 0, aw = 0, w = 0, r = 0, b = 0;  // cycles left of each channel's stall

    uint64_t next() {  // splitmix64
        uint64_t z = (state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    uint32_t extra_latency() { return max_extra ? uint32_t(next() % (max_extra + 1ull)) : 0; }
    // Whether a channel stalls this cycle: going on with a stall, or starting one.
    bool stalled(uint32_t& left) {
        if (left) {
            --left;
            return true;
        }
        if (!permille || next() % 1000 >= permille) return false;
        left = uint32_t(next() % kMaxStall);
        return true;
    }
};

// A master channel's payload while VALID waits for READY (must not change).
struct HeldAddr {
    bool valid;
    uint64_t addr;
    uint32_t len, id, size, burst;
    bool same(const HeldAddr& o) const {
        return valid == o.valid && addr == o.addr && len == o.len && id == o.id &&
               size == o.size && burst == o.burst;
    }
};
struct HeldWrite {
    bool valid;
    bool last;
    uint64_t strb;
    uint8_t data[kBeat];
};

// What one cycle's handshakes carried (sampled before the clock edge).
struct Sample {
    bool ar, r, aw, w, b;
    uint64_t araddr, awaddr;
    uint32_t arlen, awlen, arid, awid;
    bool wlast;
    uint64_t wstrb;
    uint8_t wdata[kBeat];
    bool l_aw, l_w, l_b, l_ar, l_r;
    uint32_t l_bresp, l_rresp, l_rdata;
};

struct Sim {
    std::unique_ptr<VerilatedContext> ctx;
    std::unique_ptr<Vtop> top;
#if VM_TRACE
    std::unique_ptr<TraceFile> tfp;
#endif
    uint64_t trace_lo = 0, trace_hi = UINT64_MAX;  // cycles [lo, hi) are dumped
    uint8_t* mem;
    uint64_t mem_bytes;
    uint32_t read_latency, write_latency, bytes_per_cycle;
    uint64_t cycle = 0;
    uint64_t credit = 0;   // read bandwidth credit, in bytes
    uint64_t wcredit = 0;  // write bandwidth credit, in bytes
    std::deque<ReadBurst> reads;
    size_t read_sel = 0;  // index in `reads` of the burst whose beat is presented
    uint64_t host_base = UINT64_MAX;  // first host-tier address (UINT64_MAX: no host tier)
    uint32_t host_mbpc = 0;           // host link bandwidth, millibytes per cycle
    uint32_t host_latency = 0;        // host link latency, cycles per burst
    uint64_t hcredit = 0, hwcredit = 0;  // host read/write credit, millibytes
    TierCounters tiers[kTiers];
    bool r_presenting = false;
    std::deque<WriteBurst> writes;
    std::deque<Response> responses;
    bool b_presenting = false;
    std::vector<ErrorRange> errors;
    std::vector<LazyRegion> lazy;  // unfilled, sorted by lo, disjoint
    FillFn fill = nullptr;
    Chaos chaos;
    uint32_t max_burst = 256;
    bool checking = true;  // the protocol checker is on (off while the reset is held)
    HeldAddr ar_held{}, aw_held{};
    HeldWrite w_held{};
    std::string violation;  // the first protocol violation, "" while none

    void violate(const char* fmt, ...) __attribute__((format(printf, 2, 3))) {
        if (!violation.empty()) return;
        char text[256];
        va_list args;
        va_start(args, fmt);
        std::vsnprintf(text, sizeof text, fmt, args);
        va_end(args);
        violation = "AXI4 protocol violation by the master at cycle " + std::to_string(cycle) +
                    ": " + text;
    }

    void forget_held() {
        ar_held = aw_held = HeldAddr{};
        w_held.valid = false;
    }

    HeldAddr read_addr() const {
        return {true,        M(araddr), uint32_t(M(arlen)), uint32_t(M(arid)),
                M(arsize), M(arburst)};
    }
    HeldAddr write_addr() const {
        return {true,        M(awaddr), uint32_t(M(awlen)), uint32_t(M(awid)),
                M(awsize), M(awburst)};
    }

    // One accepted AR or AW: INCR, full-width beats, a legal length, inside one 4 KiB page.
    void check_burst(const char* ch, const HeldAddr& a, size_t queued) {
        const uint32_t beats = a.len + 1;
        const uint64_t first = a.addr & ~uint64_t(kBeat - 1);
        const uint64_t last = first + uint64_t(beats) * kBeat - 1;
        if (queued >= kQueueDepth)
            violate("%s accepted with %zu bursts outstanding (limit %zu)", ch, queued,
                    kQueueDepth);
        else if (a.burst != kIncr)
            violate("%s burst type %u at 0x%llx (only INCR is modelled)", ch, a.burst,
                    (unsigned long long)a.addr);
        else if (a.size != kSizeCode)
            violate("%s size code %u at 0x%llx (the bus is %u bytes: %u)", ch, a.size,
                    (unsigned long long)a.addr, kBeat, kSizeCode);
        else if (beats > max_burst)
            violate("%s burst of %u beats at 0x%llx exceeds the maximum %u", ch, beats,
                    (unsigned long long)a.addr, max_burst);
        else if ((first >> 12) != (last >> 12))
            violate("%s burst 0x%llx..0x%llx crosses a 4 KiB boundary", ch,
                    (unsigned long long)first, (unsigned long long)last);
    }

    // VALID and payload stable from a cycle with VALID up and READY low to the next.
    void check_stable() {
        if (ar_held.valid && !(M(arvalid) && read_addr().same(ar_held)))
            violate("AR valid or payload changed before ARREADY (was 0x%llx, %u beats)",
                    (unsigned long long)ar_held.addr, ar_held.len + 1);
        if (aw_held.valid && !(M(awvalid) && write_addr().same(aw_held)))
            violate("AW valid or payload changed before AWREADY (was 0x%llx, %u beats)",
                    (unsigned long long)aw_held.addr, aw_held.len + 1);
        ar_held = M(arvalid) && !cur.arready ? read_addr() : HeldAddr{};
        aw_held = M(awvalid) && !cur.awready ? write_addr() : HeldAddr{};
        if (w_held.valid || (M(wvalid) && !cur.wready)) {
            HeldWrite now{M(wvalid) != 0, M(wlast) != 0, static_cast<uint64_t>(M(wstrb)), {}};
            get_beat(M(wdata), now.data);
            if (w_held.valid &&
                !(now.valid && now.last == w_held.last && now.strb == w_held.strb &&
                  std::memcmp(now.data, w_held.data, kBeat) == 0))
                violate("W valid, data, strobes or last changed before WREADY");
            w_held = now;
            w_held.valid = now.valid && !cur.wready;
        }
    }

    // Fill every unfilled lazy region that [addr, addr + bytes) touches.
    void fill_lazy(uint64_t addr, uint64_t bytes) {
        const uint64_t end = addr + bytes;
        auto it = std::upper_bound(lazy.begin(), lazy.end(), end,
                                   [](uint64_t a, const LazyRegion& r) { return a <= r.lo; });
        while (it != lazy.begin() && std::prev(it)->hi > addr) {
            --it;
            const uint32_t id = it->id;
            it = lazy.erase(it);
            if ((fill ? fill(id) : 1) != 0 && violation.empty())
                violation = "lazy region " + std::to_string(id) + " at cycle " +
                            std::to_string(cycle) + " could not be filled (the fill callback " +
                            (fill ? "failed)" : "is not set)");
        }
    }

    uint8_t classify(uint64_t addr, bool on_write) const {
        if (addr + kBeat > mem_bytes) return kDecErr;
        for (const auto& e : errors)
            if (e.on_write == on_write && addr < e.hi && addr + kBeat > e.lo) return e.resp;
        return kOkay;
    }

    void dump(uint64_t t) {
#if VM_TRACE
        if (tfp && cycle >= trace_lo && cycle < trace_hi) tfp->dump(t);
#else
        (void)t;
#endif
    }

    // The handshake inputs the last rising edge latched: the current cycle's.
    struct Latched {
        bool arready, rvalid, awready, wready, bvalid;
        bool l_awvalid, l_wvalid, l_bready, l_arvalid, l_rready;
    } cur{};

    // The rising edge that starts a cycle: the flops take the ports' values.
    void edge() {
        cur = {M(arready) != 0, M(rvalid) != 0,  M(awready) != 0, M(wready) != 0,
               M(bvalid) != 0,  L(awvalid) != 0, L(wvalid) != 0,  L(bready) != 0,
               L(arvalid) != 0, L(rready) != 0};
        top->clk = 0;
        top->eval();
        dump(2 * cycle);
        top->clk = 1;
        top->eval();
        dump(2 * cycle + 1);
#ifdef FASTSIM_CHECKS
        if (ctx->gotError() && violation.empty())
            violation = "RTL invariant failed at cycle " + std::to_string(cycle) +
                        " (the failing assertion is printed on the standard output)";
#endif
    }

    Sample tick() {
        edge();
        Sample s{};
        s.ar = M(arvalid) && cur.arready;
        s.r = cur.rvalid && M(rready);
        s.aw = M(awvalid) && cur.awready;
        s.w = M(wvalid) && cur.wready;
        s.b = cur.bvalid && M(bready);
        if (s.ar) {
            s.araddr = M(araddr);
            s.arlen = M(arlen);
            s.arid = M(arid);
        }
        if (s.aw) {
            s.awaddr = M(awaddr);
            s.awlen = M(awlen);
            s.awid = M(awid);
        }
        if (s.w) {
            s.wlast = M(wlast);
            s.wstrb = static_cast<uint64_t>(M(wstrb));
            get_beat(M(wdata), s.wdata);
        }
        s.l_aw = cur.l_awvalid && L(awready);
        s.l_w = cur.l_wvalid && L(wready);
        s.l_b = L(bvalid) && cur.l_bready;
        s.l_ar = cur.l_arvalid && L(arready);
        s.l_r = L(rvalid) && cur.l_rready;
        s.l_bresp = L(bresp);
        s.l_rresp = L(rresp);
        s.l_rdata = L(rdata);
        if (checking) {
            check_stable();
            if (s.ar) check_burst("AR", read_addr(), reads.size());
            if (s.aw) check_burst("AW", write_addr(), writes.size());
        }
        ++cycle;
        update(s);
        return s;
    }

    void update(const Sample& s) {
        if (!lazy.empty()) {
            if (s.ar) fill_lazy(s.araddr, uint64_t(s.arlen + 1) * kBeat);
            if (s.aw) fill_lazy(s.awaddr, uint64_t(s.awlen + 1) * kBeat);
        }
        if (s.ar) {
            const uint32_t t = tier_of(s.araddr);
            reads.push_back({s.araddr, s.arlen + 1, s.arid,
                             cycle + (t ? host_latency : read_latency) + chaos.extra_latency(), t,
                             0});
        }
        if (s.aw) writes.push_back({s.awaddr, s.awlen + 1, s.awid, 0, kOkay, tier_of(s.awaddr)});
        if (s.r) {
            r_presenting = false;
            ReadBurst& rb = reads[read_sel];
            if (classify(rb.addr + uint64_t(rb.done) * kBeat, false) == kOkay)
                tiers[rb.tier].bytes_read += kBeat;
            if (++rb.done == rb.beats) reads.erase(reads.begin() + std::ptrdiff_t(read_sel));
        }
        if (s.w && writes.empty()) {
            if (checking) violate("W beat without an accepted AW");
        } else if (s.w) {
            WriteBurst& wb = writes.front();
            if (wb.tier)
                hwcredit -= kBeat * kMilli;
            else
                wcredit -= kBeat;
            if (checking && s.wlast != (wb.done + 1 == wb.beats))
                violate("WLAST %s on beat %u of a %u-beat burst at 0x%llx",
                        s.wlast ? "set" : "clear", wb.done + 1, wb.beats,
                        (unsigned long long)wb.addr);
            uint64_t addr = wb.addr + uint64_t(wb.done) * kBeat;
            uint8_t resp = classify(addr, true);
            if (resp == kOkay) {
                for (uint32_t i = 0; i < kBeat; ++i)
                    if ((s.wstrb >> i) & 1) mem[addr + i] = s.wdata[i];
                if (s.wstrb) tiers[wb.tier].bytes_written += kBeat;
            } else if (wb.resp == kOkay) {
                wb.resp = resp;
            }
            if (++wb.done == wb.beats) {
                responses.push_back(
                    {wb.id, wb.resp,
                     cycle + (wb.tier ? host_latency : write_latency) + chaos.extra_latency(),
                     wb.tier});
                writes.pop_front();
            }
        }
        if (s.b) {
            b_presenting = false;
            responses.pop_front();
        }
        drive();
    }

    uint32_t tier_of(uint64_t addr) const { return addr >= host_base ? 1 : 0; }

    bool read_credit(uint32_t tier) const {
        return tier ? hcredit >= kBeat * kMilli : credit >= kBeat;
    }

    // The burst whose next beat may move now: the oldest burst of some id (no older one of
    // its id queued) that is ready and whose tier has credit.
    bool pick_read() {
        for (size_t i = 0; i < reads.size(); ++i) {
            const ReadBurst& rb = reads[i];
            bool oldest = true;
            for (size_t j = 0; j < i && oldest; ++j) oldest = reads[j].id != rb.id;
            if (oldest && rb.ready_at <= cycle && read_credit(rb.tier)) {
                read_sel = i;
                return true;
            }
        }
        return false;
    }

    // Cycles each tier has a burst queued or in flight.
    void count_busy() {
        bool busy[kTiers] = {};
        for (const auto& rb : reads) busy[rb.tier] = true;
        for (const auto& wb : writes) busy[wb.tier] = true;
        for (const auto& r : responses) busy[r.tier] = true;
        for (uint32_t t = 0; t < kTiers; ++t) tiers[t].busy_cycles += busy[t];
    }

    // Set the memory side's inputs for the next cycle from the model state.
    void drive() {
        credit += bytes_per_cycle;
        if (credit > 2 * kBeat) credit = 2 * kBeat;
        wcredit += bytes_per_cycle;
        if (wcredit > 2 * kBeat) wcredit = 2 * kBeat;
        if (host_base != UINT64_MAX) {
            hcredit = std::min<uint64_t>(hcredit + host_mbpc, 2 * kBeat * kMilli);
            hwcredit = std::min<uint64_t>(hwcredit + host_mbpc, 2 * kBeat * kMilli);
            count_busy();
        }
        M(arready) = reads.size() < kQueueDepth && !chaos.stalled(chaos.ar);
        M(awready) = writes.size() < kQueueDepth && !chaos.stalled(chaos.aw);
        const bool w_credit = !writes.empty() && (writes.front().tier
                                                      ? hwcredit >= kBeat * kMilli
                                                      : wcredit >= kBeat);
        M(wready) = w_credit && !chaos.stalled(chaos.w);
        if (!r_presenting && !reads.empty() && pick_read() && !chaos.stalled(chaos.r)) {
            const ReadBurst& rb = reads[read_sel];
            uint64_t addr = rb.addr + uint64_t(rb.done) * kBeat;
            uint8_t resp = classify(addr, false);
            if (resp == kOkay)
                put_beat(M(rdata), mem + addr);
            else
                zero_beat(M(rdata));
            M(rresp) = resp;
            M(rid) = rb.id;
            M(rlast) = rb.done + 1 == rb.beats;
            if (rb.tier)
                hcredit -= kBeat * kMilli;
            else
                credit -= kBeat;
            r_presenting = true;
        }
        M(rvalid) = r_presenting;
        if (!b_presenting && !responses.empty() && responses.front().ready_at <= cycle &&
            !chaos.stalled(chaos.b)) {
            M(bid) = responses.front().id;
            M(bresp) = responses.front().resp;
            b_presenting = true;
        }
        M(bvalid) = b_presenting;
    }
};

}  // namespace

FASTSIM_API uint32_t fastsim_beat_bytes() { return kBeat; }

FASTSIM_API int fastsim_has_trace() {
#if VM_TRACE
    return 1;
#else
    return 0;
#endif
}

// `rand_seed` 0: variables without an initial value start at zero; otherwise (in a
// model built with --x-initial unique) they start random, from that seed.
// `trace_scopes`: empty traces everything; else lines "LEVELS HIERARCHY" (Verilog
// dotted names), each tracing that scope's signals down to LEVELS levels below it.
FASTSIM_API void* fastsim_create(uint8_t* mem, uint64_t mem_bytes, uint32_t read_latency,
                                 uint32_t write_latency, uint32_t bytes_per_cycle,
                                 const char* trace_path, uint32_t rand_seed,
                                 const char* trace_scopes) {
    auto* sim = new Sim();
    sim->ctx = std::make_unique<VerilatedContext>();
#ifdef FASTSIM_CHECKS
    sim->ctx->fatalOnError(false);  // a failed assertion stops the run with an error instead
#endif
    sim->ctx->randReset(rand_seed ? 2 : 0);
    if (rand_seed) sim->ctx->randSeed(static_cast<int>(rand_seed & 0x7fffffff));
#if VM_TRACE
    if (trace_path && *trace_path) sim->ctx->traceEverOn(true);
#else
    (void)trace_path;
    (void)trace_scopes;
#endif
    sim->top = std::make_unique<Vtop>(sim->ctx.get(), "top");
#if VM_TRACE
    if (trace_path && *trace_path) {
        sim->tfp = std::make_unique<TraceFile>();
        sim->top->trace(sim->tfp.get(), 99);
        std::istringstream scopes(trace_scopes ? trace_scopes : "");
        int levels;
        std::string hierarchy;
        while (scopes >> levels >> hierarchy) sim->tfp->dumpvars(levels, hierarchy);
        sim->tfp->open(trace_path);
    }
#endif
    sim->mem = mem;
    sim->mem_bytes = mem_bytes;
    sim->read_latency = read_latency;
    sim->write_latency = write_latency;
    sim->bytes_per_cycle = bytes_per_cycle;
    Vtop* top = sim->top.get();
    top->clk = 0;
    top->rst = 0;
    L(awvalid) = 0;
    L(wvalid) = 0;
    L(bready) = 1;
    L(arvalid) = 0;
    L(rready) = 1;
    L(wstrb) = 0xF;
    L(awprot) = 0;
    L(arprot) = 0;
    sim->drive();
    return sim;
}

FASTSIM_API void fastsim_destroy(void* handle) {
    auto* sim = static_cast<Sim*>(handle);
    sim->top->final();
#if VM_TRACE
    if (sim->tfp) sim->tfp->close();
#endif
#if VM_COVERAGE
    if (const char* dir = std::getenv("MOE_ACCEL_COVERAGE_DIR"); dir && *dir) {
        // Each loaded library numbers its own files: its path's hash keeps two models
        // of one process (two libraries) from writing the same name.
        static std::atomic<unsigned> written{0};
        Dl_info self{};
        const std::string lib =
            dladdr(reinterpret_cast<void*>(&fastsim_destroy), &self) && self.dli_fname
                ? self.dli_fname
                : "";
        const std::string path = std::string(dir) + "/fastsim-" + std::to_string(getpid()) + "-" +
                                 std::to_string(std::hash<std::string>{}(lib)) + "-" +
                                 std::to_string(written++) + ".dat";
        sim->ctx->coveragep()->write(path.c_str());
        if (!lib.empty()) std::ofstream(path + ".lib") << lib << "\n";
    }
#endif
    delete sim;
}

// Dump only cycles [start, end) of the trace (counted like fastsim_cycles). The file
// stays consistent: a trace's first dump holds every value, and each later dump
// every change since the dump before it, however many cycles lie between.
FASTSIM_API void fastsim_set_trace_window(void* handle, uint64_t start, uint64_t end) {
    auto* sim = static_cast<Sim*>(handle);
    sim->trace_lo = start;
    sim->trace_hi = end;
}

FASTSIM_API void fastsim_flush_trace(void* handle) {
#if VM_TRACE
    auto* sim = static_cast<Sim*>(handle);
    if (sim->tfp) sim->tfp->flush();
#else
    (void)handle;
#endif
}

// Hold the synchronous reset for `cycles` cycles; the memory model's queues are
// emptied before and after (nothing is in flight across a reset). The top's
// reset in a cycle is `rst` of the cycle before (sim/fast.py `RegisteredPorts`),
// so one more cycle runs after `rst` falls and the top sees its reset on exactly
// `cycles` clock edges. The protocol checker rests meanwhile and starts afresh
// (its latched violation, if any, cleared).
FASTSIM_API void fastsim_reset(void* handle, uint32_t cycles) {
    auto* sim = static_cast<Sim*>(handle);
    auto clear = [sim] {
        sim->forget_held();
        sim->reads.clear();
        sim->writes.clear();
        sim->responses.clear();
        sim->r_presenting = sim->b_presenting = false;
        sim->read_sel = 0;
        sim->drive();
    };
    clear();
    sim->checking = false;
    sim->top->rst = 1;
    for (uint32_t i = 0; i < cycles; ++i) sim->tick();
    sim->top->rst = 0;
    sim->tick();
    clear();
    sim->checking = true;
    sim->violation.clear();
}

FASTSIM_API uint64_t fastsim_cycles(void* handle) { return static_cast<Sim*>(handle)->cycle; }

FASTSIM_API void fastsim_step(void* handle, uint64_t cycles) {
    auto* sim = static_cast<Sim*>(handle);
    for (uint64_t i = 0; i < cycles; ++i) sim->tick();
}

// The bare Verilator loop on the same model, for measuring the harness's overhead: the
// clock toggled and the model evaluated, nothing else (no memory model, no bus checks, no
// waveform); the bus inputs keep their values. Not for simulating: the bus stands still.
FASTSIM_API void fastsim_bare_step(void* handle, uint64_t cycles) {
    auto* sim = static_cast<Sim*>(handle);
    for (uint64_t i = 0; i < cycles; ++i) {
        sim->top->clk = 0;
        sim->top->eval();
        sim->top->clk = 1;
        sim->top->eval();
        ++sim->cycle;
    }
}

FASTSIM_API void fastsim_add_error_range(void* handle, uint64_t lo, uint64_t hi, int on_write,
                                         int resp) {
    auto* sim = static_cast<Sim*>(handle);
    sim->errors.push_back({lo, hi, on_write != 0, static_cast<uint8_t>(resp)});
}

FASTSIM_API void fastsim_clear_error_ranges(void* handle) {
    static_cast<Sim*>(handle)->errors.clear();
}

// The function called with a lazy region's id when the master first reaches it.
FASTSIM_API void fastsim_set_fill_callback(void* handle, FillFn fill) {
    static_cast<Sim*>(handle)->fill = fill;
}

// Register [lo, hi) as a lazy region `id`; returns 0, or -1 (nothing registered) when it
// is empty or overlaps a lazy region not yet filled.
FASTSIM_API int fastsim_add_lazy_region(void* handle, uint64_t lo, uint64_t hi, uint32_t id) {
    auto* sim = static_cast<Sim*>(handle);
    if (lo >= hi) return -1;
    auto it = std::lower_bound(sim->lazy.begin(), sim->lazy.end(), lo,
                               [](const LazyRegion& r, uint64_t a) { return r.lo < a; });
    if (it != sim->lazy.end() && it->lo < hi) return -1;
    if (it != sim->lazy.begin() && std::prev(it)->hi > lo) return -1;
    sim->lazy.insert(it, {lo, hi, id});
    return 0;
}

// Forget every lazy region not filled yet (their memory stays as it is).
FASTSIM_API void fastsim_clear_lazy_regions(void* handle) {
    static_cast<Sim*>(handle)->lazy.clear();
}

// Random bus behaviour from `seed` (see the top of this file); 0 and 0: none.
FASTSIM_API void fastsim_set_bus_chaos(void* handle, uint64_t seed, uint32_t stall_permille,
                                       uint32_t max_extra_latency) {
    auto* sim = static_cast<Sim*>(handle);
    sim->chaos = Chaos{};
    sim->chaos.state = seed;
    sim->chaos.permille = stall_permille;
    sim->chaos.max_extra = max_extra_latency;
}

// Host memory from `base` up, behind a link of `millibytes_per_cycle` / 1000 bytes a cycle
// and `latency` cycles a burst (see the top of this file); base UINT64_MAX: no host tier.
FASTSIM_API void fastsim_set_host_tier(void* handle, uint64_t base, uint32_t millibytes_per_cycle,
                                       uint32_t latency) {
    auto* sim = static_cast<Sim*>(handle);
    sim->host_base = base;
    sim->host_mbpc = millibytes_per_cycle;
    sim->host_latency = latency;
    sim->hcredit = sim->hwcredit = 0;
}

// Tier `tier`'s counters into out[0..2]: bytes read, bytes written, busy cycles; returns
// 0, or -1 for a tier that does not exist. `clear` non-zero zeroes them after the copy.
FASTSIM_API int fastsim_tier_counters(void* handle, uint32_t tier, uint64_t* out, int clear) {
    auto* sim = static_cast<Sim*>(handle);
    if (tier >= kTiers) return -1;
    TierCounters& c = sim->tiers[tier];
    out[0] = c.bytes_read;
    out[1] = c.bytes_written;
    out[2] = c.busy_cycles;
    if (clear) c = TierCounters{};
    return 0;
}

// The longest burst (in beats, 1..256) the protocol checker accepts.
FASTSIM_API void fastsim_set_max_burst(void* handle, uint32_t beats) {
    static_cast<Sim*>(handle)->max_burst = beats;
}

// Copy the latched protocol violation into `buf` (NUL-terminated, cut to `len`);
// returns 1 when there is one, else 0 (and `buf` gets "").
FASTSIM_API int fastsim_protocol_error(void* handle, char* buf, uint32_t len) {
    const std::string& text = static_cast<Sim*>(handle)->violation;
    if (len) std::snprintf(buf, len, "%s", text.c_str());
    return text.empty() ? 0 : 1;
}

// AXI4-Lite write; returns BRESP, or -1 when no response came within `timeout` cycles.
FASTSIM_API int fastsim_reg_write(void* handle, uint32_t addr, uint32_t data, uint32_t timeout) {
    auto* sim = static_cast<Sim*>(handle);
    Vtop* top = sim->top.get();
    L(awaddr) = addr;
    L(wdata) = data;
    L(awvalid) = 1;
    L(wvalid) = 1;
    for (uint32_t i = 0; i < timeout; ++i) {
        Sample s = sim->tick();
        if (s.l_aw) L(awvalid) = 0;
        if (s.l_w) L(wvalid) = 0;
        if (s.l_b) return static_cast<int>(s.l_bresp);
    }
    L(awvalid) = 0;
    L(wvalid) = 0;
    return -1;
}

// AXI4-Lite read into *data; returns RRESP, or -1 on timeout.
FASTSIM_API int fastsim_reg_read(void* handle, uint32_t addr, uint32_t* data, uint32_t timeout) {
    auto* sim = static_cast<Sim*>(handle);
    Vtop* top = sim->top.get();
    L(araddr) = addr;
    L(arvalid) = 1;
    for (uint32_t i = 0; i < timeout; ++i) {
        Sample s = sim->tick();
        if (s.l_ar) L(arvalid) = 0;
        if (s.l_r) {
            *data = s.l_rdata;
            return static_cast<int>(s.l_rresp);
        }
    }
    L(arvalid) = 0;
    return -1;
}

// Run until the status register shows done or error, polling it every
// `poll_interval` cycles over AXI4-Lite, or until `max_cycles` have passed.
// Returns 0 (done), 1 (error), 2 (cycle limit), 3 (status read failed) or 4 (a
// protocol violation is latched); the last status word and the cycles this call
// ran are stored through the pointers.
FASTSIM_API int fastsim_run(void* handle, uint64_t max_cycles, uint32_t status_addr,
                            uint32_t done_mask, uint32_t error_mask, uint32_t poll_interval,
                            uint32_t* status_out, uint64_t* cycles_out) {
    auto* sim = static_cast<Sim*>(handle);
    const uint64_t start = sim->cycle;
    const uint64_t limit = start + max_cycles;
    int code = 2;
    *status_out = 0;
    while (sim->cycle < limit) {
        if (!sim->violation.empty()) {
            code = 4;
            break;
        }
        uint64_t burst = poll_interval;
        if (burst > limit - sim->cycle) burst = limit - sim->cycle;
        for (uint64_t i = 0; i < burst; ++i) sim->tick();
        uint32_t status = 0;
        const int resp = fastsim_reg_read(handle, status_addr, &status, 1000);
        if (!sim->violation.empty()) {
            code = 4;
            break;
        }
        if (resp != 0) {
            code = 3;
            break;
        }
        *status_out = status;
        if (status & error_mask) {
            code = 1;
            break;
        }
        if (status & done_mask) {
            code = 0;
            break;
        }
    }
    *cycles_out = sim->cycle - start;
    return code;
}
