//! bf16 matrix products on Intel's AMX tile unit (Sapphire Rapids and later): the engine of Ember's bf16 mode on
//! CPUs that have it.
//!
//! One `tdpbf16ps` multiplies a 16×32 bf16 tile by a 32×16 one into a 16×16 f32 tile: 16 384 FLOP per instruction,
//! about 4× what the core's AVX-512 FMAs do in f32 (measured here: 936 GFLOP/s on one core with tiles in L1 against
//! 240 for f32 FMAs). Rust has no stable AMX intrinsics, so the six instructions used (with the T1-hinted load) are
//! inline assembly.
//!
//! Layouts (all padded with zeros to whole tiles, so the kernel has no edge cases), chosen so that every tile load
//! reads 64-byte-aligned rows (a misaligned `tileloadd` touches twice the cache lines: measured here, it halves the
//! product's speed) and the B operand streams through memory in order:
//! - **A** (`m × k`): bf16, row-major in a 64-byte-aligned buffer ([`AlignedBf16`]), the row stride a multiple of
//!   32 values. A block of 32 rows may start at any row, so a convolution's taps are row offsets into one buffer.
//! - **B** (`k × n`): [`PanelsB`]: panels of 32 columns, each `[k/2][32][2]` (AMX's pair-interleaved layout: row `p`
//!   holds `B[2p][j], B[2p+1][j]` side by side for every column `j`), contiguous.
//! - **C**: each 32×32 block lands in a [`Staging`] buffer for the caller's epilogue to write wherever it belongs,
//!   or straight into place (a block of real rows and columns of a row-major output, [`Tiles::block_into_shared`]);
//!   the accumulators may start from a bias ([`BlockBias`]) instead of zero, so a linear layer needs no epilogue.
//!
//! The callers (`cpu::linear`, `cpu::conv_bf16`, `cpu::attention_bf16`) split the work into parallel tasks; each task
//! runs inside [`with_tiles`] and calls [`Tiles::block`] (or [`Tiles::block_into`]) per 32×32 output block.

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
    let rounding = 0x7fff + ((bits >> 16) & 1);
    let rounded = (bits.wrapping_add(rounding) >> 16) as u16;
    // A select rather than an early return, so that loops over slices vectorise.
    if x.is_nan() {
        0x7fc0
    } else {
        rounded
    }
}

/// `x` rounded to the nearest bf16, as an f32 (tests feed kernels values they can represent exactly).
#[cfg(test)]
pub(crate) fn bf16_rounded(x: f32) -> f32 {
    f32::from_bits((bf16_bits(x) as u32) << 16)
}

/// `dst[i]` = `src[i]` rounded to bf16 ([`bf16_bits`]), vectorised with AVX-512 where the CPU has it.
pub fn round_to_bf16(src: &[f32], dst: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if super::avx512_bw_vl() {
        // SAFETY: AVX-512F, BW and VL were detected.
        unsafe { round_to_bf16_avx512(src, dst) };
        return;
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = bf16_bits(s);
    }
}

/// [`round_to_bf16`] with 16 lanes, over the first `min(src.len(), dst.len())` values.
///
/// # Safety
/// The CPU must have AVX-512F, BW and VL (checked at run time by the caller, [`super::avx512_bw_vl`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn round_to_bf16_avx512(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::*;
    let len = src.len().min(dst.len());
    for i in (0..len).step_by(16) {
        let mask: __mmask16 = if len - i >= 16 { 0xffff } else { (1u16 << (len - i)) - 1 };
        // `i < len` ≤ both lengths: both pointers are inside their slices, and the mask stops at `len`.
        let v = _mm512_maskz_loadu_ps(mask, src.as_ptr().add(i));
        _mm256_mask_storeu_epi16(
            dst.as_mut_ptr().add(i) as *mut i16,
            mask,
            super::vector_math::avx512::to_bf16(v),
        );
    }
}

/// Element types the packers read: rounded to bf16 a slice at a time.
pub trait Bf16Source: Copy + Send + Sync {
    /// `dst[i]` = `src[i]` rounded to bf16, as bits.
    fn round_into(src: &[Self], dst: &mut [u16]);
}

impl Bf16Source for f32 {
    fn round_into(src: &[f32], dst: &mut [u16]) {
        round_to_bf16(src, dst);
    }
}

/// Weights loaded as bf16 are already rounded: their bits are copied.
impl Bf16Source for half::bf16 {
    fn round_into(src: &[half::bf16], dst: &mut [u16]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_bits();
        }
    }
}

/// `src` rounded to bf16 in parallel chunks: for operands read in many short pieces, which then cost no conversion
/// call each.
pub fn rounded_to_bf16(src: &[f32]) -> Vec<half::bf16> {
    use half::slice::HalfFloatSliceExt;
    use rayon::prelude::*;
    let mut out = vec![half::bf16::ZERO; src.len()];
    out.par_chunks_mut(1 << 14)
        .zip(src.par_chunks(1 << 14))
        .for_each(|(dst, src)| round_to_bf16(src, dst.reinterpret_cast_mut()));
    out
}

/// `x` rounded up to a multiple of `to`.
pub fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

/// One cache line of bf16 values.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u16; 32]);

/// bf16 values in a 64-byte-aligned buffer, zero-initialised, reusable (`resize_zeroed` keeps the allocation).
#[derive(Default)]
pub struct AlignedBf16 {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedBf16 {
    pub fn zeroed(len: usize) -> Self {
        let mut buffer = Self::default();
        buffer.resize_zeroed(len);
        buffer
    }

    /// Makes the buffer `len` zeros long.
    pub fn resize_zeroed(&mut self, len: usize) {
        self.lines.clear();
        self.lines.resize(len.div_ceil(32), Line([0; 32]));
        self.len = len;
    }

    /// Makes the buffer `len` values long without clearing what it held (for buffers written in full).
    pub fn resize_uninit(&mut self, len: usize) {
        if self.lines.len() < len.div_ceil(32) {
            self.lines.resize(len.div_ceil(32), Line([0; 32]));
        }
        self.len = len;
    }

    pub fn as_slice(&self) -> &[u16] {
        // SAFETY: `lines` holds at least `len` u16 values, contiguous (Line is repr(C) over [u16; 32]).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const u16, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u16] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut u16, self.len) }
    }

    /// Bytes allocated.
    pub fn capacity_bytes(&self) -> usize {
        self.lines.capacity() * 64
    }
}

/// A `k × n` B operand in panels of 32 columns (`[n/32][k/2][32][2]`), `k` and `n` padded to whole tiles.
pub struct PanelsB {
    depth: usize,
    columns: usize,
    data: AlignedBf16,
}

impl std::fmt::Debug for PanelsB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PanelsB({}×{})", self.depth, self.columns)
    }
}

impl PanelsB {
    /// Packs the `k × n` matrix whose element (row `i`, column `j`) is `value(i, j)`, rounded to bf16: the plain
    /// packer the tests hold the others to.
    #[cfg(test)]
    pub fn from_fn(k: usize, n: usize, value: impl Fn(usize, usize) -> f32 + Sync) -> Self {
        Self::build(k, n, |panel, dst| {
            for (pair, row) in dst.chunks_exact_mut(2 * BLOCK).enumerate() {
                for (c, lanes) in row.chunks_exact_mut(2).enumerate() {
                    let j = panel * BLOCK + c;
                    for (lane, slot) in lanes.iter_mut().enumerate() {
                        let i = 2 * pair + lane;
                        if i < k && j < n {
                            *slot = bf16_bits(value(i, j));
                        }
                    }
                }
            }
        })
    }

    /// Packs the `k × n` matrix whose row `i` is `row(i)` (at least `n` values), rounded to bf16 (attention's
    /// values): each row's panel columns are rounded in one vector pass, then each pair of rows interleaved.
    pub fn from_rows<'r, T: Bf16Source + 'r>(k: usize, n: usize, row: impl Fn(usize) -> &'r [T] + Sync) -> Self {
        Self::build(k, n, |panel, dst| {
            let columns = panel * BLOCK..((panel + 1) * BLOCK).min(n);
            let mut rounded = [[0u16; BLOCK]; 2];
            for (pair, dst) in dst.chunks_exact_mut(2 * BLOCK).enumerate().take(k.div_ceil(2)) {
                for (lane, rounded) in rounded.iter_mut().enumerate() {
                    let i = 2 * pair + lane;
                    if i < k {
                        T::round_into(&row(i)[columns.clone()], &mut rounded[..columns.len()]);
                    } else {
                        rounded.fill(0);
                    }
                }
                for (c, slots) in dst.chunks_exact_mut(2).enumerate() {
                    (slots[0], slots[1]) = (rounded[0][c], rounded[1][c]);
                }
            }
        })
    }

    /// Packs the `k × n` matrix whose column `j` is `column(j)` (at least `k` values), rounded to bf16 (attention's
    /// `kᵀ`, whose columns are the keys' rows; a linear layer's `Wᵀ`, whose columns are the weight's rows): each
    /// panel's 32 columns are rounded in vector passes, then transposed a value pair at a time.
    pub fn from_columns<'c, T: Bf16Source + 'c>(k: usize, n: usize, column: impl Fn(usize) -> &'c [T] + Sync) -> Self {
        let depth = round_up(k, DEPTH);
        Self::build(k, n, |panel, dst| {
            // The panel's columns one after another, `depth` values each (zero below row k).
            let mut rounded = vec![0u16; BLOCK * depth];
            for (c, rounded) in rounded
                .chunks_exact_mut(depth)
                .take(BLOCK.min(n.saturating_sub(panel * BLOCK)))
                .enumerate()
            {
                T::round_into(&column(panel * BLOCK + c)[..k], &mut rounded[..k]);
            }
            // Element (i, c) of the panel sits at pair-row i/2, column c, lane i%2: the pair (2p, 2p + 1) of column
            // c moves as one u32.
            for (pair, dst) in dst.chunks_exact_mut(2 * BLOCK).enumerate() {
                for (c, slots) in dst.chunks_exact_mut(2).enumerate() {
                    let column = &rounded[c * depth + 2 * pair..];
                    (slots[0], slots[1]) = (column[0], column[1]);
                }
            }
        })
    }

    /// Zero-padded panels for a `k × n` matrix, each written by `fill_panel(index, panel)` (in parallel). Each task
    /// zeroes its own panel first: zeroing the whole buffer on the calling thread (and taking its page faults there)
    /// was a third of a full-size model's load.
    fn build(k: usize, n: usize, fill_panel: impl Fn(usize, &mut [u16]) + Sync) -> Self {
        use rayon::prelude::*;
        let (depth, columns) = (round_up(k, DEPTH), round_up(n, BLOCK));
        // A panel is `depth` lines of 32 values.
        let lines = depth * columns / 32;
        let mut data: Vec<Line> = Vec::with_capacity(lines);
        data.spare_capacity_mut()[..lines]
            .par_chunks_mut(depth.max(1))
            .enumerate()
            .for_each(|(panel, chunk)| {
                for line in chunk.iter_mut() {
                    line.write(Line([0; 32]));
                }
                // SAFETY: every line of the chunk was just initialised, and `Line` is `repr(C)` over `[u16; 32]`.
                let values =
                    unsafe { std::slice::from_raw_parts_mut(chunk.as_mut_ptr() as *mut u16, chunk.len() * 32) };
                fill_panel(panel, values);
            });
        // SAFETY: the chunks cover the first `lines` lines, each initialised above.
        unsafe { data.set_len(lines) };
        let data = AlignedBf16 {
            lines: data,
            len: depth * columns,
        };
        Self { depth, columns, data }
    }

    /// Padded depth (rows) and width (columns).
    pub fn depth(&self) -> usize {
        self.depth
    }

    pub fn columns(&self) -> usize {
        self.columns
    }

    /// The panel holding columns `32·index .. 32·index + 32`.
    pub fn panel(&self, index: usize) -> &[u16] {
        &self.data.as_slice()[index * self.depth * BLOCK..][..self.depth * BLOCK]
    }
}

/// Where [`block`] stores one 32×32 block of C (row-major, f32).
#[repr(C, align(64))]
pub struct Staging(pub [f32; BLOCK * BLOCK]);

impl Default for Staging {
    fn default() -> Self {
        Staging([0.0; BLOCK * BLOCK])
    }
}

impl Staging {
    /// Row `r` of the block.
    pub fn row(&self, r: usize) -> &[f32] {
        &self.0[r * BLOCK..][..BLOCK]
    }
}

/// The 32 values added to a block's columns, in the two forms the tile kernels take them: `row`, broadcast into the
/// accumulators before the products ([`Tiles::block_into_biased`]); and `parts`, a one-step-deep B panel whose
/// product with [`BIAS_ONES`] adds the same values to accumulators that start from something else (a residual,
/// [`Tiles::block_into_shared_plus`]). Each value is split into three bf16 parts that sum to it exactly (three bf16
/// significands hold f32's 24 bits), at depths 0, 1 and 2 of the panel.
#[repr(C, align(64))]
#[derive(Clone)]
pub struct BlockBias {
    row: [f32; BLOCK],
    parts: [u16; DEPTH * BLOCK],
}

impl std::fmt::Debug for BlockBias {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlockBias({:?})", self.row)
    }
}

impl BlockBias {
    /// `bias` cut into blocks of 32 columns, the last one padded with zeros.
    pub fn blocks(bias: &[f32]) -> Vec<BlockBias> {
        bias.chunks(BLOCK)
            .map(|chunk| {
                let mut block = BlockBias {
                    row: [0.0; BLOCK],
                    parts: [0; DEPTH * BLOCK],
                };
                block.row[..chunk.len()].copy_from_slice(chunk);
                for (c, &value) in chunk.iter().enumerate() {
                    // Panel layout: depth i of column c at pair-row i/2, lane i%2.
                    for (i, part) in split_in_three(value).into_iter().enumerate() {
                        block.parts[(i / 2 * BLOCK + c) * 2 + i % 2] = part;
                    }
                }
                block
            })
            .collect()
    }

    /// The bias as a B operand for [`BIAS_ONES`].
    fn term(&self) -> Term<'_> {
        Term {
            a: &BIAS_ONES.0,
            a_row: DEPTH,
            b: &self.parts,
        }
    }
}

/// `x` as three bf16 values (bits) whose exact sum is `x` (finite `x` not far below f32's normal range, where the
/// tile unit would flush the smaller parts): the top 8 significant bits, the next 8, the last 8 (truncation, which
/// unlike rounding cannot overflow at f32's largest values).
fn split_in_three(x: f32) -> [u16; 3] {
    let top = |x: f32| (x.to_bits() >> 16) as u16;
    let value = |bits: u16| f32::from_bits((bits as u32) << 16);
    let hi = top(x);
    let rest = x - value(hi);
    let mid = top(rest);
    [hi, mid, top(rest - value(mid))]
}

/// An A operand of 32 rows of `[1, 1, 1, 0, …]` (bf16): times [`BlockBias`]'s parts, each row gets the bias.
#[repr(C, align(64))]
pub struct BiasOnes([u16; BLOCK * DEPTH]);

pub static BIAS_ONES: BiasOnes = {
    let mut rows = [0u16; BLOCK * DEPTH];
    let mut r = 0;
    while r < BLOCK {
        // 1.0 in bf16.
        rows[r * DEPTH] = 0x3f80;
        rows[r * DEPTH + 1] = 0x3f80;
        rows[r * DEPTH + 2] = 0x3f80;
        r += 1;
    }
    BiasOnes(rows)
};

/// One term of a block's sum: 32 rows of A (row-major from `a`, `a_row` values apart) times one B panel, over the
/// panel's whole depth.
#[derive(Clone, Copy)]
pub struct Term<'a> {
    pub a: &'a [u16],
    pub a_row: usize,
    pub b: &'a [u16],
}

/// An output buffer that parallel tasks write disjoint parts of (each task its own blocks of C): f32, or bf16 for
/// activations whose every reader rounds them to bf16 anyway (see [`Activations`]).
pub struct SharedOut<'a, T = f32> {
    ptr: *mut T,
    len: usize,
    _buffer: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: writes go through `write`, whose contract makes concurrent writes touch disjoint elements.
unsafe impl<T: Send> Send for SharedOut<'_, T> {}
// SAFETY: as above: every access through a shared `SharedOut` is an unsafe write to elements the caller owns.
unsafe impl<T: Send> Sync for SharedOut<'_, T> {}

/// [`SharedOut`]'s bounds-check failure, kept out of line so the checks inline to a compare and a branch.
#[cold]
#[inline(never)]
#[track_caller]
fn out_of_range(start: usize, len: usize, buffer: usize) -> ! {
    panic!("output range {start}+{len} out of {buffer} (or past usize::MAX): a kernel's block arithmetic is wrong")
}

impl<'a, T: Copy> SharedOut<'a, T> {
    #[cfg(test)]
    pub fn new(out: &'a mut [T]) -> Self {
        Self {
            ptr: out.as_mut_ptr(),
            len: out.len(),
            _buffer: std::marker::PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Panics unless `start..start + len` lies inside the buffer (an internal invariant: the kernels compute their
    /// ranges from checked shapes). The end is computed with `checked_add`, so a range that would wrap around
    /// `usize` panics too instead of passing as a small one.
    #[inline]
    fn check_range(&self, start: usize, len: usize) {
        match start.checked_add(len) {
            Some(end) if end <= self.len => {}
            _ => out_of_range(start, len, self.len),
        }
    }

    /// Panics unless `rows` rows of `columns` values, the first at `start` and each `out_row` values after the one
    /// before, lie inside the buffer (overflow-checked, as [`check_range`](Self::check_range)).
    #[inline]
    fn check_rows(&self, start: usize, out_row: usize, rows: usize, columns: usize) {
        if rows == 0 {
            return;
        }
        match (rows - 1)
            .checked_mul(out_row)
            .and_then(|offset| offset.checked_add(start))
        {
            Some(last) => self.check_range(last, columns),
            None => out_of_range(start, usize::MAX, self.len),
        }
    }

    /// Copies `values` to the elements `start..start + values.len()` (bounds-checked: panics outside the buffer).
    ///
    /// # Safety
    /// No other thread may read or write these elements while this runs (the caller's tasks write disjoint parts).
    #[inline(always)]
    pub unsafe fn copy_to(&self, start: usize, values: &[T]) {
        self.check_range(start, values.len());
        std::ptr::copy_nonoverlapping(values.as_ptr(), self.ptr.add(start), values.len());
    }

    /// Where element `index` is, for vector stores; the caller checks `index + lanes ≤ len()`.
    ///
    /// # Safety
    /// `index < self.len()`; every element then stored through the pointer must lie below [`len`](Self::len), and
    /// no other thread may access those elements while the `SharedOut` is alive.
    #[inline(always)]
    pub unsafe fn ptr_unchecked(&self, index: usize) -> *mut T {
        debug_assert!(index < self.len);
        self.ptr.add(index)
    }

    /// Writes `value` at `index`, which the caller has checked to be below [`len`](Self::len).
    ///
    /// # Safety
    /// `index < self.len()`, and no other thread may access `index` while the `SharedOut` is alive.
    #[inline(always)]
    pub unsafe fn write_unchecked(&self, index: usize, value: T) {
        debug_assert!(index < self.len);
        self.ptr.add(index).write(value);
    }
}

impl SharedOut<'_, half::bf16> {
    /// `values` rounded to bf16 into the elements `start..start + values.len()` (bounds-checked).
    ///
    /// # Safety
    /// As [`copy_to`](Self::copy_to): no other thread may access these elements while this runs.
    pub unsafe fn round_to(&self, start: usize, values: &[f32]) {
        self.check_range(start, values.len());
        // Rounded into a local run, then copied: the output may not be initialised yet, so no slice of it is made.
        let mut run = [0u16; 256];
        for (i, chunk) in values.chunks(run.len()).enumerate() {
            round_to_bf16(chunk, &mut run[..chunk.len()]);
            let dst = self.ptr.add(start + i * run.len()) as *mut u16;
            std::ptr::copy_nonoverlapping(run.as_ptr(), dst, chunk.len());
        }
    }

    /// [`OutputElement::store_rows`] for bf16: one vector pass over the block (a conversion call per row made bf16
    /// outputs slower than the f32 ones they replace). Bounds-checked: panics unless every row lies in the buffer.
    ///
    /// # Safety
    /// No other thread may access the elements written (`columns` values at `start + r·out_row` for each
    /// `r < rows`) while this runs.
    unsafe fn round_rows(&self, start: usize, out_row: usize, block: &Staging, rows: usize, columns: usize) {
        if rows == 0 || columns == 0 {
            return;
        }
        assert!(columns <= BLOCK && rows <= BLOCK, "a block has 32 rows of 32 values");
        self.check_rows(start, out_row, rows, columns);
        #[cfg(target_arch = "x86_64")]
        if super::avx512_bw_vl() {
            // `round_rows_avx512`'s contract: AVX-512F, BW and VL were detected; `check_rows` put every row's
            // `columns` values inside the buffer, which `self.ptr` spans; the caller owns those elements.
            round_rows_avx512(self.ptr.add(start) as *mut u16, out_row, block, rows, columns);
            return;
        }
        for r in 0..rows {
            for (c, &value) in block.row(r)[..columns].iter().enumerate() {
                self.ptr
                    .add(start + r * out_row + c)
                    .write(half::bf16::from_bits(bf16_bits(value)));
            }
        }
    }
}

/// Rows `0..rows` of `block`, their first `columns` values, rounded to bf16 at `out + r·out_row`. Masked loads and
/// stores touch only those columns, and the right half's pointer (`+ 16`) is formed only when `columns > 16`: for
/// narrower rows it would lie past the end of an output whose last row ends at its last column.
///
/// # Safety
/// The CPU must have AVX-512F, BW and VL (checked at run time by the caller). `rows ≤ 32`, `columns ≤ 32`, and for
/// every `r < rows` the `columns` values at `out + r·out_row` must lie in one allocation that no other thread
/// accesses while this runs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn round_rows_avx512(out: *mut u16, out_row: usize, block: &Staging, rows: usize, columns: usize) {
    use std::arch::x86_64::*;
    debug_assert!(rows <= BLOCK && columns <= BLOCK);
    let lanes = |n: usize| -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            (1u16 << n) - 1
        }
    };
    let (left, right) = (lanes(columns), lanes(columns.saturating_sub(16)));
    let to_bf16 = super::vector_math::avx512::to_bf16;
    for r in 0..rows {
        // The block's rows are 32 values: both halves' loads stay inside it.
        let row = block.row(r).as_ptr();
        let dst = out.add(r * out_row) as *mut i16;
        _mm256_mask_storeu_epi16(dst, left, to_bf16(_mm512_maskz_loadu_ps(left, row)));
        if columns > 16 {
            // Column 16 is a real one here: `dst + 16` points inside the row.
            _mm256_mask_storeu_epi16(dst.add(16), right, to_bf16(_mm512_maskz_loadu_ps(right, row.add(16))));
        }
    }
}

/// The element types of kernel outputs: f32 results stored as they are, or rounded to bf16.
pub trait OutputElement: Copy + Send + Sync {
    /// What [`new_output`] fills a buffer with in debug builds before the kernel writes it: a signalling NaN, which
    /// no arithmetic produces (x86 quiets every NaN it computes with, and [`bf16_bits`] rounds any NaN to 0x7fc0), so
    /// one left in the output is an element the kernel did not write.
    const UNWRITTEN: Self;

    /// Whether `self` is exactly [`UNWRITTEN`](Self::UNWRITTEN) (bit for bit: NaN ≠ NaN).
    fn is_unwritten(self) -> bool;

    /// Stores `values` into `out`'s elements `start..start + values.len()` (bounds-checked).
    ///
    /// # Safety
    /// As [`SharedOut::copy_to`].
    unsafe fn store(out: &SharedOut<'_, Self>, start: usize, values: &[f32]);

    /// Rows `0..rows` of `block`, their first `columns` values, into `out` at `start + r·out_row` (bounds-checked).
    ///
    /// # Safety
    /// As [`SharedOut::copy_to`], for every element written.
    unsafe fn store_rows(
        out: &SharedOut<'_, Self>,
        start: usize,
        out_row: usize,
        block: &Staging,
        rows: usize,
        columns: usize,
    );

    /// The output as f32, for kernels that store whole tile blocks straight into it.
    fn as_f32<'o, 'a>(out: &'o SharedOut<'a, Self>) -> Option<&'o SharedOut<'a, f32>>;
}

impl OutputElement for f32 {
    const UNWRITTEN: f32 = f32::from_bits(0x7fa5_a5a5);

    fn is_unwritten(self) -> bool {
        self.to_bits() == Self::UNWRITTEN.to_bits()
    }

    /// # Safety
    /// As [`OutputElement::store`].
    unsafe fn store(out: &SharedOut<'_, f32>, start: usize, values: &[f32]) {
        out.copy_to(start, values);
    }

    /// # Safety
    /// As [`OutputElement::store_rows`].
    unsafe fn store_rows(
        out: &SharedOut<'_, f32>,
        start: usize,
        out_row: usize,
        block: &Staging,
        rows: usize,
        columns: usize,
    ) {
        out.check_rows(start, out_row, rows, columns);
        for r in 0..rows {
            // Cannot overflow: `check_rows` computed the last row's start.
            out.copy_to(start + r * out_row, &block.row(r)[..columns]);
        }
    }

    fn as_f32<'o, 'a>(out: &'o SharedOut<'a, f32>) -> Option<&'o SharedOut<'a, f32>> {
        Some(out)
    }
}

impl OutputElement for half::bf16 {
    const UNWRITTEN: half::bf16 = half::bf16::from_bits(0x7fa5);

    fn is_unwritten(self) -> bool {
        self.to_bits() == Self::UNWRITTEN.to_bits()
    }

    /// # Safety
    /// As [`OutputElement::store`].
    unsafe fn store(out: &SharedOut<'_, half::bf16>, start: usize, values: &[f32]) {
        out.round_to(start, values);
    }

    /// # Safety
    /// As [`OutputElement::store_rows`].
    unsafe fn store_rows(
        out: &SharedOut<'_, half::bf16>,
        start: usize,
        out_row: usize,
        block: &Staging,
        rows: usize,
        columns: usize,
    ) {
        out.round_rows(start, out_row, block, rows, columns);
    }

    fn as_f32<'o, 'a>(_: &'o SharedOut<'a, half::bf16>) -> Option<&'o SharedOut<'a, f32>> {
        None
    }
}

impl<T: OutputElement> SharedOut<'_, T> {
    /// f32 results into the elements `start..start + values.len()`, rounded if this output is bf16.
    ///
    /// # Safety
    /// As [`copy_to`](Self::copy_to).
    #[inline(always)]
    pub unsafe fn store(&self, start: usize, values: &[f32]) {
        T::store(self, start, values)
    }

    /// [`OutputElement::store_rows`].
    ///
    /// # Safety
    /// As [`copy_to`](Self::copy_to), for every element written.
    #[inline(always)]
    pub unsafe fn store_rows(&self, start: usize, out_row: usize, block: &Staging, rows: usize, columns: usize) {
        T::store_rows(self, start, out_row, block, rows, columns)
    }
}

/// A new buffer of `len` values that `write` fills through a [`SharedOut`], not filled first: zeroing an op's output
/// only for the kernel to overwrite it was a full pass over memory, 6% of a bf16 UNet step at 512×512 (`perf`), and
/// remeasured in the unsafe-code hardening (scratch test, 2 threads, an AMD EPYC without AMX, noisy): a parallel fill
/// of a 10.5 MB output (8192 × 320 f32) alone takes 0.23–0.52 ms, +6–10% on a layer norm of that size (1.06–1.76 ms
/// bare), and would be about a sixth of the 1.8 ms 320→320 linear layer at 8192 rows (BENCHMARKS.md).
///
/// So the memory stays uninitialised until `write` returns: it is only ever `MaybeUninit<T>` (the `Vec`'s spare
/// capacity) reached through `SharedOut`'s raw pointer, never a `&[T]` or a `Vec<T>` longer than what was written;
/// the `Vec<T>` gets its length only after `write` has returned `Ok`. In debug builds (tests included) the buffer is
/// first filled with [`OutputElement::UNWRITTEN`] and checked afterwards: an element a kernel did not write panics
/// there, before anything reads it.
///
/// # Safety
/// When it returns `Ok`, `write` must have stored every one of the `len` values (through `SharedOut`'s raw writes).
/// Debug builds check this; release builds trust it.
pub unsafe fn new_output<T: OutputElement>(
    len: usize,
    write: impl FnOnce(&SharedOut<'_, T>) -> candle_core::Result<()>,
) -> candle_core::Result<Vec<T>> {
    let mut buffer: Vec<T> = Vec::with_capacity(len);
    let spare = &mut buffer.spare_capacity_mut()[..len];
    #[cfg(debug_assertions)]
    {
        use rayon::prelude::*;
        spare
            .par_chunks_mut(64 << 10)
            .for_each(|chunk| chunk.fill(std::mem::MaybeUninit::new(T::UNWRITTEN)));
    }
    let out = SharedOut {
        ptr: spare.as_mut_ptr() as *mut T,
        len,
        _buffer: std::marker::PhantomData,
    };
    // `out` (and with it every pointer into the buffer) ends with this call.
    write(&out)?;
    // SAFETY: `write` returned `Ok`, so by the caller's promise it stored all `len` values (in debug builds every one
    // was initialised by the fill above anyway, and is checked next).
    unsafe { buffer.set_len(len) };
    #[cfg(debug_assertions)]
    {
        use rayon::prelude::*;
        let unwritten = buffer.par_iter().position_any(|x| x.is_unwritten());
        assert!(
            unwritten.is_none(),
            "a kernel left element {} of its {len}-value output unwritten",
            unwritten.unwrap_or_default()
        );
    }
    Ok(buffer)
}

/// An operand of the tile kernels as it arrives: f32 activations, rounded to bf16 as the kernel reads them, or
/// activations already stored as bf16 by an op whose every reader would round them (a layer norm before linear
/// layers, the projections before attention, attention before its output projection, GEGLU before the last
/// feed-forward layer): the same bits reach the tiles either way, and the bf16 tensor is half the memory traffic.
#[derive(Clone, Copy)]
pub enum Activations<'a> {
    F32(&'a [f32]),
    Bf16(&'a [half::bf16]),
}

impl<'a> Activations<'a> {
    pub fn len(&self) -> usize {
        match self {
            Activations::F32(x) => x.len(),
            Activations::Bf16(x) => x.len(),
        }
    }

    /// Values `range` rounded to bf16 (copied when already bf16) into `dst` (`range.len()` long).
    pub fn round_into(&self, range: std::ops::Range<usize>, dst: &mut [u16]) {
        match self {
            Activations::F32(x) => round_to_bf16(&x[range], dst),
            Activations::Bf16(x) => half::bf16::round_into(&x[range], dst),
        }
    }

    /// The values as bf16: borrowed when they are, else rounded in parallel ([`rounded_to_bf16`]).
    pub fn to_bf16(self) -> std::borrow::Cow<'a, [half::bf16]> {
        match self {
            Activations::F32(x) => std::borrow::Cow::Owned(rounded_to_bf16(x)),
            Activations::Bf16(x) => std::borrow::Cow::Borrowed(x),
        }
    }
}

/// Proof that the tile registers are configured on this thread, and the guard that releases them: only
/// [`with_tiles`] makes one, and drops it when its closure returns or unwinds. (A tile instruction without a
/// configuration faults.) Neither `Send` nor `Sync`: the configuration belongs to one thread.
pub struct Tiles(std::marker::PhantomData<*const ()>);

thread_local! {
    /// How many [`Tiles`] guards are alive on this thread: more than one when a `with_tiles` runs inside another's
    /// closure, e.g. a rayon task stolen onto this thread by a rayon call inside `work`.
    static TILE_GUARDS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl Tiles {
    /// Configures the tiles on this thread unless an enclosing guard already has.
    fn acquire() -> Tiles {
        assert!(available(), "AMX tile products need a CPU with AMX-BF16");
        TILE_GUARDS.with(|guards| {
            if guards.get() == 0 {
                // SAFETY: AMX is available and this process may use the tile state (`detect`).
                unsafe { load_tile_config() };
            }
            guards.set(guards.get() + 1);
        });
        Tiles(std::marker::PhantomData)
    }
}

impl Drop for Tiles {
    /// Releases the tiles when the outermost guard on this thread goes, on return or unwind alike.
    fn drop(&mut self) {
        TILE_GUARDS.with(|guards| {
            let left = guards.get() - 1;
            guards.set(left);
            if left == 0 {
                // SAFETY: AMX is available (the guard exists) and no tile data is in use: see `with_tiles`.
                unsafe { release_tiles() };
            }
        });
    }
}

/// Runs `work` with the tile registers configured on this thread, released after (also when `work` panics: the
/// [`Tiles`] guard's `Drop` does it).
///
/// Nesting is handled, not forbidden: a `with_tiles` inside another on the same thread (directly, or in a rayon task
/// that a rayon call inside `work` steals onto this thread) reuses the enclosing configuration, and only the
/// outermost guard releases it. Without the count, the inner call's `tilerelease` would leave the outer closure's
/// next tile instruction faulting, and its `ldtilecfg` would zero the tile registers. Sharing is sound because the
/// configuration is the same for every caller (`load_tile_config`) and no tile data outlives one tile computation:
/// each ([`Tiles::block`] and its kind, [`peak_loop`]) zeroes or loads its accumulators, multiplies and stores them in
/// one `unsafe` block that calls nothing that could run another task, so nothing an inner call does is ever seen by
/// the outer one. (Panicking on nesting instead would turn any rayon call inside `work` into a sporadic crash
/// depending on the scheduler's steals.)
pub fn with_tiles<R>(work: impl FnOnce(&Tiles) -> R) -> R {
    let tiles = Tiles::acquire();
    work(&tiles)
}

impl Tiles {
    /// `staging = Σ_terms A_t[0..32, 0..k] · B_t` for terms of equal depth `k` (a multiple of 32): the four
    /// accumulator tiles are summed over every term and stored once.
    ///
    /// Panics if a term's views are too short or not 64-byte aligned.
    pub fn block(&self, terms: &[Term<'_>], staging: &mut Staging) {
        self.block_into(terms, &mut staging.0, BLOCK);
    }

    /// [`block`](Self::block), storing the 32×32 result into `out` (rows `out_row` values apart) instead.
    pub fn block_into(&self, terms: &[Term<'_>], out: &mut [f32], out_row: usize) {
        check_block_bounds(out.len(), 0, out_row);
        // SAFETY: the block lies inside `out`, which this call borrows exclusively.
        unsafe { self.accumulate(terms, Start::Zero, None, out.as_mut_ptr(), out_row) }
    }

    /// `acc += Σ_terms A_t · B_t` for the 32×32 f32 block `acc` (rows `acc_row` values apart): the accumulators are
    /// loaded from it and stored back (a product summed over pieces of its depth, between which the tiles do
    /// other work).
    pub fn block_accumulate(&self, terms: &[Term<'_>], acc: &mut [f32], acc_row: usize) {
        check_block_bounds(acc.len(), 0, acc_row);
        // SAFETY: the block lies inside `acc`, which this call borrows exclusively.
        unsafe {
            let start = Start::Block(acc.as_ptr(), acc_row);
            self.accumulate(terms, start, None, acc.as_mut_ptr(), acc_row)
        }
    }

    /// [`block_into`](Self::block_into) plus `bias[c]` on every row's column `c`: the accumulators start from the
    /// bias instead of zero, so the caller needs no epilogue pass.
    pub fn block_into_biased(&self, terms: &[Term<'_>], bias: &BlockBias, out: &mut [f32], out_row: usize) {
        check_block_bounds(out.len(), 0, out_row);
        // SAFETY: as in `block_into`.
        unsafe { self.accumulate(terms, Start::Row(&bias.row), None, out.as_mut_ptr(), out_row) }
    }

    /// [`block_into_biased`](Self::block_into_biased) into the block of a shared output whose top-left element is
    /// `start`: for blocks stored straight into place while other tasks write the elements between their rows.
    ///
    /// # Safety
    /// No other thread may access the block's 32×32 elements while this runs.
    pub unsafe fn block_into_shared(
        &self,
        terms: &[Term<'_>],
        bias: &BlockBias,
        out: &SharedOut<'_>,
        start: usize,
        out_row: usize,
    ) {
        check_block_bounds(out.len(), start, out_row);
        self.accumulate(terms, Start::Row(&bias.row), None, out.ptr.add(start), out_row)
    }

    /// [`block_into_shared`](Self::block_into_shared) plus the block of `residual` (its own shape, the same
    /// `start` and `out_row`), which the accumulators are loaded from; the bias is then one more tile product
    /// ([`BlockBias`]). Adding the residual to each stored block in a pass of its own (scalar, through the shared
    /// output's pointer) made a 320 → 320 layer at 8192 rows take 2.7 ms, against 1.8 ms this way.
    ///
    /// # Safety
    /// As [`block_into_shared`](Self::block_into_shared).
    pub unsafe fn block_into_shared_plus(
        &self,
        terms: &[Term<'_>],
        bias: &BlockBias,
        residual: &[f32],
        out: &SharedOut<'_>,
        start: usize,
        out_row: usize,
    ) {
        check_block_bounds(out.len(), start, out_row);
        check_block_bounds(residual.len(), start, out_row);
        let residual = Start::Block(residual.as_ptr().add(start), out_row);
        self.accumulate(terms, residual, Some(bias.term()), out.ptr.add(start), out_row)
    }

    /// # Safety
    /// `out` points at a block of 32 rows × 32 values, rows `out_row` values apart, that this thread alone
    /// accesses; a `Start::Block` at one that may be read.
    unsafe fn accumulate(
        &self,
        terms: &[Term<'_>],
        start: Start<'_>,
        last: Option<Term<'_>>,
        out: *mut f32,
        out_row: usize,
    ) {
        let terms = || terms.iter().chain(&last);
        for term in terms() {
            let depth = term.b.len() / BLOCK;
            assert!(
                depth.is_multiple_of(DEPTH) && term.b.len().is_multiple_of(BLOCK),
                "B panel depth must be a multiple of 32"
            );
            assert!(
                term.a_row >= depth && term.a_row.is_multiple_of(32),
                "A rows must be aligned and deep enough"
            );
            assert!(
                term.a_row <= usize::MAX / BLOCK && term.a.len() >= (BLOCK - 1) * term.a_row + depth,
                "A view too short"
            );
            assert!(
                (term.a.as_ptr() as usize).is_multiple_of(64),
                "A must start on a cache line"
            );
            assert!(
                (term.b.as_ptr() as usize).is_multiple_of(64),
                "B panel must start on a cache line"
            );
        }
        // SAFETY: tiles are configured (`self` exists only inside `with_tiles`); every load stays inside the views
        // checked above: A rows 0..32 × depth values, B panel depth/2 pair-rows × 128 bytes, the start block as the
        // caller promises; the stores stay in the caller's block.
        unsafe {
            match start {
                Start::Zero => zero_accumulators(),
                Start::Row(row) => load_accumulators(row.as_ptr() as *const u8, 0),
                Start::Block(top, row) => load_accumulators(top as *const u8, row * 4),
            }
            for term in terms() {
                let a_stride = term.a_row * 2;
                let mut a = term.a.as_ptr() as *const u8;
                let mut b = term.b.as_ptr() as *const u8;
                for _ in 0..term.b.len() / BLOCK / DEPTH {
                    multiply_accumulate(a, a.add(16 * a_stride), a_stride, b, b.add(64), 2 * BLOCK * 2);
                    a = a.add(DEPTH * 2);
                    b = b.add(DEPTH / 2 * 2 * BLOCK * 2);
                }
            }
            let out = out as *mut u8;
            store_accumulators(out, out.add(16 * out_row * 4), out_row * 4);
        }
    }
}

/// What a block's accumulators start from.
enum Start<'a> {
    Zero,
    /// The same 32 values on every row.
    Row(&'a [f32; BLOCK]),
    /// The 32×32 block at the pointer, rows the given number of values apart.
    Block(*const f32, usize),
}

/// Panics unless a 32×32 block starting at `start`, rows `out_row` values apart, fits in `len` values.
fn check_block_bounds(len: usize, start: usize, out_row: usize) {
    let end = out_row
        .checked_mul(BLOCK - 1)
        .and_then(|x| x.checked_add(start))
        .and_then(|x| x.checked_add(BLOCK));
    assert!(
        out_row >= BLOCK && end.is_some_and(|end| end <= len),
        "C block out of bounds"
    );
}

/// The tile unit's peak on this thread: `iterations` rounds of the four products of a 2×2 block on operands already
/// in the tile registers (nothing loaded inside the loop, so the figure is the unit's, not the memory's). Returns the
/// FLOPs done. Needs AMX ([`available`]).
pub fn peak_loop(iterations: u64) -> f64 {
    let mut operands = AlignedBf16::zeroed(16 * 32);
    operands.as_mut_slice().fill(bf16_bits(0.001));
    with_tiles(|_| {
        let row = operands.as_slice().as_ptr() as *const u8;
        // SAFETY: tiles are configured; each load reads 16 rows of 64 bytes at stride 64 from the 1 KiB buffer.
        unsafe {
            zero_accumulators();
            multiply_accumulate(row, row, 64, row, row, 64);
            for _ in 0..iterations {
                #[cfg(target_arch = "x86_64")]
                std::arch::asm!(
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    options(nostack, nomem)
                );
            }
        }
    });
    // 16×16 outputs × 32 products × 2 FLOPs per instruction.
    iterations as f64 * 4.0 * (16 * 16 * 32 * 2) as f64
}

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

/// Configures this thread's tile registers as [`TileConfig`] says (`ldtilecfg`, which also zeroes them).
///
/// # Safety
/// The CPU must have AMX-TILE and AMX-BF16 and this process the kernel's permission for the tile state ([`available`]
/// returned true). Only [`Tiles::acquire`] calls it, for the outermost guard on a thread.
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

/// Returns this thread's tile registers to their unconfigured state (`tilerelease`).
///
/// # Safety
/// As [`load_tile_config`]; and no tile instruction may run on this thread afterwards until the tiles are configured
/// again (only the outermost [`Tiles`] guard's `Drop` calls it).
unsafe fn release_tiles() {
    #[cfg(target_arch = "x86_64")]
    std::arch::asm!("tilerelease", options(nostack, nomem));
}

/// Zeroes the accumulator tiles tmm0–tmm3.
///
/// # Safety
/// The tiles must be configured on this thread (a [`Tiles`] guard is alive).
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

/// Loads the accumulators from the 32×32 f32 block at `top`, rows `stride` bytes apart: with a stride of zero, every
/// row of the left accumulators (tmm0, tmm2) is `top[0..16]` and of the right ones (tmm1, tmm3) `top[16..32]`.
///
/// # Safety
/// The tiles must be configured on this thread. The 32 rows of 128 bytes at `top + r·stride` (`r < 32`; just the
/// first 128 bytes for a stride of zero) must be readable, inside one allocation, and not written by another thread
/// meanwhile.
#[inline(always)]
unsafe fn load_accumulators(top: *const u8, stride: usize) {
    #[cfg(target_arch = "x86_64")]
    std::arch::asm!(
        "tileloadd tmm0, [{t} + {s}*1]",
        "tileloadd tmm1, [{t64} + {s}*1]",
        "tileloadd tmm2, [{b} + {s}*1]",
        "tileloadd tmm3, [{b64} + {s}*1]",
        t = in(reg) top,
        t64 = in(reg) top.add(64),
        b = in(reg) top.add(16 * stride),
        b64 = in(reg) top.add(16 * stride + 64),
        s = in(reg) stride,
        options(nostack, readonly)
    );
}

/// Loads A's two row tiles and B's two column tiles at the given addresses and adds their four products to the
/// accumulators. B is loaded with the T1 hint (kept in L2, not L1): every caller reuses the A rows of a block against
/// panel after panel of B, and B streaming through L1 evicted them (UNet step 1.53 → 1.45 s, every class ~5%).
///
/// # Safety
/// The tiles must be configured on this thread. Each of the four operands is 16 rows of 64 bytes: rows at
/// `a_top + r·a_stride` and `a_bottom + r·a_stride`, `b_left + r·b_stride` and `b_right + r·b_stride` (`r < 16`),
/// all readable, each operand inside one allocation, and not written by another thread meanwhile.
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
        "tileloaddt1 tmm6, [{b0} + {sb}*1]",
        "tileloaddt1 tmm7, [{b1} + {sb}*1]",
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

/// Stores the accumulators: tmm0 and tmm1 side by side as the 16 rows of 128 bytes at `top + r·stride`, tmm2 and
/// tmm3 as those at `bottom + r·stride`.
///
/// # Safety
/// The tiles must be configured on this thread. Those 32 rows of 128 bytes must be writable, inside one allocation,
/// and accessed by no other thread meanwhile.
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

    /// The row and column packers lay out exactly what the per-element one does, on ragged sizes (odd depth,
    /// partial panels).
    #[test]
    fn row_and_column_packing_match_from_fn() {
        for &(k, n) in &[(1, 1), (7, 33), (40, 64), (77, 40)] {
            let matrix = test_values(k * n, (k * n) as u64);
            let want = PanelsB::from_fn(k, n, |i, j| matrix[i * n + j]);
            let rows = PanelsB::from_rows(k, n, |i| &matrix[i * n..][..n]);
            let transposed: Vec<f32> = (0..n * k).map(|index| matrix[index % k * n + index / k]).collect();
            let columns = PanelsB::from_columns(k, n, |j| &transposed[j * k..][..k]);
            assert_eq!(rows.data.as_slice(), want.data.as_slice(), "{k}×{n} from rows");
            assert_eq!(columns.data.as_slice(), want.data.as_slice(), "{k}×{n} from columns");
        }
    }

    /// Blocks summed over three terms (A rows starting mid-buffer, a row stride wider than the depth, ragged B
    /// sizes padded by `PanelsB`) against an f64 sum of the same bf16 values.
    /// The three bf16 parts of a bias value sum to it exactly, over values spread through f32's range.
    #[test]
    fn bias_parts_sum_to_the_value() {
        let values = test_values(10_000, 9)
            .into_iter()
            .enumerate()
            .map(|(i, v)| v * 2f32.powi(i as i32 % 120 - 60));
        for x in values.chain([0.0, -0.0, 1.0, f32::MAX, f32::MIN_POSITIVE, 1.0 + f32::EPSILON]) {
            let sum: f64 = split_in_three(x).iter().map(|&p| bf16_value(p)).sum();
            assert_eq!(sum, x as f64, "{x:e}");
        }
    }

    /// Accumulators started from a residual block, plus the bias as a tile product, plus the terms: against the f64
    /// sum, within f32 rounding (the bias is exact in its three parts).
    #[test]
    fn residual_and_bias_start_the_block() {
        if crate::cpu::skip_without(crate::cpu::Needs::AmxBf16) {
            return;
        }
        let (k, row) = (40, 45); // output rows 45 values apart
        let mut a = AlignedBf16::zeroed(BLOCK * 64);
        for (x, v) in a.as_mut_slice().iter_mut().zip(test_values(BLOCK * 64, 1)) {
            *x = bf16_bits(v);
        }
        let values = test_values(k * BLOCK, 2);
        let panel = PanelsB::from_fn(k, BLOCK, |i, j| values[i * BLOCK + j]);
        let bias: Vec<f32> = test_values(BLOCK, 3).iter().map(|v| v * 1000.0 + 0.123_456_7).collect();
        let bias = &BlockBias::blocks(&bias)[0];
        let residual = test_values(BLOCK * row + 7, 4);
        let start = 7;
        for with_terms in [false, true] {
            let mut out = vec![f32::NAN; residual.len()];
            let terms = [Term {
                a: a.as_slice(),
                a_row: 64,
                b: panel.panel(0),
            }];
            let terms = if with_terms { &terms[..] } else { &[] };
            with_tiles(|tiles| {
                // SAFETY: one thread; the block lies inside both buffers (checked by the call).
                unsafe { tiles.block_into_shared_plus(terms, bias, &residual, &SharedOut::new(&mut out), start, row) }
            });
            for r in 0..BLOCK {
                for c in 0..BLOCK {
                    let at = start + r * row + c;
                    let mut want = residual[at] as f64 + bias.row[c] as f64;
                    if with_terms {
                        for i in 0..k {
                            want += bf16_value(a.as_slice()[r * 64 + i]) * bf16_value(bf16_bits(values[i * BLOCK + c]));
                        }
                    }
                    let tolerance = 4.0 * f32::EPSILON as f64 * (want.abs() + 16.0);
                    assert!(
                        (out[at] as f64 - want).abs() <= tolerance,
                        "{r},{c}: {} vs {want}",
                        out[at]
                    );
                }
            }
        }
    }

    /// Whole outputs `rows × columns` written block by block through `store_rows` (bf16 and f32), each row exactly
    /// `columns` wide so that the last row ends at the allocation's end: widths around the vector halves (16) and
    /// the block (32), against the plain rounding, every element written (NaN start).
    #[test]
    fn store_rows_writes_exactly_the_columns() {
        let rows = 5;
        for columns in [1, 15, 16, 17, 31, 32, 33] {
            let values = test_values(rows * columns, columns as u64);
            let mut bf16_out = vec![half::bf16::NAN; rows * columns];
            let mut f32_out = vec![f32::NAN; rows * columns];
            {
                let (bf16_shared, f32_shared) = (SharedOut::new(&mut bf16_out), SharedOut::new(&mut f32_out));
                for first in (0..columns).step_by(BLOCK) {
                    let width = BLOCK.min(columns - first);
                    let mut block = Staging([f32::NAN; BLOCK * BLOCK]);
                    for r in 0..rows {
                        block.0[r * BLOCK..][..width].copy_from_slice(&values[r * columns + first..][..width]);
                    }
                    // SAFETY: one thread; the rows lie inside both outputs (checked by the calls).
                    unsafe {
                        bf16_shared.store_rows(first, columns, &block, rows, width);
                        f32_shared.store_rows(first, columns, &block, rows, width);
                    }
                }
            }
            let want: Vec<f32> = values.iter().map(|&v| bf16_rounded(v)).collect();
            let got: Vec<f32> = bf16_out.iter().map(|v| v.to_f32()).collect();
            assert_eq!(crate::cpu::max_abs_error(&got, &want), 0.0, "bf16, {columns} columns");
            assert_eq!(
                crate::cpu::max_abs_error(&f32_out, &values),
                0.0,
                "f32, {columns} columns"
            );
        }
    }

    /// A range whose end would wrap around `usize` panics instead of passing as a small one.
    #[test]
    #[should_panic(expected = "out of 4")]
    fn wrapping_ranges_are_out_of_range() {
        let mut out = [0f32; 4];
        let out = SharedOut::new(&mut out);
        // SAFETY: one thread; the range check panics before anything is written.
        unsafe { out.copy_to(usize::MAX, &[1.0]) };
    }

    #[test]
    #[should_panic(expected = "out of 64")]
    fn wrapping_row_ranges_are_out_of_range() {
        let mut out = [half::bf16::ZERO; 64];
        let out = SharedOut::new(&mut out);
        // SAFETY: one thread; the range check panics before anything is written.
        unsafe { out.store_rows(0, usize::MAX / 2 + 1, &Staging::default(), 3, 1) };
    }

    /// `new_output` returns what the kernel wrote, and the kernel's error.
    #[test]
    fn new_output_returns_the_written_values() {
        let write_all = |out: &SharedOut<'_, half::bf16>| {
            for i in 0..out.len() {
                // SAFETY: `i < len`, one thread.
                unsafe { out.write_unchecked(i, half::bf16::from_f32(i as f32)) };
            }
            Ok(())
        };
        // SAFETY: the closure writes every one of the 100 values.
        let out = unsafe { new_output(100, write_all) };
        assert_eq!(
            out.unwrap(),
            (0..100).map(|i| half::bf16::from_f32(i as f32)).collect::<Vec<_>>()
        );
        // SAFETY: it returns an error, so nothing is read.
        let failed = unsafe { new_output::<f32>(100, |_| candle_core::bail!("kernel error")) };
        assert!(failed.is_err());
    }

    /// In debug builds an element the kernel left unwritten panics (the buffer was filled with the sentinel first, so
    /// nothing uninitialised is read even then).
    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "left element 41 of its 100-value output unwritten")]
    fn new_output_catches_an_unwritten_element() {
        let skip_one = |out: &SharedOut<'_, f32>| {
            for i in (0..out.len()).filter(|&i| i != 41) {
                // SAFETY: `i < len`, one thread.
                unsafe { out.write_unchecked(i, 0.0) };
            }
            Ok(())
        };
        // SAFETY: the contract is broken on purpose; debug builds initialise the buffer and check it.
        let _ = unsafe { new_output(100, skip_one) };
    }

    /// One 32×32 block of `A · B` on bf16 tiles (for the nesting tests).
    struct Product {
        a: AlignedBf16,
        panel: PanelsB,
    }

    impl Product {
        fn new() -> Self {
            let mut a = AlignedBf16::zeroed(BLOCK * 64);
            for (x, v) in a.as_mut_slice().iter_mut().zip(test_values(BLOCK * 64, 11)) {
                *x = bf16_bits(v);
            }
            let values = test_values(64 * BLOCK, 12);
            let panel = PanelsB::from_fn(64, BLOCK, |i, j| values[i * BLOCK + j]);
            Product { a, panel }
        }

        fn block(&self, tiles: &Tiles) -> Staging {
            let mut staging = Staging::default();
            let term = Term {
                a: self.a.as_slice(),
                a_row: 64,
                b: self.panel.panel(0),
            };
            tiles.block(&[term], &mut staging);
            staging
        }
    }

    fn tile_guards() -> usize {
        TILE_GUARDS.with(|guards| guards.get())
    }

    /// A `with_tiles` inside another (directly, and through rayon tasks stolen onto threads that already hold the
    /// tiles) leaves the outer one's tiles configured: its later blocks still compute (a released configuration
    /// would fault), bit for bit the same; and every thread ends with no guard.
    #[test]
    fn nested_tiles_keep_the_outer_configuration() {
        if crate::cpu::skip_without(crate::cpu::Needs::AmxBf16) {
            return;
        }
        use rayon::prelude::*;
        let product = Product::new();
        let want = with_tiles(|tiles| product.block(tiles)).0;
        assert_eq!(tile_guards(), 0);
        with_tiles(|outer| {
            let inner = with_tiles(|inner| product.block(inner));
            assert_eq!(tile_guards(), 1);
            assert_eq!(inner.0, want);
            assert_eq!(product.block(outer).0, want);
        });
        (0..64).into_par_iter().for_each(|_| {
            with_tiles(|outer| {
                (0..16).into_par_iter().for_each(|_| {
                    with_tiles(|inner| assert_eq!(product.block(inner).0, want));
                });
                assert_eq!(product.block(outer).0, want);
            });
        });
        let left: Vec<usize> = rayon::broadcast(|_| tile_guards());
        assert!(left.iter().all(|&n| n == 0), "guards left per thread: {left:?}");
    }

    /// A panic inside `with_tiles` still releases the tiles (the guard's `Drop`), and they can be taken again.
    #[test]
    fn a_panic_releases_the_tiles() {
        if crate::cpu::skip_without(crate::cpu::Needs::AmxBf16) {
            return;
        }
        let product = Product::new();
        let want = with_tiles(|tiles| product.block(tiles)).0;
        let result = std::panic::catch_unwind(|| {
            with_tiles(|_| with_tiles(|_| panic!("inside the tiles")));
        });
        assert!(result.is_err());
        assert_eq!(tile_guards(), 0);
        assert_eq!(with_tiles(|tiles| product.block(tiles)).0, want);
    }

    #[test]
    fn blocks_match_a_plain_sum() {
        if crate::cpu::skip_without(crate::cpu::Needs::AmxBf16) {
            return;
        }
        let (k, n) = (50, 70); // padded to 64 × 96
        let a_row = 96;
        let mut a = AlignedBf16::zeroed(200 * a_row);
        for (x, v) in a.as_mut_slice().iter_mut().zip(test_values(200 * a_row, 1)) {
            *x = bf16_bits(v);
        }
        let values: Vec<Vec<f32>> = (0..3).map(|t| test_values(k * n, 2 + t)).collect();
        let panels: Vec<PanelsB> = values
            .iter()
            .map(|v| PanelsB::from_fn(k, n, |i, j| v[i * n + j]))
            .collect();
        let starts = [0, 37, 101]; // first A row of each term
        with_tiles(|tiles| {
            let mut staging = Staging::default();
            for jb in 0..panels[0].columns() / BLOCK {
                let terms: Vec<Term> = (0..3)
                    .map(|t| Term {
                        a: &a.as_slice()[starts[t] * a_row..],
                        a_row,
                        b: panels[t].panel(jb),
                    })
                    .collect();
                tiles.block(&terms, &mut staging);
                for r in 0..BLOCK {
                    for c in 0..BLOCK {
                        let j = jb * BLOCK + c;
                        let mut want = 0f64;
                        for t in 0..3 {
                            for i in 0..k.min(64) {
                                let b = if j < n {
                                    bf16_value(bf16_bits(values[t][i * n + j]))
                                } else {
                                    0.0
                                };
                                want += bf16_value(a.as_slice()[(starts[t] + r) * a_row + i]) * b;
                            }
                        }
                        let got = staging.row(r)[c] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "({r}, {j}): {got} vs {want}"
                        );
                    }
                }
            }
        });
    }
}
