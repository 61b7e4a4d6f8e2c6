//! The server's side of offline messages ([`crate::mailbox`]): deposits
//! copied to the letter's holders and acknowledged once they keep it,
//! collections gathered from the first servers of the recipient's
//! ranking, discards, expiry, and the notice to an online recipient.
//!
//! What a client can make the server hold here, and the bound: letters
//! (the [`crate::mailbox::MailLimits`] quotas per recipient, sender,
//! address and in all, each with its refusal code), deposits in flight
//! ([`MAX_DEPOSITS_PER_CONN`] per connection, `TooManyWaits`), one
//! collection in flight per connection (`TooManyWaits`); deposits take
//! their own buckets (`mail_rate`, per connection and per address),
//! collections and acknowledgements the costly-request ones.

use super::{Server, due};
use crate::limit::TokenBucket;
use crate::mailbox::{
    HELD_BYTES, Letter, LetterId, MAIL_FETCH, MAIL_HOLDERS, MAX_DELIVERED_IDS, MailRefusal,
    PAGE_BYTES, rank,
};
use crate::proto::{ErrorCode, Notice, Refusal, Response, ServerMsg};
use crate::server::{ConnId, Now, Output, ReqId};
use overlay::{PeerId, Time};
use std::net::IpAddr;

/// Deposits one connection may have waiting for their copies at once.
pub const MAX_DEPOSITS_PER_CONN: usize = 8;

/// A deposit waiting for its holders.
#[derive(Debug)]
pub(super) struct Deposit {
    conn: ConnId,
    req: ReqId,
    letter: Letter,
    sender: PeerId,
    source: IpAddr,
    /// Copies kept so far.
    copies: usize,
    /// Holders asked, not answered yet.
    asked: Vec<PeerId>,
    /// The rest of the fetch set, to ask when one does not answer.
    spare: Vec<PeerId>,
    deadline: Time,
}

/// A collection waiting for the other servers' letters.
#[derive(Debug)]
pub(super) struct Collecting {
    conn: ConnId,
    req: ReqId,
    to: PeerId,
    asked: Vec<PeerId>,
    /// By id (copies at several servers are one letter), in arrival order.
    letters: Vec<Letter>,
    more: bool,
    deadline: Time,
}

fn code_of(r: MailRefusal) -> ErrorCode {
    match r {
        MailRefusal::Size => ErrorCode::Invalid,
        MailRefusal::Recipient => ErrorCode::MailboxFull,
        MailRefusal::Sender | MailRefusal::Source => ErrorCode::MailQuota,
        MailRefusal::Full => ErrorCode::MailStorageFull,
    }
}

/// A holder's refusal in words (it sends only the code).
fn words_of(code: ErrorCode) -> String {
    let r = match code {
        ErrorCode::MailboxFull => MailRefusal::Recipient,
        ErrorCode::MailQuota => MailRefusal::Sender,
        ErrorCode::MailStorageFull => MailRefusal::Full,
        ErrorCode::Invalid => MailRefusal::Size,
        other => return format!("a server keeping the letter refused it ({})", other.label()),
    };
    r.to_string()
}

fn refusal_of(code: ErrorCode, detail: impl Into<String>) -> Refusal {
    let mut r = Refusal::new(code, detail);
    if code == ErrorCode::MailStorageFull || code == ErrorCode::NotReplicated {
        r.retry_after_ms = 1_000;
    }
    r
}

impl Server {
    /// This server and every server it believes alive, ranked for `to`.
    fn mail_rank(&self, to: &PeerId, k: usize) -> Vec<PeerId> {
        let all = std::iter::once(self.me).chain(self.members.live().map(|r| r.id));
        rank(to, all, k)
    }

    /// The quota key of a connection's address.
    fn source_ip(&self, conn: ConnId) -> Option<IpAddr> {
        self.conns.get(&conn).map(|c| c.source.ip())
    }

    pub(super) fn deposit(
        &mut self,
        now: Now,
        conn: ConnId,
        req: ReqId,
        peer: PeerId,
        letter: Letter,
    ) {
        // The sender is the connection's key (proven by its TLS
        // handshake): no registration needed, so leaving a letter does
        // not tell the sender's friends it is online.
        let refusal = if letter.to == peer {
            Some(Refusal::new(ErrorCode::Invalid, "a letter to yourself"))
        } else if self.deposits.values().filter(|d| d.conn == conn).count() >= MAX_DEPOSITS_PER_CONN
        {
            Some(Refusal::new(
                ErrorCode::TooManyWaits,
                format!("at most {MAX_DEPOSITS_PER_CONN} letters on their way at once"),
            ))
        } else {
            None
        };
        if let Some(r) = refusal.or_else(|| self.charge_mail(now, conn).err()) {
            self.refuse(conn, req, r);
            return;
        }
        let Some(source) = self.source_ip(conn) else {
            return;
        };
        let mut ranked = self.mail_rank(&letter.to, MAIL_FETCH);
        let holders: Vec<PeerId> = ranked.drain(..MAIL_HOLDERS.min(ranked.len())).collect();
        let mut copies = 0;
        if holders.contains(&self.me) {
            if let Err(e) = self.keep_here(now, letter.clone(), &peer, source) {
                self.refuse(conn, req, refusal_of(code_of(e), e.to_string()));
                return;
            }
            copies = 1;
        }
        let asked: Vec<PeerId> = holders.into_iter().filter(|h| *h != self.me).collect();
        let spare = ranked.into_iter().filter(|h| *h != self.me).collect();
        let token = self.next_token;
        self.next_token += 1;
        for h in &asked {
            self.keep_at(*h, token, &letter, peer, source);
        }
        let d = Deposit {
            conn,
            req,
            letter,
            sender: peer,
            source,
            copies,
            asked,
            spare,
            deadline: now.mono + self.cfg.ack_timeout,
        };
        self.stats.count("letters_deposited");
        if d.asked.is_empty() {
            // Alone (or every holder is this server): one copy is all
            // there can be.
            self.deposited(now, d);
        } else {
            self.deposits.insert(token, d);
        }
    }

    /// Keeps a letter in this server's mailbox (counted when new).
    fn keep_here(
        &mut self,
        now: Now,
        letter: Letter,
        sender: &PeerId,
        source: IpAddr,
    ) -> Result<(), MailRefusal> {
        if self.mailbox.keep(letter, sender, source, now.unix())? {
            self.stats.count("letters_kept");
        }
        Ok(())
    }

    fn keep_at(&mut self, to: PeerId, token: u64, letter: &Letter, sender: PeerId, source: IpAddr) {
        self.send_server(
            to,
            ServerMsg::Keep {
                token,
                letter: letter.clone(),
                sender,
                source,
            },
        );
    }

    /// Takes one deposit from the connection's and its address's mail
    /// buckets (`mail_rate`).
    fn charge_mail(&mut self, now: Now, conn: ConnId) -> Result<(), Refusal> {
        let (rate, burst) = self.cfg.mail_rate;
        let Some(c) = self.conns.get_mut(&conn) else {
            return Err(Refusal::new(ErrorCode::Malformed, "no such connection"));
        };
        let per_conn = c.mail.take(1.0, now.mono);
        let source = c.source;
        let per_source = self
            .mail_per_source
            .entry(source)
            .or_insert_with(|| TokenBucket::new(rate, burst, now.mono))
            .take(1.0, now.mono);
        per_conn.and(per_source).map_err(|wait| Refusal {
            code: ErrorCode::RateLimited,
            retry_after_ms: super::as_ms32(wait),
            detail: format!("rate limited: at most {rate} letters per second (bursts of {burst})"),
        })
    }

    /// Every copy there is to make is made: acknowledge, and tell the
    /// recipient if it is online.
    fn deposited(&mut self, now: Now, d: Deposit) {
        self.stats.count("letters_acked");
        let copies = u8::try_from(d.copies).unwrap_or(u8::MAX);
        self.respond(d.conn, d.req, Response::Deposited { copies });
        self.tell_mail(now, d.letter.to);
    }

    /// Tells `to` that letters wait for it: its connection if it is homed
    /// here, else its home server (once; that server tells its client).
    fn tell_mail(&mut self, now: Now, to: PeerId) {
        if self.home_conn(&to).is_some() {
            self.notify_mail(&to);
            return;
        }
        let home = self.lookup(&to, now).map(|r| r.body.home_server);
        if let Some(home) = home
            && home != self.me
        {
            self.send_server(home, ServerMsg::MailFor { to });
        }
    }

    /// `Notice::Mail` to `to`'s home connection here, if it has collected
    /// on it (a client that never did may not know the notice).
    fn notify_mail(&mut self, to: &PeerId) {
        let Some(conn) = self.home_conn(to) else {
            return;
        };
        if self.conns.get(&conn).is_some_and(|c| c.reads_mail) {
            self.stats.count("mail_notices");
            self.out.push_back(Output::Notify {
                conn,
                notice: Notice::Mail,
            });
        }
    }

    pub(super) fn collect(&mut self, now: Now, conn: ConnId, req: ReqId, peer: PeerId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.reads_mail = true;
        }
        if self.collects.values().any(|c| c.conn == conn) {
            self.refuse(
                conn,
                req,
                Refusal::new(ErrorCode::TooManyWaits, "one collection at a time"),
            );
            return;
        }
        let fetch = self.mail_rank(&peer, MAIL_FETCH);
        let (letters, more) = if fetch.contains(&self.me) {
            self.mailbox.letters_for(&peer, PAGE_BYTES)
        } else {
            (Vec::new(), false)
        };
        let asked: Vec<PeerId> = fetch.into_iter().filter(|s| *s != self.me).collect();
        let token = self.next_token;
        self.next_token += 1;
        for s in &asked {
            self.send_server(*s, ServerMsg::Fetch { token, to: peer });
        }
        let c = Collecting {
            conn,
            req,
            to: peer,
            asked,
            letters,
            more,
            deadline: now.mono + self.cfg.ack_timeout,
        };
        if c.asked.is_empty() {
            self.collected(c);
        } else {
            self.collects.insert(token, c);
        }
    }

    /// Answers a collection with what came (a page of it).
    fn collected(&mut self, c: Collecting) {
        let mut page = Vec::new();
        let mut bytes = 0;
        let mut more = c.more;
        for l in c.letters {
            if !page.is_empty() && bytes + l.sealed.len() > PAGE_BYTES {
                more = true;
                break;
            }
            bytes += l.sealed.len();
            page.push(l);
        }
        self.stats.add("letters_handed_out", page.len() as u64);
        self.respond(
            c.conn,
            c.req,
            Response::Letters {
                letters: page,
                more,
            },
        );
    }

    pub(super) fn delivered(&mut self, conn: ConnId, req: ReqId, peer: PeerId, ids: Vec<LetterId>) {
        if ids.len() > MAX_DELIVERED_IDS {
            let detail = format!("at most {MAX_DELIVERED_IDS} letters per acknowledgement");
            self.refuse(conn, req, Refusal::new(ErrorCode::Invalid, detail));
            return;
        }
        let n = self.mailbox.discard(&peer, &ids);
        self.stats.add("letters_collected", n as u64);
        for s in self.mail_rank(&peer, MAIL_FETCH) {
            if s != self.me {
                self.send_server(
                    s,
                    ServerMsg::Discard {
                        to: peer,
                        ids: ids.clone(),
                    },
                );
            }
        }
        self.respond(conn, req, Response::Noted);
    }

    /// A mail message from another server.
    pub(super) fn mail_message(&mut self, now: Now, from: PeerId, msg: ServerMsg) {
        match msg {
            ServerMsg::Keep {
                token,
                letter,
                sender,
                source,
            } => {
                let refused = self
                    .keep_here(now, letter, &sender, source)
                    .err()
                    .map(code_of);
                if refused.is_some() {
                    // Refused for another server's client.
                    self.stats.count("letters_refused");
                }
                self.send_server(from, ServerMsg::Kept { token, refused });
            }
            ServerMsg::Kept { token, refused } => self.kept(now, token, from, refused),
            ServerMsg::Fetch { token, to } => {
                let (letters, more) = self.mailbox.letters_for(&to, HELD_BYTES);
                self.send_server(
                    from,
                    ServerMsg::Held {
                        token,
                        letters,
                        more,
                    },
                );
            }
            ServerMsg::Held {
                token,
                letters,
                more,
            } => {
                let Some(c) = self.collects.get_mut(&token) else {
                    return;
                };
                let Some(i) = c.asked.iter().position(|s| *s == from) else {
                    return;
                };
                c.asked.swap_remove(i);
                c.more |= more;
                let mut bytes: usize = c.letters.iter().map(|l| l.sealed.len()).sum();
                for l in letters {
                    if l.to != c.to || c.letters.iter().any(|k| k.id == l.id) {
                        continue;
                    }
                    if bytes + l.sealed.len() > HELD_BYTES {
                        c.more = true;
                        break;
                    }
                    bytes += l.sealed.len();
                    c.letters.push(l);
                }
                if c.asked.is_empty()
                    && let Some(c) = self.collects.remove(&token)
                {
                    self.collected(c);
                }
            }
            ServerMsg::Discard { to, mut ids } => {
                ids.truncate(MAX_DELIVERED_IDS);
                let n = self.mailbox.discard(&to, &ids);
                self.stats.add("letters_collected", n as u64);
            }
            ServerMsg::MailFor { to } => self.notify_mail(&to),
            _ => {}
        }
    }

    fn kept(&mut self, now: Now, token: u64, from: PeerId, refused: Option<ErrorCode>) {
        let Some(d) = self.deposits.get_mut(&token) else {
            return;
        };
        let Some(i) = d.asked.iter().position(|s| *s == from) else {
            return;
        };
        d.asked.swap_remove(i);
        match refused {
            None => {
                d.copies += 1;
                if d.asked.is_empty()
                    && let Some(d) = self.deposits.remove(&token)
                {
                    self.deposited(now, d);
                }
            }
            Some(code) => {
                // A holder's quota speaks for the cluster: the letter is
                // refused (a copy made elsewhere expires, or is collected).
                if let Some(d) = self.deposits.remove(&token) {
                    self.refuse(d.conn, d.req, refusal_of(code, words_of(code)));
                }
            }
        }
    }

    /// Deadlines: an unanswered holder is replaced by the next of the
    /// fetch set (refused `NotReplicated` when none is left); a collection
    /// answers with what came.
    pub(super) fn mail_sweep(&mut self, now: Now) {
        let forgotten = self.mailbox.expire(now.unix());
        self.stats.add("letters_expired", forgotten as u64);
        for token in due(&self.deposits, now.mono, |d| d.deadline) {
            let Some(mut d) = self.deposits.remove(&token) else {
                continue;
            };
            let silent = std::mem::take(&mut d.asked);
            for _ in &silent {
                if d.spare.is_empty() {
                    break;
                }
                let next = d.spare.remove(0);
                self.keep_at(next, token, &d.letter, d.sender, d.source);
                d.asked.push(next);
            }
            if d.asked.is_empty() {
                if d.copies > 0 && self.members.live().next().is_none() {
                    // Everybody else died meanwhile: ours is the only copy.
                    self.deposited(now, d);
                } else {
                    let r = refusal_of(
                        ErrorCode::NotReplicated,
                        "the letter could not be copied to enough servers in time",
                    );
                    self.refuse(d.conn, d.req, r);
                }
            } else {
                d.deadline = now.mono + self.cfg.ack_timeout;
                self.deposits.insert(token, d);
            }
        }
        for token in due(&self.collects, now.mono, |c| c.deadline) {
            if let Some(c) = self.collects.remove(&token) {
                self.stats.count("collections_partial");
                self.collected(c);
            }
        }
    }

    /// A connection closed: its deposits and collections are dropped.
    pub(super) fn mail_closed(&mut self, conn: ConnId) {
        self.deposits.retain(|_, d| d.conn != conn);
        self.collects.retain(|_, c| c.conn != conn);
    }

    /// Letters kept here, and their sealed bytes.
    pub fn letters_kept(&self) -> (usize, usize) {
        (self.mailbox.len(), self.mailbox.bytes())
    }
}
