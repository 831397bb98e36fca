//! Who may use the server: the checks every request passes before a handler sees it.
//!
//! Threat model (README, "Web UI and HTTP API"): by default the server listens on loopback, so only programs on
//! this machine reach it — but so does every web page open in this machine's browser. Such a page can send
//! requests (a form post, a `no-cors` fetch) without reading the answers, and through DNS rebinding it can make
//! its own host name resolve to 127.0.0.1. So:
//! - `Host` must name this server: an IP address, `localhost`, or a name given with `--allowed-host`. A rebound
//!   name (`evil.example:9090`) is refused, which also makes the answers unreadable to the rebinding page.
//! - Requests that change state (POST, DELETE, …) are refused when the browser says they come from another site:
//!   an `Origin` other than this server's, or `Sec-Fetch-Site: cross-site`/`same-site`. Clients that send
//!   neither (curl, scripts) are not browsers and pass.
//! - With a token (`--token`, `EMBER_TOKEN`), every API request must carry it: `Authorization: Bearer TOKEN`, or
//!   the `ember_token` cookie that `POST /api/session` sets for the page (HttpOnly, SameSite=Strict, so other
//!   sites' requests never carry it). Needed whenever `--host` exposes the server to a network.

use crate::error::{clip, ApiError};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use std::net::IpAddr;
use std::sync::Arc;
use utoipa::ToSchema;

/// The cookie the page's session carries the token in.
const COOKIE: &str = "ember_token";

/// The access settings of a running server.
#[derive(Debug, Default)]
pub struct Access {
    pub token: Option<String>,
    /// Lower-case host names accepted besides IP addresses and `localhost`.
    pub allowed_hosts: Vec<String>,
}

impl Access {
    pub fn new(token: Option<String>, allowed_hosts: &[String]) -> Self {
        Self {
            token,
            allowed_hosts: allowed_hosts.iter().map(|h| h.trim().to_ascii_lowercase()).collect(),
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host).to_ascii_lowercase();
        name.parse::<IpAddr>().is_ok() || name == "localhost" || self.allowed_hosts.contains(&name)
    }

    fn token_matches(&self, offered: Option<&str>) -> bool {
        match (&self.token, offered) {
            (None, _) => true,
            (Some(token), Some(offered)) => constant_time_eq(token.as_bytes(), offered.as_bytes()),
            (Some(_), None) => false,
        }
    }
}

/// The host of a `Host` header without its port (`[::1]:9090` → `::1`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Paths that need no token: the page itself (it asks for the token), the health check and the login. Everything
/// under `/api/`, the A1111 API (`/sdapi/`) and the OpenAI API (`/v1/`) needs it.
fn open_path(path: &str) -> bool {
    let protected = ["/api/", "/sdapi/", "/v1/"]
        .iter()
        .any(|prefix| path.starts_with(prefix) || path == prefix.trim_end_matches('/'));
    !protected || path == "/api/health" || path == "/api/session" || path == "/api/openapi.json"
}

/// The middleware: Host, then cross-site, then token. Refusals on the A1111 and OpenAI paths come in those APIs'
/// error shapes.
pub async fn guard(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    match check(&access, request.method(), &path, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) if path.starts_with("/sdapi/") => crate::a1111::error_response(e),
        Err(e) if path.starts_with("/v1/") => crate::openai::error_response(e, None),
        Err(e) => e.into_response(),
    }
}

fn check(access: &Access, method: &Method, path: &str, headers: &HeaderMap) -> Result<(), ApiError> {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !access.host_allowed(host) {
        return Err(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            None,
            format!(
                "this server does not answer to the host '{}'; use its IP address or localhost, or start it with \
                 --allowed-host NAME",
                clip(host)
            ),
        ));
    }
    let changes_state = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if changes_state {
        if let Some(origin) = headers.get(header::ORIGIN) {
            let same = origin
                .to_str()
                .ok()
                .and_then(|o| o.strip_prefix("http://").or_else(|| o.strip_prefix("https://")))
                .is_some_and(|o| o.eq_ignore_ascii_case(host));
            if !same {
                return Err(cross_site(&format!(
                    "its Origin '{}'",
                    clip(origin.to_str().unwrap_or("?"))
                )));
            }
        } else if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
            if !matches!(site, "same-origin" | "none") {
                return Err(cross_site(&format!("Sec-Fetch-Site: {}", clip(site))));
            }
        }
    }
    if !open_path(path) && !access.token_matches(offered_token(headers).as_deref()) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            None,
            "this server needs its access token: send `Authorization: Bearer TOKEN` (the page asks for it)",
        ));
    }
    Ok(())
}

fn cross_site(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        None,
        format!("cross-site request refused ({what}): only this server's own page may change its state"),
    )
}

/// The token from `Authorization: Bearer …`, the password of `Authorization: Basic …` (A1111's `--api-auth`, which
/// webuiapi's `set_auth(user, password)` sends; the user name is not checked) or the session cookie.
fn offered_token(headers: &HeaderMap) -> Option<String> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Some(bearer) = authorization.and_then(|v| v.strip_prefix("Bearer ")) {
        return Some(bearer.trim().to_string());
    }
    if let Some(basic) = authorization.and_then(|v| v.strip_prefix("Basic ")) {
        use base64::prelude::{Engine, BASE64_STANDARD};
        let decoded = BASE64_STANDARD
            .decode(basic.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        if let Some((_, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) {
            return Some(password.to_string());
        }
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('=').map(str::to_string))
}

/// `POST /api/session`'s body.
#[derive(Deserialize, ToSchema)]
pub struct SessionRequest {
    pub token: String,
}

#[utoipa::path(post, path = "/api/session", tag = "other", request_body = SessionRequest,
    responses(
        (status = 204, description = "The token is right: the `ember_token` cookie is set for the page"),
        (status = 401, description = "Wrong token", body = crate::error::ErrorBody),
    ))]
pub async fn session(State(access): State<Arc<Access>>, body: Result<Json<SessionRequest>, JsonRejection>) -> Response {
    let body = match body {
        Ok(Json(body)) => body,
        Err(e) => {
            return ApiError::bad_request(
                Some("token"),
                format!("send {{\"token\": \"…\"}} as JSON: {}", e.body_text()),
            )
            .into_response()
        }
    };
    if !access.token_matches(Some(&body.token)) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            Some("token"),
            "this is not the server's token",
        )
        .into_response();
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    if access.token.is_some() {
        // The token has no characters outside a cookie value's when it came through a header or JSON string…
        // but a JSON string may hold anything: refuse to build a header from it rather than panic.
        let cookie = format!(
            "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=31536000",
            body.token
        );
        match HeaderValue::from_str(&cookie) {
            Ok(value) => {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            Err(_) => {
                return ApiError::bad_request(Some("token"), "the token cannot be kept in a cookie; use the header")
                    .into_response()
            }
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("header"));
        }
        map
    }

    #[test]
    fn hosts_must_name_this_server() {
        let access = Access::new(None, &["ember.lan".into()]);
        for ok in [
            "127.0.0.1:9090",
            "localhost:9090",
            "[::1]:9090",
            "192.168.1.5:9090",
            "EMBER.lan:80",
            "localhost",
        ] {
            assert!(access.host_allowed(ok), "{ok}");
        }
        for bad in ["evil.example:9090", "", "127.0.0.1.evil.example", "localhost.evil:9090"] {
            assert!(!access.host_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn cross_site_changes_are_refused_and_same_origin_ones_pass() {
        let access = Access::default();
        let host = ("host", "127.0.0.1:9090");
        let post = |extra: &[(&'static str, &str)]| {
            let mut all = vec![host];
            all.extend_from_slice(extra);
            check(&access, &Method::POST, "/api/jobs", &headers(&all)).map_err(|e| e.status)
        };
        assert_eq!(post(&[("origin", "http://evil")]), Err(StatusCode::FORBIDDEN));
        assert_eq!(post(&[("origin", "null")]), Err(StatusCode::FORBIDDEN));
        assert_eq!(post(&[("sec-fetch-site", "cross-site")]), Err(StatusCode::FORBIDDEN));
        assert_eq!(post(&[("sec-fetch-site", "same-site")]), Err(StatusCode::FORBIDDEN));
        assert_eq!(post(&[("origin", "http://127.0.0.1:9090")]), Ok(()));
        assert_eq!(post(&[("sec-fetch-site", "same-origin")]), Ok(()));
        assert_eq!(post(&[]), Ok(()), "curl sends neither");
        // Reading is not state-changing (and CORS keeps the answer from another site's script).
        let get = check(
            &access,
            &Method::GET,
            "/api/jobs",
            &headers(&[host, ("origin", "http://evil")]),
        );
        assert!(get.is_ok());
    }

    #[test]
    fn a_token_is_needed_for_the_api_but_not_for_the_page() {
        let access = Access::new(Some("s3cret".into()), &[]);
        let host = ("host", "localhost:9090");
        let get = |path: &str, extra: &[(&'static str, &str)]| {
            let mut all = vec![host];
            all.extend_from_slice(extra);
            check(&access, &Method::GET, path, &headers(&all)).map_err(|e| e.status)
        };
        assert_eq!(get("/api/jobs", &[]), Err(StatusCode::UNAUTHORIZED));
        assert_eq!(
            get("/api/jobs", &[("authorization", "Bearer wrong")]),
            Err(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(get("/api/jobs", &[("authorization", "Bearer s3cret")]), Ok(()));
        assert_eq!(get("/api/jobs", &[("cookie", "a=b; ember_token=s3cret")]), Ok(()));
        assert_eq!(
            get("/api/jobs", &[("cookie", "ember_token=s3cre")]),
            Err(StatusCode::UNAUTHORIZED)
        );
        for open in ["/", "/assets/app.js", "/api/health", "/api/session"] {
            assert_eq!(get(open, &[]), Ok(()), "{open}");
        }
        for compat in ["/sdapi/v1/options", "/v1/models", "/v1", "/sdapi"] {
            assert_eq!(get(compat, &[]), Err(StatusCode::UNAUTHORIZED), "{compat}");
            assert_eq!(get(compat, &[("authorization", "Bearer s3cret")]), Ok(()), "{compat}");
        }
        // webuiapi's set_auth(user, password): HTTP Basic, the password is the token.
        let basic = |pair: &str| {
            use base64::prelude::{Engine, BASE64_STANDARD};
            format!("Basic {}", BASE64_STANDARD.encode(pair))
        };
        assert_eq!(
            get("/sdapi/v1/options", &[("authorization", &basic("ember:s3cret"))]),
            Ok(())
        );
        assert_eq!(
            get("/sdapi/v1/options", &[("authorization", &basic("ember:nope"))]),
            Err(StatusCode::UNAUTHORIZED)
        );
    }
}
