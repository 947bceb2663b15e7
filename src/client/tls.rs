//! TLS to an agent whose certificate is pinned by its SHA-256 fingerprint
//! (the agent's self-signed certificate is trusted by no CA: the pin is
//! the trust), and a probe that reads the fingerprint of a server before
//! it is pinned.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::{ClientError, Result};

/// SHA-256 of a DER certificate, as the agent logs it: `AB:CD:…`.
pub fn fingerprint(der: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A fingerprint as given by a person: `AB:CD:…` (any case), `sha256:abcd…`
/// or bare hex; answered in the agent's form, `AB:CD:…`.
pub fn normalize_fingerprint(s: &str) -> Result<String> {
    let t = s.trim();
    let t = t
        .strip_prefix("sha256:")
        .or_else(|| t.strip_prefix("SHA256:"))
        .unwrap_or(t);
    let hex: String = t.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ClientError::Invalid(format!(
            "not a SHA-256 fingerprint: {s:?} (want AB:CD:… or sha256:<64 hex digits>)"
        )));
    }
    Ok(hex
        .to_ascii_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":"))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Accepts the server's certificate when its fingerprint is the pinned
/// one (without a pin: any, recording what it saw — the probe). The
/// handshake's signatures are still checked against that certificate, so
/// only the holder of its key gets through.
#[derive(Debug)]
struct Pinned {
    want: Option<String>,
    seen: Arc<Mutex<Option<String>>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint(end_entity.as_ref());
        *crate::sync::lock(&self.seen) = Some(got.clone());
        match &self.want {
            None => Ok(ServerCertVerified::assertion()),
            Some(want) if *want == got => Ok(ServerCertVerified::assertion()),
            Some(want) => Err(rustls::Error::General(format!(
                "the server's certificate fingerprint {got} is not the pinned {want}"
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn config(want: Option<String>, seen: Arc<Mutex<Option<String>>>) -> Arc<rustls::ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(Pinned {
        want,
        seen,
        provider: provider.clone(),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// A client configuration that takes exactly the certificate `want`
/// (`AB:CD:…`).
pub(super) fn pinned_config(want: Option<String>) -> Arc<rustls::ClientConfig> {
    config(want, Arc::default())
}

fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| ClientError::Invalid(format!("not a host name {host:?}: {e}")))
}

pub(super) async fn handshake(
    config: Arc<rustls::ClientConfig>,
    host: &str,
    tcp: tokio::net::TcpStream,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    tokio_rustls::TlsConnector::from(config)
        .connect(server_name(host)?, tcp)
        .await
        .map_err(|e| {
            if e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) {
                ClientError::Tls(format!("TLS with {host} failed: {e}"))
            } else {
                ClientError::Transport(format!("TLS with {host} failed: {e}"))
            }
        })
}

/// Connects to `host:port`, completes a TLS handshake trusting nothing
/// and answers the fingerprint of the certificate the server showed, to
/// be shown to a person and pinned. Nothing is sent over the connection.
pub async fn probe_fingerprint(host: &str, port: u16) -> Result<String> {
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .map_err(|_| ClientError::Transport(format!("no connection to {host}:{port} within 30 s")))?
    .map_err(|e| ClientError::Transport(format!("cannot connect to {host}:{port}: {e}")))?;
    let seen = Arc::new(Mutex::new(None));
    let stream = handshake(config(None, seen.clone()), host, tcp).await?;
    drop(stream);
    let got = crate::sync::lock(&seen).clone();
    got.ok_or_else(|| ClientError::Tls(format!("{host}:{port} showed no certificate")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_have_the_agents_form_whatever_form_they_are_given_in() {
        let der = b"not really a certificate";
        let fp = fingerprint(der);
        // The same form the agent logs at start.
        assert_eq!(fp, crate::api::tls::fingerprint(der));
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert_eq!(normalize_fingerprint(&fp).unwrap(), fp);
        assert_eq!(normalize_fingerprint(&fp.to_lowercase()).unwrap(), fp);
        let hex = fp.replace(':', "").to_lowercase();
        assert_eq!(normalize_fingerprint(&format!("sha256:{hex}")).unwrap(), fp);
        assert_eq!(normalize_fingerprint(&hex).unwrap(), fp);
        for bad in [
            "",
            "sha256:",
            "AB:CD",
            &format!("{hex}00"),
            &hex.replace('a', "g"),
        ] {
            assert!(normalize_fingerprint(bad).is_err(), "{bad}");
        }
    }
}
