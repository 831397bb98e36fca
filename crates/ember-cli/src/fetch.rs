//! `!fetch`: the command line that made a PNG, read back from its metadata — Ember's and InvokeAI's `Dream` chunk,
//! else InvokeAI's `sd-metadata` JSON, else A1111's `parameters` text — with notes on what the line cannot carry (an
//! init image that was not recorded or is not found). `ember info` shows the same reading.

use crate::dream_line::parse;
use ember::image::infotext::Infotext;
use ember::image::metadata::{quote, quote_if_needed};
use ember::request::Outcrop;
use ember::sample::denoiser::PredictionType;
use ember::sample::names::{a1111_schedule_is_karras, parse_sampler_name, KARRAS_ALWAYS, KARRAS_NEVER};
use ember::sample::schedule::TimestepSpacing;
use ember::Error;
use std::path::Path;

/// What `!fetch` found in a PNG: the command line, the text chunk it came from, and what the line cannot carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    pub line: String,
    /// `Dream`, `sd-metadata` or `parameters`.
    pub source: &'static str,
    /// One sentence each: a setting the chunk does not record (an init image), or one Ember cannot run.
    pub notes: Vec<String>,
}

/// The command line that made a PNG: its `Dream` chunk (Ember's and InvokeAI's), else one rebuilt from its
/// `sd-metadata` JSON (InvokeAI 2.x's RFC #266 layout, plus Ember's `prediction_type` and `timestep_spacing`), else
/// from A1111's `parameters` text.
pub fn fetch_command(path: &Path) -> ember::Result<String> {
    fetch(path).map(|f| f.line)
}

/// [`fetch_command`] with where the line came from and the notes for the user.
pub fn fetch(path: &Path) -> ember::Result<Fetched> {
    fetched_from_text_chunks(path, &ember::image::png_meta::read_png_text(path)?)
}

/// [`fetch_command`] on text chunks already read from the PNG at `path` (named in errors).
pub fn command_from_text_chunks(path: &Path, chunks: &[(String, String)]) -> ember::Result<String> {
    fetched_from_text_chunks(path, chunks).map(|f| f.line)
}

/// [`fetch`] on text chunks already read from the PNG at `path`: the line, and notes on what it lacks, including an
/// init image or mask it names that is not found (relative names are read from the current directory).
pub fn fetched_from_text_chunks(path: &Path, chunks: &[(String, String)]) -> ember::Result<Fetched> {
    let get = |key: &str| chunks.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let mut fetched = if let Some(dream) = get("Dream").map(str::trim).filter(|d| !d.is_empty()) {
        // InvokeAI 2.0 wrote `Dream: "prompt" -s …`'s body; some versions kept a leading `!dream `.
        Fetched {
            line: dream.strip_prefix("!dream ").unwrap_or(dream).to_string(),
            source: "Dream",
            notes: Vec::new(),
        }
    } else if let Some(json) = get("sd-metadata") {
        let doc: serde_json::Value =
            serde_json::from_str(json).map_err(|e| Error::image(path, format!("its sd-metadata is not JSON: {e}")))?;
        let (line, notes) = command_from_sd_metadata(&doc["image"])
            .ok_or_else(|| Error::image(path, "its sd-metadata has no prompt"))?;
        Fetched {
            line,
            source: "sd-metadata",
            notes,
        }
    } else if let Some(text) = get("parameters") {
        let (line, notes) = command_from_parameters(&ember::image::infotext::parse(text));
        Fetched {
            line,
            source: "parameters",
            notes,
        }
    } else {
        return Err(Error::image(
            path,
            "it has no Dream, sd-metadata or parameters text chunk: it was not made by Ember, InvokeAI or A1111",
        ));
    };
    fetched.notes.extend(missing_files(path, &fetched.line));
    Ok(fetched)
}

/// Notes on the `-I` / `-M` files of `line` that do not exist (with the same name next to the PNG when there is one),
/// or on a line that is no command at all.
fn missing_files(png: &Path, line: &str) -> Vec<String> {
    let parsed = match parse(line) {
        Ok(parsed) => parsed,
        // InvokeAI wrote `Dream: <too lazy to implement>` into its step previews.
        Err(e) => return vec![format!("the line does not read as a command line: {e}")],
    };
    let files = [
        ("init image", parsed.switches.init_image),
        ("inpainting mask", parsed.switches.init_mask),
    ];
    let mut notes = Vec::new();
    for (what, file) in files {
        // `-I -1` is the REPL's previous output, not a file.
        let Some(file) = file.filter(|f| !f.is_empty() && f.parse::<i64>().is_err()) else {
            continue;
        };
        if Path::new(&file).is_file() {
            continue;
        }
        let beside = Path::new(&file)
            .file_name()
            .and_then(|name| Some(png.parent()?.join(name)))
            .filter(|p| p.is_file());
        notes.push(match beside {
            Some(beside) => format!(
                "the {what} {file} is not found; a file of that name is next to the image: {} (edit the path in the \
                 line)",
                beside.display()
            ),
            None => format!("the {what} {file} is not found; put its path in the line before running it"),
        });
    }
    notes
}

/// Rebuilds a command line from sd-metadata's `image` object, with notes on what it does not record.
fn command_from_sd_metadata(image: &serde_json::Value) -> Option<(String, Vec<String>)> {
    let prompt = match &image["prompt"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(parts) if parts.len() == 1 => parts[0]["prompt"].as_str()?.to_string(),
        // A legacy blend: `a:0.25 b:0.75`.
        serde_json::Value::Array(parts) => parts
            .iter()
            .map(|p| Some(format!("{}:{}", p["prompt"].as_str()?, p["weight"].as_f64()?)))
            .collect::<Option<Vec<_>>>()?
            .join(" "),
        _ => return None,
    };
    let mut notes = Vec::new();
    let mut line = vec![quote(&prompt)];
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::String(s) => Some(quote_if_needed(s)),
        _ => None,
    };
    let img2img = image["type"] == "img2img" || image["init_image_path"].is_string();
    // With --exact-steps, `steps` is the schedule's length and `steps_run` the -s that was given.
    let exact = img2img && image["exact_steps"] == true && image["steps_run"].as_u64().is_some_and(|n| n > 0);
    let steps_key = if exact { "steps_run" } else { "steps" };
    for (flag, key) in [
        ("-s", steps_key),
        ("-S", "seed"),
        ("-W", "width"),
        ("-H", "height"),
        ("-C", "cfg_scale"),
    ] {
        if let Some(v) = text(&image[key]) {
            line.push(format!("{flag} {v}"));
        }
    }
    if let Some(n) = image["karras_max"].as_u64() {
        line.push(format!("--karras-max {n}"));
    }
    if let Some(v) = text(&image["sampler"]) {
        line.push(format!("-A {v}"));
    }
    // Ember writes `strength`; InvokeAI 2.x's CLI wrote `strength_steps` (and no init image path).
    let strength = image["strength"].as_f64().or_else(|| image["strength_steps"].as_f64());
    if img2img {
        match image["init_image_path"].as_str().filter(|p| !p.is_empty()) {
            Some(init) => line.push(format!("-I {}", quote_if_needed(init))),
            None => notes.push(format!(
                "it was made by img2img{}, but its sd-metadata does not name the init image: add -I FILE",
                strength.map_or(String::new(), |s| format!(" at strength {s}"))
            )),
        }
        if let Some(s) = strength {
            line.push(format!("-f {s}"));
        }
        if image["fit"] == true {
            line.push("--fit".to_string());
        }
        // Inpainting: InvokeAI 2.x web's `mask_image_path` (Ember writes it too), then Ember's options.
        if let Some(mask) = image["mask_image_path"].as_str().filter(|m| !m.is_empty()) {
            line.push(format!("-M {}", quote_if_needed(mask)));
        }
        if image["invert_mask"] == true {
            line.push("--invert-mask".to_string());
        }
        if let Some(blur) = image["mask_blur"].as_u64().filter(|&b| b > 0) {
            line.push(format!("--mask-blur {blur}"));
        }
        if let Some(outcrop) = sd_outcrop(&image["outcrop"]).filter(|o| !o.is_empty()) {
            line.push(format!("--outcrop {outcrop}"));
        }
        if image["paste_back"] == false {
            line.push("--no-paste-back".to_string());
        }
    } else if image["hires_fix"] == true {
        line.push("--hires_fix".to_string());
        if let Some(s) = strength {
            line.push(format!("-f {s}"));
        }
    }
    if exact {
        line.push("--exact-steps".to_string());
    }
    if let Some(variations) = image["variations"].as_array().filter(|v| !v.is_empty()) {
        let list: Option<Vec<String>> = variations
            .iter()
            .map(|v| Some(format!("{}:{}", v["seed"].as_u64()?, v["weight"].as_f64()?)))
            .collect();
        if let Some(list) = list {
            line.push(format!("-V {}", list.join(",")));
        }
    }
    if image["seamless"] == true {
        line.push("--seamless".to_string());
    }
    if image["vae_tiling"] == true {
        line.push("--vae-tiling".to_string());
    }
    for (flag, key) in [("--threshold", "threshold"), ("--perlin", "perlin")] {
        if image[key].as_f64().is_some_and(|v| v > 0.0) {
            line.push(format!("{flag} {}", image[key]));
        }
    }
    if image["downweight"] == "mask" {
        line.push("--downweight mask".to_string());
    }
    // Ember's record of what the model ran with: replayed as overrides, so another model's defaults (or a models-file
    // entry's) cannot change the image. A value this version does not know is left out rather than failing the line.
    if let Some(p) = image["prediction_type"]
        .as_str()
        .and_then(|p| p.parse::<PredictionType>().ok())
    {
        line.push(format!("--prediction-type {p}"));
    }
    if let Some(s) = image["timestep_spacing"]
        .as_str()
        .and_then(|s| s.parse::<TimestepSpacing>().ok())
    {
        line.push(format!("--timestep-spacing {s}"));
    }
    if let Some(negative) = image["negative_prompt"].as_str().filter(|n| !n.is_empty()) {
        line.push(format!("--negative {}", quote(negative)));
    }
    Some((line.join(" "), notes))
}

/// Rebuilds a command line from A1111's parsed `parameters`: its sampler names (and `Schedule type`, or a
/// `… Karras` name) become `-A` and `--karras-max`, `Denoising strength` `-f`; notes say what A1111 does not record
/// (the init image, the mask) and what Ember cannot run.
pub fn command_from_parameters(p: &Infotext) -> (String, Vec<String>) {
    let mut line = vec![quote(&p.prompt)];
    let mut notes = Vec::new();
    if let Some(steps) = p.get("Steps").and_then(|s| s.trim().parse::<usize>().ok()) {
        line.push(format!("-s {steps}"));
    }
    match p.get("Seed").map(|s| (s, s.trim().parse::<u32>())) {
        Some((_, Ok(seed))) => line.push(format!("-S {seed}")),
        Some((seed, Err(_))) => notes.push(format!("seed {seed} is not one of Ember's seeds (0 to 4294967295)")),
        None => {}
    }
    let size = p.get("Size").and_then(|s| {
        let (w, h) = s.split_once('x')?;
        Some((w.trim().parse::<usize>().ok()?, h.trim().parse::<usize>().ok()?))
    });
    if let Some((w, h)) = size {
        line.push(format!("-W {w} -H {h}"));
    }
    if let Some(cfg) = p.get("CFG scale").and_then(|c| c.trim().parse::<f64>().ok()) {
        line.push(format!("-C {cfg}"));
    }
    if let Some(name) = p.get("Sampler") {
        match parse_sampler_name(name) {
            Ok(sampler) => {
                line.push(format!("-A {}", sampler.kind));
                let schedule = p.get("Schedule type").unwrap_or("");
                let karras = sampler
                    .karras
                    .or_else(|| a1111_schedule_is_karras(sampler.kind, schedule));
                match karras {
                    _ if !sampler.kind.is_k_sampler() => {}
                    Some(karras) => line.push(format!(
                        "--karras-max {}",
                        if karras { KARRAS_ALWAYS } else { KARRAS_NEVER }
                    )),
                    None => notes.push(format!(
                        "the schedule type {schedule} is not one Ember has (Karras, Uniform): the line leaves the \
                         schedule to --karras-max"
                    )),
                }
            }
            Err(_) => notes.push(format!(
                "the sampler {name} is not one Ember has: the line leaves -A out (the model's default sampler)"
            )),
        }
    }
    let hires = p.settings.iter().any(|(k, _)| k.starts_with("Hires "));
    if let Some(strength) = p.get("Denoising strength").and_then(|s| s.trim().parse::<f64>().ok()) {
        if hires {
            notes.push(
                "it was made with A1111's hires fix, which is not Ember's --hires_fix: the line makes the first pass \
                 only"
                    .to_string(),
            );
        } else {
            line.push(format!("-f {strength}"));
            notes.push(format!(
                "it was made by img2img at strength {strength}, but A1111 does not record the init image: add -I FILE"
            ));
        }
    }
    let variation = p.get("Variation seed").and_then(|s| s.trim().parse::<u32>().ok());
    let variation_strength = p
        .get("Variation seed strength")
        .and_then(|s| s.trim().parse::<f64>().ok());
    if let (Some(seed), Some(weight)) = (variation, variation_strength) {
        if weight > 0.0 && weight <= 1.0 {
            line.push(format!("-V {seed}:{weight}"));
        }
    }
    if p.get("Tiling") == Some("True") {
        line.push("--seamless".to_string());
    }
    let mut mask_switches = Vec::new();
    if let Some(blur) = p
        .get("Mask blur")
        .and_then(|b| b.trim().parse::<u32>().ok())
        .filter(|&b| b > 0)
    {
        mask_switches.push(format!("--mask-blur {blur}"));
    }
    if p.get("Mask mode") == Some("Inpaint not masked") {
        mask_switches.push("--invert-mask".to_string());
    }
    if !mask_switches.is_empty() {
        notes.push(format!(
            "it was inpainted, but A1111 does not record the mask: add -M FILE {}",
            mask_switches.join(" ")
        ));
    }
    if let Some(skip) = p.get("Clip skip").filter(|s| s.trim() != "1") {
        notes.push(format!(
            "Clip skip {skip} has no Ember switch: the line uses the model's last CLIP layer"
        ));
    }
    if !p.negative_prompt.is_empty() {
        line.push(format!("--negative {}", quote(&p.negative_prompt)));
    }
    (line.join(" "), notes)
}

/// sd-metadata's `outcrop`: Ember's `{"top": 64, "left": 128, …}`, or InvokeAI's words `"top 64 left 128"`.
fn sd_outcrop(v: &serde_json::Value) -> Option<Outcrop> {
    match v {
        serde_json::Value::Object(sides) => {
            let side = |k: &str| {
                sides
                    .get(k)
                    .and_then(|px| px.as_u64())
                    .and_then(|px| u32::try_from(px).ok())
            };
            Some(Outcrop {
                top: side("top").unwrap_or(0),
                bottom: side("bottom").unwrap_or(0),
                left: side("left").unwrap_or(0),
                right: side("right").unwrap_or(0),
            })
        }
        serde_json::Value::String(words) => Outcrop::parse(&words.split_whitespace().collect::<Vec<_>>()).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod parameters_tests {
    use super::*;
    use ember::image::metadata::{a1111_parameters, ImageRecord};
    use ember::request::{GenerateRequest, InitImage};
    use ember::sample::SamplerKind;

    fn record(request: GenerateRequest) -> ImageRecord {
        ImageRecord {
            request,
            width: 64,
            height: 96,
            steps_run: 0,
            model_name: "tiny, v1: \"sd\"".into(),
            model_hash: Some("0123456789abcdef".into()),
            init_image_name: None,
            init_mask_name: None,
            run: Default::default(),
        }
    }

    /// Ember's A1111 writer, read back by A1111's parser and `!fetch`: the settings A1111 can hold come back.
    #[test]
    fn a1111_writer_and_reader_round_trip() {
        let request = GenerateRequest {
            prompt: "a fox, red: (bright)\nsecond line".into(),
            negative_prompt: "blurry, \"dark\"".into(),
            steps: 12,
            seed: 4294967295,
            cfg_scale: 6.5,
            sampler: SamplerKind::KDpmpp2A,
            karras_max: 10,
            with_variations: vec![(3, 0.25)],
            seamless: true,
            ..GenerateRequest::default()
        };
        let text = a1111_parameters(&record(request.clone()));
        assert!(
            text.contains(
                "\nSteps: 12, Sampler: DPM++ 2S a, Schedule type: Uniform, CFG scale: 6.5, Seed: 4294967295,"
            ) && text.contains("Model: \"tiny, v1: \\\"sd\\\"\"")
                && text.contains("Variation seed: 3, Variation seed strength: 0.25, Tiling: True"),
            "{text}"
        );
        let parsed = ember::image::infotext::parse(&text);
        assert_eq!(parsed.prompt, request.prompt);
        assert_eq!(parsed.negative_prompt, request.negative_prompt);
        assert_eq!(parsed.get("Model"), Some("tiny, v1: \"sd\""));
        let (line, notes) = command_from_parameters(&parsed);
        assert!(notes.is_empty(), "{notes:?}");
        let back = parse(&line).expect(&line);
        // The Dream line cannot hold a line break; CLIP reads it as a space anyway.
        assert_eq!(back.prompt, request.prompt.replace('\n', " "));
        let s = back.switches;
        assert_eq!(
            (s.steps, s.seed, s.cfg_scale, s.width, s.height),
            (Some(12), Some(4294967295), Some(6.5), Some(64), Some(96))
        );
        assert_eq!(
            (
                s.sampler.as_deref(),
                s.karras_max,
                s.with_variations.as_deref(),
                s.seamless
            ),
            (Some("k_dpmpp_2_a"), Some(0), Some("3:0.25"), true),
            "{line}"
        );
        assert_eq!(s.negative.as_deref(), Some("blurry, \"dark\""));

        // img2img with DDIM: no schedule type (DDIM takes none), the strength comes back, the init image cannot.
        let img2img = GenerateRequest {
            sampler: SamplerKind::Ddim,
            init_image: Some(InitImage::Path("in.png".into())),
            strength: 0.6,
            ..GenerateRequest::default()
        };
        let text = a1111_parameters(&record(img2img));
        assert!(
            text.contains("Sampler: DDIM, CFG scale") && text.contains("Denoising strength: 0.6"),
            "{text}"
        );
        let (line, notes) = command_from_parameters(&ember::image::infotext::parse(&text));
        let s = parse(&line).expect(&line).switches;
        assert_eq!(
            (s.sampler.as_deref(), s.karras_max, s.strength),
            (Some("ddim"), None, Some(0.6))
        );
        assert!(notes.iter().any(|n| n.contains("add -I FILE")), "{notes:?}");
    }
}
