//! The `libgo` binary against a real daemon: a VM driven through its life
//! on the fixture guest (create, list in every format, start through a job
//! id, the serial console from a pipe, a snapshot, stop, delete), its exit
//! codes, a TLS remote with a token and a pinned certificate (and a pin
//! that does not match refused), and the completion and man generators.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{fixture_cmdline, free_port, guest_slot, Daemon, BOOT, READY};
use serde_json::{json, Value};

/// A `libgo` run: the daemon's socket as `LIBGO_HOST` (unless `host` says
/// otherwise) and a configuration directory of the test's own.
struct Cli {
    host: Option<String>,
    config: PathBuf,
}

impl Cli {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_libgo"));
        c.args(args)
            .env_remove("LIBGO_HOST")
            .env_remove("LIBGO_TOKEN")
            .env_remove("LIBGO_REMOTE")
            .env_remove("LIBGO_FINGERPRINT")
            .env("LIBGO_CONFIG_DIR", &self.config)
            .stdin(Stdio::null());
        if let Some(h) = &self.host {
            c.env("LIBGO_HOST", h);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run libgo")
    }

    /// Runs and expects exit code 0; answers stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "libgo {args:?}:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects exit code `code`; answers stderr.
    fn fails(&self, code: i32, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "libgo {args:?}:\nstdout: {}\nstderr: {stderr}",
            String::from_utf8_lossy(&out.stdout)
        );
        stderr
    }
}

fn local(d: &Daemon, config: &Path) -> Cli {
    Cli {
        host: Some(format!("unix://{}", d.socket.display())),
        config: config.to_owned(),
    }
}

/// Reads the child's stdout in a thread; `until` waits for all of `want`.
struct Reader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    seen: String,
}

impl Reader {
    fn new(mut out: impl Read + Send + 'static) -> Reader {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        Reader {
            rx,
            seen: String::new(),
        }
    }

    fn until(&mut self, want: &[&str], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !want.iter().all(|w| self.seen.replace('\r', "").contains(w)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(b) => self.seen.push_str(&String::from_utf8_lossy(&b)),
                Err(e) => panic!("{want:?} not seen ({e}); got:\n{}", self.seen),
            }
        }
    }
}

#[tokio::test]
async fn a_vm_is_driven_through_its_life_by_the_cli() {
    let d = Daemon::start().await;
    let cfg = tempfile::tempdir().unwrap();
    let cli = local(&d, cfg.path());

    // Create: -q prints the id alone.
    let cmdline = fixture_cmdline();
    let out = cli.ok(&[
        "vm",
        "create",
        "cli1",
        "--vcpus",
        "1",
        "--memory",
        "128",
        "--disk-size",
        "1",
        "--base-image",
        "base.qcow2",
        "--kernel",
        "vmlinuz",
        "--initrd",
        "initrd.img",
        "--cmdline",
        &cmdline,
        "--tag",
        "cli",
        "--display",
        "-q",
    ]);
    let id = out.trim().to_owned();
    let (code, vm) = d.req("GET", "/api/v1/vms/cli1", None).await;
    assert_eq!(code, 200, "{vm}");
    assert_eq!(vm["id"], id.as_str());
    assert_eq!(vm["tags"], json!(["cli"]));

    // List, in each format.
    let table = cli.ok(&["vm", "list"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header[..3], ["NAME", "STATUS", "VCPUS"], "{table}");
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[..3], ["cli1", "stopped", "1"], "{table}");
    assert!(row.contains(&id.as_str()), "{table}");
    let list: Value = serde_json::from_str(&cli.ok(&["vm", "ls", "--format", "json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["memory"], 128);
    let csv = cli.ok(&["vm", "list", "--format", "csv"]);
    assert_eq!(
        csv.lines().collect::<Vec<_>>(),
        [
            "name,status,vcpus,memory,disk,node,id".to_owned(),
            format!("cli1,stopped,1,128,1,{},{id}", d.node)
        ]
    );
    let yaml: Value =
        serde_norway::from_str(&cli.ok(&["vm", "show", "cli1", "-f", "yaml"])).unwrap();
    assert_eq!(yaml["name"], "cli1");
    assert_eq!(cli.ok(&["vm", "ls", "-q"]), format!("{id}\n"));
    assert_eq!(cli.ok(&["vm", "list", "--status", "running", "-q"]), "");
    // No screenshot of a VM that does not run: the server's 409, exit 1.
    let shots = tempfile::tempdir().unwrap();
    let shot = shots.path().join("cli1.png");
    let err = cli.fails(
        1,
        &["vm", "screenshot", "cli1", "-o", shot.to_str().unwrap()],
    );
    assert!(err.contains("cli1"), "{err}");
    assert!(!shot.exists(), "a refused screenshot left a file");

    // Start with --async: a job id, which `job wait` follows to its end.
    let _slot = guest_slot().await;
    let job = cli
        .ok(&["vm", "start", "cli1", "--async"])
        .trim()
        .to_owned();
    assert!(uuid::Uuid::parse_str(&job).is_ok(), "not a job id: {job:?}");
    let waited = cli.ok(&["job", "wait", &job, "-f", "json"]);
    let waited: Value = serde_json::from_str(&waited).unwrap();
    assert_eq!(waited["state"], "succeeded", "{waited}");
    assert_eq!(waited["type"], "vm.start");
    let shown: Value = serde_json::from_str(&cli.ok(&["job", "show", &job, "-f", "json"])).unwrap();
    assert_eq!(shown["id"], job.as_str());
    d.wait_marker(&id, READY, 1, BOOT).await;

    // A screenshot of the running display: a PNG of the VGA screen.
    cli.ok(&["vm", "screenshot", "cli1", "-o", shot.to_str().unwrap()]);
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let (w, h) = (
        u32::from_be_bytes(png[16..20].try_into().unwrap()),
        u32::from_be_bytes(png[20..24].try_into().unwrap()),
    );
    assert!(w >= 640 && h >= 200, "{w}x{h}");

    // What is in force while it runs.
    let config: Value =
        serde_json::from_str(&cli.ok(&["vm", "config", "cli1", "-f", "json"])).unwrap();
    assert_eq!(config["memory"], 128);
    assert!(config["accel"].is_string(), "{config}");

    // The serial console from a pipe: a command in, its output out.
    let mut child = cli
        .cmd(&["vm", "console", "cli1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = Reader::new(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"clitag echo cli-$((40+2))\n").unwrap();
    stdin.flush().unwrap();
    reader.until(
        &["cli-42\n", "LIBGO-DONE clitag 0"],
        Duration::from_secs(60),
    );
    // The end of stdin ends the session once the console is quiet.
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the console did not end");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "console exited {status}");

    // On a terminal: raw mode while attached, Ctrl-a q detaches, and the
    // terminal is as it was afterwards.
    {
        use nix::sys::termios::{tcgetattr, LocalFlags};
        let pty = nix::pty::openpty(None, None).unwrap();
        let before = tcgetattr(&pty.slave).unwrap();
        assert!(before.local_flags.contains(LocalFlags::ICANON));
        let end = |fd: &std::os::fd::OwnedFd| Stdio::from(fd.try_clone().unwrap());
        let mut child = cli
            .cmd(&["vm", "console", "cli1"])
            .stdin(end(&pty.slave))
            .stdout(end(&pty.slave))
            .stderr(end(&pty.slave))
            .spawn()
            .unwrap();
        let mut master = std::fs::File::from(pty.master);
        let mut reader = Reader::new(master.try_clone().unwrap());
        reader.until(&["type Ctrl-a q to detach"], Duration::from_secs(30));
        let raw = tcgetattr(&pty.slave).unwrap();
        assert!(!raw
            .local_flags
            .intersects(LocalFlags::ICANON | LocalFlags::ECHO));
        master.write_all(b"ttytag echo tty-$((1+1))\n").unwrap();
        reader.until(&["tty-2\n", "LIBGO-DONE ttytag 0"], Duration::from_secs(60));
        master.write_all(&[0x01, b'q']).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "Ctrl-a q did not detach");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "console exited {status}");
        reader.until(&["Detached from cli1."], Duration::from_secs(5));
        let after = tcgetattr(&pty.slave).unwrap();
        assert_eq!(after.local_flags, before.local_flags);
        assert_eq!(after.input_flags, before.input_flags);
        assert_eq!(after.output_flags, before.output_flags);
    }

    // A snapshot of the running VM.
    let snap: Value =
        serde_json::from_str(&cli.ok(&["vm", "snapshot", "create", "cli1", "s1", "-f", "json"]))
            .unwrap();
    assert_eq!(snap["name"], "s1");
    let snaps = cli.ok(&["vm", "snapshot", "list", "cli1", "-q"]);
    assert_eq!(snaps, "s1\n");

    // An unknown VM: exit 1 with the server's message.
    let (code, missing) = d
        .req("POST", "/api/v1/vms/nosuchvm/reboot", Some(json!({})))
        .await;
    assert_eq!(code, 404, "{missing}");
    let stderr = cli.fails(1, &["vm", "reboot", "nosuchvm"]);
    assert_eq!(
        stderr.trim(),
        format!("Error: {}", missing["error"]["message"].as_str().unwrap())
    );

    // Stop, then delete; the deleted VM is a 404 with the server's message.
    let stopped = cli.ok(&["vm", "stop", "cli1", "--timeout", "30"]);
    assert_eq!(stopped.trim(), "cli1: stopped");
    // An action the lifecycle refuses (pause of a stopped VM): 409, and
    // recorded as a failed job; exit 1 with the reason.
    let stderr = cli.fails(1, &["vm", "pause", "cli1"]);
    let (_, jobs) = d.req("GET", "/api/v1/jobs?type=vm.pause", None).await;
    let failed = &jobs["jobs"][0];
    assert_eq!(failed["state"], "failed", "{jobs}");
    let why = failed["error"].as_str().unwrap();
    assert!(
        stderr.starts_with("Error: ") && stderr.contains(why),
        "{stderr} vs {why}"
    );
    // Export names its volume, shown once the job is done.
    let vol: Value = serde_json::from_str(&cli.ok(&[
        "vm",
        "export",
        "cli1",
        "--disk-format",
        "qcow2",
        "--name",
        "cli1.qcow2",
        "-f",
        "json",
    ]))
    .unwrap();
    assert_eq!(
        (vol["pool"].as_str(), vol["name"].as_str()),
        (Some("default"), Some("cli1.qcow2"))
    );
    assert!(d.image_dir().join("cli1.qcow2").exists());
    assert_eq!(cli.ok(&["vm", "delete", "cli1", "-q"]), "");
    let (code, gone) = d.req("GET", "/api/v1/vms/cli1", None).await;
    assert_eq!(code, 404);
    let stderr = cli.fails(1, &["vm", "show", "cli1"]);
    assert_eq!(
        stderr.trim(),
        format!("Error: {}", gone["error"]["message"].as_str().unwrap())
    );

    // The audit trail saw the CLI's calls on the VM.
    let trail: Value =
        serde_json::from_str(&cli.ok(&["audit", "--target", "vms/cli1", "-f", "json"])).unwrap();
    let calls: Vec<String> = trail
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["method"].as_str().unwrap(),
                e["path"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        calls.contains(&"POST /api/v1/vms/cli1/start".to_owned()),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"DELETE /api/v1/vms/cli1".to_owned()),
        "{calls:?}"
    );

    // Usage errors are exit code 2, as clap's own.
    cli.fails(2, &["vm", "create", "--count", "0"]);
    cli.fails(2, &["vm"]);
    cli.fails(2, &["vm", "list", "--format", "xml"]);
    cli.fails(2, &["job", "wait", "not-a-uuid"]);
    cli.fails(2, &["vm", "set", "x", "novalue"]);
}

/// SHA-256 of the daemon's certificate, from its PEM file.
fn cert_fingerprint(pem: &Path) -> String {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::pem_file_iter(pem)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    libgo::client::fingerprint(der.as_ref())
}

#[tokio::test]
async fn a_tls_remote_is_pinned_and_a_wrong_pin_is_refused() {
    let port = free_port();
    let d = Daemon::start_with(&["--listen", &format!("127.0.0.1:{port}")]).await;
    let url = format!("https://127.0.0.1:{port}");
    let fp = cert_fingerprint(&d.state_dir().join("tls/cert.pem"));
    // The agent logs the same fingerprint the client pins.
    assert!(d.log().contains(&fp), "{fp} not in the log:\n{}", d.log());
    let (code, t) = d
        .req(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "cli", "role": "operator"})),
        )
        .await;
    assert_eq!(code, 201, "{t}");
    let secret = t["secret"].as_str().unwrap();
    let token_id = t["id"].as_str().unwrap();
    let cfg = tempfile::tempdir().unwrap();
    let cli = Cli {
        host: None,
        config: cfg.path().to_owned(),
    };

    // Not a terminal and nothing said about the certificate: refused.
    let stderr = cli.fails(2, &["remote", "add", "prod", &url, "--token", secret]);
    assert!(stderr.contains(&fp), "the fingerprint is shown: {stderr}");
    assert!(stderr.contains("--accept-certificate"), "{stderr}");
    // A fingerprint that is not the server's: refused, nothing stored.
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let stderr = cli.fails(
        1,
        &[
            "remote",
            "add",
            "prod",
            &url,
            "--token",
            secret,
            "--fingerprint",
            &wrong,
        ],
    );
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(!cfg.path().join("config.toml").exists());
    // A token the server does not take: not stored either.
    let stderr = cli.fails(
        1,
        &[
            "remote",
            "add",
            "prod",
            &url,
            "--token",
            "lgo_bad_bad",
            "--accept-certificate",
        ],
    );
    assert!(stderr.contains("Error:"), "{stderr}");

    // On a terminal the question is asked: no keeps nothing.
    let answer = |reply: &[u8]| {
        let pty = nix::pty::openpty(None, None).unwrap();
        let end = |fd: &std::os::fd::OwnedFd| Stdio::from(fd.try_clone().unwrap());
        let mut child = cli
            .cmd(&["remote", "add", "asked", &url, "--token", secret])
            .stdin(end(&pty.slave))
            .stdout(end(&pty.slave))
            .stderr(end(&pty.slave))
            .spawn()
            .unwrap();
        let mut master = std::fs::File::from(pty.master);
        let mut reader = Reader::new(master.try_clone().unwrap());
        reader.until(
            &[&fp, "Trust this certificate? (y/n)"],
            Duration::from_secs(30),
        );
        master.write_all(reply).unwrap();
        let status = child.wait().unwrap();
        (status.code(), reader)
    };
    let (code, mut reader) = answer(b"n\n");
    assert_eq!(code, Some(1));
    reader.until(&["not trusted"], Duration::from_secs(5));
    assert!(!cfg.path().join("config.toml").exists());
    let (code, _) = answer(b"y\n");
    assert_eq!(code, Some(0));
    cli.ok(&["remote", "remove", "asked"]);

    // Accepted: pinned, in a file only its owner reads.
    let out = cli.run(&[
        "remote",
        "add",
        "prod",
        &url,
        "--token",
        secret,
        "--accept-certificate",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&fp));
    let file = cfg.path().join("config.toml");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(&fp), "{text}");

    // Calls over TLS with the token: --remote, the NAME: prefix, the default.
    let me: Value =
        serde_json::from_str(&cli.ok(&["whoami", "--remote", "prod", "-f", "json"])).unwrap();
    assert_eq!(me["caller"], format!("token:{token_id}"));
    assert_eq!(me["transport"], "tcp");
    assert_eq!(
        cli.ok(&["vm", "list", "--remote", "prod", "-f", "json"])
            .trim(),
        "[]"
    );
    let stderr = cli.fails(1, &["vm", "show", "prod:ghost"]);
    let (_, ghost) = d.req("GET", "/api/v1/vms/ghost", None).await;
    assert_eq!(
        stderr.trim(),
        format!("Error: {}", ghost["error"]["message"].as_str().unwrap())
    );
    cli.ok(&["remote", "switch", "prod"]);
    let remotes: Value = serde_json::from_str(&cli.ok(&["remote", "list", "-f", "json"])).unwrap();
    let prod = remotes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "prod")
        .unwrap();
    assert_eq!(prod["default"], true);
    assert_eq!(prod["fingerprint"], fp.as_str());
    let me: Value = serde_json::from_str(&cli.ok(&["whoami", "-f", "json"])).unwrap();
    assert_eq!(me["transport"], "tcp");
    cli.fails(2, &["vm", "list", "--remote", "nowhere"]);

    // LIBGO_HOST over TLS: the fingerprint and token from the environment.
    let env_cli = Cli {
        host: Some(url.clone()),
        config: cfg.path().to_owned(),
    };
    let out = env_cli
        .cmd(&["whoami", "-f", "json"])
        .env("LIBGO_TOKEN", secret)
        .env(
            "LIBGO_FINGERPRINT",
            format!("sha256:{}", fp.replace(':', "").to_lowercase()),
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = env_cli
        .cmd(&["whoami"])
        .env("LIBGO_TOKEN", secret)
        .env("LIBGO_FINGERPRINT", &wrong)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not the pinned"), "{stderr}");

    // A pinned remote whose server shows another certificate is refused.
    std::fs::write(&file, text.replace(&fp, &normalize(&wrong))).unwrap();
    let stderr = cli.fails(1, &["vm", "list", "--remote", "prod"]);
    assert!(stderr.contains("not the pinned"), "{stderr}");

    // A user's login instead of a token: the session is what is stored.
    let (code, u) = d
        .req(
            "POST",
            "/api/v1/users",
            Some(json!({"username": "otto", "password": "otto-password", "role": "viewer"})),
        )
        .await;
    assert_eq!(code, 201, "{u}");
    let add = |password: &str| {
        cli.cmd(&[
            "remote",
            "add",
            "otto",
            &url,
            "--user",
            "otto",
            "--fingerprint",
            &fp,
        ])
        .env("LIBGO_PASSWORD", password)
        .output()
        .unwrap()
    };
    let out = add("wrong-password");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = add("otto-password");
    assert!(out.status.success(), "{out:?}");
    let me: Value =
        serde_json::from_str(&cli.ok(&["whoami", "--remote", "otto", "-f", "json"])).unwrap();
    assert_eq!(
        (me["caller"].as_str(), me["role"].as_str()),
        (Some("user:otto"), Some("viewer"))
    );
    assert!(me["expires_at"].is_number(), "{me}");
    cli.ok(&["remote", "remove", "otto"]);

    cli.ok(&["remote", "remove", "prod"]);
    let remotes: Value = serde_json::from_str(&cli.ok(&["remote", "list", "-f", "json"])).unwrap();
    assert_eq!(remotes.as_array().unwrap().len(), 1, "{remotes}");
    assert_eq!(remotes[0]["name"], "local");
}

fn normalize(fp: &str) -> String {
    libgo::client::normalize_fingerprint(fp).unwrap()
}

#[test]
fn completions_and_man_pages_are_generated() {
    let cfg = tempfile::tempdir().unwrap();
    let cli = Cli {
        host: None,
        config: cfg.path().to_owned(),
    };
    // No configuration is read: a package build may have no home.
    let out = cli
        .cmd(&["completion", "bash"])
        .env_remove("LIBGO_CONFIG_DIR")
        .env_remove("HOME")
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let bash = String::from_utf8(out.stdout).unwrap();
    assert!(
        bash.contains("_libgo()") && bash.contains("snapshot"),
        "{bash}"
    );
    assert!(cli.ok(&["completion", "zsh"]).starts_with("#compdef libgo"));
    assert!(cli
        .ok(&["completion", "fish"])
        .contains("complete -c libgo"));
    cli.fails(2, &["completion", "tcsh"]);
    let page = cli.ok(&["man"]);
    assert!(page.contains(".TH libgo 1"), "{page}");
    let dir = cfg.path().join("man");
    let out = cli
        .cmd(&["man", "--dir", dir.to_str().unwrap()])
        .env_remove("LIBGO_CONFIG_DIR")
        .env_remove("HOME")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for p in [
        "libgo.1",
        "libgo-vm.1",
        "libgo-vm-create.1",
        "libgo-remote-add.1",
    ] {
        let text = std::fs::read_to_string(dir.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert!(text.contains(".TH"), "{p}");
    }
    // Every command's help has examples.
    let help = cli.ok(&["vm", "snapshot", "create", "--help"]);
    assert!(help.contains("Examples:"), "{help}");
}

/// The client library on its own: a job followed to its end through the
/// event stream with its progress, the server's error body in
/// `ClientError::Api`, and a bulk create through the CLI.
#[tokio::test]
async fn the_client_follows_jobs_and_carries_the_error_body() {
    use libgo::client::{Client, ClientError, ListQuery};
    use libgo::model::{CreateVmRequest, JobState, VmSpec};

    let d = Daemon::start().await;
    let client = Client::new(
        format!("unix://{}", d.socket.display()).parse().unwrap(),
        None,
    )
    .unwrap();
    assert_eq!(client.health().await.unwrap().node, d.node);

    let mut events = client.events(&["vm.created"], None).await.unwrap();
    let req = CreateVmRequest {
        name: Some("full1".into()),
        template: None,
        node: None,
        placement: None,
        spec: VmSpec {
            vcpus: Some(1),
            memory: Some(64),
            disk_size: Some(1),
            base_image: Some("base.qcow2".into()),
            clone: Some(libgo::model::CloneMode::Full),
            ..Default::default()
        },
    };
    let accepted = client.create_vm_async(&req).await.unwrap();
    assert_eq!(accepted.vm.as_ref().unwrap().name, "full1");
    let mut seen = Vec::new();
    let job = client
        .follow_job(accepted.job.id, |p| seen.push(p))
        .await
        .unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(seen.last(), Some(&100), "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    let ev = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (ev.kind.as_str(), ev.name.as_deref()),
        ("vm.created", Some("full1"))
    );

    // A second VM of that name: 409 with the server's body.
    match client.create_vm(&req).await {
        Err(ClientError::Api { status, body }) => {
            assert_eq!(status, 409);
            assert_eq!(body.error.code, 409);
            assert_eq!(body.error.status, "RESOURCE_CONFLICT");
            assert!(body.error.request_id.starts_with("req-"), "{body:?}");
        }
        other => panic!("{other:?}"),
    }
    // A job that fails is an error carrying the job: a bulk create whose
    // second item names a base image that does not exist.
    let mut bad = req.clone();
    bad.name = Some("full3".into());
    bad.spec.base_image = Some("missing.qcow2".into());
    let mut good = req.clone();
    good.name = Some("full2".into());
    good.spec.clone = None;
    let accepted = client.create_vms(&[good, bad]).await.unwrap();
    match client.follow_job(accepted.job.id, |_| {}).await {
        Err(ClientError::JobFailed {
            state,
            message,
            job,
            ..
        }) => {
            assert_eq!(state, "failed");
            assert_eq!(message, "1 of 2 tasks failed");
            assert!(
                job.tasks[1]
                    .error
                    .as_deref()
                    .unwrap()
                    .contains("missing.qcow2"),
                "{job:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    client.delete_vm("full2").await.unwrap();

    // Volume content up and down, as streams of bytes.
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let vol = client
        .upload_pool_volume("default", "blob.raw", content.clone())
        .await
        .unwrap();
    assert_eq!((vol.name.as_str(), vol.allocation > 0), ("blob.raw", true));
    let resp = client
        .download_pool_volume("default", "blob.raw")
        .await
        .unwrap();
    let got = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(got == content, "the content came back changed");
    match client.download_pool_volume("default", "nope.raw").await {
        Err(e) => assert_eq!(e.status(), Some(404), "{e}"),
        Ok(r) => panic!("{}", r.status()),
    }

    // Bulk create through the CLI: NAME-1 … NAME-N, one job.
    let cfg = tempfile::tempdir().unwrap();
    let cli = local(&d, cfg.path());

    // The same through the CLI: a file streamed up, and down into a file
    // and to standard output.
    let files = tempfile::tempdir().unwrap();
    let src = files.path().join("blob.bin");
    std::fs::write(&src, &content[..150_001]).unwrap();
    let out = cli.ok(&[
        "volume",
        "upload",
        "default/blob2.raw",
        src.to_str().unwrap(),
        "-f",
        "json",
    ]);
    let vol: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(vol["name"], "blob2.raw", "{out}");
    let dst = files.path().join("down.raw");
    let said = cli.ok(&[
        "volume",
        "download",
        "blob2.raw",
        "-o",
        dst.to_str().unwrap(),
    ]);
    assert!(said.contains("150001 bytes written"), "{said}");
    assert!(
        std::fs::read(&dst).unwrap() == content[..150_001],
        "download differs"
    );
    let piped = cli.run(&["volume", "download", "default/blob2.raw", "-o", "-"]);
    assert!(piped.status.success());
    assert!(
        piped.stdout == content[..150_001],
        "stdout download differs"
    );
    let missing = files.path().join("missing.raw");
    let err = cli.fails(
        1,
        &[
            "volume",
            "download",
            "nope.raw",
            "-o",
            missing.to_str().unwrap(),
        ],
    );
    assert!(
        err.contains("not found") || err.contains("No such"),
        "{err}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(files.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("missing"))
        .collect();
    assert!(leftovers.is_empty(), "a failed download left {leftovers:?}");
    // A file that cannot be read is a usage error, not the server's.
    cli.fails(
        2,
        &["volume", "upload", "default/x.raw", "/nonexistent/file"],
    );
    cli.ok(&["volume", "rm", "default/blob2.raw"]);
    let out = cli.ok(&[
        "vm",
        "create",
        "bulk",
        "--count",
        "2",
        "--vcpus",
        "1",
        "--memory",
        "64",
        "--disk-size",
        "1",
        "--base-image",
        "base.qcow2",
        "-f",
        "csv",
    ]);
    let names: Vec<&str> = out
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(names, ["bulk-1", "bulk-2"], "{out}");
    let list = client
        .vms(&ListQuery::default().filter("sort", "name"))
        .await
        .unwrap();
    assert_eq!(list.total_count, 3);
    assert_eq!(list.vms[0].name, "bulk-1");
}

/// Containers through the CLI (needs dockerd on /var/run/docker.sock): an
/// image imported from a tarball, a container created and started, a
/// command run in it with its exit code, its logs, stop and delete.
#[tokio::test]
async fn a_container_is_driven_by_the_cli() {
    let d = Daemon::start().await;
    let cfg = tempfile::tempdir().unwrap();
    let cli = local(&d, cfg.path());
    let image = format!("libgo-cli-test:{}", std::process::id());
    let name = format!("cli-ct-{}", std::process::id());
    let tar = cfg.path().join("rootfs.tar");
    std::fs::write(
        &tar,
        common::busybox_rootfs_tar(&["sh", "echo", "sleep", "cat"]),
    )
    .unwrap();

    let img: Value = serde_json::from_str(&cli.ok(&[
        "image",
        "import",
        tar.to_str().unwrap(),
        &image,
        "-f",
        "json",
    ]))
    .unwrap();
    assert!(img["id"].as_str().unwrap().starts_with("sha256:"), "{img}");
    let ct: Value = serde_json::from_str(&cli.ok(&[
        "container",
        "create",
        &image,
        "--name",
        &name,
        "--start",
        "-f",
        "json",
        "--",
        "sh",
        "-c",
        "echo hello-from-ct; sleep 1000",
    ]))
    .unwrap();
    assert_eq!(ct["status"], "running", "{ct}");
    let listed = cli.ok(&["container", "ls", "-q"]);
    assert!(
        listed.lines().any(|l| l == ct["id"].as_str().unwrap()),
        "{listed}"
    );

    let out = cli.ok(&["container", "exec", &name, "--", "cat", "/etc/hostname"]);
    assert!(!out.trim().is_empty());
    let code = cli
        .run(&["container", "exec", &name, "--", "sh", "-c", "exit 7"])
        .status
        .code();
    assert_eq!(code, Some(7), "exec exits with the command's code");
    let logs = cli.ok(&["container", "logs", &name]);
    assert!(logs.contains("hello-from-ct"), "{logs}");

    // Delete of a running container wants --force: the server's 409.
    let stderr = cli.fails(1, &["container", "rm", &name]);
    assert!(stderr.starts_with("Error: "), "{stderr}");
    assert_eq!(
        cli.ok(&["container", "stop", &name, "--timeout", "1"])
            .trim(),
        format!("{name}: stopped")
    );
    cli.ok(&["container", "rm", &name]);
    cli.fails(1, &["container", "show", &name]);
    cli.ok(&["image", "rm", &image, "--force"]);
}
