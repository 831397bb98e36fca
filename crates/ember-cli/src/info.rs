//! `ember info IMAGE.png…`: the generation settings stored in images, without the REPL.
//!
//! For each image: the text chunks that carry settings (InvokeAI's and Ember's `Dream` line and `sd-metadata` JSON,
//! A1111's `parameters`, ComfyUI's `prompt` graph), each shown, then the command line `!fetch` gives for it, with
//! its notes (an init image A1111 does not record, a file not found). `--json` prints one JSON array with an object
//! per image, in the order given: `path`, `formats` (the chunk names found), `dream`, `sd_metadata`, `parameters`
//! (`text`, `prompt`, `negative_prompt`, `settings`), `comfyui_prompt`, `fetch` (`line`, `source`, `notes`) — each
//! null when absent — or `path` and `error` for an image that cannot be read. Every image is printed; the exit
//! status is non-zero when one is missing, not a PNG or has no settings.

use crate::fetch::{fetched_from_text_chunks, Fetched};
use clap::Args;
use ember::image::infotext;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The images to read.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// Print a JSON array with one object per image instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The text chunks that carry generation settings, by the name `formats` lists.
const FORMATS: [&str; 4] = ["Dream", "sd-metadata", "parameters", "prompt"];

/// What one image holds.
struct ImageInfo {
    path: PathBuf,
    chunks: Vec<(String, String)>,
    /// The `!fetch` line, or why there is none.
    fetched: Result<Fetched, String>,
}

impl ImageInfo {
    fn get(&self, key: &str) -> Option<&str> {
        self.chunks.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn formats(&self) -> Vec<&'static str> {
        FORMATS.into_iter().filter(|f| self.get(f).is_some()).collect()
    }
}

/// Reads an image's settings; an error names the file and the problem.
fn read(path: &Path) -> Result<ImageInfo, String> {
    if !path.exists() {
        return Err(format!("{}: no such file", path.display()));
    }
    let chunks = ember::image::png_meta::read_png_text(path)
        .map_err(|e| format!("{e} (ember info reads PNG files, as Ember, InvokeAI, A1111 and ComfyUI write them)"))?;
    let fetched = fetched_from_text_chunks(path, &chunks).map_err(|e| e.to_string());
    let info = ImageInfo {
        path: path.to_path_buf(),
        chunks,
        fetched,
    };
    if info.formats().is_empty() {
        return Err(format!(
            "{}: no generation settings: it has no Dream, sd-metadata, parameters or ComfyUI prompt text chunk",
            path.display()
        ));
    }
    Ok(info)
}

pub fn run(args: &InfoArgs) -> anyhow::Result<()> {
    let mut failed = 0;
    let mut objects = Vec::new();
    for (i, path) in args.images.iter().enumerate() {
        let info = read(path);
        if info.is_err() {
            failed += 1;
        }
        if args.json {
            objects.push(match &info {
                Ok(info) => to_json(info),
                Err(e) => json!({"path": path.display().to_string(), "error": e}),
            });
            continue;
        }
        if i > 0 {
            println!();
        }
        match &info {
            Ok(info) => print_text(info),
            Err(e) => {
                println!("{}", path.display());
                crate::term::error(e);
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&Value::Array(objects))?);
    }
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} images had no readable generation settings (see above)",
            args.images.len()
        );
    }
    Ok(())
}

/// A chunk's JSON parsed, or its text when it is not JSON.
fn json_or_text(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

fn to_json(info: &ImageInfo) -> Value {
    let parameters = info.get("parameters").map(|text| {
        let parsed = infotext::parse(text);
        let settings: Map<String, Value> = parsed
            .settings
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        json!({"text": text, "prompt": parsed.prompt, "negative_prompt": parsed.negative_prompt,
               "settings": settings})
    });
    let fetch = match &info.fetched {
        Ok(f) => json!({"line": f.line, "source": f.source, "notes": f.notes}),
        Err(e) => json!({"error": e}),
    };
    json!({
        "path": info.path.display().to_string(),
        "formats": info.formats(),
        "dream": info.get("Dream"),
        "sd_metadata": info.get("sd-metadata").map(json_or_text),
        "parameters": parameters,
        "comfyui_prompt": info.get("prompt").map(json_or_text),
        "fetch": fetch,
    })
}

/// A JSON value on one line: strings bare, the rest as JSON.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_text(info: &ImageInfo) {
    println!("{}", info.path.display());
    println!("  formats: {}", info.formats().join(", "));
    if let Some(dream) = info.get("Dream") {
        println!("  Dream: {dream}");
    }
    if let Some(text) = info.get("sd-metadata") {
        match json_or_text(text) {
            Value::Object(doc) => {
                let app = ["app_id", "app_version", "model_weights", "model_id", "model_hash"]
                    .iter()
                    .filter_map(|k| {
                        doc.get(*k)
                            .filter(|v| !v.is_null())
                            .map(|v| format!("{k} {}", scalar(v)))
                    })
                    .collect::<Vec<_>>();
                println!("  sd-metadata: {}", app.join(", "));
                if let Some(Value::Object(image)) = doc.get("image") {
                    for (k, v) in image {
                        println!("    {k}: {}", scalar(v));
                    }
                }
            }
            other => println!("  sd-metadata (not a JSON object): {}", scalar(&other)),
        }
    }
    if let Some(text) = info.get("parameters") {
        let parsed = infotext::parse(text);
        println!("  parameters:");
        println!("    prompt: {}", parsed.prompt.replace('\n', "\n            "));
        if !parsed.negative_prompt.is_empty() {
            println!(
                "    negative prompt: {}",
                parsed.negative_prompt.replace('\n', "\n                     ")
            );
        }
        for (k, v) in &parsed.settings {
            println!("    {k}: {v}");
        }
    }
    if let Some(text) = info.get("prompt") {
        print_comfyui(&json_or_text(text));
    }
    match &info.fetched {
        Ok(f) => {
            println!("  fetch (from {}): {}", f.source, f.line);
            for note in &f.notes {
                println!("  note: {note}");
            }
        }
        Err(e) => println!("  fetch: none ({e})"),
    }
}

/// ComfyUI's `prompt`: `{"3": {"class_type": "KSampler", "inputs": {"seed": 1, "model": ["4", 0], …}}, …}`; each
/// node with its plain inputs (links to other nodes, `["4", 0]`, left out).
fn print_comfyui(prompt: &Value) {
    let Value::Object(nodes) = prompt else {
        println!("  ComfyUI prompt (not a JSON object): {}", scalar(prompt));
        return;
    };
    println!("  ComfyUI prompt ({} nodes):", nodes.len());
    let mut ids: Vec<&String> = nodes.keys().collect();
    // Node ids are numbers in text: order them as numbers.
    ids.sort_by_key(|id| (id.parse::<u64>().unwrap_or(u64::MAX), id.to_string()));
    for id in ids {
        let node = &nodes[id.as_str()];
        let class = node["class_type"].as_str().unwrap_or("?");
        let inputs: Vec<String> = match &node["inputs"] {
            Value::Object(inputs) => inputs
                .iter()
                .filter(|(_, v)| !v.is_array() && !v.is_object())
                .map(|(k, v)| format!("{k}={}", scalar(v)))
                .collect(),
            _ => Vec::new(),
        };
        println!("    #{id} {class}: {}", inputs.join(", "));
    }
}
