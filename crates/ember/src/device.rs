//! Compute device and precision selection.

use crate::{Error, Result};
use candle_core::{DType, Device};

/// Picks a device from a user string: `cpu`, `cuda`, `cuda:N`, or `auto` (CUDA when built with it and present).
pub fn parse_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .map_err(|_| Error::invalid("device", format!("'{s}' is not cuda:N")))?,
                None => 0,
            };
            Device::new_cuda(ordinal).map_err(|e| {
                Error::invalid("device", format!("CUDA device {ordinal} is not available ({e}); build with `--features cuda` or use --device cpu"))
            })
        }
        other => Err(Error::invalid(
            "device",
            format!("unknown device '{other}'; use cpu, cuda, cuda:N or auto"),
        )),
    }
}

/// How a device is named in messages and image metadata: `cpu`, `cuda:N`, `metal`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// The compute precision for `spec` on `device`: `auto` picks the fastest one that keeps pictures faithful —
/// f16 on CUDA (as InvokeAI's `--precision auto`), bf16 on a CPU with AMX-BF16 (bf16 tile products with f32
/// activations, `nn::Precision`: ~2× faster than f32 there and closer to the f32 result than PyTorch's bf16), f32 on
/// other CPUs (their bf16 path widens every product to f32, slower than f32 itself). Anything else as [`parse_dtype`].
pub fn resolve_dtype(spec: &str, device: &Device) -> Result<DType> {
    if spec != "auto" {
        return parse_dtype(spec);
    }
    Ok(if device.is_cuda() {
        DType::F16
    } else if device.is_cpu() && crate::cpu::amx::available() {
        DType::BF16
    } else {
        DType::F32
    })
}

/// Parses the compute precision (`f32`, `f16`, `bf16`).
pub fn parse_dtype(spec: &str) -> Result<DType> {
    match spec {
        "f32" | "fp32" | "float32" => Ok(DType::F32),
        "f16" | "fp16" | "float16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        // Slow; used to check parity with float64 references.
        "f64" | "fp64" | "float64" => Ok(DType::F64),
        other => Err(Error::invalid(
            "dtype",
            format!("unknown precision '{other}'; use auto, f32, f16, bf16 or f64"),
        )),
    }
}
