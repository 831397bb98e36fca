//! `ember models` (list, inspect, convert, hash) and the config file (default model, [defaults], named models,
//! `EMBER_MODEL`), end to end. Every run gets its own HOME and XDG folders, so the user's own config is never read.

mod common;

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

/// `ember ARGS` with HOME, the XDG folders and the caches under `home`, plus `env`.
fn ember(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = common::isolated_ember(home);
    command.args(args).current_dir(home);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("ember runs");
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    out
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "failed: {}", stderr(&out));
    String::from_utf8(out.stdout).expect("utf-8")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write_config(home: &Path, text: &str) -> PathBuf {
    let dir = home.join("config").join("ember");
    std::fs::create_dir_all(&dir).expect("config dir");
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The header of a .safetensors file, read by hand: tensor name → (dtype, shape).
fn safetensors_header(path: &Path) -> BTreeMap<String, (String, Vec<u64>)> {
    let bytes = std::fs::read(path).expect("read");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header JSON");
    header
        .as_object()
        .expect("object")
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let shape = v["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_u64().expect("dim"))
                .collect();
            (k.clone(), (v["dtype"].as_str().expect("dtype").to_string(), shape))
        })
        .collect()
}

fn parameters_under(header: &BTreeMap<String, (String, Vec<u64>)>, prefix: &str) -> u64 {
    header
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, (_, shape))| shape.iter().product::<u64>())
        .sum()
}

fn inspect_json(home: &Path, model: &Path) -> serde_json::Value {
    let out = ok(ember(
        home,
        &["models", "inspect", model.to_str().unwrap(), "--json"],
        &[],
    ));
    serde_json::from_str(&out).expect("inspect --json prints JSON")
}

fn component(report: &serde_json::Value, name: &str) -> u64 {
    report["components"]
        .as_array()
        .expect("components")
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["parameters"].as_u64())
        .unwrap_or_else(|| panic!("no {name} in {report}"))
}

#[test]
fn inspect_reports_format_family_and_parameters_counted_from_the_file() {
    let home = tempfile::tempdir().expect("tempdir");
    let single = fixture("tiny-sd.safetensors");
    let header = safetensors_header(&single);
    let report = inspect_json(home.path(), &single);
    assert_eq!(report["format"], "safetensors");
    assert_eq!(report["family"], "sd1");
    assert_eq!(
        component(&report, "UNet"),
        parameters_under(&header, "model.diffusion_model.")
    );
    assert_eq!(
        component(&report, "VAE"),
        parameters_under(&header, "first_stage_model.")
    );
    let bytes = std::fs::read(&single).expect("read");
    assert_eq!(report["sha256"], sha256_hex(&bytes));
    // The same model as a .ckpt: the same family and counts, and the advice to convert it.
    let ckpt = inspect_json(home.path(), &fixture("tiny-sd.ckpt"));
    assert_eq!(ckpt["format"], "ckpt");
    assert_eq!(ckpt["family"], "sd1");
    assert_eq!(component(&ckpt, "UNet"), component(&report, "UNet"));
    assert!(
        ckpt["ember"].as_str().unwrap().contains("ember models convert"),
        "{ckpt}"
    );
    // A diffusers folder: the UNet counted from its own file.
    let folder = fixture("tiny-sdxl");
    let xl = inspect_json(home.path(), &folder);
    assert_eq!(
        (xl["format"].as_str(), xl["family"].as_str()),
        (Some("diffusers"), Some("sdxl"))
    );
    let unet = safetensors_header(&folder.join("unet/diffusion_pytorch_model.safetensors"));
    assert_eq!(component(&xl, "UNet"), parameters_under(&unet, ""));
    assert!(xl["components"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "text encoder 2"));
    // Text output names the same things.
    let text = ok(ember(
        home.path(),
        &["models", "inspect", single.to_str().unwrap()],
        &[],
    ));
    assert!(
        text.contains("SD 1.x") && text.contains("UNet:") && text.contains(&sha256_hex(&bytes)),
        "{text}"
    );
}

#[test]
fn inspect_and_hash_refuse_bad_files_clearly() {
    let home = tempfile::tempdir().expect("tempdir");
    for (file, needle) in [
        ("bad/garbage.safetensors", "not a valid .safetensors"),
        ("bad/truncated.ckpt", "truncated.ckpt"),
        ("bad/pwned_eval.ckpt", "`__builtin__.eval`"),
        ("no-such-model.safetensors", "no such file"),
    ] {
        let out = ember(
            home.path(),
            &["models", "inspect", fixture(file).to_str().unwrap()],
            &[],
        );
        assert!(!out.status.success(), "{file} was accepted");
        assert!(stderr(&out).contains(needle), "{file}: {}", stderr(&out));
    }
    let out = ember(home.path(), &["models", "hash", "no-such-file"], &[]);
    assert!(
        !out.status.success() && stderr(&out).contains("no such file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn hash_prints_what_a1111_and_civitai_show() {
    let home = tempfile::tempdir().expect("tempdir");
    let path = fixture("tiny-sd.safetensors");
    let bytes = std::fs::read(&path).expect("read");
    let out = ok(ember(
        home.path(),
        &["models", "hash", path.to_str().unwrap(), "--json"],
        &[],
    ));
    let h: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let full = sha256_hex(&bytes);
    assert_eq!(h["sha256"], full);
    assert_eq!(h["autov2"], full[..10]);
    // A1111's old model_hash: SHA-256 of 0x10000 bytes at 0x100000, 8 hex digits.
    assert_eq!(h["autov1"], sha256_hex(&bytes[0x100000..0x110000])[..8]);
    let text = ok(ember(home.path(), &["models", "hash", path.to_str().unwrap()], &[]));
    assert!(text.contains(&full) && text.contains("AutoV2"), "{text}");
}

/// PNG pixels, decoded (the metadata differs: it names the model file and its hash).
fn pixels(home: &Path, path: &str) -> Vec<u8> {
    image::open(home.join(path.trim())).expect("a PNG").to_rgb8().into_raw()
}

#[test]
fn convert_round_trip_gives_identical_images() {
    let home = tempfile::tempdir().expect("tempdir");
    let ckpt = fixture("tiny-sd.ckpt");
    let out = home.path().join("converted.safetensors");
    let printed = ok(ember(
        home.path(),
        &[
            "models",
            "convert",
            ckpt.to_str().unwrap(),
            "--to",
            out.to_str().unwrap(),
        ],
        &[],
    ));
    assert!(printed.contains("converted.safetensors"), "{printed}");
    // Same names, dtypes and shapes as the checkpoint (read by the restricted reader itself).
    let original = ember_pickle::Checkpoint::open(&ckpt).expect("fixture opens");
    let header = safetensors_header(&out);
    assert_eq!(header.len(), original.tensors().len());
    for (name, info) in original.tensors() {
        let (dtype, shape) = &header[name];
        assert_eq!(
            dtype.to_ascii_lowercase(),
            format!("{:?}", info.dtype).to_ascii_lowercase(),
            "{name}"
        );
        assert_eq!(
            shape,
            &info.shape.iter().map(|&d| d as u64).collect::<Vec<_>>(),
            "{name}"
        );
    }
    let generate = |model: &Path, outdir: &str| {
        ok(ember(
            home.path(),
            &[
                "generate",
                "a red fox",
                "-s",
                "2",
                "-S",
                "7",
                "-W",
                "64",
                "-H",
                "64",
                "--device",
                "cpu",
                "--model",
                model.to_str().unwrap(),
                "-o",
                outdir,
            ],
            &[],
        ))
    };
    let from_ckpt = generate(&ckpt, "a");
    let from_converted = generate(&out, "b");
    assert_eq!(pixels(home.path(), &from_ckpt), pixels(home.path(), &from_converted));
    // An existing output is kept unless --force.
    let again = ember(
        home.path(),
        &[
            "models",
            "convert",
            ckpt.to_str().unwrap(),
            "--to",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        !again.status.success() && stderr(&again).contains("--force"),
        "{}",
        stderr(&again)
    );
    ok(ember(
        home.path(),
        &[
            "models",
            "convert",
            ckpt.to_str().unwrap(),
            "--to",
            out.to_str().unwrap(),
            "--force",
        ],
        &[],
    ));
}

#[test]
fn convert_refuses_a_malicious_checkpoint_and_writes_nothing() {
    let home = tempfile::tempdir().expect("tempdir");
    let marker = Path::new("/tmp/ember-pwned-5b1e0c7d-os-system");
    let _ = std::fs::remove_file(marker);
    let outdir = home.path().join("out");
    std::fs::create_dir(&outdir).expect("mkdir");
    for (file, global) in [
        ("bad/pwned_os_system.ckpt", "`posix.system`"),
        ("bad/pwned_eval.ckpt", "`__builtin__.eval`"),
    ] {
        let target = outdir.join("x.safetensors");
        let out = ember(
            home.path(),
            &[
                "models",
                "convert",
                fixture(file).to_str().unwrap(),
                "--to",
                target.to_str().unwrap(),
            ],
            &[],
        );
        assert!(!out.status.success(), "{file} was converted");
        let err = stderr(&out);
        assert!(err.contains("refusing") && err.contains(global), "{err}");
        assert_eq!(
            std::fs::read_dir(&outdir).expect("read dir").count(),
            0,
            "something was written"
        );
    }
    assert!(!marker.exists(), "the pickle's code ran");
    // A storage found short while writing (after the header was planned): the temporary file goes too.
    for (file, needle) in [
        ("bad/short_storage.ckpt", "nothing was written"),
        ("bad/truncated.ckpt", "corrupt"),
    ] {
        let target = outdir.join("y.safetensors");
        let out = ember(
            home.path(),
            &[
                "models",
                "convert",
                fixture(file).to_str().unwrap(),
                "--to",
                target.to_str().unwrap(),
            ],
            &[],
        );
        assert!(
            !out.status.success() && stderr(&out).contains(needle),
            "{file}: {}",
            stderr(&out)
        );
        assert_eq!(
            std::fs::read_dir(&outdir).expect("read dir").count(),
            0,
            "{file}: something was written"
        );
    }
}

#[test]
fn list_shows_the_named_models_and_whether_they_exist() {
    let home = tempfile::tempdir().expect("tempdir");
    let tiny = fixture("tiny-sd.safetensors");
    // The older models.toml is still read; config.toml's entry of the same name wins.
    let dir = home.path().join("config").join("ember");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("models.toml"),
        "[models.old]\npath = \"/old\"\n[models.tiny]\npath = \"/overridden\"\n",
    )
    .expect("write");
    write_config(
        home.path(),
        &format!(
            "model = \"tiny\"\n[models.tiny]\npath = {:?}\ndescription = \"the tiny one\"\n",
            tiny.display().to_string()
        ),
    );
    let text = ok(ember(home.path(), &["models", "list"], &[]));
    assert!(text.contains("default model: tiny"), "{text}");
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name}: {text}"))
    };
    assert!(
        line("tiny").contains(" ok ") && line("tiny").contains("the tiny one"),
        "{text}"
    );
    assert!(line("old").contains("MISSING"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(ember(home.path(), &["models", "list", "--json"], &[]))).expect("JSON");
    let models = json["models"].as_array().expect("models");
    assert_eq!(models.len(), 2);
    let tiny_entry = models.iter().find(|m| m["name"] == "tiny").expect("tiny");
    assert_eq!(
        (tiny_entry["exists"].as_bool(), tiny_entry["path"].as_str()),
        (Some(true), tiny.to_str())
    );
}

/// The Dream line of the PNG whose path (relative to `home`, the working folder) `ember generate` printed.
fn dream_line(home: &Path, png: &str) -> String {
    ember::image::png_meta::read_png_text(&home.join(png.trim()))
        .expect("PNG metadata")
        .into_iter()
        .find(|(k, _)| k == "Dream")
        .map(|(_, v)| v)
        .expect("a Dream line")
}

#[test]
fn config_defaults_and_named_models_apply_with_the_command_line_first() {
    let home = tempfile::tempdir().expect("tempdir");
    let tiny = fixture("tiny-sd.safetensors").display().to_string();
    write_config(
        home.path(),
        &format!(
            "model = \"tiny\"\n[defaults]\nsteps = 2\nwidth = 64\nheight = 64\ndevice = \"cpu\"\n\
             [models.tiny]\npath = {tiny:?}\n[models.tiny3]\npath = {tiny:?}\nsteps = 3\n"
        ),
    );
    // No --model: the config's default model by name, with [defaults].
    let run = ember(home.path(), &["generate", "a fox", "-S", "1", "-o", "a"], &[]);
    assert!(stderr(&run).contains("model tiny"), "{}", stderr(&run));
    let dream = dream_line(home.path(), &ok(run));
    assert!(dream.contains("-s 2 ") && dream.contains("-W 64 -H 64"), "{dream}");
    // --model NAME: the entry's own steps win over [defaults]; the command line wins over both.
    let dream = dream_line(
        home.path(),
        &ok(ember(
            home.path(),
            &["generate", "a fox", "-S", "1", "--model", "tiny3", "-o", "b"],
            &[],
        )),
    );
    assert!(dream.contains("-s 3 "), "{dream}");
    let dream = dream_line(
        home.path(),
        &ok(ember(
            home.path(),
            &["generate", "a fox", "-S", "1", "--model", "tiny3", "-s", "1", "-o", "c"],
            &[],
        )),
    );
    assert!(dream.contains("-s 1 "), "{dream}");
    // EMBER_MODEL beats the config's model; --model beats EMBER_MODEL.
    let dream = dream_line(
        home.path(),
        &ok(ember(
            home.path(),
            &["generate", "a fox", "-S", "1", "-o", "d"],
            &[("EMBER_MODEL", "tiny3")],
        )),
    );
    assert!(dream.contains("-s 3 "), "{dream}");
    let out = ember(
        home.path(),
        &["generate", "a fox", "-S", "1", "--model", "tiny", "-o", "e"],
        &[("EMBER_MODEL", "no-such-model.safetensors")],
    );
    assert!(dream_line(home.path(), &ok(out)).contains("-s 2 "));
    // EMBER_CONFIG names another file.
    let other = home.path().join("other.toml");
    std::fs::write(
        &other,
        format!("model = {tiny:?}\n[defaults]\nsteps = 1\nwidth = 64\nheight = 64\n"),
    )
    .expect("write");
    let dream = dream_line(
        home.path(),
        &ok(ember(
            home.path(),
            &["generate", "a fox", "-S", "1", "--device", "cpu", "-o", "f"],
            &[("EMBER_CONFIG", other.to_str().unwrap())],
        )),
    );
    assert!(dream.contains("-s 1 "), "{dream}");
}

#[test]
fn an_unknown_config_key_is_an_error_naming_the_key_and_the_file() {
    let home = tempfile::tempdir().expect("tempdir");
    let path = write_config(home.path(), "[defaults]\nstpes = 2\n");
    for args in [
        &["models", "list"][..],
        &["generate", "a fox", "--model", "x.safetensors"][..],
    ] {
        let out = ember(home.path(), args, &[]);
        assert!(!out.status.success(), "{args:?} accepted a bad config");
        let err = stderr(&out);
        assert!(
            err.contains("stpes") && err.contains(&path.display().to_string()),
            "{err}"
        );
    }
}

#[test]
fn help_and_readme_list_the_environment_variables() {
    let home = tempfile::tempdir().expect("tempdir");
    let help = ok(ember(home.path(), &["--help"], &[]));
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).expect("README");
    for name in [
        "EMBER_CONFIG",
        "EMBER_MODEL",
        "EMBER_HISTORY",
        "EMBER_LOG",
        "EMBER_CACHE_DIR",
        "EMBER_TOKEN",
    ] {
        assert!(help.contains(name), "--help lacks {name}");
        assert!(readme.contains(&format!("| `{name}` |")), "README's table lacks {name}");
    }
}

/// `!switch NAME` in the REPL: the entry's defaults over the config file's [defaults], which stay under them.
#[test]
fn the_repl_switch_keeps_the_config_defaults_under_the_entry() {
    let home = tempfile::tempdir().expect("tempdir");
    let tiny = fixture("tiny-sd.safetensors").display().to_string();
    write_config(
        home.path(),
        &format!("[defaults]\nsteps = 2\nwidth = 64\nheight = 64\n[models.tiny3]\npath = {tiny:?}\nsteps = 3\n"),
    );
    let mut command = common::isolated_ember(home.path());
    command
        .args(["--model", &tiny, "--device", "cpu", "-o", "out"])
        .current_dir(home.path());
    let out = common::output_with_stdin(command, "fox -S 1\n!switch tiny3\nfox -S 2\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let mut pngs: Vec<PathBuf> = std::fs::read_dir(home.path().join("out"))
        .expect("out folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    pngs.sort();
    assert_eq!(pngs.len(), 2, "{}", stderr(&out));
    let dreams: Vec<String> = pngs
        .iter()
        .map(|p| dream_line(home.path(), &p.display().to_string()))
        .collect();
    assert!(
        dreams[0].contains("-s 2 ") && dreams[0].contains("-W 64 -H 64"),
        "{dreams:?}"
    );
    assert!(
        dreams[1].contains("-s 3 ") && dreams[1].contains("-W 64 -H 64"),
        "{dreams:?}"
    );
}
