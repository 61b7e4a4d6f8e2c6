//! `chatd`: the rendezvous server (`serve`) and the chat client (`chat`),
//! with `keygen`, `id`, `status` and `lookup`.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a CLI prints

use anyhow::Context;
use chatd::config::{self, File};
use chatd::net::driver::{Node, NodeConfig};
use chatd::net::identity::{Id, Keypair, ServerAddr};
use chatd::net::tls::Admission;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `chatd --version`: the crate version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CHATD_COMMIT"),
    ")"
);

/// chatd: rendezvous servers that form a HyParView/Plumtree overlay.
///
/// Start one local server with built-in defaults:
///     chatd serve
/// Start a second one that joins the first (its id is printed at start):
///     chatd serve --listen 127.0.0.1:7001 --admin 127.0.0.1:9101 \
///         --data-dir ./two --bootstrap ID@127.0.0.1:7000
/// Ask a server how it is doing, which servers it knows, and which server a
/// client should use:
///     chatd status --admin 127.0.0.1:9100
///     chatd members --admin 127.0.0.1:9100
///     chatd lookup --server ID@127.0.0.1:7000
#[derive(Parser, Debug)]
#[command(name = "chatd", version = VERSION, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a rendezvous server (until SIGTERM or Ctrl-C).
    Serve(ServeArgs),
    /// Create a new identity key file and print its id.
    Keygen {
        /// Where to write the key (never overwrites an existing file).
        #[arg(long, default_value = "chatd.key")]
        out: PathBuf,
    },
    /// Print the id of an existing key file.
    Id {
        /// The key file.
        #[arg(long, default_value = "chatd.key")]
        key: PathBuf,
    },
    /// Print a running server's status (from its admin endpoint): id,
    /// readiness, version and uptime, overlay neighbours, live servers,
    /// clients and records.
    ///
    /// Several `--admin` addresses: one table, a row per server.
    Status {
        /// The server's admin address (repeat for a table of several).
        #[arg(long, default_value = config::DEFAULT_ADMIN)]
        admin: Vec<SocketAddr>,
        /// Print the `/status` JSON document instead, one line per server
        /// (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// List every server a running server knows, one row each: short id,
    /// address, status (alive, suspect, failed, left), clients / capacity
    /// and load. The server asked is marked `*`.
    ///
    /// Example:
    ///
    ///     chatd members --admin 127.0.0.1:9100
    #[command(verbatim_doc_comment)]
    Members {
        /// The server's admin address.
        #[arg(long, default_value = config::DEFAULT_ADMIN)]
        admin: SocketAddr,
        /// Print the `/members` JSON document instead (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Chat with a friend: find it through the servers, connect directly
    /// (hole punching through NATs) or through a server relay that cannot
    /// read the chat, then send stdin lines and print received ones.
    ///
    /// Example (two terminals):
    ///
    ///     chatd chat --name alice --to bob --server ID@203.0.113.5:7000
    ///     chatd chat --name bob --to alice --server ID@203.0.113.5:7000
    ///
    /// Your key is created on first use in the data dir (like an ssh key):
    /// friends know you by it. A friend given by name is pinned to the key
    /// first seen (DATA_DIR/known_friends); if that name later belongs to
    /// another key, chatd warns and refuses it unless --accept-new-key.
    /// Status goes to stderr; messages to stdout, one per line.
    #[command(verbatim_doc_comment)]
    Chat(ChatArgs),
    /// A group chat with a host: every member runs this with the same
    /// ROOM, each listing the others with --member.
    ///
    /// Example (three terminals):
    ///
    ///     chatd room team --name alice --member bob --member carol --server ID@HOST:7000
    ///     chatd room team --name bob --member alice --member carol --server ID@HOST:7000
    ///     chatd room team --name carol --member alice --member bob --server ID@HOST:7000
    ///
    /// Members find each other through the servers (an invitation is asked
    /// again with backoff, 1 s doubling to 30 s, until --wait) and connect
    /// pairwise as chats do (relayed first, direct when punching works).
    /// One member hosts: it orders every message, so all print the same
    /// sequence; the host is the member closest to the others (measured
    /// delays), and when it goes quiet for 2 s the next candidate takes
    /// over with a majority of the members. Lines on stdin are messages;
    /// stdout prints the room's messages as SENDER<TAB>TEXT, yours
    /// included; `/history N` pages back through older ones (on stderr).
    /// Status goes to stderr ("host is NAME", who joined, majority lost).
    /// The room ends for you when stdin ends and your messages are in the
    /// room's order (at most 15 s later), or on Ctrl-C.
    #[command(verbatim_doc_comment)]
    Room(RoomArgs),
    /// Leave messages for a friend (offline or not): each stdin line is
    /// sealed to the friend's key and kept by two servers until the friend
    /// collects it (at most 7 days); an online friend gets it at once.
    ///
    /// Example:
    ///
    ///     printf 'call me\nwhen back\n' | chatd send --name alice --to bob --server ID@HOST:7000
    ///
    /// The friend sees them with `chatd inbox` (or in `chatd chat` and
    /// `chatd room`, whenever it registers); servers hold only ciphertext,
    /// the friend's id and the letter's id — not who sent it. When the
    /// friend has them you are told so (a sealed receipt) at your next
    /// inbox, chat or room. An offline friend is given by id, or by a name
    /// pinned here after a chat. Exits 1 when a line could not be left
    /// (the rest are listed).
    #[command(verbatim_doc_comment)]
    Send(SendArgs),
    /// Print the messages friends left for you (SENDER<TAB>TEXT on stdout,
    /// each once, oldest first) and exit; receipts for the messages you
    /// left go to stderr.
    Inbox(InboxArgs),
    /// Ask a server, as a client would: which server to use (least loaded
    /// live server first), or where a peer is (--peer / --name).
    Lookup {
        /// Server to ask, ID@HOST:PORT; repeat to give fallbacks (the next
        /// is tried when one does not answer).
        #[arg(long = "server", value_name = "ID@HOST:PORT", required = true)]
        servers: Vec<ServerAddr>,
        /// Find this peer by id.
        #[arg(long, conflicts_with = "name")]
        peer: Option<Id>,
        /// Find the peers online with this name (one row each, the
        /// freshest first; more than one is said on stderr).
        #[arg(long)]
        name: Option<String>,
        /// Client key file (default: a throwaway key).
        #[arg(long)]
        key: Option<PathBuf>,
        /// One JSON line per server or peer instead of a table (for
        /// scripts).
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script, e.g.
    ///     chatd completions bash > /etc/bash_completion.d/chatd
    ///     chatd completions zsh > "${fpath[1]}/_chatd"
    #[command(verbatim_doc_comment)]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g.
    ///     chatd man > /usr/local/share/man/man1/chatd.1
    #[command(verbatim_doc_comment)]
    Man,
}

#[derive(clap::Args, Debug)]
struct ChatArgs {
    /// Your name (others can find you by it; names are not verified).
    #[arg(long)]
    name: String,
    /// The friend: a peer id, or a name (pinned to its key after the first
    /// chat).
    #[arg(long)]
    to: String,
    #[command(flatten)]
    client: ClientArgs,
    /// Seconds to wait for the friend to come online.
    #[arg(long, default_value_t = 120)]
    wait: u64,
}

/// What every client command (chat, room) takes.
#[derive(clap::Args, Debug)]
struct ClientArgs {
    /// A server to use, ID@HOST:PORT (repeat: the next is tried when one
    /// does not answer; servers they list are used too, e.g. when your
    /// server dies mid-chat).
    #[arg(long = "server", value_name = "ID@HOST:PORT", required = true)]
    servers: Vec<ServerAddr>,
    /// Where your key and known friends live [default: $XDG_DATA_HOME/chatd,
    /// else ~/.local/share/chatd].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Your key file, created if missing [default: DATA_DIR/client.key].
    #[arg(long)]
    key: Option<PathBuf>,
    /// Talk to a friend (or member) even if its name now maps to another
    /// key than the one pinned, and pin the new key.
    #[arg(long)]
    accept_new_key: bool,
    /// Local UDP address (one socket for server, punching and chat)
    /// [default: 0.0.0.0:0, or [::]:0 when the first server is IPv6].
    #[arg(long)]
    bind: Option<SocketAddr>,
    /// Seconds to try a direct path before relaying through a server.
    #[arg(long, default_value_t = 5.0)]
    direct_timeout: f64,
}

#[derive(clap::Args, Debug)]
struct SendArgs {
    /// Your name (shown to the friend; names are not verified).
    #[arg(long)]
    name: String,
    /// The friend: a peer id, or a name (pinned here after a chat, or
    /// online now).
    #[arg(long)]
    to: String,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(clap::Args, Debug)]
struct InboxArgs {
    /// Your name (the one your friends left messages to is your key; the
    /// name goes into the receipts you send).
    #[arg(long)]
    name: String,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(clap::Args, Debug)]
struct RoomArgs {
    /// The room's name (the same for every member).
    room: String,
    /// Your name (others can find you by it; names are not verified).
    #[arg(long)]
    name: String,
    /// Another member: a peer id, or a name (pinned to its key once
    /// connected); repeat for each.
    #[arg(long = "member", value_name = "FRIEND", required = true)]
    members: Vec<String>,
    #[command(flatten)]
    client: ClientArgs,
    /// Seconds to keep inviting a member that is not online.
    #[arg(long, default_value_t = 600)]
    wait: u64,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// TOML config file (keys: scripts/chatd.example.toml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// UDP address for QUIC [default: 127.0.0.1:7000].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin HTTP address for /metrics, /healthz, /readyz, /status [default: 127.0.0.1:9100].
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// State directory; the key is created there on first start [default: .].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Identity key file, created if missing; a relative path is relative
    /// to the current directory, like every path flag [default:
    /// DATA_DIR/chatd.key; `key_file` in a config file is relative to
    /// data_dir].
    #[arg(long)]
    key: Option<PathBuf>,
    /// A server to join through, ID@HOST:PORT (repeat for several).
    #[arg(long, value_name = "ID@HOST:PORT")]
    bootstrap: Vec<ServerAddr>,
    /// A server id allowed to join this cluster (repeat). Without one,
    /// `--open-cluster` is required.
    #[arg(long, value_name = "ID")]
    allow: Vec<Id>,
    /// Run without an allowlist: any server that knows this server's id may
    /// join, read every client's addresses and vote on failures. Only for
    /// a trusted network or a test.
    #[arg(long)]
    open_cluster: bool,
    /// Clients this server serves [default: 10000]; registrations beyond
    /// it are refused (clients pick another server).
    #[arg(long)]
    capacity: Option<u32>,
    /// Overlay timing preset: lan (default), wan or local.
    #[arg(long)]
    preset: Option<String>,
}

/// Runs the command; an error is one line on stderr, `chatd: error: ...`
/// (its causes joined by ": "), and exit status 1. A backtrace only with
/// CHATD_BACKTRACE=1 (whatever RUST_BACKTRACE says).
fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.command);
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatd: error: {}", error_line(&e));
            if std::env::var_os("CHATD_BACKTRACE").is_some_and(|v| v == "1") {
                // The full report: every cause, and the backtrace if one was
                // captured (RUST_BACKTRACE=1 or RUST_LIB_BACKTRACE=1).
                eprintln!("\n{e:?}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr. `serve` logs at INFO by default; the client commands
/// only at WARN, so that their `chatd: ...` status lines stand alone.
/// RUST_LOG overrides both.
fn init_logging(command: &Command) {
    let default = match command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// An error and its causes on one line, joined by ": ", without a cause
/// that repeats what the line already says (context chains sometimes
/// include their source's text in their own).
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for part in e.chain().map(|c| c.to_string()) {
        let part = part.trim();
        let said = line
            .strip_suffix(part)
            .is_some_and(|rest| rest.is_empty() || rest.ends_with([' ', ':', '(']));
        if part.is_empty() || said {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(part);
    }
    line
}

/// Writes `bytes` to stdout; a reader that stops early (`| head`) is not
/// an error.
fn print_all(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen { out } => {
            let k = Keypair::generate();
            k.save(&out)?;
            println!("{}", k.id());
            Ok(())
        }
        Command::Id { key } => {
            println!("{}", Keypair::load(&key)?.id());
            Ok(())
        }
        Command::Status { admin, json } => match admin.as_slice() {
            [one] => admin_show(*one, "/status", json, chatd::server::report::status_text),
            many => status_many(many, json),
        },
        Command::Members { admin, json } => admin_show(
            admin,
            "/members",
            json,
            chatd::server::report::members_table,
        ),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "chatd", &mut out);
            print_all(&out)
        }
        Command::Man => {
            use clap::CommandFactory;
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut out)?;
            print_all(&out)
        }
        Command::Chat(args) => chat(args),
        Command::Room(args) => room(args),
        Command::Send(args) => send(args),
        Command::Inbox(args) => inbox(args),
        Command::Lookup {
            servers,
            peer,
            name,
            key,
            json,
        } => lookup(servers, peer, name, key, json),
        Command::Serve(args) => serve(args),
    }
}

/// Fetches `path` from the admin endpoint at `admin` and prints it: as it
/// is with `json`, else through `human`.
fn admin_show(
    admin: SocketAddr,
    path: &str,
    json: bool,
    human: fn(&serde_json::Value) -> String,
) -> anyhow::Result<()> {
    let body = admin_get(admin, path)?;
    if json {
        print!("{body}");
        return Ok(());
    }
    let doc: serde_json::Value = serde_json::from_str(&body)
        .with_context(|| format!("{admin}{path} did not answer with JSON (an older chatd?)"))?;
    print!("{}", human(&doc));
    Ok(())
}

/// `chatd status` of several servers: one table (or JSON lines); fails if
/// any did not answer, after printing what the others said.
fn status_many(admins: &[SocketAddr], json: bool) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for a in admins {
        let st = admin_get(*a, "/status").and_then(|body| {
            if json {
                print!("{body}");
            }
            Ok(serde_json::from_str::<serde_json::Value>(&body)?)
        });
        rows.push((a.to_string(), st.map_err(|e| format!("{e:#}"))));
    }
    if !json {
        print!("{}", chatd::server::report::status_table(&rows));
    }
    let silent = rows.iter().filter(|(_, r)| r.is_err()).count();
    if silent > 0 {
        anyhow::bail!("{silent} of {} servers did not answer", rows.len());
    }
    Ok(())
}

/// The body of `GET path` at the admin endpoint `admin`.
fn admin_get(admin: SocketAddr, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(3)).map_err(|e| {
            let why = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
                std::io::ErrorKind::TimedOut => "no answer within 3 s".to_string(),
                _ => e.to_string(),
            };
            anyhow::anyhow!(
                "no chatd admin endpoint at {admin} ({why}; is `chatd serve --admin {admin}` running?)"
            )
        })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: chatd\r\nconnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let code = head.split_whitespace().nth(1).unwrap_or("?");
    if code != "200" {
        anyhow::bail!(
            "{admin}{path} answered {code}: {} (an older chatd without it?)",
            body.trim()
        );
    }
    Ok(body.to_string())
}

fn chat(args: ChatArgs) -> anyhow::Result<()> {
    let friend = friend_ref(args.to);
    let (opts, lock) = client_options(args.client, args.name, friend, args.wait)?;
    let res = in_runtime(chatd::client::run::run(opts));
    drop(lock);
    res
}

fn room(args: RoomArgs) -> anyhow::Result<()> {
    let members: Vec<_> = args.members.into_iter().map(friend_ref).collect();
    // Before any key is made: the arguments make a room.
    chatd::client::room::check(&args.room, &args.name, &members)?;
    // (A room's `friend` is not used.)
    let me = rendezvous::FriendRef::Name(args.name.clone());
    let (chat, lock) = client_options(args.client, args.name, me, args.wait)?;
    let opts = chatd::client::room::RoomOptions {
        room: args.room,
        members,
        chat,
    };
    let res = in_runtime(chatd::client::room::run(opts));
    drop(lock);
    res
}

fn send(args: SendArgs) -> anyhow::Result<()> {
    let friend = friend_ref(args.to);
    if let rendezvous::FriendRef::Name(n) = &friend {
        rendezvous::record::check_name(n).map_err(|e| anyhow::anyhow!("--to {n:?}: {e}"))?;
    }
    let lines = chatd::client::mail::read_lines(std::io::stdin().lock())?;
    if lines.is_empty() {
        anyhow::bail!("nothing to send: stdin had no lines");
    }
    let (opts, lock) = client_options(args.client, args.name, friend, 0)?;
    let res = in_runtime(chatd::client::mail::run_send(opts, lines));
    drop(lock);
    res
}

fn inbox(args: InboxArgs) -> anyhow::Result<()> {
    let me = rendezvous::FriendRef::Name(args.name.clone());
    let (opts, lock) = client_options(args.client, args.name, me, 0)?;
    let res = in_runtime(chatd::client::mail::run_inbox(opts));
    drop(lock);
    res
}

/// A client's options from its flags: the key opened (and locked: keep
/// the file until the client ends), the bind address defaulted.
fn client_options(
    c: ClientArgs,
    name: String,
    friend: rendezvous::FriendRef,
    wait: u64,
) -> anyhow::Result<(chatd::client::run::Options, std::fs::File)> {
    let me = Me::open(c.data_dir, c.key, c.direct_timeout)?;
    let bind = c
        .bind
        .unwrap_or_else(|| chatd::client::any_addr_for(c.servers[0].addr));
    let mail = chatd::client::mail::Mailroom::new(
        me.keypair.signing_key().clone(),
        name.clone(),
        &me.data_dir,
    )?;
    let opts = chatd::client::run::Options {
        mail: Arc::new(mail),
        name,
        friend,
        servers: c.servers,
        keypair: me.keypair,
        bind,
        wait: Duration::from_secs(wait),
        direct_timeout: me.direct_timeout,
        known: me.known,
        accept_new_key: c.accept_new_key,
    };
    Ok((opts, me.lock))
}

/// A peer id, or else a name.
fn friend_ref(s: String) -> rendezvous::FriendRef {
    match s.parse::<Id>() {
        Ok(id) => rendezvous::FriendRef::Id(id.0),
        Err(_) => rendezvous::FriendRef::Name(s),
    }
}

/// Runs a client on a runtime of its own; does not wait for the stdin
/// reader (after Ctrl-C or the friend leaving, stdin may still be open).
fn in_runtime(f: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let res = runtime.block_on(f);
    runtime.shutdown_timeout(Duration::from_millis(200));
    res
}

/// A client's identity as the chat and room commands open it: the key
/// (created on first use, locked against a second client), the pinned
/// friends.
struct Me {
    keypair: Keypair,
    data_dir: PathBuf,
    known: chatd::client::friends::KnownFriends,
    direct_timeout: Duration,
    lock: std::fs::File,
}

impl Me {
    fn open(
        data_dir: Option<PathBuf>,
        key: Option<PathBuf>,
        direct_timeout: f64,
    ) -> anyhow::Result<Me> {
        if !(direct_timeout.is_finite() && (0.0..=600.0).contains(&direct_timeout)) {
            anyhow::bail!("--direct-timeout: {direct_timeout} is not within 0..=600 seconds");
        }
        let data_dir = match data_dir {
            Some(d) => d,
            None => chatd::client::friends::default_data_dir()?,
        };
        let key_path = key.unwrap_or_else(|| data_dir.join(chatd::client::friends::KEY_FILE));
        // One client per key: a second one with the same key would replace
        // the first one's record (same id) and neither would find its friend.
        let lock_path = key_path.with_extension("lock");
        if let Some(dir) = lock_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::Error(e)) => eprintln!(
                "chatd: warning: cannot lock {} ({e}); make sure no other chat uses this key",
                lock_path.display()
            ),
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "another chatd client (chat or room) is running with the key {} — two \
                 clients with one key would be one peer; give this one its own --data-dir \
                 (or --key)",
                key_path.display()
            ),
        }
        let (keypair, created) = Keypair::load_or_create(&key_path)?;
        if created {
            eprintln!(
                "chatd: created your key {} (id {}); friends will know you by it",
                key_path.display(),
                keypair.id()
            );
        }
        let known = chatd::client::friends::KnownFriends::load(
            &data_dir.join(chatd::client::friends::FILE),
        )?;
        Ok(Me {
            keypair,
            data_dir,
            known,
            direct_timeout: Duration::from_secs_f64(direct_timeout),
            lock,
        })
    }
}

fn lookup(
    servers: Vec<ServerAddr>,
    peer: Option<Id>,
    name: Option<String>,
    key: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    use chatd::server::report::{peers_table, servers_table};
    let show = |rows: Vec<serde_json::Value>, table: fn(&[serde_json::Value]) -> String| {
        if json {
            for r in &rows {
                println!("{r}");
            }
        } else {
            print!("{}", table(&rows));
        }
    };
    let keypair = match key {
        Some(path) => Keypair::load(&path)?,
        None => Keypair::generate(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let bind = chatd::client::any_addr_for(servers[0].addr);
        let client = chatd::client::Client::new(keypair, bind)?;
        let session = client.connect_any(&servers).await?;
        let records = match (peer, name) {
            (Some(id), _) => Some(session.lookup(id.0).await?.into_iter().collect()),
            (None, Some(name)) => {
                let found = session.find_name(&name).await?;
                if found.len() > 1 {
                    eprintln!(
                        "chatd: {} online peers use the name {name} (names are not verified; pick by id)",
                        found.len()
                    );
                }
                Some(found)
            }
            (None, None) => None,
        };
        match records {
            Some(records) if records.is_empty() => anyhow::bail!("no such peer is online"),
            Some(records) => {
                let rows = records
                    .iter()
                    .map(|r| {
                        let b = &r.body;
                        serde_json::json!({
                            "peer": Id(b.peer).to_string(),
                            "name": b.name,
                            "home_server": Id(b.home_server).to_string(),
                            "public_addr": b.public_addr.map(|a| a.to_string()),
                            "private_addrs": b.private_addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                            "seq": b.seq,
                        })
                    })
                    .collect();
                show(rows, peers_table);
            }
            None => {
                let rows = session
                    .servers()
                    .await?
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "id": Id(s.id).to_string(),
                            "addr": chatd::client::dial_addr(s).map(|a| a.to_string()),
                            "clients": s.clients,
                            "capacity": s.capacity,
                            "load": s.load(),
                        })
                    })
                    .collect();
                show(rows, servers_table);
            }
        }
        anyhow::Ok(())
    })
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (mut file, origin) = match &args.config {
        Some(path) => (File::load(path)?, path.display().to_string()),
        None => (File::default(), "defaults".to_string()),
    };
    // Flags override the file.
    let s = &mut file.server;
    if args.listen.is_some() {
        s.listen = args.listen;
    }
    if args.data_dir.is_some() {
        s.data_dir = args.data_dir.clone();
    }
    if let Some(key) = &args.key {
        // Relative to the current directory (not to the data dir): made
        // absolute here, so that resolving leaves it alone.
        let abs = std::path::absolute(key).with_context(|| format!("--key {}", key.display()))?;
        s.key_file = Some(abs);
    }
    s.bootstrap
        .extend(args.bootstrap.iter().map(|b| b.to_string()));
    s.allow.extend(args.allow.iter().map(|a| a.to_string()));
    if args.open_cluster {
        s.open_cluster = Some(true);
    }
    if args.capacity.is_some() {
        s.capacity = args.capacity;
    }
    if args.admin.is_some() {
        file.admin.listen = args.admin;
    }
    if args.preset.is_some() {
        file.overlay.preset = args.preset.clone();
    }
    let cfg = file.resolve(&origin)?;
    anyhow::ensure!(
        !cfg.allow.is_empty() || cfg.open_cluster,
        "no cluster allowlist: name the servers that may join with --allow ID (repeat; `chatd id --key FILE` prints a server's id), \
         or pass --open-cluster to accept any server (a trusted network or a test only)"
    );
    let (keypair, created) = Keypair::load_or_create(&cfg.key_file)?;
    let key_path = std::path::absolute(&cfg.key_file).unwrap_or_else(|_| cfg.key_file.clone());
    if created {
        tracing::info!(file = %key_path.display(), id = %keypair.id(), "created a new identity key");
    } else {
        tracing::info!(file = %key_path.display(), id = %keypair.id(), "using the identity key");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut signals = Signals::install()?;
        let metrics = chatd::server::admin::install_recorder()?;
        chatd::server::catalog::register_all();
        let mut node_cfg = NodeConfig::new(cfg.listen);
        node_cfg.advertise = cfg.advertise.clone();
        node_cfg.bootstrap = cfg.bootstrap.clone();
        node_cfg.admission = Admission {
            allow: cfg.allow.iter().map(|i| i.0).collect(),
        };
        node_cfg.overlay = cfg.overlay.clone();
        (node_cfg.handshakes, node_cfg.handshakes_per_ip) = cfg.handshakes;
        if node_cfg.admission.allow.is_empty() {
            tracing::warn!(
                "open cluster (--open-cluster): any server that knows this server's id may join"
            );
        }
        let node = Arc::new(Node::start(&keypair, node_cfg).await?);
        let mut core = cfg.core.clone();
        (core.heartbeat, core.dead_after) = membership_tempo(&cfg);
        core.allow = (!cfg.allow.is_empty()).then(|| cfg.allow.iter().map(|i| i.0).collect());
        let members = Arc::new(chatd::server::Server::start(
            node.clone(),
            keypair.signing_key().clone(),
            core,
        ));
        let alone = cfg.bootstrap.is_empty();
        let (admin, _admin_task) =
            chatd::server::admin::serve(cfg.admin, node.clone(), members.clone(), metrics, alone)
                .await?;
        // One line on stdout a launcher can parse.
        println!(
            "{{\"id\":\"{}\",\"addr\":\"{}\",\"admin\":\"http://{}\"}}",
            Id(node.id),
            node.addr(),
            admin
        );
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        if let Some(period) = sd_notify::watchdog_enabled() {
            // Ping only while the core task answers: a wedged node gets
            // restarted by systemd.
            let node = node.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period / 2);
                loop {
                    tick.tick().await;
                    let alive = tokio::time::timeout(period / 4, node.snapshot()).await;
                    if matches!(alive, Ok(Ok(_))) {
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                    }
                }
            });
        }
        while let Signal::Reload = signals.next().await {
            reload(&args, &node, &members);
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        tracing::info!("shutting down: announcing the leave, telling neighbors");
        members.leave().await;
        // Let the leave announce spread a little before the links close.
        tokio::time::sleep(Duration::from_millis(300)).await;
        node.shutdown(Duration::from_secs(3)).await;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

/// Heartbeat and failure timeout follow the overlay preset's tempo.
fn membership_tempo(cfg: &config::ServerConfig) -> (Duration, Duration) {
    let local = cfg.overlay.hyparview.repair_interval < Duration::from_secs(1);
    if local {
        (Duration::from_secs(1), Duration::from_secs(6))
    } else {
        // The core's defaults: a silence limit of exactly three 30 s
        // intervals raced the third announce after a 60 s partition
        // (false deaths in the simulator); 100 s does not.
        let d = rendezvous::Config::default();
        (d.heartbeat, d.dead_after)
    }
}

enum Signal {
    Stop,
    Reload,
}

/// SIGTERM, SIGINT (Ctrl-C) and SIGHUP, installed once before anything
/// starts, so none is lost during startup or between two reloads.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}

/// SIGHUP: re-reads the config file and applies what can change without a
/// restart — the cluster allowlist. Everything else needs a restart (logged).
fn reload(args: &ServeArgs, node: &Node, server: &chatd::server::Server) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
    let Some(path) = &args.config else {
        tracing::info!("SIGHUP: no --config file; nothing to reload");
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        return;
    };
    match File::load(path).and_then(|f| f.resolve(&path.display().to_string())) {
        Ok(cfg) => {
            let mut allow: std::collections::BTreeSet<_> = cfg.allow.iter().map(|i| i.0).collect();
            allow.extend(args.allow.iter().map(|i| i.0));
            tracing::info!(
                servers = allow.len(),
                "SIGHUP: reloaded the cluster allowlist (other changes need a restart)"
            );
            if allow.is_empty() && !cfg.open_cluster && !args.open_cluster {
                tracing::error!(
                    "SIGHUP: the new config has no allowlist (and no open_cluster = true); the old one stays in force"
                );
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
                return;
            }
            server.set_allow((!allow.is_empty()).then(|| allow.clone()));
            node.set_admission(Admission { allow });
        }
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: config not reloaded; the old one stays in force")
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
}

#[cfg(test)]
mod error_line_tests {
    use super::error_line;

    #[test]
    fn causes_are_joined_and_repeats_left_out() {
        let io = std::io::Error::other("disk on fire");
        let e = anyhow::Error::new(io).context("key file k: disk on fire");
        assert_eq!(error_line(&e), "key file k: disk on fire");
        let e = anyhow::anyhow!("b").context("b").context("a");
        assert_eq!(error_line(&e), "a: b");
        // Only whole words are taken for a repeat.
        let e = anyhow::anyhow!("5").context("error 15");
        assert_eq!(error_line(&e), "error 15: 5");
    }
}
