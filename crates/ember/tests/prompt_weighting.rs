//! The prompt language against compel: parses, legacy `text:weight` splits and the weighted / chunked
//! conditioning on the tiny model's text encoder. References come from tools/oracle/make_prompt_reference.py
//! (compel with DownweightMode.REMOVE, and MASK for the `_mask` files, brutal chunk splitting, transformers,
//! float32, CPU).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use ember::nn::config::ClipTextConfig;
use ember::nn::ClipTextModel;
use ember::text::conditioning::{describe_tokenization, encode_prompts, Downweight, PromptOptions, CHUNK_LEN};
use ember::text::prompt::{self, Fragment, Prompt};
use ember::text::tokenizer::ClipTokenizer;
use serde_json::Value;
use std::collections::HashMap;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/tiny-sd");
const REFERENCE_JSON: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/prompt_reference.json"
);
const REFERENCE_TENSORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/prompt_reference.safetensors"
);
const MASK_JSON: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/prompt_reference_mask.json"
);
const MASK_TENSORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/prompt_reference_mask.safetensors"
);

/// f32 against torch f32 on CPU: only accumulation order differs (CLIP alone agrees to ~1e-6 here).
const TOL: f32 = 1e-4;
/// Weights are computed with the same f64 operations as compel's Python floats.
const WEIGHT_TOL: f64 = 1e-12;

fn reference() -> Result<Value, Box<dyn std::error::Error>> {
    Ok(serde_json::from_str(&std::fs::read_to_string(REFERENCE_JSON)?)?)
}

fn model(dtype: DType) -> Result<(ClipTokenizer, ClipTextModel), Box<dyn std::error::Error>> {
    let cfg: ClipTextConfig =
        serde_json::from_str(&std::fs::read_to_string(format!("{MODEL}/text_encoder/config.json"))?)?;
    let path = format!("{MODEL}/text_encoder/model.safetensors");
    // SAFETY: the fixture file is not modified while the test runs.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[path], dtype, &Device::Cpu)? };
    let tokenizer = ClipTokenizer::from_dir(std::path::Path::new(&format!("{MODEL}/tokenizer")))?;
    Ok((tokenizer, ClipTextModel::new(vb, &cfg)?))
}

fn options(case: &Value) -> PromptOptions {
    PromptOptions {
        truncate: case["truncate"].as_bool().unwrap_or(false),
        skip_normalize: case["skip_normalize"].as_bool().unwrap_or(false),
        downweight: Downweight::Remove,
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> Result<&'a str, Box<dyn std::error::Error>> {
    v[key]
        .as_str()
        .ok_or_else(|| format!("reference lacks string {key}").into())
}

fn fragments_match(got: &[Fragment], want: &Value) -> bool {
    let Some(want) = want.as_array() else { return false };
    got.len() == want.len()
        && got.iter().zip(want).all(|(g, w)| {
            w[0].as_str() == Some(g.text.as_str()) && w[1].as_f64().is_some_and(|x| (x - g.weight).abs() < WEIGHT_TOL)
        })
}

fn prompt_matches(got: &Prompt, want: &Value) -> bool {
    match got {
        Prompt::Weighted(f) => fragments_match(f, &want["fragments"]),
        Prompt::Blend(b) => {
            let (Some(parts), Some(weights)) = (want["blend"].as_array(), want["weights"].as_array()) else {
                return false;
            };
            b.normalize == want["normalize"].as_bool().unwrap_or(true)
                && parts.len() == b.prompts.len()
                && b.prompts
                    .iter()
                    .zip(parts)
                    .all(|(p, w)| fragments_match(p, &w["fragments"]))
                && weights.len() == b.weights.len()
                && b.weights
                    .iter()
                    .zip(weights)
                    .all(|(g, w)| w.as_f64().is_some_and(|x| (x - g).abs() < WEIGHT_TOL))
        }
    }
}

#[test]
fn parses_match_compel() -> TestResult {
    let r = reference()?;
    let parses = r["parses"].as_array().ok_or("reference lacks parses")?;
    for case in parses {
        let text = str_of(case, "text")?;
        let got = prompt::parse(text)?;
        assert!(
            prompt_matches(&got, &case["parsed"]),
            "{text:?}: got {got:?}, compel {}",
            case["parsed"]
        );
    }
    Ok(())
}

#[test]
fn invokeai_parses_match_the_reference() -> TestResult {
    let r = reference()?;
    for case in r["cases"].as_array().ok_or("reference lacks cases")? {
        let text = str_of(case, "prompt")?;
        let parsed = prompt::parse_invokeai(text, options(case).skip_normalize)?;
        assert!(
            prompt_matches(&parsed.prompt, &case["parsed"]),
            "{text:?}: got {:?}",
            parsed.prompt
        );
        let negative = [str_of(case, "negative")?, parsed.negative.as_str()]
            .into_iter()
            .filter(|s| !s.trim().is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let got = prompt::parse(&negative)?;
        assert!(
            prompt_matches(&got, &case["parsed_negative"]),
            "negative of {text:?}: got {got:?}"
        );
    }
    Ok(())
}

#[test]
fn legacy_splits_match_invokeai() -> TestResult {
    let r = reference()?;
    for case in r["legacy"].as_array().ok_or("reference lacks legacy")? {
        let text = str_of(case, "text")?;
        let (got, _) = prompt::split_weighted_subprompts(text, case["skip_normalize"].as_bool().unwrap_or(false));
        let want = case["pieces"].as_array().ok_or("pieces")?;
        assert_eq!(got.len(), want.len(), "{text:?}: {got:?}");
        for ((gt, gw), w) in got.iter().zip(want) {
            assert_eq!(Some(gt.as_str()), w[0].as_str(), "{text:?}");
            assert!(
                (w[1].as_f64().ok_or("weight")? - gw).abs() < WEIGHT_TOL,
                "{text:?}: {got:?}"
            );
        }
    }
    Ok(())
}

fn max_err(got: &Tensor, want: &Tensor) -> Result<f32, Box<dyn std::error::Error>> {
    let diff = (got.to_dtype(DType::F32)? - want)?.abs()?.flatten_all()?.max(0)?;
    Ok(diff.to_scalar::<f32>()?)
}

fn check_conditioning(dtype: DType) -> TestResult {
    let r = reference()?;
    let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(REFERENCE_TENSORS, &Device::Cpu)?;
    let (tokenizer, encoder) = model(dtype)?;
    let mut worst = 0f32;
    for (i, case) in r["cases"].as_array().ok_or("reference lacks cases")?.iter().enumerate() {
        let text = str_of(case, "prompt")?;
        let c = encode_prompts(
            &tokenizer,
            &encoder,
            &Device::Cpu,
            text,
            str_of(case, "negative")?,
            &options(case),
        )?;
        let chunks = case["chunks"].as_u64().ok_or("chunks")? as usize;
        for (name, got) in [("cond", &c.cond), ("uncond", &c.uncond)] {
            let want = tensors.get(&format!("{name}/{i}")).ok_or("reference lacks a tensor")?;
            assert_eq!(got.dims(), want.dims(), "case {i} {name} {text:?}");
            assert_eq!(got.dim(1)?, chunks * CHUNK_LEN, "case {i} {name}");
            let err = max_err(got, want)?;
            worst = worst.max(err);
            assert!(err <= TOL, "case {i} {name} ({text:?}): max |Δ| {err:e} > {TOL:e}");
        }
        assert_eq!(c.cond.dtype(), dtype);
        // Exactly the truncating cases drop text, and say so.
        let truncated = options(case).truncate && tokenizer.encode(text).len() > CHUNK_LEN;
        assert_eq!(
            c.warnings.iter().any(|w| w.contains("ignored")),
            truncated,
            "case {i}: {:?}",
            c.warnings
        );
    }
    println!("{dtype:?}: worst max |Δ| vs compel {worst:e}");
    Ok(())
}

#[test]
fn conditioning_matches_compel_f32() -> TestResult {
    check_conditioning(DType::F32)
}

#[test]
fn conditioning_matches_compel_f64() -> TestResult {
    check_conditioning(DType::F64)
}

/// compel's default `DownweightMode.MASK`: the reference's cases with a weight < 1, plus long prompts with a
/// down-weighted fragment across the chunk boundary / the truncation point, weight 0 and a weighted negative.
fn check_mask_conditioning(dtype: DType) -> TestResult {
    let r: Value = serde_json::from_str(&std::fs::read_to_string(MASK_JSON)?)?;
    let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(MASK_TENSORS, &Device::Cpu)?;
    let (tokenizer, encoder) = model(dtype)?;
    let (mut worst, mut distinct) = (0f32, 0);
    let cases = r["cases"].as_array().ok_or("mask reference lacks cases")?;
    for (j, case) in cases.iter().enumerate() {
        let text = str_of(case, "prompt")?;
        let negative = str_of(case, "negative")?;
        let mask = PromptOptions {
            downweight: Downweight::Mask,
            ..options(case)
        };
        let c = encode_prompts(&tokenizer, &encoder, &Device::Cpu, text, negative, &mask)?;
        let removed = encode_prompts(&tokenizer, &encoder, &Device::Cpu, text, negative, &options(case))?;
        let chunks = case["chunks"].as_u64().ok_or("chunks")? as usize;
        let mut differs = false;
        for (name, got, other) in [("cond", &c.cond, &removed.cond), ("uncond", &c.uncond, &removed.uncond)] {
            let want = tensors
                .get(&format!("{name}/{j}"))
                .ok_or("mask reference lacks a tensor")?;
            assert_eq!(got.dims(), want.dims(), "mask case {j} {name} {text:?}");
            assert_eq!(got.dim(1)?, chunks * CHUNK_LEN, "mask case {j} {name}");
            let err = max_err(got, want)?;
            worst = worst.max(err);
            assert!(err <= TOL, "mask case {j} {name} ({text:?}): max |Δ| {err:e} > {TOL:e}");
            differs |= other.dims() != want.dims() || max_err(other, want)? > 100.0 * TOL;
        }
        distinct += usize::from(differs);
    }
    println!(
        "{dtype:?}: worst max |Δ| vs compel MASK {worst:e} ({distinct}/{} cases differ from REMOVE)",
        cases.len()
    );
    // Only the case whose down-weighted fragment lies wholly past the truncation point is the same in both modes
    // (compel gives it no term); every other case must tell the modes apart, or the comparison proves nothing.
    assert!(
        distinct + 1 >= cases.len(),
        "{distinct} of {} cases differ from REMOVE",
        cases.len()
    );
    Ok(())
}

#[test]
fn mask_conditioning_matches_compel_f32() -> TestResult {
    check_mask_conditioning(DType::F32)
}

#[test]
fn mask_conditioning_matches_compel_f64() -> TestResult {
    check_mask_conditioning(DType::F64)
}

/// The text encoder with transformers' `attention_mask` (three tokens masked; and all ones, which must equal
/// the unmasked forward).
#[test]
fn masked_clip_matches_transformers() -> TestResult {
    let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(MASK_TENSORS, &Device::Cpu)?;
    let get = |k: &str| tensors.get(k).ok_or(format!("mask reference lacks {k}"));
    let ids = get("clip/ids")?.to_dtype(DType::U32)?;
    let (mask, want) = (get("clip/mask")?, get("clip/out")?);
    for dtype in [DType::F32, DType::F64] {
        let (_, encoder) = model(dtype)?;
        let got = encoder.forward_masked(&ids, Some(mask))?;
        let err = max_err(&got, want)?;
        println!("{dtype:?}: masked CLIP max |Δ| vs transformers {err:e}");
        assert!(err <= TOL, "{dtype:?}: max |Δ| {err:e}");
        let unmasked = encoder.forward(&ids.narrow(0, 1, 1)?)?;
        assert!(max_err(&unmasked, &want.narrow(0, 1, 1)?)? <= TOL);
        // The masked tokens really change the result.
        assert!(max_err(&got.narrow(0, 0, 1)?, &want.narrow(0, 1, 1)?)? > 100.0 * TOL);
    }
    Ok(())
}

/// `truncate` on an unweighted prompt must give exactly what the pipeline's plain 77-token encoding gives
/// (the engine's parity tests rely on it).
#[test]
fn truncated_plain_prompt_equals_plain_encoding() -> TestResult {
    let r = reference()?;
    let long = str_of(&r["cases"][13], "prompt")?;
    let (tokenizer, encoder) = model(DType::F32)?;
    let opts = PromptOptions {
        truncate: true,
        ..Default::default()
    };
    for text in [long, "a photo of a cat on a mat", "fire, smoke and embers!", ""] {
        let c = encode_prompts(&tokenizer, &encoder, &Device::Cpu, text, "", &opts)?;
        let ids = tokenizer.encode_padded(text, CHUNK_LEN).ids;
        let plain = encoder.forward(&Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?)?;
        assert_eq!(max_err(&c.cond, &plain)?, 0.0, "{text:?}");
    }
    Ok(())
}

#[test]
fn tokenization_is_described_per_chunk() -> TestResult {
    let r = reference()?;
    let (tokenizer, _) = model(DType::F32)?;
    let long_weighted = &r["cases"][11];
    let text = describe_tokenization(
        &tokenizer,
        str_of(long_weighted, "prompt")?,
        "",
        &options(long_weighted),
    )?;
    assert!(text.contains("prompt: 2 chunk(s)"), "{text}");
    assert!(text.contains("(wildflowers)×1.4000"), "{text}");
    assert!(text.contains("(dramatic clouds)×0.6000"), "{text}");
    let truncated = &r["cases"][13];
    let text = describe_tokenization(&tokenizer, str_of(truncated, "prompt")?, "", &options(truncated))?;
    assert!(
        text.contains("prompt: 1 chunk(s)") && text.contains("dropped ("),
        "{text}"
    );
    Ok(())
}

/// Malformed prompts give a result or a clear error, never a panic.
#[test]
fn malformed_prompts_do_not_panic() -> TestResult {
    let (tokenizer, encoder) = model(DType::F32)?;
    let opts = PromptOptions::default();
    for text in [
        "((((",
        "))))",
        "(a)(b)(c",
        "\"unclosed",
        "a:::",
        ":",
        "::0.5",
        "[",
        "]",
        "[[a]",
        "(a).blend(",
        "(a, b).blend(1)",
        "(\"a\", \"b\").blend(x, y)",
        "(\"a\", \"b\").blend(1, 1) tail",
        "+++",
        "---",
        "(x)999999",
        "\\",
        "\\(",
        "a\\:",
        "(\"a\", \"b\").blend(1, -1)",
        "cat:0 dog:0",
        "(a).swap(b)",
    ] {
        if let Ok(c) = encode_prompts(&tokenizer, &encoder, &Device::Cpu, text, text, &opts) {
            assert_eq!(c.cond.dims(), c.uncond.dims(), "{text:?}");
        }
    }
    for (text, why) in [
        ("(\"a\", \"b\").blend(1)", "one weight per prompt"),
        ("(\"a\", \"b\").blend(1, 1) tail", "whole prompt"),
        ("(\"a\", \"b\").blend(x, y)", "not a number"),
        ("(a).swap(b)", "not supported"),
    ] {
        let err = prompt::parse(text)
            .err()
            .ok_or(format!("{text:?} should be rejected"))?;
        assert!(err.to_string().contains(why), "{text:?}: {err}");
    }
    Ok(())
}

/// A pasted file as a prompt is refused with the field named, unless the user asks for truncation.
#[test]
fn absurdly_long_prompts_are_refused() -> TestResult {
    let (tokenizer, encoder) = model(DType::F32)?;
    let huge = "a red fox in the snow, ".repeat(600);
    for (prompt, negative, field) in [
        (huge.as_str(), "", "prompt"),
        ("a fox", huge.as_str(), "negative_prompt"),
    ] {
        let err = encode_prompts(
            &tokenizer,
            &encoder,
            &Device::Cpu,
            prompt,
            negative,
            &PromptOptions::default(),
        )
        .expect_err("too long");
        assert!(
            matches!(&err, ember::Error::InvalidRequest { field: f, .. } if *f == field),
            "{err}"
        );
        assert!(err.to_string().contains("--truncate-prompts"), "{err}");
    }
    let truncate = PromptOptions {
        truncate: true,
        ..Default::default()
    };
    let c = encode_prompts(&tokenizer, &encoder, &Device::Cpu, &huge, "", &truncate)?;
    assert_eq!(c.cond.dims()[1], CHUNK_LEN);
    Ok(())
}
