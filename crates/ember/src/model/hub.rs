//! Models named by Hugging Face repo id (`owner/name`): downloads only the files an SD 1.x diffusers
//! folder needs into the standard HF cache (fp16 weights when the repo has them) and returns the folder.

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// The model used when none is named.
pub const DEFAULT_REPO_ID: &str = "stable-diffusion-v1-5/stable-diffusion-v1-5";

#[cfg(any(feature = "hub", test))]
const COMPONENTS: [&str; 3] = ["unet", "vae", "text_encoder"];
#[cfg(feature = "hub")]
const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
];

/// True for `owner/name` strings (one '/', both parts plain names) that are not an existing path.
pub(crate) fn looks_like_repo_id(spec: &str) -> bool {
    let mut parts = spec.split('/');
    let ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None) if ok(a) && ok(b))
        && !Path::new(spec).exists()
        && ![".safetensors", ".ckpt", ".pt", ".pth"]
            .iter()
            .any(|x| spec.ends_with(x))
}

#[cfg(any(feature = "hub", test))]
/// Picks the weight file of each component among the repo's files: fp16 variant first, then the plain one.
fn weight_files(files: &[String]) -> Vec<String> {
    COMPONENTS
        .iter()
        .filter_map(|c| candidate_names(c).into_iter().find(|n| files.contains(n)))
        .collect()
}

#[cfg(any(feature = "hub", test))]
/// A component's weight file names, preferred first.
fn candidate_names(component: &str) -> [String; 2] {
    let stem = if component == "text_encoder" {
        "model"
    } else {
        "diffusion_pytorch_model"
    };
    [
        format!("{component}/{stem}.fp16.safetensors"),
        format!("{component}/{stem}.safetensors"),
    ]
}

#[cfg(feature = "hub")]
pub(crate) fn download(repo_id: &str) -> Result<PathBuf> {
    use hf_hub::api::sync::ApiBuilder;

    let fail = |e: &dyn std::fmt::Display| {
        Error::model(
            repo_id,
            format!(
                "cannot get it from Hugging Face ({e}). Without network access, pass a local model instead: \
                 --model path/to/model.safetensors (or a .ckpt file, or a diffusers folder)"
            ),
        )
    };
    let api = ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| fail(&e))?;
    let repo = api.model(repo_id.to_string());
    // The file list needs the network; offline, the cache may still hold one of the usual names.
    let candidates: Vec<Vec<String>> = match repo.info() {
        Ok(info) => {
            let listed: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
            let chosen = weight_files(&listed);
            if chosen.len() != COMPONENTS.len() {
                return Err(Error::model(
                    repo_id,
                    "the repository has no .safetensors weights for unet, vae and text_encoder; Ember needs an SD \
                     1.x diffusers repository with .safetensors files (or pass a local file with --model)",
                ));
            }
            chosen.into_iter().map(|w| vec![w]).collect()
        }
        Err(_) => COMPONENTS.iter().map(|c| candidate_names(c).to_vec()).collect(),
    };
    let index = repo.get("model_index.json").map_err(|e| fail(&e))?;
    let configs = COMPONENTS.iter().map(|c| format!("{c}/config.json"));
    for file in configs.chain(TOKENIZER_FILES.iter().map(|s| s.to_string())) {
        repo.get(&file).map_err(|e| fail(&format!("{file}: {e}")))?;
    }
    for names in candidates {
        let mut last_err = String::new();
        let found = names.iter().any(|w| match repo.get(w) {
            Ok(_) => true,
            Err(e) => {
                last_err = format!("{w}: {e}");
                false
            }
        });
        if !found {
            return Err(fail(&last_err));
        }
    }
    index
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| Error::model(repo_id, "the Hugging Face cache returned an unexpected path"))
}

#[cfg(not(feature = "hub"))]
pub(crate) fn download(repo_id: &str) -> Result<PathBuf> {
    Err(Error::model(
        repo_id,
        "this looks like a Hugging Face repo id, but Ember was built without the `hub` feature, so it cannot \
         download models; pass a local model instead: --model path/to/model.safetensors (or rebuild with \
         `--features hub`)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_and_weight_choice() {
        assert!(looks_like_repo_id(DEFAULT_REPO_ID));
        assert!(!looks_like_repo_id("models/sd.safetensors"));
        assert!(!looks_like_repo_id("a/b/c"));
        assert!(!looks_like_repo_id("./x"));
        assert!(!looks_like_repo_id("plainname"));
        let files: Vec<String> = [
            "unet/diffusion_pytorch_model.safetensors",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "unet/diffusion_pytorch_model.non_ema.safetensors",
            "vae/diffusion_pytorch_model.safetensors",
            "text_encoder/model.fp16.safetensors",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            weight_files(&files),
            [
                "unet/diffusion_pytorch_model.fp16.safetensors",
                "vae/diffusion_pytorch_model.safetensors",
                "text_encoder/model.fp16.safetensors"
            ]
        );
    }
}
