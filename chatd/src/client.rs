//! The client side of `chatd-client/1`: connect to a server (its key
//! pinned), ask who we are, register a signed record, look peers up, list
//! servers. Used by `chatd lookup` and, later, by `chatd chat`.
//!
//! Owns client connections only; never acts as a server.

use crate::driver::CLIENT_ALPN;
use crate::identity::{Keypair, ServerAddr};
use crate::membership::ServerRecord;
use crate::peertable::{PeerRecord, RecordBody};
use crate::registry::{Request, Response, read_msg, write_msg};
use crate::tls::{self, Credentials};
use overlay::PeerId;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A client identity and its one UDP socket (QUIC endpoint).
pub struct Client {
    keypair: Keypair,
    creds: Credentials,
    endpoint: quinn::Endpoint,
}

/// A connection to one server.
pub struct Session {
    conn: quinn::Connection,
    server: ServerAddr,
}

impl Client {
    /// A client with `keypair`, bound to `bind` (use port 0 for any).
    pub fn new(keypair: Keypair, bind: SocketAddr) -> anyhow::Result<Client> {
        let creds = Credentials::new(&keypair)?;
        let endpoint = quinn::Endpoint::client(bind)?;
        Ok(Client {
            keypair,
            creds,
            endpoint,
        })
    }

    /// This client's id.
    pub fn id(&self) -> PeerId {
        self.keypair.id().0
    }

    /// Connects to `server`, verifying that it holds the pinned key.
    pub async fn connect(&self, server: ServerAddr) -> anyhow::Result<Session> {
        let tls = tls::client_config(&self.creds, server.id.0, CLIENT_ALPN)?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_secs(1)));
        transport.max_idle_timeout(Some(quinn::IdleTimeout::try_from(Duration::from_secs(10))?));
        cfg.transport_config(Arc::new(transport));
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            self.endpoint
                .connect_with(cfg, server.addr, tls::SERVER_NAME)?,
        )
        .await
        .map_err(|_| anyhow::anyhow!("{server}: no answer within 5 s"))??;
        Ok(Session { conn, server })
    }

    /// Connects to the first server of `servers` that answers.
    pub async fn connect_any(&self, servers: &[ServerAddr]) -> anyhow::Result<Session> {
        let mut last = anyhow::anyhow!("no server given");
        for s in servers {
            match self.connect(*s).await {
                Ok(session) => return Ok(session),
                Err(e) => {
                    tracing::info!(server = %s, error = %e, "server unavailable; trying the next");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Signs a record for this client homed on `session`'s server.
    pub fn record(
        &self,
        session: &Session,
        name: &str,
        public_addr: SocketAddr,
        seq: u64,
        ttl: Duration,
    ) -> PeerRecord {
        let expires_at = std::time::SystemTime::UNIX_EPOCH
            .elapsed()
            .map(|d| d.as_secs())
            .unwrap_or(0)
            + ttl.as_secs();
        PeerRecord::sign(
            self.keypair.signing_key(),
            RecordBody {
                peer: self.id(),
                name: name.to_string(),
                home_server: session.server.id.0,
                public_addr: Some(public_addr),
                private_addrs: self.endpoint.local_addr().into_iter().collect(),
                seq,
                expires_at,
            },
        )
    }
}

impl Session {
    /// The server this session talks to.
    pub fn server(&self) -> ServerAddr {
        self.server
    }

    async fn request(&self, req: &Request) -> anyhow::Result<Response> {
        let (mut send, mut recv) = self.conn.open_bi().await?;
        write_msg(&mut send, req).await?;
        send.finish()?;
        let resp = tokio::time::timeout(Duration::from_secs(5), read_msg::<Response>(&mut recv))
            .await
            .map_err(|_| anyhow::anyhow!("{}: no answer within 5 s", self.server))??;
        if let Response::Error(e) = &resp {
            anyhow::bail!("{}: {e}", self.server);
        }
        Ok(resp)
    }

    /// The address the server sees us at.
    pub async fn who_am_i(&self) -> anyhow::Result<SocketAddr> {
        match self.request(&Request::WhoAmI).await? {
            Response::YouAre(a) => Ok(a),
            other => anyhow::bail!("unexpected answer {other:?}"),
        }
    }

    /// Stores our record at the server (which replicates it).
    pub async fn register(&self, record: PeerRecord) -> anyhow::Result<()> {
        match self.request(&Request::Register(record)).await? {
            Response::Registered => Ok(()),
            other => anyhow::bail!("unexpected answer {other:?}"),
        }
    }

    /// Withdraws our record: registers a newer one that is already
    /// expired, which replaces the old one everywhere (records are signed
    /// by us, so only we can do this).
    pub async fn deregister(&self, client: &Client, seq: u64) -> anyhow::Result<()> {
        let addr = self.who_am_i().await?;
        // Expired as of now: offline at once, kept as a tombstone for a day.
        let record = client.record(self, "gone", addr, seq, Duration::ZERO);
        let record = PeerRecord::sign(client.keypair.signing_key(), record.body);
        self.register(record).await
    }

    /// Looks a peer up by id.
    pub async fn lookup(&self, peer: PeerId) -> anyhow::Result<Option<PeerRecord>> {
        match self.request(&Request::Lookup(peer)).await? {
            Response::Record(r) => Ok(r),
            other => anyhow::bail!("unexpected answer {other:?}"),
        }
    }

    /// Looks a peer up by name.
    pub async fn lookup_name(&self, name: &str) -> anyhow::Result<Option<PeerRecord>> {
        match self.request(&Request::LookupName(name.to_string())).await? {
            Response::Record(r) => Ok(r),
            other => anyhow::bail!("unexpected answer {other:?}"),
        }
    }

    /// Live servers, least loaded first.
    pub async fn servers(&self) -> anyhow::Result<Vec<ServerRecord>> {
        match self.request(&Request::Servers).await? {
            Response::Servers(s) => Ok(s),
            other => anyhow::bail!("unexpected answer {other:?}"),
        }
    }
}
