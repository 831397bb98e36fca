//! LoRAs and textual-inversion embeddings on the server: `--lora-dir` / `--embedding-dir` and a model's own
//! `lora_dir` / `embedding_dir`, `GET /api/loras` and `GET /api/embeddings`, and jobs that apply LoRAs (`loras`, or
//! `<lora:NAME:WEIGHT>` in the prompt), checked at submit time against the job's model's library.

mod common;

use common::{assert_error, fixture, start_configured, TestServer};
use ember_server::{Config, NamedModel};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// A `.safetensors` file of f32 tensors `(name, shape, values)`, with `metadata` (string values) when given.
fn write_safetensors(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)], metadata: Option<Value>) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "{name}");
        let start = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            name.to_string(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    if let Some(metadata) = metadata {
        header.insert("__metadata__".into(), metadata);
    }
    write_with_header(path, header, &data);
}

fn write_with_header(path: &Path, header: serde_json::Map<String, Value>, data: &[u8]) {
    let mut text = serde_json::to_string(&header).expect("JSON");
    // The data starts 8-byte aligned, as safetensors writes it.
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(text.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).expect("write the file");
}

/// The tiny model's kohya LoRA fixture, with `metadata` added to its header.
fn lora_with_metadata(path: &Path, metadata: Value) {
    let bytes = std::fs::read(fixture("lora/sd1_kohya_locon.safetensors")).expect("the LoRA fixture");
    let len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let mut header: serde_json::Map<String, Value> =
        serde_json::from_slice(&bytes[8..8 + len]).expect("the fixture's header");
    header.insert("__metadata__".into(), metadata);
    write_with_header(path, header, &bytes[8 + len..]);
}

/// An embedding for the tiny model (its text encoder is 16 wide): `vectors` vectors.
fn embedding(path: &Path, vectors: usize) {
    let values = (0..vectors * 16).map(|i| (i as f32 * 0.37).sin() * 0.1).collect();
    write_safetensors(path, &[("emb_params", vec![vectors, 16], values)], None);
}

/// Folders under `root`: `loras/` with `style` (trigger words in its metadata), `plain` (the fixture as it is, in a
/// subfolder) and `broken` (not a safetensors file); `embeddings/` with `ztok` (1 vector), `zpair` (2), `zbroken`
/// and `zxl` (made for SDXL: unusable on the tiny SD 1.x model).
fn addon_folders(root: &Path) -> (PathBuf, PathBuf) {
    let (loras, embeddings) = (root.join("loras"), root.join("embeddings"));
    std::fs::create_dir_all(loras.join("sub")).expect("mkdir");
    std::fs::create_dir_all(&embeddings).expect("mkdir");
    lora_with_metadata(
        &loras.join("style.safetensors"),
        json!({"modelspec.trigger_phrase": "zxc style, blue hat", "ss_network_dim": "4"}),
    );
    std::fs::copy(
        fixture("lora/sd1_kohya_locon.safetensors"),
        loras.join("sub/plain.safetensors"),
    )
    .expect("copy");
    std::fs::write(loras.join("broken.safetensors"), b"not a safetensors file").expect("write");
    embedding(&embeddings.join("ztok.safetensors"), 1);
    embedding(&embeddings.join("zpair.safetensors"), 2);
    std::fs::write(embeddings.join("zbroken.safetensors"), b"\x10\0\0\0\0\0\0\0{").expect("write");
    std::fs::copy(fixture("lora/sdxl_emb.safetensors"), embeddings.join("zxl.safetensors")).expect("copy");
    (loras, embeddings)
}

async fn start_with(root: &Path, configure: impl FnOnce(&mut Config)) -> TestServer {
    let (loras, embeddings) = addon_folders(root);
    start_configured(tempfile::tempdir().expect("tempdir"), move |c| {
        c.lora_dirs = vec![loras];
        c.embedding_dirs = vec![embeddings];
        configure(c);
    })
    .await
}

/// `GET path`'s list under `key`, by name.
async fn listed(t: &TestServer, path: &str, key: &str) -> Vec<Value> {
    let (status, body) = t.get(path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body[key]
        .as_array()
        .unwrap_or_else(|| panic!("a list under {key}: {body}"))
        .clone()
}

fn names(list: &[Value]) -> Vec<&str> {
    list.iter().map(|e| e["name"].as_str().expect("a name")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_libraries_are_listed_with_what_their_files_say() {
    let root = tempfile::tempdir().expect("tempdir");
    let t = start_with(root.path(), |_| {}).await;

    let loras = listed(&t, "/api/loras", "loras").await;
    assert_eq!(
        names(&loras),
        ["broken", "plain", "style"],
        "by name, subfolders searched"
    );
    let style = &loras[2];
    assert_eq!(style["trigger_words"], json!(["zxc style", "blue hat"]));
    // The tiny model's text is 16 wide: no family's width.
    assert_eq!(style["family"], Value::Null);
    assert!(
        style.get("error").is_none() && style.get("vectors").is_none(),
        "{style}"
    );
    assert_eq!(loras[1]["trigger_words"], json!([]));
    let broken = &loras[0];
    let error = broken["error"]
        .as_str()
        .expect("an unreadable file is listed with its error");
    let root_text = root.path().display().to_string();
    assert!(!error.contains(&root_text), "no server path in the error: {error}");
    assert_eq!(
        (&broken["family"], &broken["trigger_words"]),
        (&Value::Null, &json!([]))
    );

    let embeddings = listed(&t, "/api/embeddings", "embeddings").await;
    assert_eq!(names(&embeddings), ["zbroken", "zpair", "ztok", "zxl"]);
    assert_eq!(
        (&embeddings[3]["family"], &embeddings[3]["vectors"]),
        (&json!("sdxl"), &json!(2))
    );
    assert_eq!(
        (&embeddings[1]["vectors"], &embeddings[2]["vectors"]),
        (&json!(2), &json!(1))
    );
    assert!(embeddings[0]["error"].is_string(), "{}", embeddings[0]);
    assert!(!embeddings[0]["error"].as_str().unwrap_or("").contains(&root_text));

    // Asked again (from the cache), the same answer; the loaded model by name, the same.
    assert_eq!(listed(&t, "/api/loras", "loras").await, loras);
    let model = t.server.as_ref().expect("running").model_name.clone();
    assert_eq!(listed(&t, &format!("/api/loras?model={model}"), "loras").await, loras);
    assert_error(
        t.get("/api/embeddings?model=nope").await,
        StatusCode::BAD_REQUEST,
        Some("model"),
        "unknown model",
    );

    // Both are in the OpenAPI document.
    let (_, doc) = t.get("/api/openapi.json").await;
    for path in ["/api/loras", "/api/embeddings"] {
        assert!(doc["paths"][path]["get"].is_object(), "{path} documented");
    }
    for schema in ["AddonEntry", "LoraList", "EmbeddingList", "LoraWeight", "LoraInput"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema} documented");
    }
    assert!(doc["components"]["schemas"]["ParamsInput"]["properties"]["loras"].is_object());
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_folders_lists_nothing_and_refuses_loras() {
    let t = start_configured(tempfile::tempdir().expect("tempdir"), |_| {}).await;
    assert_eq!(listed(&t, "/api/loras", "loras").await, Vec::<Value>::new());
    assert_eq!(listed(&t, "/api/embeddings", "embeddings").await, Vec::<Value>::new());
    let message = assert_error(
        t.post_json("/api/jobs", &json!({"prompt": "fire", "loras": [{"name": "style"}]}))
            .await,
        StatusCode::BAD_REQUEST,
        Some("loras"),
        "no LoRAs at all",
    );
    assert!(
        message.contains("'style'") && message.contains("--lora-dir"),
        "{message}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_loras_are_refused_at_submit_naming_the_field() {
    let root = tempfile::tempdir().expect("tempdir");
    let t = start_with(root.path(), |_| {}).await;
    let job = |extra: Value| {
        let mut params = json!({"prompt": "fire", "steps": 1, "width": 64, "height": 64});
        params
            .as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        params
    };
    let cases = [
        (json!({"loras": [{"name": "nope"}]}), "loras", "an unknown LoRA"),
        (
            json!({"loras": [{"name": "style"}, {"name": "nope", "weight": 0.5}]}),
            "loras",
            "one unknown of two",
        ),
        (
            json!({"loras": [{"name": "style", "weight": 101}]}),
            "loras",
            "a weight over 100",
        ),
        (
            json!({"loras": [{"name": "style", "weight": -100.5}]}),
            "loras",
            "a weight under -100",
        ),
        (json!({"loras": [{"name": " "}]}), "loras", "an empty name"),
        (
            json!({"loras": [{"name": "style", "weight": "x"}]}),
            "loras[0].weight",
            "a weight that is not a number",
        ),
        (
            json!({"loras": [{"name": "style", "strength": 1}]}),
            "loras[0].strength",
            "an unknown key",
        ),
        (json!({"loras": {"name": "style"}}), "loras", "not a list"),
        (
            json!({"prompt": "fire <lora:nope:1>"}),
            "prompt",
            "an unknown LoRA in the prompt",
        ),
        (
            json!({"prompt": "fire withLora(nope, 0.5)"}),
            "prompt",
            "InvokeAI's form",
        ),
        (
            json!({"prompt": "fire <lora:style:heavy>"}),
            "prompt",
            "a malformed prompt term",
        ),
        (
            json!({"prompt": "fire <lora:style:1000>"}),
            "prompt",
            "a prompt weight out of range",
        ),
        (
            json!({"negative_prompt": "<lora:style:1>"}),
            "negative_prompt",
            "a LoRA in the negative prompt",
        ),
        (
            json!({"prompt": "fire zxl"}),
            "prompt",
            "an embedding made for another family",
        ),
        (
            json!({"negative_prompt": "zxl"}),
            "negative_prompt",
            "the same in the negative prompt",
        ),
    ];
    for (extra, field, what) in cases {
        let (status, body) = t.post_json("/api/jobs", &job(extra)).await;
        let message = assert_error((status, body), StatusCode::BAD_REQUEST, Some(field), what);
        assert!(
            !message.contains(&root.path().display().to_string()),
            "{what}: {message}"
        );
    }
    let message = assert_error(
        t.post_json("/api/jobs", &job(json!({"loras": [{"name": "nope"}]})))
            .await,
        StatusCode::BAD_REQUEST,
        Some("loras"),
        "unknown",
    );
    assert!(
        message.contains("'nope'") && message.contains("broken, plain, style"),
        "the message names the LoRAs there are: {message}"
    );
    let too_many: Vec<Value> = (0..33).map(|_| json!({"name": "style"})).collect();
    assert_error(
        t.post_json("/api/jobs", &job(json!({"loras": too_many}))).await,
        StatusCode::BAD_REQUEST,
        Some("loras"),
        "33 LoRAs",
    );
    let (_, list) = t.get("/api/jobs").await;
    assert_eq!(list["jobs"], json!([]), "nothing was queued");
    t.stop().await;
}

/// The pixels of a job's image, after it is done.
async fn image_of(t: &TestServer, job: &Value) -> (Value, image::RgbImage) {
    let id = job["id"].as_i64().expect("id");
    let done = t.wait_finished(id).await;
    assert_eq!(done["status"], "done", "{done}");
    let image_id = done["image_id"].as_i64().expect("image id");
    let (status, record) = t.get(&format!("/api/images/{image_id}")).await;
    assert_eq!(status, StatusCode::OK, "{record}");
    let response = t
        .client
        .get(t.url(&format!("/api/images/{image_id}/file")))
        .send()
        .await
        .expect("file");
    let bytes = response.bytes().await.expect("bytes");
    let pixels = image::load_from_memory(&bytes).expect("PNG").to_rgb8();
    (record, pixels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_apply_their_loras_and_report_them() {
    let root = tempfile::tempdir().expect("tempdir");
    let t = start_with(root.path(), |_| {}).await;
    let base = json!({"prompt": "fire", "steps": 2, "width": 64, "height": 64, "seed": 7, "sampler": "k_euler"});
    let with = |extra: Value| {
        let mut params = base.clone();
        params
            .as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        params
    };

    let plain = t.submit(base.clone()).await;
    assert_eq!(plain["params"]["loras"], json!([]), "no LoRAs by default");
    // The name as the library spells it is stored; the weight defaults to 1.
    let styled = t
        .submit(with(
            json!({"loras": [{"name": "STYLE", "weight": 0.8}, {"name": "plain"}]}),
        ))
        .await;
    assert_eq!(
        styled["params"]["loras"],
        json!([{"name": "style", "weight": 0.8}, {"name": "plain", "weight": 1.0}])
    );
    let zero = t.submit(with(json!({"loras": [{"name": "style", "weight": 0}]}))).await;
    let in_prompt = t
        .submit(with(json!({"prompt": "fire <lora:style:0.8> withLora(plain)"})))
        .await;
    // An embedding of the library, by its name.
    let embedded = t.submit(with(json!({"prompt": "fire ztok"}))).await;

    let (plain_record, plain_pixels) = image_of(&t, &plain).await;
    let (styled_record, styled_pixels) = image_of(&t, &styled).await;
    let (_, zero_pixels) = image_of(&t, &zero).await;
    let (_, prompt_pixels) = image_of(&t, &in_prompt).await;
    let (_, embedded_pixels) = image_of(&t, &embedded).await;
    assert_ne!(styled_pixels, plain_pixels, "the LoRAs change the image");
    assert_eq!(zero_pixels, plain_pixels, "weight 0 is the model itself");
    assert_eq!(prompt_pixels, styled_pixels, "prompt terms apply like the `loras` list");
    assert_ne!(embedded_pixels, plain_pixels, "the embedding changes the prompt");

    // The job and its gallery image report the list.
    assert_eq!(styled_record["params"]["loras"], styled["params"]["loras"]);
    assert_eq!(plain_record["params"]["loras"], json!([]));
    let (_, job) = t.get(&format!("/api/jobs/{}", styled["id"])).await;
    assert_eq!(job["params"]["loras"], styled["params"]["loras"]);

    // Resubmitting an image's params reproduces it.
    let again = t.submit(styled_record["params"].clone()).await;
    let (_, again_pixels) = image_of(&t, &again).await;
    assert_eq!(again_pixels, styled_pixels);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_model_has_its_own_folders_besides_the_servers() {
    let root = tempfile::tempdir().expect("tempdir");
    let own = root.path().join("own-loras");
    std::fs::create_dir_all(&own).expect("mkdir");
    // Named like a LoRA of the server's folder: the model's own wins.
    lora_with_metadata(
        &own.join("style.safetensors"),
        json!({"modelspec.trigger_phrase": "own words"}),
    );
    lora_with_metadata(&own.join("extra.safetensors"), json!({}));
    let tiny = fixture("tiny-sd.safetensors").display().to_string();
    let entry = |name: &str| NamedModel {
        name: name.into(),
        path: tiny.clone(),
        ..NamedModel::default()
    };
    let models = vec![
        // The first by name with the start model's path: the one loaded at start.
        entry("a-plain"),
        NamedModel {
            lora_dir: Some(own.clone()),
            ..entry("b-styled")
        },
        NamedModel {
            lora_dir: Some(root.path().join("missing")),
            ..entry("c-broken")
        },
    ];
    let t = start_with(root.path(), |c| c.models = models).await;
    let server = t.server.as_ref().expect("running");
    assert_eq!(server.models, ["a-plain", "b-styled"]);
    assert!(
        server.left_out.len() == 1
            && server.left_out[0].contains("c-broken")
            && server.left_out[0].contains("lora_dir"),
        "{:?}",
        server.left_out
    );

    let plain = listed(&t, "/api/loras", "loras").await;
    assert_eq!(
        names(&plain),
        ["broken", "plain", "style"],
        "the loaded model's: the server's folder"
    );
    let styled = listed(&t, "/api/loras?model=b-styled", "loras").await;
    assert_eq!(names(&styled), ["broken", "extra", "plain", "style"]);
    assert_eq!(
        styled[3]["trigger_words"],
        json!(["own words"]),
        "the model's own file wins"
    );

    // `extra` is only b-styled's: a job on the other model cannot name it.
    let params = json!({"prompt": "fire <lora:extra:0.5>", "steps": 1, "width": 64, "height": 64, "seed": 3});
    let mut on_plain = params.clone();
    on_plain["model"] = json!("a-plain");
    assert_error(
        t.post_json("/api/jobs", &on_plain).await,
        StatusCode::BAD_REQUEST,
        Some("prompt"),
        "another model's LoRA",
    );
    // b-styled is only described, yet its checker knows its embeddings: the SDXL one is refused at submit.
    let sdxl_embedding = json!({"prompt": "fire zxl", "steps": 1, "width": 64, "height": 64, "model": "b-styled"});
    let message = assert_error(
        t.post_json("/api/jobs", &sdxl_embedding).await,
        StatusCode::BAD_REQUEST,
        Some("prompt"),
        "another family's embedding on a model not loaded",
    );
    assert!(message.contains("zxl") && message.contains("16"), "{message}");
    let root_path = root.path().display().to_string();
    assert!(!message.contains(&root_path), "a server path in {message}");
    // On b-styled (not loaded: checked against its library), it runs once the worker has loaded that model.
    let mut on_styled = params;
    on_styled["model"] = json!("b-styled");
    let job = t.submit(on_styled).await;
    let (record, _) = image_of(&t, &job).await;
    assert_eq!(record["params"]["model"], "b-styled");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_server_folder_stops_the_start() {
    let root = tempfile::tempdir().expect("tempdir");
    let config = Config {
        port: 0,
        data_dir: root.path().join("data"),
        model: fixture("tiny-sd.safetensors").display().to_string(),
        device: "cpu".into(),
        dtype: "f32".into(),
        lora_dirs: vec![root.path().join("no-such-folder")],
        ..Config::default()
    };
    let err = match ember_server::start(config).await {
        Ok(_) => panic!("a missing --lora-dir must not start"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("--lora-dir") && err.contains("no-such-folder"), "{err}");
}
