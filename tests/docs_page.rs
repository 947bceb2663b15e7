//! The docs page in a real browser: headless Chromium (Debian's, installed
//! by `scripts/setup.sh`) driven over the Chrome DevTools Protocol loads
//! `/docs` from a daemon's loopback listener, renders the operations, and
//! its own Authorize, Try-it-out and Execute buttons make a real call that
//! the daemon answers. Every request the browser makes is recorded: none
//! goes anywhere but the daemon (and every other host is unreachable).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, Daemon};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

const CHROMIUM: &str = "/usr/bin/chromium";

/// A headless Chromium in its own process group, stopped (with every
/// process it started) when dropped.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    /// `ws://127.0.0.1:<port>/devtools/browser/<id>`
    ws_url: String,
}

impl Browser {
    fn launch() -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: the docs page test needs Debian's chromium \
             (scripts/setup.sh installs it: apt-get install chromium)"
        );
        let profile = tempfile::Builder::new()
            .prefix("lgchrome")
            .tempdir_in("/tmp")
            .unwrap();
        let log = std::fs::File::create(profile.path().join("chromium.log")).unwrap();
        let child = std::os::unix::process::CommandExt::process_group(
            Command::new(CHROMIUM)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-default-apps",
                    "--disable-extensions",
                    // Every host name but the daemon's address fails to
                    // resolve: a page that needed a CDN would not render.
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                    "--remote-debugging-port=0",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg("about:blank")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
            0,
        )
        .spawn()
        .expect("start chromium");
        let mut browser = Browser {
            child,
            _profile: profile,
            ws_url: String::new(),
        };
        // The port the browser chose, and its target path.
        let file = browser._profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let mut lines = text.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                browser.ws_url = format!("ws://127.0.0.1:{}{}", port.trim(), path.trim());
                return browser;
            }
            if let Ok(Some(status)) = browser.child.try_wait() {
                panic!("chromium exited ({status}):\n{}", browser.log());
            }
            assert!(
                Instant::now() < deadline,
                "chromium wrote no DevToolsActivePort:\n{}",
                browser.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._profile.path().join("chromium.log")).unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A DevTools Protocol session on one page: commands wait for their
/// answer; the events that arrive meanwhile are kept.
struct Cdp {
    ws: Ws,
    next_id: u64,
    session: Option<String>,
    events: Vec<Value>,
}

impl Cdp {
    async fn connect(url: &str) -> Cdp {
        let req = url.into_client_request().unwrap();
        let host = req.uri().authority().unwrap().as_str().to_owned();
        let stream = tokio::net::TcpStream::connect(host).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(req, stream)
            .await
            .expect("DevTools WebSocket");
        Cdp {
            ws,
            next_id: 0,
            session: None,
            events: Vec::new(),
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = s.clone().into();
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("DevTools send");
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{method}: no answer from the browser"))
                .expect("DevTools closed")
                .expect("DevTools read");
            let Message::Text(text) = frame else {
                continue;
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
    }

    /// Evaluates `expr` in the page; its value (promises awaited).
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    /// Waits until `expr` is true in the page.
    async fn wait_for(&mut self, what: &str, expr: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(expr).await == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let body = self
                    .eval(
                        "(document.querySelector('.opblock.is-open') ?? document.body)\
                         .innerText.slice(0, 6000)",
                    )
                    .await;
                panic!("{what}: not within {timeout:?}; the page shows:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The page's `<div class="opblock">` of one operation, as a JS expression.
fn opblock(method: &str, path: &str) -> String {
    format!(
        "[...document.querySelectorAll('.opblock.opblock-{method}')].find(b => \
         b.querySelector('.opblock-summary-path')?.getAttribute('data-path') === '{path}')"
    )
}

/// How many `GET`s of each route the daemon answered 200, from its metrics.
async fn served(d: &Daemon) -> HashMap<String, u64> {
    let (code, _, body) = d.raw("GET", "/metrics", None, &[]).await.unwrap();
    assert_eq!(code, 200);
    let text = String::from_utf8(body).unwrap();
    let mut out = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("libgo_http_requests_total{method=\"GET\",route=\"")
        else {
            continue;
        };
        let Some((route, tail)) = rest.split_once("\",code=\"200\"} ") else {
            continue;
        };
        out.insert(route.to_owned(), tail.trim().parse().unwrap());
    }
    out
}

#[tokio::test]
async fn the_docs_page_renders_offline_and_its_try_it_out_calls_the_daemon() {
    let started = Instant::now();
    let port = free_port();
    let d = Daemon::start_with(&["--listen", &format!("127.0.0.1:{port}"), "--plaintext"]).await;
    let origin = format!("http://127.0.0.1:{port}");
    // A VM whose name only the daemon knows, and a viewer token.
    let (code, vm) = d
        .req(
            "POST",
            "/api/v1/vms",
            Some(
                json!({"name": "docs-page-vm", "vcpus": 1, "memory": 64, "disk_size": 1,
                        "base_image": "base.qcow2"}),
            ),
        )
        .await;
    assert_eq!(code, 201, "{vm}");
    let (code, token) = d
        .req(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "browser", "role": "viewer"})),
        )
        .await;
    assert_eq!(code, 201, "{token}");
    let secret = token["secret"].as_str().unwrap().to_owned();
    // The page is on the sockets too, with its policy; its files are the
    // page's only.
    for (path, status, kind) in [
        ("/docs", 200, "text/html"),
        ("/docs/swagger-ui.css", 200, "text/css"),
        ("/docs/swagger-ui-bundle.js", 200, "text/javascript"),
        ("/docs/favicon-32x32.png", 200, "image/png"),
        ("/docs/oauth2-redirect.html", 404, "application/json"),
        ("/docs/..%2Fopenapi.json", 404, "application/json"),
    ] {
        let (code, headers, _) = d.raw("GET", path, None, &[]).await.unwrap();
        assert_eq!(code, status, "{path}");
        let content_type = headers["content-type"].to_str().unwrap();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        if code == 200 {
            let csp = headers["content-security-policy"].to_str().unwrap();
            assert!(csp.contains("connect-src 'self'"), "{path}: {csp}");
        }
    }
    let (code, _, _) = common::raw_request(&d.readonly_socket(), "GET", "/docs", None, &[])
        .await
        .unwrap();
    assert_eq!(code, 200, "the read-only socket");

    let before = served(&d).await;
    let browser = Browser::launch();
    let mut cdp = Cdp::connect(&browser.ws_url).await;
    let target = cdp
        .call("Target.createTarget", json!({"url": "about:blank"}))
        .await;
    let attached = cdp
        .call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        )
        .await;
    cdp.session = Some(attached["sessionId"].as_str().unwrap().to_owned());
    for domain in [
        "Page.enable",
        "Network.enable",
        "Runtime.enable",
        "Log.enable",
    ] {
        cdp.call(domain, json!({})).await;
    }
    cdp.call("Page.navigate", json!({"url": format!("{origin}/docs")}))
        .await;

    // The page renders the document: the VM operations are listed.
    cdp.wait_for(
        "the operations are listed",
        &format!("!!{}", opblock("get", "/api/v1/vms")),
        Duration::from_secs(20),
    )
    .await;
    let title = cdp
        .eval("document.querySelector('.info .title')?.textContent ?? ''")
        .await;
    assert!(title.as_str().unwrap().contains("libgo"), "{title}");
    for (method, path) in [
        ("post", "/api/v1/vms"),
        ("get", "/api/v1/vms/{id}"),
        ("delete", "/api/v1/vms/{id}"),
        ("post", "/api/v1/vms/{id}/{action}"),
    ] {
        assert_eq!(
            cdp.eval(&format!("!!{}", opblock(method, path))).await,
            Value::Bool(true),
            "{method} {path} is not on the page"
        );
    }
    let summary = cdp
        .eval(&format!(
            "{}.querySelector('.opblock-summary-description')?.textContent",
            opblock("get", "/api/v1/vms")
        ))
        .await;
    assert_eq!(summary, "List VMs");

    // Authorize with the token, through the page's own dialog: the text is
    // typed into its field as a user would.
    cdp.eval("document.querySelector('.auth-wrapper .authorize').click()")
        .await;
    cdp.wait_for(
        "the authorize dialog",
        "!!document.querySelector('.modal-ux .auth-container input')",
        Duration::from_secs(5),
    )
    .await;
    cdp.eval("document.querySelector('.modal-ux .auth-container input').focus()")
        .await;
    cdp.call("Input.insertText", json!({"text": secret})).await;
    cdp.eval(
        "[...document.querySelectorAll('.modal-ux .auth-btn-wrapper button')]\
         .find(b => b.textContent.trim() === 'Authorize').click()",
    )
    .await;
    cdp.wait_for(
        "the token is taken",
        "[...document.querySelectorAll('.modal-ux .auth-btn-wrapper button')]\
         .some(b => b.textContent.trim() === 'Logout')",
        Duration::from_secs(5),
    )
    .await;
    cdp.eval("document.querySelector('.modal-ux .btn-done, .modal-ux .close-modal').click()")
        .await;

    // Open `GET /api/v1/vms`, then Try it out and Execute.
    let op = opblock("get", "/api/v1/vms");
    cdp.eval(&format!(
        "{op}.querySelector('.opblock-summary-control').click()"
    ))
    .await;
    cdp.wait_for(
        "the operation opens",
        &format!("!!{op}.querySelector('.try-out__btn, .btn.execute')"),
        Duration::from_secs(5),
    )
    .await;
    // Try-it-out is on from the start; a "Try it out" button, if shown,
    // is pressed first.
    cdp.eval(&format!(
        "(() => {{ const b = {op}.querySelector('.try-out__btn'); \
         if (b && b.textContent.trim() === 'Try it out') b.click(); }})()"
    ))
    .await;
    cdp.wait_for(
        "the Execute button",
        &format!("!!{op}.querySelector('.btn.execute')"),
        Duration::from_secs(5),
    )
    .await;
    cdp.eval(&format!("{op}.querySelector('.btn.execute').click()"))
        .await;
    cdp.wait_for(
        "the daemon's answer on the page",
        &format!(
            "!!{op}.querySelector('.live-responses-table tbody .response-col_status') && \
             {op}.querySelector('.live-responses-table tbody .response-col_status').textContent.trim().startsWith('200')"
        ),
        Duration::from_secs(10),
    )
    .await;
    let shown = cdp
        .eval(&format!(
            "{op}.querySelector('.live-responses-table tbody .response-col_description').innerText"
        ))
        .await;
    let shown = shown.as_str().unwrap_or_default();
    assert!(shown.contains("docs-page-vm"), "the page shows: {shown}");
    assert!(shown.contains(vm["id"].as_str().unwrap()), "{shown}");

    // What the browser sent: the call, with the bearer token, to the daemon;
    // and nothing at all anywhere else.
    let requests: Vec<&Value> = cdp
        .events
        .iter()
        .filter(|e| e["method"] == "Network.requestWillBeSent")
        .map(|e| &e["params"]["request"])
        .collect();
    let call = requests
        .iter()
        .find(|r| {
            r["url"]
                .as_str()
                .is_some_and(|u| u.starts_with(&format!("{origin}/api/v1/vms")))
        })
        .unwrap_or_else(|| panic!("the page sent no GET /api/v1/vms: {requests:?}"));
    assert_eq!(call["method"], "GET");
    let headers: HashMap<String, String> = call["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.to_ascii_lowercase(),
                v.as_str().unwrap_or_default().into(),
            )
        })
        .collect();
    assert_eq!(
        headers.get("authorization"),
        Some(&format!("Bearer {secret}"))
    );
    let mut urls: Vec<&str> = requests.iter().filter_map(|r| r["url"].as_str()).collect();
    urls.sort();
    urls.dedup();
    for u in &urls {
        assert!(
            u.starts_with(&format!("{origin}/")) || u.starts_with("data:"),
            "the page reached beyond the daemon: {u} (all: {urls:?})"
        );
    }
    for needed in ["/docs", "/docs/swagger-ui-bundle.js", "/openapi.json"] {
        assert!(
            urls.contains(&format!("{origin}{needed}").as_str()),
            "{needed} not loaded: {urls:?}"
        );
    }
    let failed: Vec<&Value> = cdp
        .events
        .iter()
        .filter(|e| e["method"] == "Network.loadingFailed")
        .collect();
    assert!(failed.is_empty(), "requests failed: {failed:?}");
    // The content security policy let the page do all it needed.
    let refused: Vec<&Value> = cdp
        .events
        .iter()
        .filter(|e| {
            e["method"] == "Log.entryAdded"
                && e["params"]["entry"]["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("Content Security Policy"))
        })
        .collect();
    assert!(
        refused.is_empty(),
        "refused by the page's policy: {refused:?}"
    );
    let exceptions: Vec<&Value> = cdp
        .events
        .iter()
        .filter(|e| e["method"] == "Runtime.exceptionThrown")
        .collect();
    assert!(exceptions.is_empty(), "the page threw: {exceptions:?}");

    // The daemon counted the browser's calls: the page, the document and
    // the one GET /api/v1/vms.
    let after = served(&d).await;
    for route in ["/docs", "/openapi.json", "/api/v1/vms"] {
        assert_eq!(
            after.get(route).copied().unwrap_or(0),
            before.get(route).copied().unwrap_or(0) + 1,
            "GET {route} answered 200: {before:?} then {after:?}"
        );
    }
    eprintln!("FIGURE docs page test: {:?} in all", started.elapsed());
    drop(browser);
}
