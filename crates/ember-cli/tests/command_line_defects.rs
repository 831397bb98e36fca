//! Issue 18's command-line defects, each reproduced as the issue reports it with the tiny model: every request is
//! checked (once, by the engine's `GenerateRequest::validate`) and its files are opened before the model loads; a
//! repeated switch takes its last value; `--from-file` reads `q` and `!` lines as the REPL does; errors name what is
//! wrong (a negative count, InvokeAI's switches Ember lacks, a folder given as an image).

mod common;

use std::path::Path;
use std::process::Output;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

fn tiny_model() -> String {
    Path::new(FIXTURES).join("tiny-sd.safetensors").display().to_string()
}

/// `ember ARGS` with `stdin`, isolated from the user's config and history files.
fn ember_in(home: &Path, args: &[&str], stdin: &str) -> Output {
    ember_with_config(home, &home.join("no-config.toml"), args, stdin)
}

/// [`ember_in`] with `config` as the config file.
fn ember_with_config(home: &Path, config: &Path, args: &[&str], stdin: &str) -> Output {
    let mut command = common::isolated_ember(home);
    command.args(args).env("EMBER_CONFIG", config);
    common::output_with_stdin(command, stdin)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The PNGs in `dir` (sorted names; none if it does not exist).
fn pngs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".png"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `generate PROMPT` with the tiny model at 64×64, 1 step, into `out`, plus `extra` switches.
fn generate(home: &Path, out: &Path, prompt: &str, extra: &[&str]) -> Output {
    let model = tiny_model();
    let out = out.display().to_string();
    let mut args = vec!["generate", prompt, "--model", &model, "--device", "cpu", "-o", &out];
    args.extend_from_slice(&["-s", "1", "-W", "64", "-H", "64"]);
    args.extend_from_slice(extra);
    ember_in(home, &args, "")
}

#[test]
fn strength_outside_0_1_is_refused_for_hires_fix_too() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = home.path().join("out");
    for strength in ["nan", "1.5", "-0.5"] {
        let run = generate(
            home.path(),
            &out,
            "fox",
            &["-W", "1024", "-H", "512", "--hires_fix", "-f", strength, "-S", "1"],
        );
        let err = stderr(&run);
        assert!(!run.status.success(), "-f {strength} was accepted: {err}");
        assert!(
            err.contains("invalid strength") && err.contains("[-f/--strength]"),
            "{err}"
        );
        // Refused before the model loads, and nothing written.
        assert!(!err.contains("model: tiny-sd"), "{err}");
        assert!(pngs(&out).is_empty());
    }
}

#[test]
fn an_empty_prompt_gives_no_false_blend_warning() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = home.path().join("out");
    let run = generate(home.path(), &out, "", &["-S", "1"]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(!stderr(&run).contains("add up to zero"), "{}", stderr(&run));
    assert_eq!(pngs(&out).len(), 1);
}

#[test]
fn a_time_in_the_prompt_warns_that_it_makes_a_blend() {
    let home = tempfile::tempdir().expect("tempdir");
    let run = generate(home.path(), &home.path().join("out"), "12:30 pm", &["-S", "1"]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("`12:30` is read as a `:` blend"),
        "{}",
        stderr(&run)
    );
    // A LoRA term is a LoRA (parsed), not a blend: an unknown one is named.
    let lora = generate(
        home.path(),
        &home.path().join("out"),
        "a cat <lora:foo:1>",
        &["-S", "1"],
    );
    assert!(!lora.status.success());
    assert!(stderr(&lora).contains("unknown LoRA `foo`"), "{}", stderr(&lora));
}

#[test]
fn from_file_stops_at_q_and_skips_bang_commands() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = home.path().join("out");
    let model = tiny_model();
    let out_arg = out.display().to_string();
    let args = [
        "generate",
        "--from-file",
        "-",
        "--model",
        &model,
        "--device",
        "cpu",
        "-o",
        &out_arg,
        "-s",
        "1",
        "-W",
        "64",
        "-H",
        "64",
    ];
    let run = ember_in(home.path(), &args, "a fox -S 5\n!fetch x.png\nq\na hen -S 6\n");
    let err = stderr(&run);
    assert!(run.status.success(), "{err}");
    assert!(
        err.contains("skipped, !commands are not run from a file: !fetch x.png"),
        "{err}"
    );
    // Only the line before `q` ran: neither `!fetch x.png` nor `q` nor the line after became a prompt.
    assert_eq!(pngs(&out), vec!["000001.5.png"]);
    let text = ember::image::png_meta::read_png_text(&out.join("000001.5.png")).expect("metadata");
    let dream = text
        .iter()
        .find(|(k, _)| k == "Dream")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(dream.starts_with("\"a fox\""), "{dream}");
}

#[test]
fn a_bad_output_folder_or_init_image_fails_before_the_model_loads() {
    let home = tempfile::tempdir().expect("tempdir");
    let file = home.path().join("a-file");
    std::fs::write(&file, b"not a folder").expect("write");
    let run = generate(home.path(), &file.join("sub"), "fox", &["-S", "1"]);
    let err = stderr(&run);
    assert!(!run.status.success());
    assert!(
        err.contains("cannot create the output folder") && err.contains("-o/--outdir"),
        "{err}"
    );
    assert!(!err.contains("model: tiny-sd"), "the model was loaded first: {err}");
    // The OS's reason once, not twice.
    assert_eq!(err.matches("os error").count(), 1, "{err}");

    let broken = home.path().join("broken.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\n truncated").expect("write");
    let run = generate(
        home.path(),
        &home.path().join("out"),
        "fox",
        &["-I", broken.to_str().expect("utf-8")],
    );
    let err = stderr(&run);
    assert!(!run.status.success());
    assert!(err.contains("broken.png"), "{err}");
    assert!(!err.contains("model: tiny-sd"), "the model was loaded first: {err}");

    let folder = home.path().join("pictures");
    std::fs::create_dir(&folder).expect("mkdir");
    let run = generate(
        home.path(),
        &home.path().join("out"),
        "fox",
        &["-I", &format!("{}/", folder.display())],
    );
    assert!(stderr(&run).contains("it is a folder"), "{}", stderr(&run));
}

#[test]
fn the_last_of_a_repeated_switch_wins() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = home.path().join("out");
    let run = generate(home.path(), &out, "fox", &["-S", "1", "-S", "2"]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(pngs(&out), vec!["000001.2.png"]);

    // The same at the `invoke>` prompt (a fetched line edited by appending a switch) and in --from-file.
    let model = tiny_model();
    let out_arg = out.display().to_string();
    let base = [
        "--model", &model, "--device", "cpu", "-o", &out_arg, "-s", "1", "-W", "64", "-H", "64",
    ];
    let repl = ember_in(home.path(), &base, "fox -S 3 -S 4\n");
    assert!(repl.status.success(), "{}", stderr(&repl));
    let mut file_args = vec!["generate", "--from-file", "-"];
    file_args.extend_from_slice(&base);
    let from_file = ember_in(home.path(), &file_args, "\"a fox\" -S 5 -W 64 -S 6\n");
    assert!(from_file.status.success(), "{}", stderr(&from_file));
    assert_eq!(pngs(&out), vec!["000001.2.png", "000002.4.png", "000003.6.png"]);
}

#[test]
fn negative_numbers_name_the_range() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = home.path().join("out");
    for (switch, value, expected) in [
        ("-s", "-5", "must be at least 1"),
        ("-n", "0", "must be at least 1"),
        ("-W", "-64", "at least 8"),
        ("--mask-blur", "-1", "must be 0 or more"),
        ("-f", "-0.5", "outside [0, 1]"),
        ("-C", "-2", "outside [0, 100]"),
    ] {
        let run = generate(home.path(), &out, "fox", &[switch, value]);
        let err = stderr(&run);
        assert!(!run.status.success(), "{switch} {value}");
        assert!(err.contains(expected), "{switch} {value}: {err}");
        assert!(!err.contains("unexpected argument"), "{switch} {value}: {err}");
    }
}

#[test]
fn a_model_error_says_what_is_wrong_with_the_given_model() {
    let home = tempfile::tempdir().expect("tempdir");
    let missing = home.path().join("nope.safetensors");
    let args = [
        "generate",
        "fox",
        "--model",
        missing.to_str().expect("utf-8"),
        "-o",
        "unused",
    ];
    let run = ember_in(home.path(), &args, "");
    let err = stderr(&run);
    assert!(!run.status.success());
    assert!(
        err.contains("nope.safetensors") && err.contains("no such file"),
        "{err}"
    );
    // The "no model loaded; pass --model" hint is for the default model only: this user passed one.
    assert!(!err.contains("no model loaded"), "{err}");
}

#[test]
fn invokeai_switches_ember_lacks_are_named_as_such() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = home.path().join("out");
    for args in [
        &["-U", "2"][..],
        &["-G", "0.5"],
        &["--embiggen", "2"],
        &["--text_mask", "hat"],
    ] {
        let run = generate(home.path(), &out, "fox", args);
        let err = stderr(&run);
        assert!(!run.status.success(), "{args:?}");
        assert!(err.contains("not supported by Ember"), "{args:?}: {err}");
        assert!(err.contains(args[0]), "{args:?}: {err}");
    }
    // At the prompt too, and InvokeAI's !fix.
    let model = tiny_model();
    let out_arg = out.display().to_string();
    let base = ["--model", &model, "--device", "cpu", "-o", &out_arg];
    let repl = ember_in(home.path(), &base, "fox -U 2 -s 1\n!fix 000001.1.png\n");
    let err = stderr(&repl);
    assert!(
        err.contains("-U (upscaling with ESRGAN) is an InvokeAI switch that is not supported"),
        "{err}"
    );
    assert!(
        err.contains("!fix (upscaling and face restoration of an image) is not supported"),
        "{err}"
    );
    assert!(pngs(&out).is_empty());
}

#[test]
fn switch_starts_each_model_from_the_launch_dtype() {
    // An entry's dtype applies to that entry only: switching on to an entry without one goes back to the launch
    // flags' dtype (here f32), not the previous entry's f64.
    let home = tempfile::tempdir().expect("tempdir");
    let model = tiny_model();
    let config = home.path().join("config.toml");
    std::fs::write(
        &config,
        format!("[models.exact]\npath = \"{model}\"\ndtype = \"f64\"\n\n[models.plain]\npath = \"{model}\"\n"),
    )
    .expect("write config");
    let out = home.path().join("out").display().to_string();
    let run = ember_with_config(
        home.path(),
        &config,
        &["--model", &model, "--device", "cpu", "--dtype", "f32", "-o", &out],
        "!switch exact\n!switch plain\n",
    );
    let err = stderr(&run);
    let loads: Vec<&str> = err.lines().filter(|l| l.starts_with("model: ")).collect();
    assert_eq!(loads.len(), 3, "{err}");
    assert!(loads[0].contains(" in f32;"), "{err}");
    assert!(loads[1].contains(" in f64;"), "{err}");
    assert!(loads[2].contains(" in f32;"), "{err}");
}

#[test]
fn the_metadata_records_the_precision_and_device() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = home.path().join("out");
    let run = generate(home.path(), &out, "fox", &["-S", "3", "--dtype", "f64"]);
    assert!(run.status.success(), "{}", stderr(&run));
    let text = ember::image::png_meta::read_png_text(&out.join("000001.3.png")).expect("metadata");
    let sd = text
        .iter()
        .find(|(k, _)| k == "sd-metadata")
        .map(|(_, v)| v.clone())
        .expect("sd-metadata");
    let doc: serde_json::Value = serde_json::from_str(&sd).expect("JSON");
    assert_eq!(doc["image"]["dtype"], "f64", "{sd}");
    assert_eq!(doc["image"]["device"], "cpu", "{sd}");
}

#[test]
fn a_model_launched_by_name_does_not_pass_its_dtype_on() {
    // `ember --model exact` (an entry with dtype f64), then `!switch plain`: plain runs in the config's [defaults]
    // dtype, not in exact's.
    let home = tempfile::tempdir().expect("tempdir");
    let model = tiny_model();
    let config = home.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[defaults]\ndtype = \"f32\"\n\n[models.exact]\npath = \"{model}\"\ndtype = \"f64\"\n\n\
             [models.plain]\npath = \"{model}\"\n"
        ),
    )
    .expect("write config");
    let out = home.path().join("out").display().to_string();
    let run = ember_with_config(
        home.path(),
        &config,
        &["--model", "exact", "--device", "cpu", "-o", &out],
        "!switch plain\n",
    );
    let err = stderr(&run);
    let loads: Vec<&str> = err.lines().filter(|l| l.starts_with("model: ")).collect();
    assert_eq!(loads.len(), 2, "{err}");
    assert!(loads[0].contains(" in f64;"), "{err}");
    assert!(loads[1].contains(" in f32;"), "{err}");
}
