//! TLS for the TCP listener: the configured certificate and key, or a
//! self-signed pair made on first start in `<state_dir>/tls` (kept across
//! restarts, so clients can pin its fingerprint).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

/// The acceptor and the SHA-256 fingerprint of the served certificate.
pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub fingerprint: String,
    pub cert_path: PathBuf,
    /// Made on this start.
    pub generated: bool,
}

/// SHA-256 of a DER certificate, as `AB:CD:...`: the one form the agent
/// logs and its clients pin.
pub use crate::client::fingerprint;

/// Loads or makes the listener's certificate.
pub fn load(cfg: &Config, node: &str) -> anyhow::Result<Tls> {
    let (cert_path, key_path, generated) = if cfg.tls_cert.as_os_str().is_empty() {
        let dir = cfg.state_dir.join("tls");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let generated = !(cert.exists() && key.exists());
        if generated {
            self_signed(&dir, &cert, &key, node, &cfg.listen)?;
        }
        (cert, key, generated)
    } else {
        (cfg.tls_cert.clone(), cfg.tls_key.clone(), false)
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("reading {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cert_path.display()))?;
    let first = certs
        .first()
        .with_context(|| format!("{} holds no certificate", cert_path.display()))?;
    let fingerprint = fingerprint(first.as_ref());
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("reading the key {}", key_path.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not make a TLS configuration")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        fingerprint,
        cert_path,
        generated,
    })
}

/// Names the certificate covers: localhost, the node, the host name and
/// the listening address when it is a specific one.
fn names(node: &str, listen: &str) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(h) = nix::unistd::gethostname() {
        if let Ok(h) = h.into_string() {
            names.push(h);
        }
    }
    names.push(node.to_owned());
    if let Ok(addr) = listen.parse::<std::net::SocketAddr>() {
        if !addr.ip().is_unspecified() {
            names.push(addr.ip().to_string());
        }
    }
    names.retain(|n| !n.is_empty());
    names.sort();
    names.dedup();
    names
}

fn self_signed(
    dir: &Path,
    cert: &Path,
    key: &Path,
    node: &str,
    listen: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let made = rcgen::generate_simple_self_signed(names(node, listen))
        .context("making a self-signed certificate")?;
    write_new(key, made.signing_key.serialize_pem().as_bytes(), 0o600)?;
    write_new(cert, made.cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_pair_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            state_dir: dir.path().to_owned(),
            listen: "127.0.0.1:0".into(),
            ..Config::default()
        };
        let first = load(&cfg, "node1").unwrap();
        assert!(first.generated);
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("tls/key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load(&cfg, "node1").unwrap();
        assert!(!again.generated);
        assert_eq!(again.fingerprint, first.fingerprint);
        assert!(names("node1", "10.1.2.3:8443").contains(&"10.1.2.3".to_owned()));
        assert!(!names("node1", "0.0.0.0:8443").contains(&"0.0.0.0".to_owned()));
    }
}
