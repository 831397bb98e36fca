//! The README's claim that a full-size Stable Diffusion 1.5 model gives identical pixels from its diffusers folder and
//! from its single-file LDM checkpoint. Random f16 weights for all three networks (1.07 G parameters) are written both
//! ways into a temporary folder, using the names and shapes that tools/oracle/make_sd15_layout.py takes from
//! diffusers (tests/fixtures/sd15-layout/keys.tsv, verified there against diffusers' own single-file converter, so the
//! single file is laid out as diffusers reads it, not as Ember's key map says); both are loaded with
//! `Pipeline::load` and run an img2img job. Costs ≈ 4.3 GB of temporary disk, ≈ 4.4 GB of memory and about a
//! minute on two cores (most of it loading the model twice in f32).

use candle_core::{DType, Device};
use ember::model::{load_model, ModelFormat, ModelWeights};
use ember::pipeline::{CancelToken, Pipeline};
use ember::request::{GenerateRequest, InitImage};
use ember::sample::rng::TorchRng;
use ember::sample::SamplerKind;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/")).join(rel)
}

/// One tensor of keys.tsv: its diffusers name (in `component`) and its LDM name, with their shapes.
struct Row {
    component: String,
    name: String,
    shape: Vec<usize>,
    ldm_name: String,
    ldm_shape: Vec<usize>,
}

fn read_layout() -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    let shape = |s: &str| -> Result<Vec<usize>, std::num::ParseIntError> { s.split(',').map(str::parse).collect() };
    let text = std::fs::read_to_string(fixture("sd15-layout/keys.tsv"))?;
    let mut rows = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split('\t').collect();
        let [component, name, s, ldm_name, ldm_s] = f[..] else {
            return Err(format!("keys.tsv: bad line {line:?}").into());
        };
        rows.push(Row {
            component: component.into(),
            name: name.into(),
            shape: shape(s)?,
            ldm_name: ldm_name.into(),
            ldm_shape: shape(ldm_s)?,
        });
    }
    Ok(rows)
}

/// Length of the shared random buffers (a prime, so their period lines up with no tensor's rows).
const POOL: usize = 1_000_003;

/// Random f16 weights for every row, cheap enough for 1.07 G parameters: like `ember bench`'s (N(0, 1/fan_in) for
/// matrices and convolutions, 1 + N(0, 0.02²) for norm scales, N(0, 0.02²) for biases), taken cyclically from one
/// `POOL`-long normal draw scaled per kind, each tensor from its own offset, so no two tensors are equal.
struct RandomWeights {
    pools: HashMap<String, Vec<u8>>,
}

impl RandomWeights {
    fn new(rows: &[Row]) -> Self {
        let normal = TorchRng::new(15001).randn(POOL);
        let mut pools = HashMap::new();
        for row in rows {
            let kind = Self::kind(row);
            pools.entry(kind.clone()).or_insert_with(|| {
                let f: Box<dyn Fn(f32) -> f32> = match kind.as_str() {
                    "norm" => Box::new(|x| 1.0 + 0.02 * x),
                    "bias" => Box::new(|x| 0.02 * x),
                    fan_in => {
                        let std = 1.0 / (fan_in.parse::<f32>().expect("fan-in")).sqrt();
                        Box::new(move |x| std * x)
                    }
                };
                normal
                    .iter()
                    .flat_map(|&x| half::f16::from_f32(f(x)).to_le_bytes())
                    .collect()
            });
        }
        Self { pools }
    }

    fn kind(row: &Row) -> String {
        match (row.shape.len(), row.name.ends_with(".weight")) {
            (1, true) => "norm".into(),
            (1, false) => "bias".into(),
            _ => (row.shape[1..].iter().product::<usize>()).to_string(),
        }
    }

    /// Writes tensor `index`'s f16 bytes (little-endian) to every writer.
    fn write(&self, index: usize, row: &Row, out: &mut [&mut dyn Write]) -> std::io::Result<()> {
        let pool = &self.pools[&Self::kind(row)];
        let mut start = (index * 2_654_435_761 % POOL) * 2;
        let mut left = row.shape.iter().product::<usize>() * 2;
        while left > 0 {
            let n = left.min(pool.len() - start);
            for w in out.iter_mut() {
                w.write_all(&pool[start..start + n])?;
            }
            left -= n;
            start = 0;
        }
        Ok(())
    }
}

/// A `.safetensors` file being written: its header written (every tensor f16, stored in the order given), the data
/// to follow in that order.
fn safetensors_writer(path: &Path, tensors: &[(&str, &[usize])]) -> std::io::Result<std::io::BufWriter<std::fs::File>> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0;
    for (name, shape) in tensors {
        let len = shape.iter().product::<usize>() * 2;
        header.insert(
            (*name).into(),
            serde_json::json!({ "dtype": "F16", "shape": shape, "data_offsets": [offset, offset + len] }),
        );
        offset += len;
    }
    let mut json = serde_json::to_string(&header)?.into_bytes();
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let mut w = std::io::BufWriter::with_capacity(1 << 22, std::fs::File::create(path)?);
    w.write_all(&(json.len() as u64).to_le_bytes())?;
    w.write_all(&json)?;
    Ok(w)
}

/// The SD 1.5 diffusers folder (configs from sd15-layout/, model_index, scheduler and tokenizer from tiny-sd/) and
/// the single file, with the same random weights.
fn write_model(dir: &Path, rows: &[Row]) -> Result<(PathBuf, PathBuf), Box<dyn std::error::Error>> {
    let folder = dir.join("sd15-random");
    for sub in ["unet", "vae", "text_encoder", "scheduler", "tokenizer"] {
        std::fs::create_dir_all(folder.join(sub))?;
    }
    for (from, to) in [
        ("tiny-sd/model_index.json", "model_index.json"),
        (
            "tiny-sd/scheduler/scheduler_config.json",
            "scheduler/scheduler_config.json",
        ),
        ("sd15-layout/unet/config.json", "unet/config.json"),
        ("sd15-layout/vae/config.json", "vae/config.json"),
        ("sd15-layout/text_encoder/config.json", "text_encoder/config.json"),
    ] {
        std::fs::copy(fixture(from), folder.join(to))?;
    }
    for entry in std::fs::read_dir(fixture("tiny-sd/tokenizer"))? {
        let entry = entry?;
        std::fs::copy(entry.path(), folder.join("tokenizer").join(entry.file_name()))?;
    }

    let single = dir.join("sd15-random.safetensors");
    let ldm: Vec<_> = rows
        .iter()
        .map(|r| (r.ldm_name.as_str(), r.ldm_shape.as_slice()))
        .collect();
    let mut single_w = safetensors_writer(&single, &ldm)?;
    let weights = RandomWeights::new(rows);
    for (component, file) in [
        ("unet", "diffusion_pytorch_model.safetensors"),
        ("vae", "diffusion_pytorch_model.safetensors"),
        ("text_encoder", "model.safetensors"),
    ] {
        let mine: Vec<(usize, &Row)> = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r.component == component)
            .collect();
        let names: Vec<_> = mine
            .iter()
            .map(|(_, r)| (r.name.as_str(), r.shape.as_slice()))
            .collect();
        let mut w = safetensors_writer(&folder.join(component).join(file), &names)?;
        for (i, row) in mine {
            weights.write(i, row, &mut [&mut w, &mut single_w])?;
        }
        w.flush()?;
    }
    single_w.flush()?;
    Ok((folder, single))
}

/// img2img, so that every network runs, the VAE's encoder too: 64×96 init image, 2 of 3 steps, cfg 7.5.
fn generate(model: &Path) -> Result<image::RgbImage, Box<dyn std::error::Error>> {
    let pipeline = Pipeline::load(model.to_str().ok_or("utf-8 path")?, &Device::Cpu, DType::F32)?;
    let request = GenerateRequest {
        prompt: "a photograph of an astronaut riding a horse".into(),
        negative_prompt: "blurry".into(),
        steps: 3,
        strength: 0.75,
        init_image: Some(InitImage::Path(fixture("init-64x96.png"))),
        cfg_scale: 7.5,
        sampler: SamplerKind::KEuler,
        seed: 1592514025,
        ..Default::default()
    };
    Ok(pipeline.generate(&request, &CancelToken::new(), &mut |_| {})?.image)
}

#[test]
fn fullsize_folder_and_single_file_give_identical_pixels() -> TestResult {
    let clock = Instant::now();
    let rows = read_layout()?;
    let params: usize = rows.iter().map(|r| r.shape.iter().product::<usize>()).sum();
    assert_eq!(params, 1_066_235_307, "SD 1.5's UNet + VAE + CLIP text encoder");
    let dir = tempfile::tempdir()?;
    let (folder, single) = write_model(dir.path(), &rows)?;
    println!(
        "wrote 2 × {:.2} GB in {:.1} s",
        params as f64 * 2e-9,
        clock.elapsed().as_secs_f64()
    );

    // The single file's inferred configs are the folder's config.json files (sample_size aside: weights cannot
    // tell it; SD 1.x's 64 is assumed), and every tensor the folder has, the single file serves identically.
    {
        let a = load_model(folder.to_str().ok_or("utf-8")?, &Device::Cpu, DType::F16)?;
        let b = load_model(single.to_str().ok_or("utf-8")?, &Device::Cpu, DType::F16)?;
        assert_eq!((a.format, b.format), (ModelFormat::Diffusers, ModelFormat::Safetensors));
        assert_eq!(a.spec.unet, b.spec.unet);
        assert_eq!(
            (&a.spec.vae, &a.spec.text_encoders[0].config),
            (&b.spec.vae, &b.spec.text_encoders[0].config)
        );
        for row in &rows {
            let vb = |m: &ModelWeights| match row.component.as_str() {
                "unet" => m.unet.clone(),
                "vae" => m.vae.clone(),
                _ => m.text_encoders[0].clone(),
            };
            let (x, y) = (
                vb(&a).get(row.shape.as_slice(), &row.name)?,
                vb(&b).get(row.shape.as_slice(), &row.name)?,
            );
            let same = x.eq(&y)?.flatten_all()?.min(0)?.to_scalar::<u8>()? == 1;
            assert!(
                same,
                "{}/{} differs between the folder and the single file",
                row.component, row.name
            );
        }
    }
    println!("tensors compared at {:.1} s", clock.elapsed().as_secs_f64());

    let from_folder = generate(&folder)?;
    println!("folder image at {:.1} s", clock.elapsed().as_secs_f64());
    let from_single = generate(&single)?;
    println!(
        "single-file image at {:.1} s, peak RSS {:.2} GB",
        clock.elapsed().as_secs_f64(),
        ember::bench::peak_rss_bytes() as f64 * 1e-9
    );

    // Random weights must still give a picture, not a flat or saturated one, or the comparison proves little.
    let bytes = from_folder.as_raw();
    let mut seen = [false; 256];
    bytes.iter().for_each(|&b| seen[b as usize] = true);
    let distinct = seen.iter().filter(|&&s| s).count();
    let saturated = bytes.iter().filter(|&&b| b == 0 || b == 255).count() as f64 / bytes.len() as f64;
    println!("image: {distinct} distinct values, {:.1}% saturated", saturated * 100.0);
    assert!(distinct > 64 && saturated < 0.5, "degenerate image");
    assert!(
        from_folder == from_single,
        "the folder and the single file give different pixels"
    );
    Ok(())
}
