//! Users, API tokens and revoked sessions. Passwords and token secrets are
//! stored only as hashes.

use rusqlite::{params, OptionalExtension};

use super::{Result, Store, StoreError};

/// A user as stored: the password as an argon2 PHC string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub username: String,
    pub role: String,
    pub hash: String,
    /// Bumped by a password change: sessions issued before are void.
    pub generation: i64,
    pub created_at: String,
}

/// An API token as stored: the secret as a SHA-256 digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub id: String,
    pub name: String,
    /// Who created it (`user:alice`, `uid:0`).
    pub owner: String,
    pub role: String,
    pub hash: Vec<u8>,
    pub created_at: String,
    /// Seconds since the epoch; none: it does not expire.
    pub expires_at: Option<i64>,
    /// Its calls are not counted against the rate limits.
    pub unlimited: bool,
}

fn user(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        username: r.get(0)?,
        role: r.get(1)?,
        hash: r.get(2)?,
        generation: r.get(3)?,
        created_at: r.get(4)?,
    })
}

fn token(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok(TokenRow {
        id: r.get(0)?,
        name: r.get(1)?,
        owner: r.get(2)?,
        role: r.get(3)?,
        hash: r.get(4)?,
        created_at: r.get(5)?,
        expires_at: r.get(6)?,
        unlimited: r.get(7)?,
    })
}

impl Store {
    pub fn insert_user(&self, u: &UserRow) -> Result<()> {
        let done = self.conn().execute(
            "INSERT INTO users (username, role, hash, generation, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(username) DO NOTHING",
            params![u.username, u.role, u.hash, u.generation, u.created_at],
        )?;
        if done == 0 {
            return Err(StoreError::NameTaken(u.username.clone()));
        }
        Ok(())
    }

    /// Replaces a user's role, hash and generation; false if there is none.
    pub fn update_user(&self, u: &UserRow) -> Result<bool> {
        Ok(self.conn().execute(
            "UPDATE users SET role = ?2, hash = ?3, generation = ?4 WHERE username = ?1",
            params![u.username, u.role, u.hash, u.generation],
        )? == 1)
    }

    /// Removes a user and every token they created, in one transaction.
    pub fn delete_user(&self, username: &str, owner_label: &str) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let gone = tx.execute("DELETE FROM users WHERE username = ?1", params![username])?;
        tx.execute("DELETE FROM tokens WHERE owner = ?1", params![owner_label])?;
        tx.commit()?;
        Ok(gone == 1)
    }

    pub fn users(&self) -> Result<Vec<UserRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT username, role, hash, generation, created_at FROM users ORDER BY username",
        )?;
        let rows = stmt.query_map([], user)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    pub fn user(&self, username: &str) -> Result<Option<UserRow>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT username, role, hash, generation, created_at FROM users WHERE username = ?1",
                params![username],
                user,
            )
            .optional()?)
    }

    pub fn insert_token(&self, t: &TokenRow) -> Result<()> {
        self.conn().execute(
            "INSERT INTO tokens (id, name, owner, role, hash, created_at, expires_at, unlimited) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![t.id, t.name, t.owner, t.role, t.hash, t.created_at, t.expires_at, t.unlimited],
        )?;
        Ok(())
    }

    pub fn tokens(&self) -> Result<Vec<TokenRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, name, owner, role, hash, created_at, expires_at, unlimited FROM tokens ORDER BY created_at, id",
        )?;
        let rows = stmt.query_map([], token)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Deletes a token; false if there was none.
    pub fn delete_token(&self, id: &str) -> Result<bool> {
        Ok(self
            .conn()
            .execute("DELETE FROM tokens WHERE id = ?1", params![id])?
            == 1)
    }

    /// Remembers a session ended before its expiry (a logout).
    pub fn revoke_session(&self, jti: &str, expires_at: i64) -> Result<()> {
        self.conn().execute(
            "INSERT OR IGNORE INTO revoked_sessions (jti, expires_at) VALUES (?1, ?2)",
            params![jti, expires_at],
        )?;
        Ok(())
    }

    /// Sessions revoked and not yet expired at `now`; older ones are dropped.
    pub fn revoked_sessions(&self, now: i64) -> Result<Vec<(String, i64)>> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM revoked_sessions WHERE expires_at < ?1",
            params![now],
        )?;
        let mut stmt = conn.prepare("SELECT jti, expires_at FROM revoked_sessions")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_tokens_and_revocations() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let mut alice = UserRow {
            username: "alice".into(),
            role: "operator".into(),
            hash: "$argon2id$x".into(),
            generation: 0,
            created_at: "t".into(),
        };
        store.insert_user(&alice).unwrap();
        assert!(matches!(
            store.insert_user(&alice),
            Err(StoreError::NameTaken(_))
        ));
        alice.generation = 1;
        assert!(store.update_user(&alice).unwrap());
        assert_eq!(store.user("alice").unwrap(), Some(alice.clone()));
        let t = TokenRow {
            id: "t1".into(),
            name: "ci".into(),
            owner: "user:alice".into(),
            role: "viewer".into(),
            hash: vec![1, 2, 3],
            created_at: "t".into(),
            expires_at: None,
            unlimited: false,
        };
        store.insert_token(&t).unwrap();
        store
            .insert_token(&TokenRow {
                id: "t2".into(),
                owner: "uid:0".into(),
                unlimited: true,
                ..t.clone()
            })
            .unwrap();
        // Removing a user takes their tokens with them, not others'.
        assert!(store.delete_user("alice", "user:alice").unwrap());
        assert_eq!(store.users().unwrap(), vec![]);
        let left: Vec<_> = store
            .tokens()
            .unwrap()
            .into_iter()
            .map(|t| (t.id, t.unlimited))
            .collect();
        assert_eq!(left, vec![("t2".to_string(), true)]);
        assert!(store.delete_token("t2").unwrap());
        assert!(!store.delete_token("t2").unwrap());

        store.revoke_session("j1", 100).unwrap();
        store.revoke_session("j2", 300).unwrap();
        assert_eq!(
            store.revoked_sessions(200).unwrap(),
            vec![("j2".to_string(), 300)]
        );
    }
}
