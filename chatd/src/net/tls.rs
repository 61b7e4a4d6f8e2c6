//! TLS 1.3 for QUIC with ed25519 identities instead of a CA.
//!
//! Each node presents a self-signed certificate whose subject key *is* its
//! ed25519 identity key. Verification ignores chains, names and validity
//! dates and checks only what matters here, on both sides:
//! - the dialer pins the key it expects (from `ID@HOST:PORT`);
//! - the acceptor requires an ed25519 client certificate (the peer's id);
//!   whether that id may use the negotiated ALPN (cluster admission for
//!   servers) is decided right after the handshake, by [`Admission`] in the
//!   driver — rustls does not tell the verifier which ALPN was chosen;
//! - the TLS 1.3 handshake signature is verified with that key (ring).
//!
//! Owns certificates and verifiers. Must not touch sockets (the QUIC
//! endpoints are in `driver.rs` and `client.rs`). Verifier error texts reach the peer in the QUIC close
//! reason, so they contain ids only.

use crate::net::identity::{Id, Keypair};
use ed25519_dalek::pkcs8::EncodePrivateKey;
use overlay::PeerId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

/// The name put in SNI; verifiers ignore it.
pub const SERVER_NAME: &str = "chatd";

/// A node's certificate and private key, ready for rustls.
pub struct Credentials {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Credentials {
    /// A self-signed certificate carrying `keypair`'s public key.
    pub fn new(keypair: &Keypair) -> anyhow::Result<Self> {
        let pkcs8 = keypair.signing_key().to_pkcs8_der()?;
        let der = PrivatePkcs8KeyDer::from(pkcs8.as_bytes().to_vec());
        let rc = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)?;
        anyhow::ensure!(
            rc.public_key_raw() == keypair.signing_key().verifying_key().as_bytes(),
            "certificate key differs from the identity key"
        );
        let cert =
            rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])?.self_signed(&rc)?;
        Ok(Credentials {
            cert: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(der),
        })
    }
}

/// The DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410): the whole
/// structure is always these 12 bytes followed by the 32-byte key.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The ed25519 identity in a certificate (webpki parses it fully first).
pub fn peer_id_from_cert(cert: &CertificateDer<'_>) -> Result<PeerId, rustls::Error> {
    let parsed = ParsedCertificate::try_from(cert)?;
    let spki = parsed.subject_public_key_info();
    let spki: &[u8] = spki.as_ref();
    if spki.len() != 44 || spki[..12] != ED25519_SPKI_PREFIX {
        return Err(cert_error("peer certificate key is not ed25519".into()));
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&spki[12..]);
    Ok(PeerId(key))
}

/// The application protocol (ALPN) negotiated on an established QUIC
/// connection.
pub fn alpn_of(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// The authenticated peer of an established QUIC connection.
pub fn peer_of(conn: &quinn::Connection) -> Option<PeerId> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    peer_id_from_cert(certs.first()?).ok()
}

fn cert_error(msg: String) -> rustls::Error {
    #[derive(Debug)]
    struct Reason(String);
    impl std::fmt::Display for Reason {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Reason {}
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        Reason(msg),
    ))))
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The handshake-signature methods both verifiers share: TLS 1.3 ed25519
/// signatures checked with ring against the certificate's key.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(message, cert, dss, &self.algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ED25519]
        }
    };
}

/// A dialed server holds another key than the pinned one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WrongServer {
    /// The key that was pinned (from `ID@HOST:PORT`).
    pub expected: PeerId,
    /// The key the server presented.
    pub got: PeerId,
}

impl fmt::Display for WrongServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "server is {}, not the expected {}",
            Id(self.got),
            Id(self.expected)
        )
    }
}

impl std::error::Error for WrongServer {}

/// What the pinned-key verifier of one dial found wrong, for the dialer's
/// error message: quinn turns the verifier's error into text, so the typed
/// [`WrongServer`] is kept here as well.
#[derive(Clone, Debug, Default)]
pub struct PinCheck(Arc<Mutex<Option<WrongServer>>>);

impl PinCheck {
    /// The mismatch the verifier saw, if any.
    pub fn wrong_server(&self) -> Option<WrongServer> {
        *crate::net::lock(&self.0)
    }

    fn record(&self, wrong: WrongServer) {
        *crate::net::lock(&self.0) = Some(wrong);
    }
}

/// Dialer side: the server must hold the pinned key.
#[derive(Debug)]
struct Pinned {
    expected: PeerId,
    algs: WebPkiSupportedAlgorithms,
    check: PinCheck,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = peer_id_from_cert(end_entity)?;
        if got != self.expected {
            let wrong = WrongServer {
                expected: self.expected,
                got,
            };
            self.check.record(wrong);
            return Err(cert_error(wrong.to_string()));
        }
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

/// The QUIC application close code a server sends a server that its
/// cluster allowlist does not admit.
pub const CLOSE_NOT_ADMITTED: u32 = 4;

/// Why a dial (or a connection just after it) failed, in words a person
/// can act on: [`DialError::new`] reads a quinn error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DialFailure {
    /// No answer: nothing listens there, or packets do not get through.
    Unreachable,
    /// The server holds another key than the one pinned.
    WrongServer(WrongServer),
    /// The server's cluster allowlist does not admit us.
    NotAdmitted,
    /// The server refused new connections for now (QUIC
    /// `CONNECTION_REFUSED`: it admits only so many handshakes a second).
    Busy,
    /// The server closed the connection with this reason.
    Closed(String),
    /// The TLS handshake failed.
    Handshake(String),
    /// Anything else (the error's own words).
    Other(String),
}

/// QUIC's `CONNECTION_REFUSED` transport error code.
fn quinn_proto_refused() -> quinn::TransportErrorCode {
    quinn::TransportErrorCode::CONNECTION_REFUSED
}

/// A failed dial to the server at `addr`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DialError {
    /// Where we dialed.
    pub addr: SocketAddr,
    /// What went wrong.
    pub failure: DialFailure,
}

impl DialError {
    /// Reads a connection error of a dial to `addr`, checked by `pin` (use
    /// `PinCheck::default()` when the verifier's check is not at hand).
    pub fn new(addr: SocketAddr, err: &quinn::ConnectionError, pin: &PinCheck) -> DialError {
        use quinn::ConnectionError as E;
        let failure = if let Some(wrong) = pin.wrong_server() {
            DialFailure::WrongServer(wrong)
        } else {
            match err {
                E::TimedOut => DialFailure::Unreachable,
                E::ApplicationClosed(c) if c.error_code == CLOSE_NOT_ADMITTED.into() => {
                    DialFailure::NotAdmitted
                }
                E::ApplicationClosed(c) => {
                    DialFailure::Closed(String::from_utf8_lossy(&c.reason).into_owned())
                }
                E::ConnectionClosed(c) if c.error_code == quinn_proto_refused() => {
                    DialFailure::Busy
                }
                E::ConnectionClosed(c) => {
                    DialFailure::Handshake(String::from_utf8_lossy(&c.reason).into_owned())
                }
                E::TransportError(t) => DialFailure::Handshake(t.reason.clone()),
                E::Reset => DialFailure::Closed("reset (it may have restarted)".into()),
                E::VersionMismatch => {
                    DialFailure::Other("it speaks no QUIC version we speak".into())
                }
                other => DialFailure::Other(other.to_string()),
            }
        };
        DialError { addr, failure }
    }

    /// A dial to `addr` that could not even start (`Endpoint::connect`).
    pub fn not_started(addr: SocketAddr, err: &quinn::ConnectError) -> DialError {
        DialError {
            addr,
            failure: DialFailure::Other(err.to_string()),
        }
    }

    /// A dial to `addr` that got no answer in time.
    pub fn unreachable(addr: SocketAddr) -> DialError {
        DialError {
            addr,
            failure: DialFailure::Unreachable,
        }
    }
}

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = self.addr;
        match &self.failure {
            DialFailure::Unreachable => write!(
                f,
                "server at {addr} is unreachable (timed out: is it running, and is UDP {addr} reachable from here?)"
            ),
            DialFailure::WrongServer(w) => write!(
                f,
                "server at {addr} is {}, not the expected {} (check the ID in ID@HOST:PORT)",
                Id(w.got),
                Id(w.expected)
            ),
            DialFailure::NotAdmitted => write!(
                f,
                "server at {addr} refused this server: its allowlist (--allow) does not admit this server's id"
            ),
            DialFailure::Busy => write!(
                f,
                "server at {addr} refused the connection: it is taking too many new connections right now (try again shortly, or another server)"
            ),
            DialFailure::Closed(reason) if reason.is_empty() => {
                write!(f, "server at {addr} closed the connection")
            }
            DialFailure::Closed(reason) => {
                write!(f, "server at {addr} closed the connection: {reason}")
            }
            DialFailure::Handshake(reason) => {
                write!(
                    f,
                    "TLS handshake with the server at {addr} failed: {reason}"
                )
            }
            DialFailure::Other(reason) => write!(f, "cannot connect to {addr}: {reason}"),
        }
    }
}

impl std::error::Error for DialError {}

/// Which servers may join the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Admission {
    /// Allowed server ids; empty admits every server (an open cluster).
    pub allow: BTreeSet<PeerId>,
}

impl Admission {
    /// Whether `peer` may join.
    pub fn admits(&self, peer: &PeerId) -> bool {
        self.allow.is_empty() || self.allow.contains(peer)
    }
}

/// The admission policy in force, replaceable at run time (SIGHUP).
pub type SharedAdmission = Arc<RwLock<Admission>>;

/// Acceptor side: any ed25519 client key (identity only; admission is
/// checked after the handshake, per ALPN).
#[derive(Debug)]
struct AnyEd25519 {
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyEd25519 {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        peer_id_from_cert(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

/// rustls server config: TLS 1.3, mutual authentication, `alpn`.
pub fn server_config(creds: &Credentials, alpn: &[&[u8]]) -> anyhow::Result<rustls::ServerConfig> {
    let verifier = Arc::new(AnyEd25519 { algs: algorithms() });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![creds.cert.clone()], creds.key.clone_key())?;
    tls.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(tls)
}

/// rustls client config pinned to `expected`, presenting our certificate.
pub fn client_config(
    creds: &Credentials,
    expected: PeerId,
    alpn: &[u8],
) -> anyhow::Result<rustls::ClientConfig> {
    Ok(pinned_client_config(creds, expected, alpn)?.0)
}

/// [`client_config`], with the [`PinCheck`] that tells after a failed dial
/// whether the server held another key (see [`DialError::new`]). Use one
/// config per dial for the check to speak of that dial.
pub fn pinned_client_config(
    creds: &Credentials,
    expected: PeerId,
    alpn: &[u8],
) -> anyhow::Result<(rustls::ClientConfig, PinCheck)> {
    let check = PinCheck::default();
    let verifier = Arc::new(Pinned {
        expected,
        algs: algorithms(),
        check: check.clone(),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![creds.cert.clone()], creds.key.clone_key())?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok((tls, check))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_carries_the_identity_key() {
        let k = Keypair::from_seed([3; 32]);
        let c = Credentials::new(&k).unwrap();
        assert_eq!(peer_id_from_cert(&c.cert).unwrap(), k.id().0);
    }

    #[test]
    fn a_non_ed25519_certificate_is_refused() {
        let p256 = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&p256)
            .unwrap();
        assert!(peer_id_from_cert(cert.der()).is_err());
        assert!(peer_id_from_cert(&CertificateDer::from(vec![1, 2, 3])).is_err());
    }

    #[tokio::test]
    async fn a_wrong_server_key_is_said_in_plain_words() {
        let server_key = Keypair::from_seed([5; 32]);
        let expected = Keypair::from_seed([7; 32]).id().0;
        let tls = server_config(&Credentials::new(&server_key).unwrap(), &[b"t"]).unwrap();
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
        let server = quinn::Endpoint::server(
            quinn::ServerConfig::with_crypto(Arc::new(quic)),
            ([127, 0, 0, 1], 0).into(),
        )
        .unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                let _ = incoming.await;
            }
        });
        let client = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).unwrap();
        let creds = Credentials::new(&Keypair::from_seed([6; 32])).unwrap();
        let (tls, pin) = pinned_client_config(&creds, expected, b"t").unwrap();
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let cfg = quinn::ClientConfig::new(Arc::new(quic));
        let err = client
            .connect_with(cfg, addr, SERVER_NAME)
            .unwrap()
            .await
            .unwrap_err();
        let e = DialError::new(addr, &err, &pin);
        let got = server_key.id().0;
        assert_eq!(
            e.failure,
            DialFailure::WrongServer(WrongServer { expected, got })
        );
        assert_eq!(
            e.to_string(),
            format!(
                "server at {addr} is {}, not the expected {} (check the ID in ID@HOST:PORT)",
                Id(got),
                Id(expected)
            )
        );
    }

    #[test]
    fn connection_errors_are_read_in_plain_words() {
        let addr: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let none = PinCheck::default();
        let e = DialError::new(addr, &quinn::ConnectionError::TimedOut, &none);
        assert_eq!(e.failure, DialFailure::Unreachable);
        assert!(e.to_string().contains("is unreachable (timed out"), "{e}");
        let refused = quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
            error_code: CLOSE_NOT_ADMITTED.into(),
            reason: bytes::Bytes::from_static(b"not a member of this cluster"),
        });
        let e = DialError::new(addr, &refused, &none);
        assert_eq!(e.failure, DialFailure::NotAdmitted);
        assert!(e.to_string().contains("allowlist"), "{e}");
    }

    #[test]
    fn admission_is_open_only_without_an_allowlist() {
        let a = Keypair::from_seed([1; 32]).id().0;
        let b = Keypair::from_seed([2; 32]).id().0;
        assert!(Admission::default().admits(&a));
        let closed = Admission {
            allow: BTreeSet::from([a]),
        };
        assert!(closed.admits(&a) && !closed.admits(&b));
    }
}
