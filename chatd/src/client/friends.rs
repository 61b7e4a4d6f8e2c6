//! Known friends: trust on first use, like ssh's `known_hosts`.
//!
//! Names are labels anyone can register, so a name alone never identifies
//! a friend. The first time a chat with a name connects (the friend's key
//! proven by TLS), the client pins that name to the friend's id in
//! `known_friends` (in the client's data dir); later runs with that name
//! meet only that id, and a name that now belongs to another key is
//! refused loudly unless the user accepts the new key (`--accept-new-key`).
//!
//! The file is text, one friend per line: `ID NAME` (the id first: ids have
//! no spaces, names may); `#` starts a comment. Owns the file and the
//! client's default paths; no network.

use crate::net::identity::Id;
use anyhow::Context;
use overlay::PeerId;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The file name inside the data dir.
pub const FILE: &str = "known_friends";
/// The client's default key file inside the data dir.
pub const KEY_FILE: &str = "client.key";

/// Where the client keeps its key and known friends when `--data-dir` is
/// not given: `$XDG_DATA_HOME/chatd`, else `~/.local/share/chatd`.
pub fn default_data_dir() -> anyhow::Result<PathBuf> {
    let base = dirs::data_dir()
        .context("no home directory to keep your key and known friends in; pass --data-dir DIR")?;
    Ok(base.join("chatd"))
}

/// The pinned names, as read from (and written back to) one file.
#[derive(Debug, Default)]
pub struct KnownFriends {
    path: PathBuf,
    by_name: BTreeMap<String, PeerId>,
}

/// What the file says about a name.
#[derive(Debug, PartialEq, Eq)]
pub enum Pin {
    /// Never chatted with anyone by this name.
    Unknown,
    /// Pinned to this id.
    Known(PeerId),
}

impl KnownFriends {
    /// Reads `path` (a missing file is an empty list). Lines that do not
    /// parse are reported and skipped, never fatal.
    pub fn load(path: &Path) -> anyhow::Result<KnownFriends> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let (by_name, bad) = parse(&text);
        for line in bad {
            tracing::warn!(file = %path.display(), line, "known_friends: line ignored");
        }
        Ok(KnownFriends {
            path: path.to_path_buf(),
            by_name,
        })
    }

    /// The file this list lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What is pinned for `name`.
    pub fn pin(&self, name: &str) -> Pin {
        match self.by_name.get(name) {
            Some(id) => Pin::Known(*id),
            None => Pin::Unknown,
        }
    }

    /// The name pinned to `id`, if any.
    pub fn name_of(&self, id: &PeerId) -> Option<&str> {
        self.by_name
            .iter()
            .find(|(_, i)| *i == id)
            .map(|(n, _)| n.as_str())
    }

    /// Pins `name` to `id` (replacing an older pin) and writes the file:
    /// re-read first (another chat with this data dir may have pinned
    /// someone meanwhile), then a temp file of this process renamed over it.
    pub fn remember(&mut self, name: &str, id: PeerId) -> anyhow::Result<()> {
        if let Ok(text) = std::fs::read_to_string(&self.path) {
            let (on_disk, _) = parse(&text);
            for (n, i) in on_disk {
                self.by_name.entry(n).or_insert(i);
            }
        }
        self.by_name.insert(name.to_string(), id);
        write_atomic(&self.path, &format(&self.by_name))?;
        Ok(())
    }
}

/// Writes `text` to `path` as a whole or not at all: a temp file of this
/// process (its directory created if missing), synced, renamed over it.
pub fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    };
    write().with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Parses the file: the pins, and the 1-based numbers of lines ignored.
fn parse(text: &str) -> (BTreeMap<String, PeerId>, Vec<usize>) {
    let mut pins = BTreeMap::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed = line
            .split_once(' ')
            .and_then(|(id, name)| Some((id.parse::<Id>().ok()?, name.trim())));
        match parsed {
            Some((id, name)) if !name.is_empty() => {
                pins.insert(name.to_string(), id.0);
            }
            _ => bad.push(i + 1),
        }
    }
    (pins, bad)
}

fn format(pins: &BTreeMap<String, PeerId>) -> String {
    let mut out = String::from(
        "# chatd known friends (trust on first use): ID NAME, one per line.\n\
         # Delete a line to forget a friend's key.\n",
    );
    for (name, id) in pins {
        out.push_str(&format!("{} {name}\n", Id(*id)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::identity::Keypair;

    #[test]
    fn pins_survive_a_round_trip_and_bad_lines_are_skipped() {
        let (a, b) = (
            Keypair::from_seed([1; 32]).id().0,
            Keypair::from_seed([2; 32]).id().0,
        );
        let mut pins = BTreeMap::new();
        pins.insert("bob".to_string(), a);
        pins.insert("carol the second".to_string(), b);
        let text = format(&pins) + "garbage\nNOTANID bob\n";
        let (back, bad) = parse(&text);
        assert_eq!(back, pins);
        assert_eq!(
            bad,
            vec![5, 6],
            "two comment lines, two pins, then the bad ones"
        );
    }

    #[test]
    fn remember_writes_the_file_and_load_reads_it() {
        let dir = std::env::temp_dir().join(format!("chatd-friends-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub").join(FILE);
        let id = Keypair::from_seed([3; 32]).id().0;
        let mut k = KnownFriends::load(&path).unwrap();
        assert_eq!(k.pin("bob"), Pin::Unknown);
        k.remember("bob", id).unwrap();
        let k = KnownFriends::load(&path).unwrap();
        assert_eq!(k.pin("bob"), Pin::Known(id));
        // Two chats on one data dir, each pinning someone: both pins kept.
        let (mut one, mut two) = (
            KnownFriends::load(&path).unwrap(),
            KnownFriends::load(&path).unwrap(),
        );
        let (c, d) = (
            Keypair::from_seed([4; 32]).id().0,
            Keypair::from_seed([5; 32]).id().0,
        );
        one.remember("carol", c).unwrap();
        two.remember("dave", d).unwrap();
        let k = KnownFriends::load(&path).unwrap();
        assert_eq!(
            (k.pin("bob"), k.pin("carol"), k.pin("dave")),
            (Pin::Known(id), Pin::Known(c), Pin::Known(d))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
