//! `nn.Linear` with diffusers'/transformers' weight names: candle-nn's layer, or — when the model is built for bf16
//! on a CPU with AMX (`nn::Precision`) — the weights packed once for `cpu::linear`'s tile kernel. Counted per call by
//! `op_stats`, so `ember bench` can report linear layers' GFLOP/s.

use super::Vars;
use crate::cpu::linear::{LinearBf16, LinearGegluBf16, LinearToBf16, PackedLinear};
use crate::op_stats::{self, OpClass};
use candle_core::{DType, Module, Result, Tensor};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Linear {
    weights: Weights,
    in_features: usize,
    out_features: usize,
}

#[derive(Debug, Clone)]
enum Weights {
    Candle(candle_nn::Linear),
    PackedBf16(Arc<PackedLinear>),
}

/// A linear layer with bias (`weight: [out, in]`, `bias: [out]`).
pub fn linear<'a>(in_features: usize, out_features: usize, vb: impl Into<Vars<'a>>) -> Result<Linear> {
    Linear::new(in_features, out_features, true, vb.into())
}

/// A linear layer without bias.
pub fn linear_no_bias<'a>(in_features: usize, out_features: usize, vb: impl Into<Vars<'a>>) -> Result<Linear> {
    Linear::new(in_features, out_features, false, vb.into())
}

impl Linear {
    fn new(in_features: usize, out_features: usize, with_bias: bool, vb: Vars) -> Result<Self> {
        let weights = if vb.packs_bf16() {
            let bias = with_bias
                .then(|| vb.get(out_features, "bias")?.to_vec1::<f32>())
                .transpose()?;
            let packed = vb.packed(&[out_features, in_features], |weight| {
                PackedLinear::new(weight, bias.as_deref(), out_features, in_features)
            })?;
            Weights::PackedBf16(packed)
        } else if with_bias {
            Weights::Candle(candle_nn::linear(in_features, out_features, vb.vb())?)
        } else {
            Weights::Candle(candle_nn::linear_no_bias(in_features, out_features, vb.vb())?)
        };
        Ok(Self {
            weights,
            in_features,
            out_features,
        })
    }
}

impl Linear {
    /// GEGLU of this layer's output (`value · gelu(gate)`, value the first half of the features, gate the second),
    /// computed inside the product when the layer is packed for bf16 tiles (`cpu::linear`), as a bf16 tensor for
    /// the next packed layer; `None` where it is not, and the caller applies GEGLU to
    /// [`forward`](Module::forward)'s output itself.
    pub fn forward_geglu(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let Weights::PackedBf16(packed) = &self.weights else {
            return Ok(None);
        };
        if !packed.geglu_fuses() {
            return Ok(None);
        }
        let rows = x.elem_count() / self.in_features.max(1);
        let flops = 2.0 * rows as f64 * self.in_features as f64 * self.out_features as f64;
        op_stats::count(OpClass::Linear, flops, || {
            tile_operand(x)?
                .apply_op1_no_bwd(&LinearGegluBf16(packed.clone()))
                .map(Some)
        })
    }

    /// [`forward`](Module::forward) into a bf16 tensor when the layer is packed for bf16 tiles, for outputs whose
    /// every reader rounds them to bf16 (attention's projections); elsewhere `forward` itself.
    pub fn forward_to_bf16(&self, x: &Tensor) -> Result<Tensor> {
        let Weights::PackedBf16(packed) = &self.weights else {
            return self.forward(x);
        };
        op_stats::count(OpClass::Linear, self.flops(x), || {
            tile_operand(x)?.apply_op1_no_bwd(&LinearToBf16(packed.clone()))
        })
    }

    fn flops(&self, x: &Tensor) -> f64 {
        let rows = x.elem_count() / self.in_features.max(1);
        2.0 * rows as f64 * self.in_features as f64 * self.out_features as f64
    }
}

/// An activation for the tile kernels: bf16 tensors as they are (see `cpu::amx::Activations`), others as f32;
/// contiguous.
fn tile_operand(x: &Tensor) -> Result<Tensor> {
    match x.dtype() {
        DType::BF16 | DType::F32 => x.contiguous(),
        _ => x.to_dtype(DType::F32)?.contiguous(),
    }
}

impl Linear {
    /// `self.forward(x) + residual`; on the AMX path the residual is added as each block is written.
    pub fn forward_plus(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let Weights::PackedBf16(packed) = &self.weights else {
            return self.forward(x)? + residual;
        };
        let rows = x.elem_count() / self.in_features.max(1);
        let flops = 2.0 * rows as f64 * self.in_features as f64 * self.out_features as f64;
        op_stats::count(OpClass::Linear, flops, || {
            let residual = residual.to_dtype(DType::F32)?.contiguous()?;
            tile_operand(x)?.apply_op2_no_bwd(&residual, &LinearBf16(packed.clone()))
        })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.elem_count() / self.in_features.max(1);
        let flops = 2.0 * rows as f64 * self.in_features as f64 * self.out_features as f64;
        op_stats::count(OpClass::Linear, flops, || match &self.weights {
            Weights::Candle(linear) => linear.forward(x),
            Weights::PackedBf16(packed) => tile_operand(x)?.apply_op1_no_bwd(&LinearBf16(packed.clone())),
        })
    }
}
