//! The server's configuration: a TOML file (`--config`), overridden by
//! command-line flags, with built-in defaults that run one local server.
//!
//! Every key is documented in `scripts/chatd.example.toml`. Unknown keys are
//! errors (a typo must not be silently ignored); errors name the key and the
//! line. Must not start anything: it only produces a `ServerConfig`.

use crate::net::identity::{Id, ServerAddr};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// `[server]`
    #[serde(default)]
    pub server: ServerSection,
    /// `[admin]`
    #[serde(default)]
    pub admin: AdminSection,
    /// `[overlay]`
    #[serde(default)]
    pub overlay: OverlaySection,
    /// `[relay]`
    #[serde(default)]
    pub relay: RelaySection,
    /// `[limits]`
    #[serde(default)]
    pub limits: LimitsSection,
    /// `[mail]`
    #[serde(default)]
    pub mail: MailSection,
}

/// `[mail]`: the letters (offline messages) this server keeps for clients.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailSection {
    /// Letters kept for one recipient (default 256).
    pub per_recipient: Option<usize>,
    /// Letters kept from one sender (default 256).
    pub per_sender: Option<usize>,
    /// Letters kept from one sender address or IPv6 /64 (default 1024).
    pub per_source: Option<usize>,
    /// Letters kept in all (default 100000; 0 keeps none).
    pub max_letters: Option<usize>,
    /// Sealed bytes kept in all, MiB (default 128).
    pub max_mib: Option<usize>,
    /// Hours a letter is kept when nobody collects it (default 168).
    pub ttl_hours: Option<u64>,
}

/// `[limits]`: what anonymous clients may make the server hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Client connections at once (default 20000).
    pub max_connections: Option<usize>,
    /// Client connections from one address or IPv6 /64 (default 64).
    pub per_ip_connections: Option<u32>,
    /// Live registrations here from one address or /64 (default 32).
    pub per_ip_records: Option<u32>,
    /// New identities one address may register per minute (default 60).
    pub new_ids_per_min: Option<f64>,
    /// Records the peer table holds at most, tombstones included (default
    /// 1000000).
    pub max_records: Option<usize>,
    /// Client connections of one identity (default 4).
    pub per_peer_connections: Option<u32>,
    /// Connections that never registered, at once (default 1024; a new one
    /// beyond it closes the one idle longest).
    pub max_anonymous: Option<usize>,
    /// Seconds an unregistered connection may stay without a request
    /// (default 30).
    pub anonymous_idle_secs: Option<u64>,
    /// New connections (QUIC handshakes) accepted per second in all
    /// (default 500; bursts of a sixteenth of it): beyond it they are
    /// refused before any cryptography.
    pub handshakes_per_sec: Option<f64>,
    /// The same per address or /64 (default 10, bursts of twice that):
    /// beyond it attempts are dropped.
    pub handshakes_per_ip_per_sec: Option<f64>,
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// UDP address for QUIC.
    pub listen: Option<SocketAddr>,
    /// Addresses other servers should dial, if not the listen address.
    #[serde(default)]
    pub advertise: Vec<SocketAddr>,
    /// Where state lives (the key file by default).
    pub data_dir: Option<PathBuf>,
    /// The identity key file (relative paths are under data_dir; `--key`
    /// on the command line is made absolute from the current directory
    /// before it overrides this).
    pub key_file: Option<PathBuf>,
    /// Servers to join through, `ID@HOST:PORT`.
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// Server ids allowed to join; empty = nobody can be checked, which
    /// needs `open_cluster = true`.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Run without an allowlist: any server that knows our id may join,
    /// read every client's addresses and vote on failures (default false).
    pub open_cluster: Option<bool>,
    /// Clients this server serves (default 10000): the load it announces is
    /// registrations / capacity, and registrations beyond it are refused.
    pub capacity: Option<u32>,
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// TCP address for /metrics, /healthz, /readyz, /status.
    pub listen: Option<SocketAddr>,
}

/// `[overlay]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlaySection {
    /// `lan` (default), `wan` or `local`.
    pub preset: Option<String>,
    /// Any overlay parameter by name, e.g. `"plumtree.graft_timeout_1" = "200ms"`.
    #[serde(default)]
    pub params: toml::Table,
}

/// `[relay]`: what the server gives clients that cannot connect directly.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySection {
    /// Relay streams one client may have open or waiting (default 8).
    pub max_per_client: Option<usize>,
    /// Relay sessions carried at once (default 1000; 0 turns relaying off).
    pub max_sessions: Option<usize>,
    /// Bytes per second per direction of a session (default 262144).
    pub bytes_per_sec: Option<u64>,
    /// Seconds the first of a pair waits for the second (default 15).
    pub wait_secs: Option<u64>,
}

/// The effective configuration.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// UDP address for QUIC.
    pub listen: SocketAddr,
    /// Addresses advertised to other servers.
    pub advertise: Vec<SocketAddr>,
    /// State directory.
    pub data_dir: PathBuf,
    /// Identity key file.
    pub key_file: PathBuf,
    /// Bootstrap servers.
    pub bootstrap: Vec<ServerAddr>,
    /// Allowed server ids.
    pub allow: Vec<Id>,
    /// Admin HTTP address.
    pub admin: SocketAddr,
    /// Overlay parameters.
    pub overlay: overlay::Config,
    /// The server core's limits and tempo (relay and `[limits]` included).
    pub core: rendezvous::Config,
    /// Whether running without an allowlist was asked for.
    pub open_cluster: bool,
    /// Handshakes per second in all and per address, with their bursts.
    pub handshakes: ((f64, f64), (f64, f64)),
}

/// Default QUIC port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7000";
/// Default admin port.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9100";

impl File {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> anyhow::Result<File> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }

    /// Resolves defaults and validates every value.
    pub fn resolve(self, origin: &str) -> anyhow::Result<ServerConfig> {
        let s = self.server;
        let data_dir = s.data_dir.unwrap_or_else(|| PathBuf::from("."));
        let key_file = s.key_file.unwrap_or_else(|| PathBuf::from("chatd.key"));
        let key_file = if key_file.is_absolute() {
            key_file
        } else {
            data_dir.join(key_file)
        };
        let bootstrap = s
            .bootstrap
            .iter()
            .map(|b| {
                b.parse()
                    .map_err(|e| anyhow::anyhow!("{origin}: server.bootstrap: {e}"))
            })
            .collect::<anyhow::Result<Vec<ServerAddr>>>()?;
        let allow = s
            .allow
            .iter()
            .map(|a| {
                a.parse()
                    .map_err(|e| anyhow::anyhow!("{origin}: server.allow: {e}"))
            })
            .collect::<anyhow::Result<Vec<Id>>>()?;
        let mut overlay = match self.overlay.preset.as_deref().unwrap_or("lan") {
            "lan" => overlay::Config::lan(),
            "wan" => overlay::Config::wan(),
            "local" => overlay::Config::local(),
            other => anyhow::bail!("{origin}: overlay.preset: {other:?} is not lan, wan or local"),
        };
        for (key, value) in &self.overlay.params {
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                other => anyhow::bail!(
                    "{origin}: overlay.params.{key}: {other} is not a string or integer"
                ),
            };
            overlay
                .set(key, &text)
                .map_err(|e| anyhow::anyhow!("{origin}: overlay.params: {e}"))?;
        }
        overlay
            .validate()
            .map_err(|e| anyhow::anyhow!("{origin}: overlay: {e}"))?;
        let mut core = rendezvous::Config::default();
        let r = self.relay;
        if let Some(n) = r.max_per_client {
            anyhow::ensure!(n >= 1, "{origin}: relay.max_per_client: must be at least 1");
            core.relay_per_client = u32::try_from(n).unwrap_or(u32::MAX);
        }
        core.relay_sessions = r.max_sessions.unwrap_or(core.relay_sessions);
        if let Some(b) = r.bytes_per_sec {
            anyhow::ensure!(
                b >= 1500,
                "{origin}: relay.bytes_per_sec: {b} is below one packet (1500) per second"
            );
            core.relay.bytes_per_sec = b;
        }
        if let Some(w) = r.wait_secs {
            anyhow::ensure!(
                (1..=300).contains(&w),
                "{origin}: relay.wait_secs: {w} is not within 1..=300"
            );
            core.relay_wait = std::time::Duration::from_secs(w);
        }
        let m = self.mail;
        for (value, key, slot) in [
            (
                m.per_recipient,
                "per_recipient",
                &mut core.mail.per_recipient,
            ),
            (m.per_sender, "per_sender", &mut core.mail.per_sender),
            (m.per_source, "per_source", &mut core.mail.per_source),
        ] {
            if let Some(n) = value {
                anyhow::ensure!(n >= 1, "{origin}: mail.{key}: must be at least 1");
                *slot = n;
            }
        }
        core.mail.max_letters = m.max_letters.unwrap_or(core.mail.max_letters);
        if let Some(mib) = m.max_mib {
            core.mail.max_bytes = mib.saturating_mul(1024 * 1024);
        }
        if let Some(h) = m.ttl_hours {
            anyhow::ensure!(
                (1..=24 * 30).contains(&h),
                "{origin}: mail.ttl_hours: {h} is not within 1..=720"
            );
            core.mail.ttl = std::time::Duration::from_secs(h * 3_600);
        }
        if let Some(c) = s.capacity {
            anyhow::ensure!(c >= 1, "{origin}: server.capacity: must be at least 1");
            core.capacity = c;
        }
        let l = self.limits;
        if let Some(n) = l.max_connections {
            anyhow::ensure!(
                n >= 1,
                "{origin}: limits.max_connections: must be at least 1"
            );
            core.max_connections = n;
        }
        if let Some(n) = l.per_ip_connections {
            anyhow::ensure!(
                n >= 1,
                "{origin}: limits.per_ip_connections: must be at least 1"
            );
            core.per_ip_connections = n;
        }
        if let Some(n) = l.per_ip_records {
            anyhow::ensure!(
                n >= 1,
                "{origin}: limits.per_ip_records: must be at least 1"
            );
            core.per_ip_records = n;
        }
        if let Some(n) = l.new_ids_per_min {
            anyhow::ensure!(
                n.is_finite() && n > 0.0,
                "{origin}: limits.new_ids_per_min: must be a positive number"
            );
            core.new_ids_per_min = n;
        }
        if let Some(n) = l.max_records {
            anyhow::ensure!(n >= 1, "{origin}: limits.max_records: must be at least 1");
            core.max_records = n;
        }
        if let Some(n) = l.per_peer_connections {
            anyhow::ensure!(
                n >= 1,
                "{origin}: limits.per_peer_connections: must be at least 1"
            );
            core.per_peer_connections = n;
        }
        if let Some(n) = l.max_anonymous {
            anyhow::ensure!(n >= 1, "{origin}: limits.max_anonymous: must be at least 1");
            core.max_anonymous = n;
        }
        if let Some(n) = l.anonymous_idle_secs {
            anyhow::ensure!(
                n >= 1,
                "{origin}: limits.anonymous_idle_secs: must be at least 1"
            );
            core.anonymous_idle = std::time::Duration::from_secs(n);
        }
        let defaults = crate::net::driver::NodeConfig::new(DEFAULT_LISTEN.parse()?);
        let mut handshakes = (defaults.handshakes, defaults.handshakes_per_ip);
        for (value, key, slot, burst) in [
            (
                l.handshakes_per_sec,
                "handshakes_per_sec",
                &mut handshakes.0,
                1.0 / 16.0,
            ),
            (
                l.handshakes_per_ip_per_sec,
                "handshakes_per_ip_per_sec",
                &mut handshakes.1,
                2.0,
            ),
        ] {
            if let Some(n) = value {
                anyhow::ensure!(
                    n.is_finite() && n >= 1.0,
                    "{origin}: limits.{key}: must be a number, at least 1"
                );
                *slot = (n, (n * burst).ceil().max(4.0));
            }
        }
        let open_cluster = s.open_cluster.unwrap_or(false);
        Ok(ServerConfig {
            listen: s
                .listen
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default")),
            advertise: s.advertise,
            data_dir,
            key_file,
            bootstrap,
            allow,
            admin: self
                .admin
                .listen
                .unwrap_or_else(|| DEFAULT_ADMIN.parse().expect("valid default")),
            overlay,
            core,
            open_cluster,
            handshakes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_is_valid_and_states_the_defaults() {
        let text = include_str!("../../scripts/chatd.example.toml");
        let f: File = toml::from_str(text).unwrap();
        let c = f.resolve("example").unwrap();
        let d = rendezvous::Config::default();
        assert_eq!(c.core.capacity, d.capacity);
        assert_eq!(c.core.per_ip_connections, d.per_ip_connections);
        assert_eq!(c.core.per_ip_records, d.per_ip_records);
        assert_eq!(c.core.new_ids_per_min, d.new_ids_per_min);
        assert_eq!(c.core.max_records, d.max_records);
        assert_eq!(c.core.max_connections, d.max_connections);
        assert_eq!(c.core.per_peer_connections, d.per_peer_connections);
        assert_eq!(c.core.max_anonymous, d.max_anonymous);
        assert_eq!(c.core.anonymous_idle, d.anonymous_idle);
        assert_eq!(c.core.relay_per_client, d.relay_per_client);
        assert_eq!(c.core.mail, d.mail);
        let n = crate::net::driver::NodeConfig::new(DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(c.handshakes, (n.handshakes, n.handshakes_per_ip));
        assert!(!c.open_cluster);
    }

    #[test]
    fn defaults_run_one_local_server() {
        let c = File::default().resolve("defaults").unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.admin.to_string(), DEFAULT_ADMIN);
        assert!(c.bootstrap.is_empty() && c.allow.is_empty());
        assert_eq!(c.key_file, PathBuf::from("./chatd.key"));
    }

    #[test]
    fn a_relative_key_file_is_under_data_dir_an_absolute_one_is_kept() {
        let f: File = toml::from_str("[server]\ndata_dir = \"d\"\nkey_file = \"k\"\n").unwrap();
        assert_eq!(f.resolve("x").unwrap().key_file, PathBuf::from("d/k"));
        let f: File =
            toml::from_str("[server]\ndata_dir = \"d\"\nkey_file = \"/abs/k\"\n").unwrap();
        assert_eq!(f.resolve("x").unwrap().key_file, PathBuf::from("/abs/k"));
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let e =
            toml::from_str::<File>("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("lisen") && msg.contains("line 3"), "{msg}");
        let e = toml::from_str::<File>("[server]\nlisten = \"nowhere\"\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let f: File = toml::from_str("[overlay]\npreset = \"lan\"\n[overlay.params]\n\"plumtree.graft_timeout_1\" = \"soon\"\n").unwrap();
        let e = f.resolve("x.toml").unwrap_err().to_string();
        assert!(e.contains("plumtree.graft_timeout_1"), "{e}");
        let f: File = toml::from_str("[server]\nbootstrap = [\"nope\"]\n").unwrap();
        assert!(
            f.resolve("x.toml")
                .unwrap_err()
                .to_string()
                .contains("server.bootstrap")
        );
    }

    #[test]
    fn overlay_parameters_are_set_by_name() {
        let f: File = toml::from_str(
            "[overlay]\npreset = \"local\"\n[overlay.params]\n\"hyparview.active_view_capacity\" = 6\n",
        )
        .unwrap();
        let c = f.resolve("x").unwrap();
        assert_eq!(c.overlay.hyparview.active_view_capacity, 6);
        assert_eq!(
            c.overlay.plumtree.graft_timeout_1,
            overlay::Config::local().plumtree.graft_timeout_1
        );
    }
}
