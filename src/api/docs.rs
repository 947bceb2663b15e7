//! `GET /docs`: a browsable page over `/openapi.json` (Swagger UI). Its
//! files are built into the binary, and the page is served with a content
//! security policy that lets it reach this agent only: it works with no
//! internet and sends nothing elsewhere.

use std::sync::{Arc, OnceLock};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ApiResult};
use super::extract::Path;

/// The files of the page, as `GET /docs/{file}` serves them.
pub const FILES: &[&str] = &[
    "swagger-ui.css",
    "index.css",
    "swagger-ui-bundle.js",
    "swagger-ui-standalone-preset.js",
    "swagger-initializer.js",
    "favicon-32x32.png",
    "favicon-16x16.png",
];

/// Scripts, styles, images and requests from this agent only (Swagger UI
/// sets inline styles and shows its icons as data URLs); no frames.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; connect-src 'self'; font-src 'self' data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The page: Swagger UI's own, with its files under `/docs/` so that the
/// page answers at `/docs` without a trailing slash.
const INDEX: &str = r#"<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>libgo API</title>
    <link rel="stylesheet" type="text/css" href="/docs/swagger-ui.css">
    <link rel="stylesheet" type="text/css" href="/docs/index.css">
    <link rel="icon" type="image/png" href="/docs/favicon-32x32.png" sizes="32x32">
    <link rel="icon" type="image/png" href="/docs/favicon-16x16.png" sizes="16x16">
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="/docs/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script src="/docs/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
    <script src="/docs/swagger-initializer.js" charset="UTF-8"></script>
  </body>
</html>
"#;

/// What the page is told: the document, no validator (Swagger UI's default
/// one is a remote service), try-it-out open, a filter over operations.
fn config() -> Arc<utoipa_swagger_ui::Config<'static>> {
    static CONFIG: OnceLock<Arc<utoipa_swagger_ui::Config<'static>>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            Arc::new(
                utoipa_swagger_ui::Config::new(["/openapi.json"])
                    .validator_url("none")
                    .try_it_out_enabled(true)
                    .filter(true)
                    .display_operation_id(true)
                    .display_request_duration(true)
                    .persist_authorization(false)
                    .doc_expansion("list"),
            )
        })
        .clone()
}

fn page(content_type: &'static str, body: Vec<u8>) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// This documentation page.
///
/// A browsable page over `/openapi.json` (Swagger UI), built into the agent: it loads nothing
/// from elsewhere. Its try-it-out calls go to this agent; on the TCP listener, use Authorize
/// with a bearer token.
#[utoipa::path(get, path = "/docs", tag = "system", operation_id = "docs",
    responses((status = 200, description = "The page (HTML): Swagger UI over `/openapi.json`.")))]
pub async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX.as_bytes().to_vec())
}

/// A file of the documentation page.
///
/// A script, a style sheet or an icon of the page at `/docs`, built into the agent. 404 for any
/// other name.
#[utoipa::path(get, path = "/docs/{file}", tag = "system", operation_id = "docs_file",
    params(("file" = String, Path, description = "One of the page's files")),
    responses((status = 200, description = "The file: a script, a style sheet or an icon.")))]
pub async fn file(Path(file): Path<String>) -> ApiResult<Response> {
    let not_found = || ApiError::not_found(format!("No such file of the docs page: {file:?}"));
    if !FILES.contains(&file.as_str()) {
        return Err(not_found());
    }
    let found = utoipa_swagger_ui::serve(&file, config())
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("The docs page's {file}: {e}"),
            )
        })?
        .ok_or_else(not_found)?;
    let content_type = match file.rsplit_once('.').map(|(_, ext)| ext) {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        _ => "image/png",
    };
    Ok(page(content_type, found.bytes.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file the page names is built in, and the page names no other
    /// host.
    #[test]
    fn the_page_and_its_files_are_built_in() {
        for f in FILES {
            assert!(INDEX.contains(&format!("/docs/{f}")), "{f}");
            let served = utoipa_swagger_ui::serve(f, config()).unwrap();
            assert!(served.is_some_and(|s| !s.bytes.is_empty()), "{f}");
        }
        assert!(!INDEX.contains("//"), "the page names another host");
        let init = utoipa_swagger_ui::serve("swagger-initializer.js", config())
            .unwrap()
            .unwrap();
        let init = String::from_utf8(init.bytes.into_owned()).unwrap();
        assert!(init.contains("\"/openapi.json\""), "{init}");
        assert!(init.contains("\"validatorUrl\": \"none\""), "{init}");
    }
}
