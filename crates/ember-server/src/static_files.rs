//! The web page: the files of `crates/ember-server/assets/`, embedded in the binary at build time and served at
//! `/` and `/assets/{file}`. Only the names listed here exist; nothing is read from disk, so no path can escape.

use crate::error::ApiError;
use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

/// (name, content type, bytes).
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../assets/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/app.js"),
    ),
    (
        "advanced.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/advanced.js"),
    ),
    (
        "inpaint.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/inpaint.js"),
    ),
    (
        "addons.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/addons.js"),
    ),
    (
        "gallery.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/gallery.js"),
    ),
    (
        "jobs.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/jobs.js"),
    ),
    (
        "viewer.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/viewer.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/style.css"),
    ),
];

fn asset(name: &str) -> Option<Response> {
    let &(_, content_type, bytes) = ASSETS.iter().find(|(n, _, _)| *n == name)?;
    Some(
        (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                // The files change with the binary: always revalidate, so an upgrade is never half-cached.
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            ],
            bytes,
        )
            .into_response(),
    )
}

pub async fn index() -> Response {
    asset("index.html").unwrap_or_else(|| ApiError::not_found("the page is missing from this build").into_response())
}

pub async fn file(name: Result<Path<String>, PathRejection>) -> Response {
    let found = name.ok().and_then(|Path(name)| asset(&name));
    found.unwrap_or_else(|| ApiError::not_found("no such asset").into_response())
}
