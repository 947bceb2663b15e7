//! Login sessions: HS256 JWTs signed with a key kept in the state
//! directory, carrying the user, the user's password generation (a password
//! change voids older sessions) and an id (a logout revokes that id).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub gen: i64,
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
}

pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl Keys {
    /// Reads the 32-byte signing key, or makes one (readable by root only).
    pub fn load_or_create(path: &Path) -> std::io::Result<Keys> {
        let secret = match std::fs::read(path) {
            Ok(s) if s.len() >= 32 => s,
            Ok(_) => {
                return Err(std::io::Error::other(
                    "the session key is shorter than 32 bytes",
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let secret: [u8; 32] = rand::random();
                let tmp = path.with_extension("tmp");
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(&secret)?;
                f.sync_all()?;
                std::fs::rename(&tmp, path)?;
                secret.to_vec()
            }
            Err(e) => return Err(e),
        };
        Ok(Keys {
            encoding: EncodingKey::from_secret(&secret),
            decoding: DecodingKey::from_secret(&secret),
        })
    }

    pub fn issue(
        &self,
        user: &str,
        gen: i64,
        now: i64,
        exp: i64,
    ) -> jsonwebtoken::errors::Result<String> {
        let claims = Claims {
            sub: user.to_owned(),
            gen,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            iat: now,
            exp,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// The claims of a well-signed, unexpired session (no leeway).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, String> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp", "sub"]);
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).map_err(|e| e.to_string())?;
        if data.claims.exp <= now {
            return Err("expired".into());
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_keys_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let k = Keys::load_or_create(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let now = crate::clock::unix_now();
        let t = k.issue("alice", 2, now, now + 60).unwrap();
        let c = Keys::load_or_create(&path)
            .unwrap()
            .verify(&t, now)
            .unwrap();
        assert_eq!((c.sub.as_str(), c.gen), ("alice", 2));
        assert!(k.verify(&t, now + 61).is_err());
        let old = k.issue("alice", 2, now - 120, now - 60).unwrap();
        assert!(k.verify(&old, now).is_err());
        // Another key does not accept it.
        let other = Keys::load_or_create(&dir.path().join("k2")).unwrap();
        assert!(other.verify(&t, now).is_err());
    }
}
