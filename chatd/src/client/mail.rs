//! Offline messages, the client's side: `chatd send` seals each stdin line
//! to the friend ([`crate::client::letter`]) and leaves it with the
//! servers, which keep it twice until the friend collects it (at most a
//! week: `rendezvous::mailbox`); the friend's `chatd inbox`, `chatd chat`
//! and `chatd room` collect it — at once when it is online, since the
//! servers tell its home (`Notice::Mail`) — print it, acknowledge it
//! (the servers forget it) and send the sender a sealed receipt, which
//! the sender's next collection shows.
//!
//! Exactly once: a letter is printed, then its id is written to
//! `DATA_DIR/letters_seen` (kept 8 days), then acknowledged. A crash
//! after printing and before the acknowledgement hands the letter out
//! again, and the file drops it; a crash before printing loses nothing
//! (the servers still keep it).

use crate::client::friends::KnownFriends;
use crate::client::letter::{self, Body, MAX_RECEIPT_IDS};
use crate::client::run::Options;
use crate::client::{Client, Refused, Session, short_id, status};
use anyhow::Context;
use ed25519_dalek::SigningKey;
use overlay::PeerId;
use rendezvous::mailbox::{LetterId, MAX_DELIVERED_IDS};
use rendezvous::{ErrorCode, FriendRef, Letter};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The file of letters already shown, in the data dir.
pub const SEEN_FILE: &str = "letters_seen";
/// How long a shown letter's id is remembered (longer than servers keep
/// a letter).
const SEEN_KEEP: Duration = Duration::from_secs(8 * 24 * 3_600);
/// Most ids remembered (the oldest go first).
const MAX_SEEN: usize = 20_000;
/// Pages one collection takes at most (48 KiB each).
const MAX_PAGES: usize = 64;
/// Lines one `chatd send` leaves at most (the servers keep 256 letters
/// per sender by default).
pub const MAX_SEND_LINES: usize = 256;
/// Tries of one deposit the servers ask to retry (rate limit, a copy not
/// made in time).
const DEPOSIT_TRIES: u32 = 5;
/// Shortest time between two collections on one server session.
const COLLECT_SPACING: Duration = Duration::from_secs(1);

/// Letter ids already shown, as kept in [`SEEN_FILE`].
#[derive(Debug, Default)]
pub struct Seen {
    path: PathBuf,
    ids: BTreeMap<LetterId, u64>,
}

fn hex(id: &LetterId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<LetterId> {
    if s.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(id)
}

fn now_s() -> u64 {
    crate::net::unix_millis() / 1_000
}

impl Seen {
    /// Reads `path` (missing: empty); lines that do not parse are skipped.
    pub fn load(path: &Path) -> anyhow::Result<Seen> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let ids = text
            .lines()
            .filter_map(|l| {
                let (id, at) = l.split_once(' ')?;
                Some((unhex(id)?, at.trim().parse().ok()?))
            })
            .collect();
        Ok(Seen {
            path: path.to_path_buf(),
            ids,
        })
    }

    /// Whether letter `id` was shown.
    pub fn contains(&self, id: &LetterId) -> bool {
        self.ids.contains_key(id)
    }

    /// Remembers `ids` as shown now, forgets the old, writes the file (a
    /// temp file renamed over it).
    pub fn remember(&mut self, ids: &[LetterId]) -> anyhow::Result<()> {
        let now = now_s();
        for id in ids {
            self.ids.insert(*id, now);
        }
        let oldest = now.saturating_sub(SEEN_KEEP.as_secs());
        self.ids.retain(|_, at| *at >= oldest);
        if self.ids.len() > MAX_SEEN {
            let mut by_age: Vec<(u64, LetterId)> = self.ids.iter().map(|(i, a)| (*a, *i)).collect();
            by_age.sort_unstable();
            for (_, id) in by_age.iter().take(self.ids.len() - MAX_SEEN) {
                self.ids.remove(id);
            }
        }
        let mut text = String::new();
        for (id, at) in &self.ids {
            text.push_str(&format!("{} {at}\n", hex(id)));
        }
        crate::client::friends::write_atomic(&self.path, &text)
    }
}

/// A letter as shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The sender's key.
    pub from: PeerId,
    /// The sender as shown: its pinned name, else the name it gave.
    pub sender: String,
    /// When it was written (the sender's clock, Unix ms).
    pub sent_ms: u64,
    /// Its place in the sender's run.
    pub seq: u32,
    /// The line.
    pub text: String,
}

/// What a collection found.
#[derive(Debug, Default)]
pub struct Collected {
    /// Letters shown (each once).
    pub letters: usize,
    /// Receipts for letters we left: (the friend as shown, letters).
    pub receipts: Vec<(String, usize)>,
    /// Letters that did not open (not for us, altered), dropped.
    pub unreadable: usize,
}

/// The client's mail: its key, its name, the shown letters, where pinned
/// names are read from.
pub struct Mailroom {
    key: SigningKey,
    name: String,
    seen: Mutex<Seen>,
    known: PathBuf,
}

/// How a sender is shown: its pinned name; else the name it gave (with
/// its short id if that name is pinned to another key, or empty).
fn label(known: &KnownFriends, from: &PeerId, claimed: &str) -> String {
    if let Some(n) = known.name_of(from) {
        return n.to_string();
    }
    let clean: String = claimed.chars().filter(|c| !c.is_control()).collect();
    match known.pin(&clean) {
        crate::client::friends::Pin::Known(_) => format!("{clean}~{}", short_id(from)),
        crate::client::friends::Pin::Unknown if clean.is_empty() => short_id(from),
        crate::client::friends::Pin::Unknown => clean,
    }
}

impl Mailroom {
    /// `key`'s mail, its shown letters kept in `data_dir`.
    pub fn new(key: SigningKey, name: String, data_dir: &Path) -> anyhow::Result<Mailroom> {
        Ok(Mailroom {
            key,
            name,
            seen: Mutex::new(Seen::load(&data_dir.join(SEEN_FILE))?),
            known: data_dir.join(crate::client::friends::FILE),
        })
    }

    fn me(&self) -> PeerId {
        PeerId(self.key.verifying_key().to_bytes())
    }

    /// Seals `text` for `to` as letter `seq` of this run.
    fn seal_text(&self, to: &PeerId, seq: u32, text: &str) -> anyhow::Result<Letter> {
        let body = Body::Text {
            name: self.name.clone(),
            sent_ms: crate::net::unix_millis(),
            seq,
            text: text.to_string(),
        };
        self.seal(to, &body)
    }

    fn seal(&self, to: &PeerId, body: &Body) -> anyhow::Result<Letter> {
        let id: LetterId = rand::random();
        let sealed = letter::seal(&self.key, to, &id, body, rand::random())
            .map_err(|e| anyhow::anyhow!("cannot seal the letter: {e}"))?;
        Ok(Letter {
            to: *to,
            id,
            sealed,
        })
    }

    /// Collects every letter kept for us through `session`: each new one
    /// is handed to `show` (in the order written, per page), remembered,
    /// then acknowledged; the senders get receipts.
    pub async fn collect(
        &self,
        session: &Session,
        show: &mut (dyn FnMut(&Delivery) + Send),
    ) -> anyhow::Result<Collected> {
        let mut out = Collected::default();
        let known = KnownFriends::load(&self.known).unwrap_or_default();
        for _ in 0..MAX_PAGES {
            let (page, more) = session.collect().await?;
            if page.is_empty() {
                break;
            }
            let mut shown = Vec::new();
            let mut receipts: BTreeMap<PeerId, Vec<LetterId>> = BTreeMap::new();
            let mut got: BTreeMap<PeerId, usize> = BTreeMap::new();
            for l in &page {
                if crate::net::lock(&self.seen).contains(&l.id) {
                    continue;
                }
                match letter::open(&self.key, &l.id, &l.sealed) {
                    Ok(o) => match o.body {
                        Body::Text {
                            name,
                            sent_ms,
                            seq,
                            text,
                        } => {
                            receipts.entry(o.from).or_default().push(l.id);
                            shown.push(Delivery {
                                from: o.from,
                                sender: label(&known, &o.from, &name),
                                sent_ms,
                                seq,
                                text,
                            });
                        }
                        Body::Receipt { ids } => *got.entry(o.from).or_insert(0) += ids.len(),
                    },
                    Err(e) => {
                        tracing::debug!(error = %e, "a letter that does not open");
                        out.unreadable += 1;
                    }
                }
            }
            shown.sort_by_key(|d| (d.sent_ms, d.from, d.seq));
            for d in &shown {
                show(d);
            }
            out.letters += shown.len();
            for (from, n) in got {
                let who = known
                    .name_of(&from)
                    .map_or_else(|| short_id(&from), str::to_string);
                out.receipts.push((who, n));
            }
            let ids: Vec<LetterId> = page.iter().map(|l| l.id).collect();
            crate::net::lock(&self.seen).remember(&ids)?;
            for chunk in ids.chunks(MAX_DELIVERED_IDS) {
                session.delivered(chunk.to_vec()).await?;
            }
            for (from, ids) in receipts {
                if from == self.me() {
                    continue;
                }
                for chunk in ids.chunks(MAX_RECEIPT_IDS) {
                    let receipt = self.seal(
                        &from,
                        &Body::Receipt {
                            ids: chunk.to_vec(),
                        },
                    )?;
                    if let Err(e) = deposit(session, receipt, &mut Duration::default()).await {
                        tracing::debug!(error = %e, "receipt not left");
                    }
                }
            }
            if !more {
                break;
            }
        }
        Ok(out)
    }

    /// Leaves `lines` for `to` through `session`: how many were left
    /// (each kept by `copies` servers, the fewest of them), or the error
    /// that stopped it after that many.
    pub async fn send(
        &self,
        session: &Session,
        to: &PeerId,
        lines: &[String],
    ) -> (usize, u8, Option<anyhow::Error>) {
        let mut fewest = u8::MAX;
        let mut pace = Duration::ZERO;
        for (i, line) in lines.iter().enumerate() {
            let seq = u32::try_from(i).unwrap_or(u32::MAX);
            let res = match self.seal_text(to, seq, line) {
                Ok(letter) => deposit(session, letter, &mut pace).await,
                Err(e) => Err(e),
            };
            match res {
                Ok(copies) => fewest = fewest.min(copies),
                Err(e) => return (i, fewest, Some(e)),
            }
        }
        (lines.len(), fewest, None)
    }
}

/// Deposits `letter`, waiting as the server says when it is busy (rate
/// limited, copies not made in time, storage full for now). `pace` is
/// the wait before each deposit: once rate limited, the hint — so a long
/// run keeps to the server's rate instead of collecting refusals (which
/// close a connection that gets too many).
async fn deposit(session: &Session, letter: Letter, pace: &mut Duration) -> anyhow::Result<u8> {
    let mut tries = 0;
    loop {
        tries += 1;
        if !pace.is_zero() {
            tokio::time::sleep(*pace).await;
        }
        match session.deposit(letter.clone()).await {
            Ok(copies) => return Ok(copies),
            Err(e) => {
                let wait = e
                    .downcast_ref::<Refused>()
                    .filter(|r| {
                        matches!(
                            r.code(),
                            ErrorCode::RateLimited
                                | ErrorCode::NotReplicated
                                | ErrorCode::MailStorageFull
                        )
                    })
                    .and_then(Refused::retry_after)
                    .filter(|w| *w <= Duration::from_secs(5));
                let limited = e
                    .downcast_ref::<Refused>()
                    .is_some_and(|r| r.code() == ErrorCode::RateLimited);
                match wait {
                    Some(w) if tries < DEPOSIT_TRIES => {
                        if limited {
                            *pace = w.min(Duration::from_secs(1));
                        } else {
                            tokio::time::sleep(w).await;
                        }
                    }
                    _ => return Err(e),
                }
            }
        }
    }
}

/// Says what a collection found, on stderr (receipts, letters that did
/// not open).
pub fn tell(c: &Collected) {
    for (who, n) in &c.receipts {
        status(&format!("{who} has received {n} message(s) you left"));
    }
    if c.unreadable > 0 {
        status(&format!(
            "{} letter(s) that do not open (not sealed to you, or altered) were dropped",
            c.unreadable
        ));
    }
}

/// How long ago `sent_ms` was, in words.
pub fn age(sent_ms: u64) -> String {
    let secs = crate::net::unix_millis().saturating_sub(sent_ms) / 1_000;
    match secs {
        0..60 => "just now".to_string(),
        60..3_600 => format!("{} min ago", secs / 60),
        3_600..86_400 => format!("{} h {} min ago", secs / 3_600, secs % 3_600 / 60),
        _ => format!("{} days ago", secs / 86_400),
    }
}

/// Collects on `session` at once and whenever the server says letters
/// wait (`heard`), showing each on stderr (a chat's or room's stdout is
/// the conversation), until the session ends.
pub async fn watch(session: Session, heard: Arc<tokio::sync::Notify>, mail: Arc<Mailroom>) {
    loop {
        let mut show = |d: &Delivery| {
            status(&format!(
                "message from {} left {}: {}",
                d.sender,
                age(d.sent_ms),
                d.text
            ))
        };
        match mail.collect(&session, &mut show).await {
            Ok(c) => tell(&c),
            Err(e) => tracing::debug!(error = %e, "collecting letters failed"),
        }
        tokio::time::sleep(COLLECT_SPACING).await;
        tokio::select! {
            _ = session.closed() => return,
            () = heard.notified() => {}
        }
    }
}

/// `chatd send`: leaves `lines` for `opts.friend` through the first
/// server that answers, and says what became of them.
pub async fn run_send(mut opts: Options, lines: Vec<String>) -> anyhow::Result<()> {
    let client = Client::new(opts.keypair.clone(), opts.bind)?;
    let res = match client.connect_any(&opts.servers).await {
        Ok(session) => send_on(&session, &mut opts, &lines).await,
        Err(e) => Err(e),
    };
    client.close_all().await;
    res
}

async fn send_on(session: &Session, opts: &mut Options, lines: &[String]) -> anyhow::Result<()> {
    let wanted = super::run::resolve(&opts.known, opts.accept_new_key, &opts.friend);
    let (to, shown) = match wanted {
        FriendRef::Id(id) => {
            let shown = opts
                .known
                .name_of(&id)
                .map_or_else(|| short_id(&id), str::to_string);
            (id, shown)
        }
        FriendRef::Name(name) => {
            let found = session.find_name(&name).await?;
            match found.as_slice() {
                [] => anyhow::bail!(
                    "{name} is not online, and no key is pinned to that name here: give the \
                     friend's id (`chatd id --key THEIR_DATA_DIR/client.key` prints it), or \
                     chat with them once"
                ),
                [one] => {
                    super::run::pin_name(&mut opts.known, &name, one);
                    (one.body.peer, name)
                }
                many => return Err(super::run::ambiguous(&FriendRef::Name(name), many)),
            }
        }
    };
    let online = matches!(session.lookup(to).await, Ok(Some(_)));
    let (left, copies, err) = opts.mail.send(session, &to, lines).await;
    if left > 0 {
        let when = if online {
            "they are online and get them now"
        } else {
            "they are offline and get them when they come back (kept at most 7 days)"
        };
        status(&format!(
            "left {left} message(s) for {shown}, each kept by {copies} server(s); {when}"
        ));
    }
    match err {
        None => Ok(()),
        Some(e) => {
            for line in &lines[left..] {
                status(&format!("  not left: {line}"));
            }
            Err(e.context(format!(
                "{} of {} message(s) were not left",
                lines.len() - left,
                lines.len()
            )))
        }
    }
}

/// `chatd inbox`: prints the letters kept for us (`SENDER<TAB>TEXT`, each
/// once) and the receipts for ours, then exits.
pub async fn run_inbox(opts: Options) -> anyhow::Result<()> {
    let client = Client::new(opts.keypair.clone(), opts.bind)?;
    let res = match client.connect_any(&opts.servers).await {
        Ok(session) => {
            let mut show = |d: &Delivery| {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{}\t{}", d.sender, d.text);
                let _ = out.flush();
            };
            opts.mail.collect(&session, &mut show).await
        }
        Err(e) => Err(e),
    };
    client.close_all().await;
    let c = res?;
    match c.letters {
        0 => status("no messages"),
        n => status(&format!("{n} message(s)")),
    }
    tell(&c);
    Ok(())
}

/// Reads the lines to leave from stdin (to its end): empty ones skipped,
/// each within the chat's length limit, at most [`MAX_SEND_LINES`].
pub fn read_lines(input: impl std::io::BufRead) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    for line in input.lines() {
        let line = line.context("cannot read stdin")?;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let n = line.chars().count();
        if n > crate::client::chat::MAX_CHARS {
            anyhow::bail!(
                "line {} has {n} characters; a message has at most {}",
                lines.len() + 1,
                crate::client::chat::MAX_CHARS
            );
        }
        if lines.len() == MAX_SEND_LINES {
            anyhow::bail!("more than {MAX_SEND_LINES} lines: send the rest in another run");
        }
        lines.push(line.to_string());
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_ids_survive_a_restart_and_old_ones_are_forgotten() {
        let dir = std::env::temp_dir().join(format!("chatd-seen-{}", std::process::id()));
        let path = dir.join(SEEN_FILE);
        let mut s = Seen::load(&path).unwrap();
        assert!(!s.contains(&[1; 16]));
        s.remember(&[[1; 16], [2; 16]]).unwrap();
        let mut again = Seen::load(&path).unwrap();
        assert!(again.contains(&[1; 16]) && again.contains(&[2; 16]));
        // An entry older than the keep window is dropped on the next write.
        again.ids.insert([3; 16], 1);
        again.remember(&[]).unwrap();
        let last = Seen::load(&path).unwrap();
        assert!(!last.contains(&[3; 16]));
        assert!(last.contains(&[1; 16]));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(unhex(&hex(&[0xab; 16])), Some([0xab; 16]));
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn lines_are_bounded_and_blank_ones_skipped() {
        let ok = read_lines("a\n\n  \nb\r\n".as_bytes()).unwrap();
        assert_eq!(ok, vec!["a", "b"]);
        let long = "x".repeat(crate::client::chat::MAX_CHARS + 1);
        assert!(read_lines(long.as_bytes()).is_err());
        let many = "l\n".repeat(MAX_SEND_LINES + 1);
        assert!(read_lines(many.as_bytes()).is_err());
    }

    #[test]
    fn a_sender_is_shown_by_its_pin_and_an_impostor_by_its_id() {
        let dir = std::env::temp_dir().join(format!("chatd-label-{}", std::process::id()));
        let mut known = KnownFriends::load(&dir.join("known")).unwrap();
        let (alice, mallory) = (PeerId([1; 32]), PeerId([2; 32]));
        known.remember("alice", alice).unwrap();
        assert_eq!(label(&known, &alice, "whatever"), "alice");
        assert!(label(&known, &mallory, "alice").starts_with("alice~"));
        assert_eq!(label(&known, &mallory, "bob\u{7}"), "bob");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
