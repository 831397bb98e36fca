//! The random weights of the full-size block references (`tools/oracle/make_fullsize_block.py`,
//! `tools/oracle/make_sdxl_block.py`), replayed: the scripts store only the block's output, the names and shapes of
//! its parameters and one seed; every weight and input is cut from ONE `torch.randn(total)` stream that Ember's
//! `TorchRng` draws again here, scaled by the scripts' exact power-of-two rules.
//!
//! Included by `fullsize_parity.rs` and `fullsize_sdxl.rs` with `#[path]` (not a module of `reference/mod.rs`,
//! whose other users do not need it).

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use ember::sample::rng::TorchRng;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Tensors by name, remembering which ones a network asked for.
struct Recording {
    tensors: HashMap<String, Tensor>,
    asked: Arc<Mutex<HashSet<String>>>,
}

impl SimpleBackend for Recording {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!("{name}: shape {:?}, the block wants {s:?}", t.dims());
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("no parameter {name} in diffusers' block")))?;
        self.asked.lock().expect("not poisoned").insert(name.to_string());
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// What both scripts store in the reference's metadata (entry "reference"); a script's own further keys are read
/// from [`RandomBlock::metadata`].
#[derive(serde::Deserialize)]
struct BlockReference {
    seed: u64,
    params: Vec<(String, Vec<usize>)>,
    input_shapes: Vec<(String, Vec<usize>)>,
    checksums: HashMap<String, f64>,
}

/// A reference file's random block, drawn again.
pub struct RandomBlock {
    /// The parameters under diffusers' names, for the block's constructors.
    pub vb: VarBuilder<'static>,
    /// The inputs, by the script's names.
    pub inputs: HashMap<String, Tensor>,
    /// The tensors the script computed (its outputs).
    pub outputs: HashMap<String, Tensor>,
    /// The metadata's JSON, for the script's own keys (fullsize_sdxl.rs reads some; fullsize_parity.rs none).
    #[allow(dead_code)]
    pub metadata: serde_json::Value,
    params: Vec<String>,
    asked: Arc<Mutex<HashSet<String>>>,
}

/// `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

impl RandomBlock {
    /// Reads the reference `path` (written by `script`) and draws its weights and inputs.
    ///
    /// Memory: the stream is drawn whole (`TorchRng::randn` replays torch's one call, whose last 16 values depend on
    /// the total) and then cut from its end, each tensor moved out and the stream shrunk in place, so the peak is
    /// about the stream's size (4 bytes a value), not twice it.
    pub fn load(path: &Path, script: &str) -> Result<Self, Box<dyn std::error::Error>> {
        let bytes = std::fs::read(path)?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)?;
        let json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("reference"))
            .ok_or_else(|| format!("{}: metadata missing; rerun {script}", path.display()))?
            .clone();
        drop(bytes);
        let BlockReference {
            seed,
            params,
            input_shapes,
            checksums,
        } = serde_json::from_str(&json)?;

        // One draw for everything, in the script's order: the parameters, then the inputs.
        let total: usize = params
            .iter()
            .chain(&input_shapes)
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        let mut rest = TorchRng::new(seed).randn(total);
        // Cut from the end: the tail of `rest` is always the next tensor back.
        let mut take = |name: &str, shape: &[usize], f: &dyn Fn(f32) -> f32| -> candle_core::Result<Tensor> {
            let n = shape.iter().product::<usize>();
            let mut values = rest.split_off(rest.len() - n);
            rest.shrink_to_fit();
            values.iter_mut().for_each(|v| *v = f(*v));
            let sum: f64 = values.iter().map(|&v| v as f64).sum();
            // The script's float64 sums: a mismatch here is the random stream, not the block.
            assert!(
                (sum - checksums[name]).abs() < 1e-6,
                "{name}: sum {sum} ≠ torch's {}",
                checksums[name]
            );
            Tensor::from_vec(values, shape, &Device::Cpu)
        };
        let mut inputs = HashMap::new();
        for (name, shape) in input_shapes.iter().rev() {
            inputs.insert(name.clone(), take(name, shape, &|x| x)?);
        }
        let mut weights = HashMap::new();
        for (name, shape) in params.iter().rev() {
            let t = if shape.len() >= 2 {
                let fan_in = shape[1..].iter().product::<usize>() as f64;
                let scale = (-(fan_in.log2() / 2.0 + 0.5).floor()).exp2() as f32;
                take(name, shape, &|x| x * scale)?
            } else if name.ends_with(".weight") {
                take(name, shape, &|x| 1.0 + x / 32.0)?
            } else {
                take(name, shape, &|x| x / 32.0)?
            };
            weights.insert(name.clone(), t);
        }
        assert!(rest.is_empty());

        let asked = Arc::new(Mutex::new(HashSet::new()));
        let recording = Recording {
            tensors: weights,
            asked: asked.clone(),
        };
        Ok(Self {
            vb: VarBuilder::from_backend(Box::new(recording), DType::F32, Device::Cpu),
            inputs,
            outputs: candle_core::safetensors::load(path, &Device::Cpu)?,
            metadata: serde_json::from_str(&json)?,
            params: params.into_iter().map(|(n, _)| n).collect(),
            asked,
        })
    }

    /// Every parameter of diffusers' block must have been used (a map-backed VarBuilder would not notice one left
    /// out).
    pub fn assert_all_used(&self) {
        let asked = self.asked.lock().expect("not poisoned");
        let unused: Vec<_> = self.params.iter().filter(|n| !asked.contains(*n)).collect();
        assert!(unused.is_empty(), "parameters the block never read: {unused:?}");
    }

    pub fn input(&self, name: &str) -> Result<&Tensor, String> {
        self.inputs
            .get(name)
            .ok_or_else(|| format!("the reference has no input {name}"))
    }

    pub fn output(&self, name: &str) -> Result<&Tensor, String> {
        self.outputs
            .get(name)
            .ok_or_else(|| format!("the reference lacks {name}"))
    }
}
