//! Entry points for the fuzz targets (`fuzz/`) and their corpus replay: the server's own reading and checking of a
//! job submission — JSON parameters, multipart form, upload header and pixels — with the bundled tokenizer and a
//! CPU's work limits, without a model, a database or a network. Not part of the API.

use crate::api::{check_submission, parse_params, read_multipart, Inputs};
use crate::types::invokeai_defaults;
use crate::upload;
use axum::body::Body;
use axum::extract::Request;
use ember::addons::AddonLibrary;
use ember::pipeline::{RequestCheck, WorkLimits};
use ember::text::tokenizer::ClipTokenizer;
use std::sync::{Arc, OnceLock};

fn checker() -> &'static RequestCheck {
    static CHECK: OnceLock<RequestCheck> = OnceLock::new();
    CHECK.get_or_init(|| {
        let tokenizer = ClipTokenizer::bundled().expect("the bundled tokenizer loads");
        RequestCheck::new(Arc::new(tokenizer), 512).with_limits(Some(WorkLimits::CPU))
    })
}

/// A `POST /api/jobs` JSON body, checked as the server checks it. True when the job would be queued.
pub fn job_json(body: &[u8]) -> bool {
    check(body, None, None)
}

/// A `POST /api/jobs` multipart body with its `Content-Type` header. True when the job would be queued.
pub fn job_multipart(content_type: &str, body: &[u8]) -> bool {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    });
    let Ok(request) = Request::post("/api/jobs")
        .header("content-type", content_type)
        .body(Body::from(body.to_vec()))
    else {
        return false;
    };
    match runtime.block_on(read_multipart(request, &())) {
        Ok(form) => check(
            &form.params,
            form.init_image.as_ref().map(|(_, bytes)| bytes.as_slice()),
            form.init_mask.as_ref().map(|(_, bytes)| bytes.as_slice()),
        ),
        Err(_) => false,
    }
}

fn check(params: &[u8], upload: Option<&[u8]>, mask: Option<&[u8]>) -> bool {
    let Ok(input) = parse_params(params, None) else {
        return false;
    };
    let Ok(params) = input.resolve(&invokeai_defaults(), || 1) else {
        return false;
    };
    // No LoRAs: a job naming one is refused, as on a server without --lora-dir.
    let inputs = Inputs {
        init_image: upload,
        init_mask: mask,
        gallery_size: None,
    };
    if check_submission(checker(), &AddonLibrary::default(), &params, inputs).is_err() {
        return false;
    }
    upload.is_none_or(|bytes| upload::decode(bytes).is_ok())
        && mask.is_none_or(|bytes| upload::decode_as(bytes, "init_mask").is_ok())
}
