//! Ember's own CPU kernels, for the operations where candle's stock CPU path falls short (fused attention, stride-1
//! convolution without im2col, fused normalisation + activation, and on CPUs with AMX the bf16 tile kernels of
//! [`amx`]). Everything runs on any CPU (x86-64 without AVX-512, aarch64); where a kernel has an AVX-512 version it is
//! chosen at run time ([`Isa`]) and tests run both versions against a plain reference. The f32 convolution's GEMMs
//! come from the `gemm` crate, which picks its own kernels by CPU.
//!
//! The networks reach these kernels only through their seams (`nn::attention`, `nn::linear::Linear`,
//! `nn::layers::{Conv, GroupNorm, LayerNorm}`), and only for CPU tensors: CUDA stays on candle's own ops.
//!
//! Every `unsafe fn` here has a `# Safety` section and every `unsafe` block a `// SAFETY:` comment (clippy checks).
#![deny(clippy::missing_safety_doc, clippy::undocumented_unsafe_blocks)]

pub mod amx;
pub mod attention;
pub mod attention_bf16;
pub mod conv;
pub mod conv_bf16;
pub mod geglu;
pub mod group_norm;
pub mod layer_norm;
pub mod linear;
pub mod peak;
pub mod quick_gelu;
pub mod upsample;
mod vector_math;

/// Tunes the C allocator for inference: call once at program start, before any threads are started.
///
/// candle allocates a fresh buffer for every op's result. glibc serves blocks over 128 KiB–32 MiB (its threshold
/// moves) with `mmap`, so each one arrived as new pages the kernel had to fault in and zero, and went back to the
/// kernel when freed. Raising the mmap threshold to glibc's maximum (32 MiB: every UNet activation at 512×512) and
/// keeping up to 512 MiB of freed heap lets the next op reuse those pages. Measured on `ember bench` (f32, 2 threads)
/// with `perf record -e cpu-clock`: kernel time 26.6% → 15.0% of the samples (`clear_page` 8.6% → 2.3%), total CPU
/// time 222 → 176 s. The price: freed memory below that cap stays in the process until reused.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// Gives the freed heap that [`tune_allocator`] lets glibc keep back to the OS. For the pipeline between sampling and
/// decoding: the UNet's mid-sized activations were reused step after step from that heap, but the VAE decoder's are
/// larger than the mmap threshold and never come from it, so what the UNet left there only raised the peak RSS
/// while decoding.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result};
use std::sync::OnceLock;

/// The f32 values of a CPU tensor operand of a custom op, which must be contiguous; `what` names the op and operand
/// in the error ("convolution: weight").
pub(crate) fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{what} must be f32, got {:?}", storage.dtype());
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// A tile kernel's activation operand of a custom op: contiguous f32 or bf16 (see `amx::Activations`).
pub(crate) fn contiguous_activations<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<amx::Activations<'a>> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{what} must be contiguous");
    };
    match storage {
        CpuStorage::F32(data) => Ok(amx::Activations::F32(&data[start..end])),
        CpuStorage::BF16(data) => Ok(amx::Activations::Bf16(&data[start..end])),
        _ => candle_core::bail!("{what} must be f32 or bf16, got {:?}", storage.dtype()),
    }
}

/// A zeroed buffer for a custom op's output, zeroed by every thread in parallel. (`vec![0.0; len]` zeroes on the
/// calling thread alone while the others wait: 5% of a bf16 UNet step at 512×512, measured with `perf`.)
pub(crate) fn zeroed_output(len: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()
        .par_chunks_mut(64 << 10)
        .for_each(|chunk| chunk.fill(std::mem::MaybeUninit::new(0.0)));
    // SAFETY: every element of the first `len` was just initialised.
    unsafe { out.set_len(len) };
    out
}

/// Deterministic pseudo-random values in [−1, 1) (xorshift) for the kernels' tests.
#[cfg(test)]
pub(crate) fn test_values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// The largest `|got − want|`, or infinity if any difference is not finite (`f32::max` alone skips NaN, so an output
/// left at its NaN fill would pass).
#[cfg(test)]
pub(crate) fn max_abs_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "compared outputs differ in length");
    got.iter().zip(want).fold(0f32, |worst, (g, w)| match (g - w).abs() {
        e if e.is_finite() => worst.max(e),
        _ => f32::INFINITY,
    })
}

/// A CPU feature that some kernels (and so their tests) need.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(crate) enum Needs {
    /// AMX-BF16 tiles ([`amx::available`]).
    AmxBf16,
    /// AVX-512F ([`Isa::Avx512`]).
    Avx512,
}

/// For a test of a kernel that runs only with `feature`: whether the test must stop here because this process cannot
/// run that kernel. It never stops silently (Rust's harness has no "skipped" state, so a skipped test reads "ok"):
/// - the feature is turned off by `EMBER_CPU_KERNELS` (`portable`, or `avx512` for AMX): the run is checking the
///   other kernel path, and the test is skipped with a `SKIPPED` line;
/// - the CPU lacks it: a `SKIPPED` line, or a failure when `EMBER_EXPECT_AMX=1` / `EMBER_EXPECT_AVX512=1` says it
///   has it (`.ci/run` sets them from /proc/cpuinfo, so CI on a CPU with the feature cannot skip these tests).
///
/// The `SKIPPED` line goes straight to the process's stderr, past the harness's output capture, so it shows in a
/// plain `cargo test`; with `EMBER_SKIPPED_LOG=FILE` it is also appended to FILE for CI to count.
#[cfg(test)]
pub(crate) fn skip_without(feature: Needs) -> bool {
    let (name, available) = match feature {
        Needs::AmxBf16 => ("AMX-BF16", amx::available()),
        Needs::Avx512 => ("AVX-512F", Isa::detect() == Isa::Avx512),
    };
    if available {
        return false;
    }
    let (expect_var, turned_off_by): (_, &[_]) = match feature {
        Needs::AmxBf16 => ("EMBER_EXPECT_AMX", &["portable", "avx512"]),
        Needs::Avx512 => ("EMBER_EXPECT_AVX512", &["portable"]),
    };
    let test = std::thread::current().name().unwrap_or("a cpu:: test").to_owned();
    let kernels = std::env::var("EMBER_CPU_KERNELS").unwrap_or_default();
    let reason = if turned_off_by.iter().any(|v| kernels.eq_ignore_ascii_case(v)) {
        format!("EMBER_CPU_KERNELS={kernels} turns {name} off")
    } else if std::env::var(expect_var).is_ok_and(|v| v == "1") {
        panic!("{test}: {expect_var}=1, but this process cannot run {name} (not in the CPU, or not enabled by the OS)");
    } else {
        format!("no {name} on this CPU")
    };
    let line = format!("SKIPPED ({reason}): {test}\n");
    use std::io::Write;
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(log) = std::env::var_os("EMBER_SKIPPED_LOG") {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        appended.unwrap_or_else(|e| panic!("EMBER_SKIPPED_LOG {}: {e}", log.to_string_lossy()));
    }
    true
}

/// Whether the CPU has AVX-512 F, BW and VL (the 16-bit-lane stores of the bf16 kernels); detected once.
pub(crate) fn avx512_bw_vl() -> bool {
    static DETECTED: OnceLock<bool> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            has!("avx512f") && has!("avx512bw") && has!("avx512vl")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// The instruction set a kernel runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust, left to the compiler's auto-vectorisation for the build target.
    Portable,
    /// x86-64 with AVX-512F (512-bit vectors, 32 registers, masked loads for odd sizes).
    Avx512,
}

impl Isa {
    /// The best instruction set this CPU supports (detected once). `EMBER_CPU_KERNELS=portable` forces the portable
    /// kernels, e.g. to compare them against the vectorised ones.
    pub fn detect() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            if std::env::var("EMBER_CPU_KERNELS").is_ok_and(|v| v.eq_ignore_ascii_case("portable")) {
                return Isa::Portable;
            }
            Self::best_supported()
        })
    }

    fn best_supported() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        Isa::Portable
    }

    /// Every instruction set this CPU can run: tests check each against the reference.
    pub fn all_supported() -> Vec<Isa> {
        let mut all = vec![Isa::Portable];
        if Self::best_supported() == Isa::Avx512 {
            all.push(Isa::Avx512);
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::Isa;

    /// The kernel tests that loop over [`Isa::all_supported`] would quietly check only the portable kernels on a CPU
    /// without AVX-512; where CI knows the CPU has it (`EMBER_EXPECT_AVX512=1`), that is a failure.
    #[test]
    fn the_expected_instruction_sets_are_tested() {
        if std::env::var("EMBER_EXPECT_AVX512").is_ok_and(|v| v == "1") {
            assert!(
                Isa::all_supported().contains(&Isa::Avx512),
                "EMBER_EXPECT_AVX512=1 but this CPU has no AVX-512F"
            );
        }
    }
}
