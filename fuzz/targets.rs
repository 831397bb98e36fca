//! What each fuzz target does with one input: one function per target, shared by the libFuzzer binaries
//! (fuzz/fuzz_targets/*.rs) and by the corpus replay test that `cargo test --workspace` runs
//! (crates/ember-cli/tests/fuzz_corpus_replay.rs), so the two always exercise the same code.
//!
//! A function may return early or get errors from the code under test: only a panic, a hang or an
//! unbounded allocation is a finding.

use std::io::Cursor;
use std::path::{Path, PathBuf};

/// The prompt language: compel's syntax and InvokeAI 2.x's `[negative]` / `text:weight` layer.
pub fn prompt(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = ember::text::prompt::take_loras(text, "prompt");
    let _ = ember::text::prompt::parse(text);
    let _ = ember::text::prompt::parse_invokeai(text, false);
    let _ = ember::text::prompt::parse_invokeai(text, true);
}

/// An `invoke>` line: the prompt/switch split, the shell-word splitter, clap's switches and `-V` lists.
pub fn dream_line(data: &[u8]) {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    use ember_cli::dream_line;
    if let Ok(parsed) = dream_line::parse(line) {
        if let Some(list) = &parsed.switches.with_variations {
            let _ = dream_line::parse_variations(list);
        }
    }
    let _ = dream_line::split_prompt(line);
    let _ = dream_line::shell_split(line);
    let _ = dream_line::parse_variations(line);
}

/// A PNG's text chunks, as `!fetch` reads them: the chunks, the command rebuilt from `Dream` or `sd-metadata`,
/// then that command parsed as the REPL would.
pub fn png_text(data: &[u8]) {
    let path = Path::new("fuzz-input.png");
    let Ok(chunks) = ember::image::png_meta::read_png_text_from(Cursor::new(data), path) else {
        return;
    };
    if let Ok(line) = ember_cli::fetch::command_from_text_chunks(path, &chunks) {
        let _ = ember_cli::dream_line::parse(&line);
    }
}

/// The restricted pickle reader: a whole `torch.save` zip (input starting with `PK`), whose tensors' bytes are
/// all read, or a bare pickle stream (anything else) for the state-dict interpreter alone.
pub fn pickle(data: &[u8]) {
    if !data.starts_with(b"PK") {
        let _ = ember_pickle::parse_state_dict(data);
        return;
    }
    let Ok(ckpt) = ember_pickle::Checkpoint::new(Cursor::new(data)) else {
        return;
    };
    for (_, info) in ckpt.tensors() {
        if let Ok(bytes) = ckpt.tensor_bytes(info) {
            assert_eq!(
                bytes.len(),
                info.numel() * info.dtype.size_in_bytes(),
                "tensor bytes of {info:?}"
            );
        }
    }
}

/// A single-file model as `--model FILE` loads it: format sniffing, the safetensors header (or a `.ckpt`),
/// the LDM → diffusers key mapping, family detection and config inference. The input is written to a
/// temporary file because the loader memory-maps paths.
pub fn model_file(data: &[u8]) {
    // A fully loadable input would have its SHA-256 remembered in the user's cache: in a campaign (millions of
    // inputs) point the cache at a folder that cannot exist, which only costs hashing again. Only there: libFuzzer
    // runs inputs on one thread, while the replay test's threads could read the environment as it is written.
    #[cfg(fuzzing)]
    {
        static SETUP: std::sync::Once = std::sync::Once::new();
        SETUP.call_once(|| std::env::set_var("EMBER_CACHE_DIR", "/dev/null/ember-fuzz"));
    }
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file: PathBuf = std::env::temp_dir().join(format!("ember-fuzz-{}-{n}.safetensors", std::process::id()));
    if std::fs::write(&file, data).is_err() {
        return;
    }
    let (device, dtype) = (
        ember::device::parse_device("cpu").expect("cpu device"),
        ember::device::parse_dtype("f32").expect("f32"),
    );
    let loaded = file.to_str().map(|spec| ember::model::load_model(spec, &device, dtype));
    drop(loaded);
    let _ = std::fs::remove_file(&file);
}

/// A LoRA or embedding file as the pipeline reads it: the input written to a temporary file (`.pt` when it starts
/// like a zip, else `.safetensors`), read as a LoRA (formats, modules, each module's ΔW when it is small), as an
/// embedding for a one-encoder (16 wide) and a two-encoder (16 + 16) model, and for a picker (`AddonInfo`).
pub fn addon_file(data: &[u8]) {
    use ember::addons::{AddonInfo, AddonKind, Embedding, LoraFile};
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let extension = if data.starts_with(b"PK") { "pt" } else { "safetensors" };
    let file: PathBuf = std::env::temp_dir().join(format!("ember-fuzz-addon-{}-{n}.{extension}", std::process::id()));
    if std::fs::write(&file, data).is_err() {
        return;
    }
    if let Ok(lora) = LoraFile::read(&file) {
        for module in &lora.modules {
            // Factors are at most a few thousand values here; a huge claimed ΔW is not computed.
            if module.delta_len().is_some_and(|n| n <= 1 << 20) {
                let _ = module.delta();
            }
        }
    }
    let _ = Embedding::read(&file, &[16]);
    let _ = Embedding::read(&file, &[16, 16]);
    let _ = AddonInfo::read(AddonKind::Lora, &file);
    let _ = AddonInfo::read(AddonKind::Embedding, &file);
    let _ = std::fs::remove_file(&file);
}

/// `POST /api/jobs` with a JSON body: the server's own parsing and validation, without a model.
pub fn job_json(data: &[u8]) {
    let _ = ember_server::fuzzing::job_json(data);
}

/// `POST /api/jobs` as multipart/form-data: the input's first line is the Content-Type header (with its
/// boundary), the rest is the body.
pub fn job_multipart(data: &[u8]) {
    let (head, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(content_type) = std::str::from_utf8(head) else {
        return;
    };
    let _ = ember_server::fuzzing::job_multipart(content_type.trim_end_matches('\r'), body);
}
