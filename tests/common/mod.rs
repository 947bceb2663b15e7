//! Test harness: a real `libgod` on a private socket and state directory,
//! an HTTP client over its Unix socket, the fixture guest, and helpers that
//! wait on the guest's own console markers (never on fixed sleeps).
#![allow(dead_code)]

pub mod agg;
pub mod etcd;
pub mod netns;
pub mod tgt;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

pub const READY: &str = "LIBGO-READY";

/// The fixture guest built by `fixtures/build.sh`.
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("LIBGO_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/out"));
    for f in [
        "vmlinuz",
        "initrd.img",
        "base.qcow2",
        "bootable.qcow2",
        "cmdline",
    ] {
        assert!(
            dir.join(f).exists(),
            "fixture {} missing: run fixtures/build.sh (or scripts/test)",
            dir.join(f).display()
        );
    }
    dir
}

pub fn fixture_cmdline() -> String {
    std::fs::read_to_string(fixtures().join("cmdline"))
        .unwrap()
        .trim()
        .to_owned()
}

/// A running `libgod` with its own directories under a short /tmp path
/// (Unix socket paths are limited to 108 bytes).
pub struct Daemon {
    pub root: tempfile::TempDir,
    /// The agent's node name (owner label of its containers).
    pub node: String,
    pub socket: PathBuf,
    pub extra_args: Vec<String>,
    /// Environment variables of the daemon (each `spawn` uses the current
    /// list, so a restart can drop one).
    pub env: Vec<(String, String)>,
    /// The network namespace (`ip netns` name) the daemon runs in; None:
    /// the host's. See [`netns`]: only its network is the namespace's, its
    /// files, cgroups and admin socket are the host's.
    pub netns: Option<String>,
    child: Option<Child>,
}

impl Daemon {
    pub fn state_dir(&self) -> PathBuf {
        self.root.path().join("state")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.root.path().join("run")
    }
    pub fn image_dir(&self) -> PathBuf {
        self.root.path().join("images")
    }
    pub fn readonly_socket(&self) -> PathBuf {
        self.root.path().join("libgo-ro.sock")
    }

    /// Starts a daemon whose default pool holds the fixture guest.
    pub async fn start() -> Daemon {
        Daemon::start_with(&[]).await
    }

    pub async fn start_with(extra: &[&str]) -> Daemon {
        Daemon::start_with_env(extra, &[]).await
    }

    /// A daemon with extra flags and environment variables.
    pub async fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut d = Daemon::prepare(extra, env);
        d.spawn().await;
        d
    }

    /// A daemon's directories (the fixture guest in its default pool) and
    /// arguments, not started yet: set `node` or `netns`, then `spawn`.
    pub fn prepare(extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let root = tempfile::Builder::new()
            .prefix("lg")
            .tempdir_in("/tmp")
            .unwrap();
        // QEMU runs unprivileged: it must pass through to its VM's files.
        std::fs::set_permissions(
            root.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .unwrap();
        let images = root.path().join("images");
        std::fs::create_dir_all(&images).unwrap();
        let fx = fixtures();
        for f in ["vmlinuz", "initrd.img", "base.qcow2", "bootable.qcow2"] {
            std::fs::copy(fx.join(f), images.join(f)).unwrap();
        }
        let node = format!(
            "test-{}",
            root.path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_lowercase()
                .replace(['_', '.'], "-")
        );
        Daemon {
            node,
            socket: root.path().join("libgo.sock"),
            root,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            netns: None,
            child: None,
        }
    }

    pub async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join("libgod.log"))
            .unwrap();
        let libgod = env!("CARGO_BIN_EXE_libgod");
        let mut cmd = match &self.netns {
            None => Command::new(libgod),
            Some(ns) => {
                let stash = self.root.path().join("cgroup-stash");
                std::fs::create_dir_all(&stash).unwrap();
                netns::enter_command(ns, &stash, libgod)
            }
        };
        let child = cmd
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--run-dir")
            .arg(self.run_dir())
            .arg("--image-dir")
            .arg(self.image_dir())
            .arg("--node-name")
            .arg(&self.node)
            .arg("--readonly-socket")
            .arg(self.readonly_socket())
            .arg("--accel")
            .arg(std::env::var("LIBGO_TEST_ACCEL").unwrap_or_else(|_| "auto".into()))
            .args(&self.extra_args)
            .env("RUST_LOG", "info,libgo=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn libgod");
        self.child = Some(child);
        let log = self.root.path().join("libgod.log");
        wait_healthy(&self.socket, &mut self.child, "libgod", &log).await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("libgod.log")).unwrap_or_default()
    }

    /// libgod's pid (in a namespace too: the wrappers exec it).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends `sig` to the daemon and reaps it.
    pub fn kill(&mut self, sig: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        child.wait().unwrap()
    }

    pub async fn try_req(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let (status, _, body) = self
            .raw(method, path, body.map(|b| b.to_string()), &[])
            .await?;
        let v = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body)
                .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&body)))?
        };
        Ok((status, v))
    }

    /// One HTTP request over the Unix socket: status, headers, body bytes.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, hyper::HeaderMap, Vec<u8>), String> {
        raw_request(&self.socket, method, path, body, headers).await
    }

    pub async fn req(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.try_req(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log()))
    }

    /// Creates a VM that boots the fixture kernel; returns its JSON.
    pub async fn create_fixture_vm(&self, name: &str, extra_cmdline: &str) -> Value {
        let cmdline = format!("{} {extra_cmdline}", fixture_cmdline());
        let (code, vm) = self
            .req(
                "POST",
                "/api/v1/vms",
                Some(json!({
                    "name": name, "vcpus": 1, "memory": 128, "disk_size": 1,
                    "base_image": "base.qcow2",
                    "boot": {"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": cmdline.trim()},
                })),
            )
            .await;
        assert_eq!(code, 201, "{vm}");
        vm
    }

    pub fn console_log(&self, id: &str) -> PathBuf {
        self.state_dir().join("vms").join(id).join("console.log")
    }

    pub fn console_text(&self, id: &str) -> String {
        String::from_utf8_lossy(&std::fs::read(self.console_log(id)).unwrap_or_default())
            .replace('\r', "")
    }

    /// Waits until the console shows `marker` on a line for the `nth` time
    /// (1-based); returns that line.
    pub async fn wait_marker(
        &self,
        id: &str,
        marker: &str,
        nth: usize,
        timeout: Duration,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.console_text(id);
            let hits: Vec<&str> = text.lines().filter(|l| l.starts_with(marker)).collect();
            if hits.len() >= nth {
                return hits[nth - 1].to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "marker {marker} #{nth} not seen within {timeout:?}; console:\n{text}\ndaemon:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn marker_count(&self, id: &str, marker: &str) -> usize {
        self.console_text(id)
            .lines()
            .filter(|l| *l == marker)
            .count()
    }

    /// Runs a shell command in the guest over its serial console and returns
    /// its exit code and output. Reads the socket itself (the log file may
    /// duplicate bytes while a client is connected) and stays connected until
    /// `LIBGO-DONE` (QEMU drops unread input of a client that leaves).
    pub async fn guest_cmd(&self, id: &str, cmd: &str, timeout: Duration) -> (i32, String) {
        use tokio::io::AsyncReadExt;
        let tag = rand_tag();
        let sock = self.run_dir().join("vms").join(id).join("console.sock");
        let mut s = tokio::net::UnixStream::connect(&sock)
            .await
            .expect("console socket");
        s.write_all(format!("{tag} {cmd}\n").as_bytes())
            .await
            .unwrap();
        let done = format!("LIBGO-DONE {tag} ");
        let mut buf = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let text = String::from_utf8_lossy(&buf).replace('\r', "");
            if let Some(pos) = text.find(&done) {
                if let Some(end) = text[pos..].find('\n') {
                    let rc = text[pos + done.len()..pos + end].trim().parse().unwrap();
                    return (rc, text[..pos].trim_end().to_owned());
                }
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => panic!("console closed before {done}: {text}"),
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => panic!("no {done} within {timeout:?}: {text}"),
            }
        }
    }

    /// Starts `tick N` lines every 200 ms on the guest's serial console and
    /// waits for the first three: a guest that keeps running shows it.
    pub async fn start_ticking(&self, id: &str) {
        let (rc, out) = self
            .guest_cmd(
                id,
                "(i=0; while :; do i=$((i+1)); echo \"tick $i\" >/dev/ttyS0; usleep 200000; done) </dev/null >/dev/null 2>&1 &",
                Duration::from_secs(30),
            )
            .await;
        assert_eq!(rc, 0, "{out}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while ticks(&self.console_text(id)).len() < 3 {
            assert!(
                Instant::now() < deadline,
                "no ticks: {}",
                self.console_text(id)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits until the process just spawned as `child` answers `/health` on
/// `socket`; fails with its log if it exits or stays silent for 30 s.
pub async fn wait_healthy(socket: &Path, child: &mut Option<Child>, what: &str, log: &Path) {
    let log = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, _, _)) = raw_request(socket, "GET", "/health", None, &[]).await {
            return;
        }
        if let Some(Ok(Some(status))) = child.as_mut().map(|c| c.try_wait()) {
            panic!("{what} exited during start ({status}):\n{}", log());
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not answer:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the `libgo` CLI against the API on `socket`, with `config_dir` as its
/// configuration directory and no credentials from the environment: its
/// exit code, stdout and stderr.
pub fn libgo_cli(socket: &Path, config_dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_libgo"))
        .args(args)
        .env("LIBGO_HOST", format!("unix://{}", socket.display()))
        .env("LIBGO_CONFIG_DIR", config_dir)
        .env_remove("LIBGO_TOKEN")
        .env_remove("LIBGO_REMOTE")
        .env_remove("LIBGO_FINGERPRINT")
        .stdin(Stdio::null())
        .output()
        .expect("run libgo");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `tick N` numbers on a console (see `Daemon::start_ticking`), in order.
pub fn ticks(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("tick ")?.trim().parse().ok())
        .collect()
}

fn rand_tag() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    std::process::id() * 1000 + N.fetch_add(1, Ordering::Relaxed)
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Kill every QEMU this daemon's VMs run, then the daemon.
        let run = self.run_dir().join("vms");
        if let Ok(dirs) = std::fs::read_dir(&run) {
            for d in dirs.flatten() {
                if let Ok(pid) = std::fs::read_to_string(d.path().join("qemu.pid")) {
                    if let Ok(pid) = pid.trim().parse::<i32>() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The agent had no chance to remove its VMs' cgroups (named by VM id).
        if let Ok(dirs) = std::fs::read_dir(&run) {
            let ids: Vec<_> = dirs.flatten().map(|d| d.file_name()).collect();
            remove_vm_cgroups(&ids);
        }
    }
}

/// Removes the cgroups `<hierarchy>/libgo/<id>` of VMs whose QEMU was just
/// killed, waiting briefly for the kernel to let the last process go.
fn remove_vm_cgroups(ids: &[std::ffi::OsString]) {
    let root = Path::new("/sys/fs/cgroup");
    let mut parents = vec![root.join("libgo")];
    if let Ok(hierarchies) = std::fs::read_dir(root) {
        parents.extend(hierarchies.flatten().map(|h| h.path().join("libgo")));
    }
    let groups: Vec<PathBuf> = parents
        .iter()
        .flat_map(|p| ids.iter().map(move |id| p.join(id)))
        .filter(|g| g.is_dir())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    for g in groups {
        while std::fs::remove_dir(&g).is_err() && g.is_dir() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A slot for booting a guest: at most `LIBGO_TEST_GUESTS` (default 2)
/// guests boot at once across every test process (TCG is CPU-hungry).
pub struct GuestSlot {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

pub async fn guest_slot() -> GuestSlot {
    let slots: usize = std::env::var("LIBGO_TEST_GUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    loop {
        for i in 0..slots {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o666)
                .open(format!("/tmp/libgo-test-guest-slot-{i}"))
                .unwrap();
            if let Ok(lock) =
                nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
            {
                return GuestSlot { _lock: lock };
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next())
                .is_some_and(|c| c != 'Z')
        })
        .unwrap_or(false)
}

/// The live processes whose command line carries `id` (a VM's QEMU, or
/// whatever was launched for it), from /proc.
pub fn processes_carrying(id: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(id.len()).any(|w| w == id.as_bytes()))
        })
        .filter(|pid| pid_alive(*pid))
        .collect()
}

/// The blkio cgroup a VM's QEMU runs in while the VM has I/O limits, or
/// None where the host has no cgroup v1 blkio hierarchy to look in.
pub fn vm_cgroup(id: &str) -> Option<PathBuf> {
    let blkio = Path::new("/sys/fs/cgroup/blkio");
    blkio.exists().then(|| blkio.join("libgo").join(id))
}

pub const BOOT: Duration = Duration::from_secs(90);

pub async fn wait_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while pid_alive(pid) {
        assert!(Instant::now() < deadline, "pid {pid} did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A bare HTTP client for a daemon socket (for requests sent from tasks).
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: PathBuf) -> Client {
        Client { socket }
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, hyper::HeaderMap, Vec<u8>), String> {
        raw_request(&self.socket, method, path, body, headers).await
    }
}

pub async fn raw_request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<String>,
    headers: &[(&str, &str)],
) -> Result<(u16, hyper::HeaderMap, Vec<u8>), String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| e.to_string())?;
    request_on(stream, method, path, body, headers).await
}

/// A request whose body is bytes (an upload): status, headers, body.
pub async fn send_bytes(
    socket: &Path,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, hyper::HeaderMap, Vec<u8>), String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://localhost{path}"))
        .header("host", "localhost")
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, headers, bytes.to_vec()))
}

/// One HTTP/1.1 request over an open connection (Unix, TCP or TLS).
pub async fn request_on<IO>(
    stream: IO,
    method: &str,
    path: &str,
    body: Option<String>,
    headers: &[(&str, &str)],
) -> Result<(u16, hyper::HeaderMap, Vec<u8>), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://localhost{path}"))
        .header("host", "localhost");
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, headers, bytes.to_vec()))
}

/// The median of some measurements.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A root filesystem of busybox-static with these applets, as a tarball
/// (container images are made locally: no registry is reachable).
pub fn busybox_rootfs_tar(applets: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    for d in ["bin", "tmp", "proc", "sys", "dev", "etc", "data"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in applets {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let tar = dir.path().join("rootfs.tar");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::read(tar).unwrap()
}

/// A client of the TCP listener: TLS trusting one certificate (pinned), or
/// plain HTTP; with a bearer credential or none.
#[derive(Clone)]
pub struct Remote {
    pub addr: std::net::SocketAddr,
    pub tls: Option<tokio_rustls::TlsConnector>,
    pub token: Option<String>,
}

impl Remote {
    /// Trusts exactly the PEM certificate at `cert` (the daemon's own).
    pub fn tls(addr: std::net::SocketAddr, cert: &Path) -> Remote {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(cert).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Remote {
            addr,
            tls: Some(tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))),
            token: None,
        }
    }

    pub fn plain(addr: std::net::SocketAddr) -> Remote {
        Remote {
            addr,
            tls: None,
            token: None,
        }
    }

    pub fn with_token(&self, token: &str) -> Remote {
        Remote {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, hyper::HeaderMap, Vec<u8>), String> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(a) = &auth {
            all.push(("authorization", a));
        }
        match &self.tls {
            None => request_on(tcp, method, path, body, &all).await,
            Some(c) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let tls = c.connect(name, tcp).await.map_err(|e| e.to_string())?;
                request_on(tls, method, path, body, &all).await
            }
        }
    }

    pub async fn req(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (code, _, bytes) = self
            .raw(method, path, body.map(|b| b.to_string()), &[])
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!("{method} {path}: {e}: {}", String::from_utf8_lossy(&bytes))
            })
        };
        (code, v)
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
