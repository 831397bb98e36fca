//! What several parity tests share: how far a result is from its reference.

use candle_core::{DType, Tensor};

/// max |t|, in f64.
pub fn max_abs(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// max |got − want| / max |want| (max |got − want| where the reference is all zeros: SDXL's zeroed negative).
pub fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.dims(), want.dims(), "shapes differ");
    let f64 = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    let scale = max_abs(want);
    max_abs(&(f64(got) - f64(want)).unwrap()) / if scale > 0.0 { scale } else { 1.0 }
}
