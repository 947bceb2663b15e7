//! A real etcd (Debian's `etcd-server`, `/usr/bin/etcd`) for a test: its
//! own data directory and ports, ready once it answers `/health` with a
//! leader, killed and removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ETCD_BINARY: &str = "/usr/bin/etcd";

pub struct EtcdServer {
    pub dir: tempfile::TempDir,
    pub bind_ip: String,
    pub client_port: u16,
    pub peer_port: u16,
    child: Option<Child>,
}

/// A port free on `ip` right now.
fn free_port_on(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap_or_else(|e| panic!("binding {ip}:0: {e}"))
        .local_addr()
        .unwrap()
        .port()
}

fn host(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    }
}

impl EtcdServer {
    /// An etcd on loopback.
    pub async fn start() -> EtcdServer {
        EtcdServer::start_on("127.0.0.1").await
    }

    /// An etcd listening on `bind_ip` (e.g. a bridge address that agents
    /// in network namespaces reach).
    pub async fn start_on(bind_ip: &str) -> EtcdServer {
        assert!(
            Path::new(ETCD_BINARY).exists(),
            "{ETCD_BINARY} missing: apt-get install etcd-server (scripts/setup.sh does)"
        );
        let mut last_log = String::new();
        // Ports are picked free and then released: another process may take
        // one first, so try a few times.
        for _ in 0..3 {
            let mut s = EtcdServer {
                bind_ip: bind_ip.to_owned(),
                client_port: free_port_on(bind_ip),
                peer_port: free_port_on(bind_ip),
                child: None,
                dir: tempfile::Builder::new()
                    .prefix("etcd")
                    .tempdir_in("/tmp")
                    .unwrap(),
            };
            s.spawn();
            if s.wait_ready(Duration::from_secs(30)).await {
                return s;
            }
            last_log = s.log();
        }
        panic!("etcd did not start on {bind_ip}:\n{last_log}");
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `http://IP:PORT`, the client URL.
    pub fn url(&self) -> String {
        format!("http://{}:{}", host(&self.bind_ip), self.client_port)
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        format!("{}:{}", host(&self.bind_ip), self.client_port)
            .parse()
            .unwrap()
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let h = host(&self.bind_ip);
        let client = format!("http://{h}:{}", self.client_port);
        let peer = format!("http://{h}:{}", self.peer_port);
        let child = Command::new(ETCD_BINARY)
            .arg("--name")
            .arg("test")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("test={peer}"))
            .arg("--initial-cluster-state")
            .arg("new")
            .env_remove("ETCD_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
    }

    /// Polls `/health` until it says true (a leader is elected).
    async fn wait_ready(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            if let Ok(tcp) = tokio::net::TcpStream::connect(self.addr()).await {
                if let Ok((200, _, body)) =
                    super::request_on(tcp, "GET", "/health", None, &[]).await
                {
                    if String::from_utf8_lossy(&body).contains("\"true\"") {
                        return true;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("etcd running").id()
    }

    /// Kills etcd (SIGKILL) and reaps it; its data stays for [`restart`].
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same ports and data.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        assert!(
            self.wait_ready(Duration::from_secs(30)).await,
            "etcd did not come back:\n{}",
            self.log()
        );
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}
