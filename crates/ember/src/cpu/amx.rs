//! bf16 matrix products on Intel's AMX tile unit (Sapphire Rapids and later): the engine of Ember's bf16 mode on
//! CPUs that have it.
//!
//! One `tdpbf16ps` multiplies a 16×32 bf16 tile by a 32×16 one into a 16×16 f32 tile: 16 384 FLOP per instruction,
//! about 4× what the core's AVX-512 FMAs do in f32 (measured here: 936 GFLOP/s on one core with tiles in L1 against
//! 240 for f32 FMAs). Rust has no stable AMX intrinsics, so the five instructions used are inline assembly.
//!
//! Layouts (all padded with zeros to whole tiles, so the kernel has no edge cases):
//! - **A** (`m × k`): bf16, row-major, `m` a multiple of 32 and `k` of 32.
//! - **B** (`k × n`): bf16 in AMX's pair-interleaved ("VNNI") layout: row `p` holds, for every column `j`, the two
//!   values `B[2p][j], B[2p+1][j]` side by side; `n` a multiple of 32.
//! - **C** (`m × n`): f32, row-major.
//!
//! A product may sum several *segments* — pairs of (A, B) sub-matrices of the same shape at different offsets — into
//! the same C tile before it is stored once: the convolution passes one segment per kernel tap.

use rayon::prelude::*;
use std::sync::OnceLock;

/// Rows and columns of C one kernel call computes (2×2 tiles of 16×16).
pub const BLOCK: usize = 32;
/// Depth of one tile product (32 bf16 values of `k`).
pub const DEPTH: usize = 32;

/// Whether this CPU and OS run AMX-BF16 (detected once; the first call also asks Linux for the tile registers).
/// `EMBER_CPU_KERNELS=portable` or `=avx512` turns it off.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let forced_off = std::env::var("EMBER_CPU_KERNELS")
            .is_ok_and(|v| v.eq_ignore_ascii_case("portable") || v.eq_ignore_ascii_case("avx512"));
        !forced_off && detect()
    })
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::{__cpuid_count, _xgetbv};
    // SAFETY: cpuid is always available on x86-64 (a safe function since Rust 1.94; unsafe in the MSRV).
    #[allow(unused_unsafe)]
    let leaf7 = unsafe { __cpuid_count(7, 0) };
    let (amx_bf16, amx_tile) = (leaf7.edx & (1 << 22) != 0, leaf7.edx & (1 << 24) != 0);
    #[allow(unused_unsafe)]
    // SAFETY: as above.
    let osxsave = unsafe { __cpuid_count(1, 0) }.ecx & (1 << 27) != 0;
    if !(amx_bf16 && amx_tile && osxsave) {
        return false;
    }
    // SAFETY: OSXSAVE is set, so xgetbv is enabled. Bits 17 and 18: the OS saves tile configuration and data.
    let xcr0 = unsafe { _xgetbv(0) };
    if xcr0 & (0b11 << 17) != 0b11 << 17 {
        return false;
    }
    // Linux hands out the 8 KiB tile state only to processes that ask for it (once, for all threads).
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes this process's permitted xsave features.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// `x` rounded to the nearest bf16 (ties to even), as bits; NaN stays NaN.
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return 0x7fc0;
    }
    let rounding = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

/// `x` rounded up to a multiple of `to`.
pub fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

/// One product `C = Σ_segments A_s · B_s`, with every dimension a multiple of [`BLOCK`] / [`DEPTH`].
pub struct TileProduct<'a> {
    /// Rows of A and C.
    pub m: usize,
    /// Columns of B and C.
    pub n: usize,
    /// Depth of every segment.
    pub k: usize,
    /// A's elements, and the distance between its rows (elements, ≥ k).
    pub a: &'a [u16],
    pub a_row: usize,
    /// B's elements (pair-interleaved), and the distance between its pair-rows (elements, ≥ 2n).
    pub b: &'a [u16],
    pub b_pair_row: usize,
    /// Where each segment's A and B start, in elements of `a` and `b`.
    pub segments: &'a [(usize, usize)],
    /// Which operand is the same for many calls (the weights): its block is kept in cache while the other streams.
    pub weights: Operand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operand {
    A,
    B,
}

impl TileProduct<'_> {
    /// Panics with a description of the mismatch if a view would read outside its buffer.
    fn check(&self, c_len: usize) {
        assert!(
            self.m.is_multiple_of(BLOCK) && self.n.is_multiple_of(BLOCK) && self.k.is_multiple_of(DEPTH) && self.k > 0
        );
        assert!(self.a_row >= self.k && self.b_pair_row >= 2 * self.n);
        for &(a, b) in self.segments {
            assert!(
                a + (self.m - 1) * self.a_row + self.k <= self.a.len(),
                "A segment out of bounds"
            );
            assert!(
                b + (self.k / 2 - 1) * self.b_pair_row + 2 * self.n <= self.b.len(),
                "B segment out of bounds"
            );
        }
        assert!(c_len >= self.m * self.n, "C too small");
    }

    /// Computes C (`m × n`, row-major, overwritten) on all threads.
    pub fn run(&self, c: &mut [f32]) {
        self.check(c.len());
        assert!(available(), "AMX tile products need a CPU with AMX-BF16");
        // Keep the weight operand's block (all segments' depth) within ~768 KiB of the 2 MiB L2.
        let depth_bytes = self.k * self.segments.len() * 2;
        let resident = ((768 << 10) / depth_bytes.max(1) / BLOCK * BLOCK).max(BLOCK);
        let (weight_dim, other_dim) = match self.weights {
            Operand::A => (self.m, self.n),
            Operand::B => (self.n, self.m),
        };
        let weight_chunk = resident.min(weight_dim);
        let weight_chunks = weight_dim.div_ceil(weight_chunk);
        // About four tasks per thread, splitting the streamed dimension.
        let threads = rayon::current_num_threads().max(1);
        let other_chunks = (4 * threads).div_ceil(weight_chunks).clamp(1, other_dim / BLOCK);
        let other_chunk = round_up(other_dim.div_ceil(other_chunks), BLOCK);
        let tasks: Vec<(usize, usize)> = (0..weight_chunks)
            .flat_map(|w| (0..other_dim.div_ceil(other_chunk)).map(move |o| (w, o)))
            .collect();
        let c_ptr = SendPtr(c.as_mut_ptr());
        tasks.into_par_iter().for_each(|(w, o)| {
            let weight_range = (w * weight_chunk, ((w + 1) * weight_chunk).min(weight_dim));
            let other_range = (o * other_chunk, ((o + 1) * other_chunk).min(other_dim));
            let (rows, cols) = match self.weights {
                Operand::A => (weight_range, other_range),
                Operand::B => (other_range, weight_range),
            };
            // SAFETY: AMX is available (asserted); every view is inside its buffer (checked); tasks write disjoint
            // blocks of C.
            unsafe { self.run_block(rows, cols, c_ptr) };
        });
    }

    /// Computes C like [`run`](Self::run), on the calling thread only: for callers that already split their work
    /// into parallel tasks (attention's blocks of query rows).
    pub fn run_on_this_thread(&self, c: &mut [f32]) {
        self.check(c.len());
        assert!(available(), "AMX tile products need a CPU with AMX-BF16");
        // SAFETY: as in `run`, with one task covering all of C.
        unsafe { self.run_block((0, self.m), (0, self.n), SendPtr(c.as_mut_ptr())) };
    }

    /// C's rows `rows.0..rows.1` × columns `cols.0..cols.1`: the streamed operand's blocks outside, the resident
    /// operand's blocks inside.
    unsafe fn run_block(&self, rows: (usize, usize), cols: (usize, usize), c: SendPtr) {
        load_tile_config();
        match self.weights {
            Operand::A => {
                for j in (cols.0..cols.1).step_by(BLOCK) {
                    for i in (rows.0..rows.1).step_by(BLOCK) {
                        self.block(i, j, c);
                    }
                }
            }
            Operand::B => {
                for i in (rows.0..rows.1).step_by(BLOCK) {
                    for j in (cols.0..cols.1).step_by(BLOCK) {
                        self.block(i, j, c);
                    }
                }
            }
        }
        release_tiles();
    }

    /// The 32×32 block of C at (`i`, `j`): four accumulator tiles summed over every segment's depth, stored once.
    #[inline(always)]
    unsafe fn block(&self, i: usize, j: usize, c: SendPtr) {
        let a_stride = self.a_row * 2;
        let b_stride = self.b_pair_row * 2;
        zero_accumulators();
        for &(a_start, b_start) in self.segments {
            let mut a = self.a.as_ptr().add(a_start + i * self.a_row) as *const u8;
            let mut b = self.b.as_ptr().add(b_start + j * 2) as *const u8;
            for _ in 0..self.k / DEPTH {
                multiply_accumulate(a, a.add(16 * a_stride), a_stride, b, b.add(64), b_stride);
                a = a.add(DEPTH * 2);
                b = b.add(DEPTH / 2 * b_stride);
            }
        }
        let c_row = self.n * 4;
        let out = c.0.add(i * self.n + j) as *mut u8;
        store_accumulators(out, out.add(16 * c_row), c_row);
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint blocks of one output buffer to the tasks of `TileProduct::run`.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Tile registers 0–3: the 2×2 f32 accumulators (16 rows × 64 bytes); 4–5: A tiles (16 rows × 32 bf16); 6–7: B tiles
/// (16 pair-rows × 16 columns × 2 bf16). Every tile is 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

unsafe fn load_tile_config() {
    let mut config = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        bytes_per_row: [0; 16],
        rows: [0; 16],
    };
    for t in 0..8 {
        config.bytes_per_row[t] = 64;
        config.rows[t] = 16;
    }
    #[cfg(target_arch = "x86_64")]
    std::arch::asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly));
}

unsafe fn release_tiles() {
    #[cfg(target_arch = "x86_64")]
    std::arch::asm!("tilerelease", options(nostack, nomem));
}

#[inline(always)]
unsafe fn zero_accumulators() {
    #[cfg(target_arch = "x86_64")]
    std::arch::asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        options(nostack, nomem)
    );
}

/// Loads A's two row tiles and B's two column tiles at the given addresses and adds their four products to the
/// accumulators.
#[inline(always)]
unsafe fn multiply_accumulate(
    a_top: *const u8,
    a_bottom: *const u8,
    a_stride: usize,
    b_left: *const u8,
    b_right: *const u8,
    b_stride: usize,
) {
    #[cfg(target_arch = "x86_64")]
    std::arch::asm!(
        "tileloadd tmm4, [{a0} + {sa}*1]",
        "tileloadd tmm6, [{b0} + {sb}*1]",
        "tileloadd tmm7, [{b1} + {sb}*1]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tileloadd tmm5, [{a1} + {sa}*1]",
        "tdpbf16ps tmm1, tmm4, tmm7",
        "tdpbf16ps tmm2, tmm5, tmm6",
        "tdpbf16ps tmm3, tmm5, tmm7",
        a0 = in(reg) a_top,
        a1 = in(reg) a_bottom,
        sa = in(reg) a_stride,
        b0 = in(reg) b_left,
        b1 = in(reg) b_right,
        sb = in(reg) b_stride,
        options(nostack, readonly)
    );
}

#[inline(always)]
unsafe fn store_accumulators(top: *mut u8, bottom: *mut u8, stride: usize) {
    #[cfg(target_arch = "x86_64")]
    std::arch::asm!(
        "tilestored [{t} + {s}*1], tmm0",
        "tilestored [{t64} + {s}*1], tmm1",
        "tilestored [{b} + {s}*1], tmm2",
        "tilestored [{b64} + {s}*1], tmm3",
        t = in(reg) top,
        t64 = in(reg) top.add(64),
        b = in(reg) bottom,
        b64 = in(reg) bottom.add(64),
        s = in(reg) stride,
        options(nostack)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_values;

    fn bf16_value(bits: u16) -> f64 {
        f32::from_bits((bits as u32) << 16) as f64
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        for x in test_values(10_000, 3).into_iter().map(|v| v * 1e3) {
            assert_eq!(bf16_bits(x), half::bf16::from_f32(x).to_bits(), "{x}");
        }
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80); // tie → even
        assert_eq!(bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert!(f32::from_bits((bf16_bits(f32::NAN) as u32) << 16).is_nan());
        assert_eq!(bf16_bits(f32::INFINITY), 0x7f80);
    }

    /// Every block of a multi-segment product against an f64 sum of the same bf16 values, for both blocking orders.
    #[test]
    fn tile_product_matches_a_plain_sum() {
        if !available() {
            eprintln!("skipped: this CPU has no AMX-BF16 (the product is only used where it has)");
            return;
        }
        let (m, n, k) = (96, 160, 64);
        let segments = [(0, 0), (m * k + 32, 2 * 7), (2 * m * k + 64, 2 * 33)];
        let a_row = k;
        let b_pair_row = 2 * n + 80;
        let a: Vec<u16> = test_values(3 * m * k + 64, 1).into_iter().map(bf16_bits).collect();
        let b: Vec<u16> = test_values(k / 2 * b_pair_row + 2 * 40, 2)
            .into_iter()
            .map(bf16_bits)
            .collect();
        for weights in [Operand::A, Operand::B] {
            let product = TileProduct {
                m,
                n,
                k,
                a: &a,
                a_row,
                b: &b,
                b_pair_row,
                segments: &segments,
                weights,
            };
            let mut c = vec![f32::NAN; m * n];
            product.run(&mut c);
            for i in 0..m {
                for j in 0..n {
                    let mut want = 0f64;
                    for &(sa, sb) in &segments {
                        for p in 0..k {
                            let b_at = sb + (p / 2) * b_pair_row + 2 * j + p % 2;
                            want += bf16_value(a[sa + i * a_row + p]) * bf16_value(b[b_at]);
                        }
                    }
                    let got = c[i * n + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "({i}, {j}): {got} vs {want}"
                    );
                }
            }
        }
    }
}
