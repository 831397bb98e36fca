//! `nn.Linear` with diffusers'/transformers' weight names: candle-nn's layer, counted per call by `op_stats` (so
//! `ember bench` can report linear layers' GFLOP/s).

use crate::op_stats::{self, OpClass};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
    in_features: usize,
    out_features: usize,
}

/// A linear layer with bias (`weight: [out, in]`, `bias: [out]`).
pub fn linear(in_features: usize, out_features: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear {
        inner: candle_nn::linear(in_features, out_features, vb)?,
        in_features,
        out_features,
    })
}

/// A linear layer without bias.
pub fn linear_no_bias(in_features: usize, out_features: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear {
        inner: candle_nn::linear_no_bias(in_features, out_features, vb)?,
        in_features,
        out_features,
    })
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.elem_count() / self.in_features.max(1);
        let flops = 2.0 * rows as f64 * self.in_features as f64 * self.out_features as f64;
        op_stats::count(OpClass::Linear, flops, || self.inner.forward(x))
    }
}
