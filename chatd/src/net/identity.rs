//! Who a server (or client) is: an ed25519 key pair, its public key as the
//! peer id, the id's short text form, and `ID@HOST:PORT` addresses.
//!
//! Owns the key file format. Must not touch sockets or TLS (see `tls.rs`).
//!
//! Text form of an id: the 32-byte public key in lowercase RFC 4648 base32
//! without padding (52 characters, no ambiguous case). The key file holds
//! the 32-byte secret seed in the same encoding, one line, mode 0600.

use data_encoding::BASE32_NOPAD;
use ed25519_dalek::SigningKey;
use overlay::PeerId;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use thiserror::Error;

/// Why an id, address or key file could not be read.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// Not 52 base32 characters decoding to 32 bytes.
    #[error("invalid id {0:?}: expected 52 base32 characters (a-z, 2-7)")]
    BadId(String),
    /// Not `ID@HOST:PORT`.
    #[error(
        "invalid server address {0:?}: expected ID@HOST:PORT, e.g. {example}@127.0.0.1:7000",
        example = "abcd…"
    )]
    BadAddr(String),
    /// There is no key file at this path.
    #[error("no key file at {path} (create one with: chatd keygen --out {path})")]
    NoKeyFile {
        /// The file.
        path: String,
    },
    /// The key file could not be read or written.
    #[error("key file {path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// What failed (in the message, not a separate cause: printed
        /// once).
        error: std::io::Error,
    },
    /// The key file does not hold a key.
    #[error("key file {path}: {reason}")]
    BadKeyFile {
        /// The file.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// A peer id in its text form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id(pub PeerId);

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE32_NOPAD.encode(self.0.as_bytes()).to_ascii_lowercase())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.to_string();
        write!(f, "{}", &s[..10])
    }
}

impl FromStr for Id {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = BASE32_NOPAD
            .decode(s.trim().to_ascii_uppercase().as_bytes())
            .map_err(|_| IdentityError::BadId(s.to_string()))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| IdentityError::BadId(s.to_string()))?;
        Ok(Id(PeerId(key)))
    }
}

/// A server's identity and one address it can be dialed at: `ID@HOST:PORT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerAddr {
    /// The server's id (its key is pinned when dialing).
    pub id: Id,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.addr)
    }
}

impl FromStr for ServerAddr {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, addr) = s
            .split_once('@')
            .ok_or_else(|| IdentityError::BadAddr(s.to_string()))?;
        let id = id.parse()?;
        let addr = addr
            .parse()
            .map_err(|_| IdentityError::BadAddr(s.to_string()))?;
        Ok(ServerAddr { id, addr })
    }
}

/// An ed25519 key pair.
#[derive(Clone)]
pub struct Keypair {
    secret: SigningKey,
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair({:?})", self.id())
    }
}

impl Keypair {
    /// A new random key from the operating system's RNG.
    pub fn generate() -> Self {
        Keypair {
            secret: SigningKey::generate(&mut rand::rng()),
        }
    }

    /// The key for a 32-byte secret seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Keypair {
            secret: SigningKey::from_bytes(&seed),
        }
    }

    /// The public id.
    pub fn id(&self) -> Id {
        Id(PeerId(self.secret.verifying_key().to_bytes()))
    }

    /// The signing key (for TLS and record signatures).
    pub fn signing_key(&self) -> &SigningKey {
        &self.secret
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| {
            if error.kind() == std::io::ErrorKind::NotFound {
                IdentityError::NoKeyFile { path: p.clone() }
            } else {
                IdentityError::Io {
                    path: p.clone(),
                    error,
                }
            }
        })?;
        let line = text
            .lines()
            .find(|l| !l.trim().is_empty() && !l.starts_with('#'));
        let bad = |reason| IdentityError::BadKeyFile {
            path: p.clone(),
            reason,
        };
        let line = line.ok_or_else(|| bad("empty"))?;
        let bytes = BASE32_NOPAD
            .decode(line.trim().to_ascii_uppercase().as_bytes())
            .map_err(|_| bad("not base32"))?;
        let seed: [u8; 32] = bytes
            .try_into()
            .map_err(|_| bad("not a 32-byte ed25519 secret"))?;
        Ok(Keypair::from_seed(seed))
    }

    /// Writes a key file (mode 0600), refusing to overwrite an existing one.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        use std::io::Write;
        let p = path.display().to_string();
        let io = |error| IdentityError::Io {
            path: p.clone(),
            error,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(io)?;
        let seed = BASE32_NOPAD
            .encode(&self.secret.to_bytes())
            .to_ascii_lowercase();
        writeln!(f, "# chatd ed25519 secret key for id {}\n{seed}", self.id()).map_err(io)?;
        f.sync_all().map_err(io)
    }

    /// Loads `path`, or creates a new key there if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), IdentityError> {
        if path.exists() {
            Ok((Keypair::load(path)?, false))
        } else {
            let k = Keypair::generate();
            k.save(path)?;
            Ok((k, true))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_text() {
        let k = Keypair::from_seed([7; 32]);
        let text = k.id().to_string();
        assert_eq!(text.len(), 52);
        assert!(
            text.chars()
                .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c))
        );
        assert_eq!(text.parse::<Id>().unwrap(), k.id());
        assert_eq!(text.to_uppercase().parse::<Id>().unwrap(), k.id());
        assert!("short".parse::<Id>().is_err());
        let addr: ServerAddr = format!("{text}@127.0.0.1:7000").parse().unwrap();
        assert_eq!(addr.id, k.id());
        assert_eq!(addr.to_string(), format!("{text}@127.0.0.1:7000"));
        assert!(
            format!("{text}127.0.0.1:7000")
                .parse::<ServerAddr>()
                .is_err()
        );
        assert!(format!("{text}@nowhere").parse::<ServerAddr>().is_err());
    }

    #[test]
    fn key_files_round_trip_and_are_never_overwritten() {
        let dir = std::env::temp_dir().join(format!("chatd-id-test-{}", std::process::id()));
        let path = dir.join("key");
        let _ = std::fs::remove_file(&path);
        let (k, created) = Keypair::load_or_create(&path).unwrap();
        assert!(created);
        let (again, created) = Keypair::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(k.id(), again.id());
        assert!(
            k.save(&path).is_err(),
            "an existing key is never overwritten"
        );
        std::fs::write(dir.join("bad"), "not a key\n").unwrap();
        assert!(matches!(
            Keypair::load(&dir.join("bad")),
            Err(IdentityError::BadKeyFile { .. })
        ));
        let missing = Keypair::load(&dir.join("missing")).unwrap_err();
        assert!(matches!(missing, IdentityError::NoKeyFile { .. }));
        assert!(
            missing.to_string().contains("chatd keygen --out"),
            "{missing}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
