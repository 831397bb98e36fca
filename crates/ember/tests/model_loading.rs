//! Model loading end to end on the tiny SD fixture in its three formats (tests/fixtures/tiny-sd/,
//! tiny-sd.safetensors, tiny-sd.ckpt), on hostile/corrupt files from tools/oracle/make_bad_checkpoints.py,
//! and on fake SD 2.x / SDXL / inpainting files built here with the right names and shapes.
//!
//! The reference is the diffusers folder as written by diffusers itself: every tensor it holds must come out
//! of every format identically, and the configs inferred from single files must equal its config.json files.

use candle_core::{DType, Device, Tensor};
use ember::model::{load_model, ModelFormat, ModelWeights};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/")).join(rel)
}

fn load(path: &Path, dtype: DType) -> ember::Result<ModelWeights> {
    load_model(path.to_str().expect("utf-8 path"), &Device::Cpu, dtype)
}

fn load_err(path: &Path) -> String {
    match load(path, DType::F32) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

/// The diffusers folder's tensors, read straight from its files.
fn reference(component: &str, file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(&format!("tiny-sd/{component}/{file}")), &Device::Cpu)
        .expect("fixture readable")
}

fn assert_same_tensors(m: &ModelWeights, what: &str) {
    for (component, file, vb) in [
        ("unet", "diffusion_pytorch_model.safetensors", &m.unet),
        ("vae", "diffusion_pytorch_model.safetensors", &m.vae),
        ("text_encoder", "model.safetensors", &m.text_encoders[0]),
    ] {
        let reference = reference(component, file);
        assert!(reference.len() > 30, "{component}: fixture too small");
        for (name, want) in &reference {
            // `get` checks the shape the network will ask for; values must be bit-identical (all stored as f16).
            let got = vb
                .get(want.shape(), name)
                .unwrap_or_else(|e| panic!("{what}: {component}/{name}: {e}"));
            assert_eq!(got.dtype(), DType::F32, "{what}: {name} not converted");
            let diff = (got - want.to_dtype(DType::F32).expect("f32"))
                .expect("same shape")
                .abs()
                .expect("abs")
                .flatten_all()
                .expect("flatten")
                .max(0)
                .expect("max")
                .to_scalar::<f32>()
                .expect("scalar");
            assert_eq!(diff, 0.0, "{what}: {component}/{name} differs by {diff}");
        }
    }
}

#[test]
fn all_three_formats_give_the_folders_tensors_and_configs() {
    let folder = load(&fixture("tiny-sd"), DType::F32).expect("diffusers folder loads");
    assert_eq!(folder.format, ModelFormat::Diffusers);
    assert_eq!(folder.hash, None);
    assert_eq!(folder.name, "tiny-sd");
    assert_eq!(
        folder.tokenizer_dirs[0].as_deref(),
        Some(fixture("tiny-sd/tokenizer").as_path())
    );
    assert_same_tensors(&folder, "folder");

    for (file, format) in [
        ("tiny-sd.safetensors", ModelFormat::Safetensors),
        ("tiny-sd.ckpt", ModelFormat::Ckpt),
    ] {
        let m = load(&fixture(file), DType::F32).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(m.format, format);
        assert_eq!(m.name, "tiny-sd");
        let hash = m.hash.as_deref().expect("files are hashed");
        assert!(
            hash.len() == 10 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "{hash}"
        );
        assert_same_tensors(&m, file);
        // sample_size is the only field that weights cannot tell (SD 1.x's 64 is assumed).
        let mut unet = m.spec.unet.clone();
        unet.sample_size = folder.spec.unet.sample_size;
        assert_eq!(unet, folder.spec.unet, "{file}");
        assert_eq!(m.spec.vae, folder.spec.vae, "{file}");
        assert_eq!(
            m.spec.text_encoders[0].config, folder.spec.text_encoders[0].config,
            "{file}"
        );
    }
    // The folder's configs are its config.json files (read here with serde_json directly).
    let json = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(fixture(&format!("tiny-sd/{f}/config.json"))).expect("read"))
            .expect("json")
    };
    let usizes = |v: &serde_json::Value| -> Vec<usize> { serde_json::from_value(v.clone()).expect("numbers") };
    let (unet, vae, clip) = (json("unet"), json("vae"), json("text_encoder"));
    assert_eq!(folder.spec.unet.block_out_channels, usizes(&unet["block_out_channels"]));
    assert_eq!(
        folder.spec.unet.cross_attention_dim as u64,
        unet["cross_attention_dim"].as_u64().expect("dim")
    );
    assert_eq!(folder.spec.vae.block_out_channels, usizes(&vae["block_out_channels"]));
    let c = &folder.spec.text_encoders[0].config;
    let got = [
        c.hidden_size,
        c.num_attention_heads,
        c.num_hidden_layers,
        c.intermediate_size,
    ];
    let want = [
        "hidden_size",
        "num_attention_heads",
        "num_hidden_layers",
        "intermediate_size",
    ]
    .map(|k| clip[k].as_u64().expect("number") as usize);
    assert_eq!(got, want);
}

#[test]
fn requested_dtype_is_applied_and_hash_is_sha256() {
    let m = load(&fixture("tiny-sd.safetensors"), DType::BF16).expect("loads");
    let w = m.unet.get_unchecked("conv_in.weight").expect("conv_in");
    assert_eq!(w.dtype(), DType::BF16);
    // Reference hash from coreutils (skipped where sha256sum is missing; sha256.rs has the FIPS vectors).
    let out = std::process::Command::new("sha256sum")
        .arg(fixture("tiny-sd.safetensors"))
        .output();
    if let Ok(out) = out {
        let want = String::from_utf8_lossy(&out.stdout);
        assert_eq!(m.hash.as_deref(), Some(&want[..10]));
    }
}

/// A folder like tiny-sd but with a VAE saved under old diffusers attention names, as an fp16 variant.
#[test]
fn old_vae_attention_names_and_fp16_variant() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    for f in ["model_index.json", "unet", "text_encoder", "tokenizer"] {
        std::os::unix::fs::symlink(fixture("tiny-sd").join(f), root.join(f)).expect("symlink");
    }
    std::fs::create_dir(root.join("vae")).expect("mkdir");
    std::fs::copy(fixture("tiny-sd/vae/config.json"), root.join("vae/config.json")).expect("copy");
    let old: HashMap<String, Tensor> = reference("vae", "diffusion_pytorch_model.safetensors")
        .into_iter()
        .map(|(k, v)| {
            let k = k
                .replace(".to_q.", ".query.")
                .replace(".to_k.", ".key.")
                .replace(".to_v.", ".value.")
                .replace(".to_out.0.", ".proj_attn.");
            (k, v)
        })
        .collect();
    assert!(old.keys().any(|k| k.contains(".proj_attn.")));
    candle_core::safetensors::save(&old, root.join("vae/diffusion_pytorch_model.fp16.safetensors")).expect("save");
    let m = load(root, DType::F32).expect("loads");
    assert_same_tensors(&m, "old-vae folder");
}

/// Writes a fake single file holding the given (name, shape) tensors, zero-filled f16.
fn fake_file(dir: &Path, name: &str, tensors: &[(&str, &[usize])]) -> PathBuf {
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, s)| {
            (
                k.to_string(),
                Tensor::zeros(*s, DType::F16, &Device::Cpu).expect("zeros"),
            )
        })
        .collect();
    let path = dir.join(name);
    candle_core::safetensors::save(&map, &path).expect("save");
    path
}

/// A minimal SD-1-shaped UNet + VAE + CLIP, with overrides.
/// Tensor names and shapes of a fake file.
type Fake = Vec<(&'static str, Vec<usize>)>;

fn sd_like(cross: usize, proj_in: &[usize], in_ch: usize) -> Fake {
    vec![
        ("model.diffusion_model.input_blocks.0.0.weight", vec![8, in_ch, 3, 3]),
        (
            "model.diffusion_model.input_blocks.1.0.out_layers.3.weight",
            vec![8, 8, 3, 3],
        ),
        ("model.diffusion_model.input_blocks.1.1.norm.weight", vec![8]),
        (
            "model.diffusion_model.input_blocks.1.1.proj_in.weight",
            proj_in.to_vec(),
        ),
        (
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
            vec![8, cross],
        ),
        ("model.diffusion_model.out.2.weight", vec![4, 8, 3, 3]),
        ("first_stage_model.post_quant_conv.weight", vec![4, 4, 1, 1]),
        (
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
            vec![10, 8],
        ),
    ]
}

#[test]
fn families_ember_does_not_run_are_named_in_the_refusal() {
    // Each case differs from an SD 1.x file by one telltale key or shape only.
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let with = |extra: (&'static str, Vec<usize>)| [sd_like(768, &[8, 8, 1, 1], 4), vec![extra]].concat();
    let cases: Vec<(&str, Fake, &str)> = vec![
        (
            "sd3.safetensors",
            with((
                "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight",
                vec![8, 8],
            )),
            "Stable Diffusion 3 checkpoint",
        ),
        (
            "flux.safetensors",
            with(("double_blocks.0.img_attn.qkv.weight", vec![8, 8])),
            "FLUX checkpoint",
        ),
        (
            "refiner.safetensors",
            with(("conditioner.embedders.0.model.token_embedding.weight", vec![10, 8])),
            "SDXL refiner checkpoint",
        ),
        ("pix2pix.safetensors", sd_like(768, &[8, 8, 1, 1], 8), "InstructPix2Pix"),
    ];
    for (name, tensors, expected) in cases {
        let t: Vec<(&str, &[usize])> = tensors.iter().map(|(k, s)| (*k, s.as_slice())).collect();
        let msg = load_err(&fake_file(d, name, &t));
        assert!(msg.contains(expected), "{name}: {msg}");
    }
}

#[test]
fn incomplete_files_of_each_family_name_the_missing_tensor() {
    // SD 2.x (OpenCLIP text tower) and SDXL (two encoders, `label_emb`) files are recognised, then found incomplete:
    // the error names a tensor the file lacks, with no panic.
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let cases: Vec<(&str, Fake)> = vec![
        ("sd1-base.safetensors", sd_like(768, &[8, 8, 1, 1], 4)),
        // An inpainting UNet (9 input channels) is accepted and read on until the missing tensor.
        ("sd1-inpaint.safetensors", sd_like(768, &[8, 8, 1, 1], 9)),
        ("sd2-linear.safetensors", sd_like(1024, &[8, 8], 4)),
        (
            "sd2-openclip.safetensors",
            [
                sd_like(1024, &[8, 8], 4),
                vec![("cond_stage_model.model.token_embedding.weight", vec![10, 8])],
            ]
            .concat(),
        ),
        (
            "sdxl.safetensors",
            [
                sd_like(2048, &[8, 8], 4),
                vec![
                    ("model.diffusion_model.label_emb.0.0.weight", vec![8, 8]),
                    ("conditioner.embedders.1.model.token_embedding.weight", vec![10, 8]),
                ],
            ]
            .concat(),
        ),
    ];
    for (name, tensors) in cases {
        let t: Vec<(&str, &[usize])> = tensors.iter().map(|(k, s)| (*k, s.as_slice())).collect();
        let msg = load_err(&fake_file(d, name, &t));
        assert!(msg.contains("is missing") && msg.contains('`'), "{name}: {msg}");
    }
}

#[test]
fn hostile_checkpoints_are_refused_without_running_them() {
    let markers = ["/tmp/ember-pwned-5b1e0c7d-os-system", "/tmp/ember-pwned-5b1e0c7d-eval"];
    for m in markers {
        let _ = std::fs::remove_file(m);
    }
    for (file, global) in [
        ("bad/pwned_os_system.ckpt", "`posix.system`"),
        ("bad/pwned_eval.ckpt", "`__builtin__.eval`"),
        ("bad/unknown_class.ckpt", "`__main__.Unknown`"),
        ("bad/build_list.ckpt", "BUILD"),
    ] {
        let msg = load_err(&fixture(file));
        let name = Path::new(file).file_name().expect("name").to_string_lossy();
        assert!(msg.contains(&format!("refusing to load {name}")), "{msg}");
        assert!(msg.contains(global) && msg.contains(".safetensors"), "{msg}");
    }
    for m in markers {
        assert!(!Path::new(m).exists(), "{m} was created");
    }
}

#[test]
fn broken_inputs_are_errors_that_name_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (fixture("bad/empty.safetensors"), "empty"),
        (fixture("bad/empty.ckpt"), "empty"),
        (fixture("bad/truncated.safetensors"), "truncated or corrupt"),
        (fixture("bad/garbage.safetensors"), "truncated or corrupt"),
        (fixture("bad/huge_header.safetensors"), "truncated or corrupt"),
        (fixture("bad/truncated.ckpt"), "corrupt"),
        (fixture("bad/garbage.ckpt"), "corrupt"),
        (dir.path().to_path_buf(), "no model_index.json"),
        (dir.path().join("missing.safetensors"), "no such file"),
        (
            fixture("tiny-sd/unet/diffusion_pytorch_model.safetensors"),
            "one component of a diffusers model",
        ),
        (fixture("tiny-sd/unet/config.json"), "not a model file"),
    ];
    for (path, expected) in cases {
        let msg = load_err(&path);
        assert!(msg.contains(expected), "{}: {msg}", path.display());
        let shown = path.display().to_string();
        assert!(msg.contains(&shown), "{msg} does not name {shown}");
    }
    // A folder with model_index.json but a missing component.
    let root = dir.path().join("partial");
    std::fs::create_dir(&root).expect("mkdir");
    std::fs::copy(fixture("tiny-sd/model_index.json"), root.join("model_index.json")).expect("copy");
    let msg = load_err(&root);
    assert!(msg.contains("unet/config.json") && msg.contains("incomplete"), "{msg}");

    // A storage shorter than the pickle says: loading succeeds lazily, reading the tensor fails cleanly.
    let ckpt = ember_pickle::Checkpoint::open(fixture("bad/short_storage.ckpt")).expect("pickle is valid");
    assert!(ckpt.tensor_bytes(&ckpt.tensors()[0].1).is_err());
}

#[cfg(not(feature = "hub"))]
#[test]
fn repo_ids_need_the_hub_feature() {
    let msg = match load_model(ember::model::DEFAULT_REPO_ID, &Device::Cpu, DType::F32) {
        Ok(_) => panic!("loaded without the hub feature"),
        Err(e) => e.to_string(),
    };
    assert!(msg.contains("`hub` feature") && msg.contains("--model"), "{msg}");
}

/// The hub path without network: a pre-filled standard HF cache is used as is, and an empty one gives an
/// error telling how to pass a local file. (HF_ENDPOINT points at a closed local port.)
#[cfg(feature = "hub")]
#[test]
fn repo_ids_use_the_hf_cache_offline() {
    let home = tempfile::tempdir().expect("tempdir");
    std::env::set_var("HF_HOME", home.path());
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    let msg = match load_model("nobody/not-cached", &Device::Cpu, DType::F32) {
        Ok(_) => panic!("loaded a repo that is neither cached nor reachable"),
        Err(e) => e.to_string(),
    };
    assert!(msg.contains("nobody/not-cached") && msg.contains("--model"), "{msg}");

    // Standard cache layout: hub/models--owner--name/{refs/main, snapshots/<rev>/...}.
    let repo = home.path().join("hub/models--ember--tiny-sd");
    let snap = repo.join("snapshots/0123456789abcdef");
    std::fs::create_dir_all(repo.join("refs")).expect("mkdir");
    std::fs::write(repo.join("refs/main"), "0123456789abcdef").expect("ref");
    std::fs::create_dir_all(&snap).expect("mkdir");
    for f in ["model_index.json", "unet", "vae", "text_encoder", "tokenizer"] {
        std::os::unix::fs::symlink(fixture("tiny-sd").join(f), snap.join(f)).expect("symlink");
    }
    let m = load_model("ember/tiny-sd", &Device::Cpu, DType::F32).expect("cached repo loads");
    assert_eq!((m.name.as_str(), m.format), ("ember/tiny-sd", ModelFormat::Diffusers));
    assert_same_tensors(&m, "hub cache");
}

#[test]
fn a_sidecar_yaml_that_contradicts_the_file_is_refused_naming_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("m.safetensors");
    std::fs::copy(fixture("tiny-sd2.safetensors"), &file).expect("copy");
    let yaml = dir.path().join("m.yaml");
    // The tiny SD 2.x UNet cross-attends to 16-wide states.
    std::fs::write(
        &yaml,
        "model:\n  params:\n    unet_config:\n      params:\n        context_dim: 1024\n",
    )
    .expect("yaml");
    let msg = load_err(&file);
    assert!(
        msg.contains("m.yaml") && msg.contains("context_dim: 1024") && msg.contains("16"),
        "{msg}"
    );
    std::fs::write(&yaml, "model:\n  params:\n    parameterization: \"x0\"\n").expect("yaml");
    let msg = load_err(&file);
    assert!(msg.contains("parameterization \"x0\""), "{msg}");
    // Heads that do not divide the blocks' widths: the .yaml is named as the way out.
    std::fs::write(
        &yaml,
        "model:\n  params:\n    unet_config:\n      params:\n        num_head_channels: 7\n",
    )
    .expect("yaml");
    let msg = load_err(&file);
    assert!(msg.contains("7-wide attention heads") && msg.contains(".yaml"), "{msg}");
    // A .yaml naming no parameterization is LDM's default, ε (SD 2.x 512-base's v2-inference.yaml).
    std::fs::write(
        &yaml,
        "model:\n  params:\n    unet_config:\n      params:\n        num_head_channels: 8\n",
    )
    .expect("yaml");
    let m = load(&file, DType::F32).expect("loads");
    assert_eq!(m.spec.family, ember::model::Family::Sd2);
    assert_eq!(
        m.spec.scheduler.prediction_type,
        ember::sample::denoiser::PredictionType::Epsilon
    );
    assert_eq!(m.spec.native_size(), 512);
    assert!(
        m.spec.notes.iter().any(|n| n.contains("ε-prediction")),
        "{:?}",
        m.spec.notes
    );
    // Without a .yaml the heads default to SD 2.x's 64-wide ones, which the tiny UNet's 32 channels cannot hold.
    std::fs::remove_file(&yaml).expect("rm");
    let msg = load_err(&file);
    assert!(
        msg.contains("64-wide attention heads") && msg.contains(".yaml"),
        "{msg}"
    );
}

#[test]
fn unets_no_family_has_are_refused_naming_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // An 8-channel UNet: no SD family has one.
    let fake = sd_like(768, &[8, 8, 1, 1], 8);
    let tensors: Vec<(&str, &[usize])> = fake.iter().map(|(k, s)| (*k, s.as_slice())).collect();
    let msg = load_err(&fake_file(d, "eight.safetensors", &tensors));
    assert!(msg.contains("8 input channels"), "{msg}");
}
