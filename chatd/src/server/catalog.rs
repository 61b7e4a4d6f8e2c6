//! Every metric the daemon exports, described (Prometheus `# HELP`) and
//! registered at zero when it starts: the same set on every server from the
//! first scrape, whatever has happened yet, plus `chatd_build_info` and the
//! process start time.

use metrics::{describe_counter, describe_gauge};

/// Counters without labels: name (without `chatd_`) and description.
const COUNTERS: &[(&str, &str)] = &[
    (
        "admin_refused_total",
        "Admin HTTP connections closed at accept: 64 were open.",
    ),
    (
        "broadcast_failures_total",
        "Overlay broadcasts the core refused (payload too large or node left).",
    ),
    (
        "broadcast_payloads_received_total",
        "Overlay broadcast payloads handed to the server core.",
    ),
    (
        "client_connections_closed_total",
        "Client connections closed by the server.",
    ),
    (
        "client_requests_malformed_total",
        "Client requests that could not be decoded.",
    ),
    (
        "clients_closed_not_reading_total",
        "Client connections closed because the client did not read its notices.",
    ),
    (
        "clients_refused_total",
        "Client connections refused at the handshake (limits).",
    ),
    (
        "cluster_admission_refused_total",
        "Server connections refused: the peer is not in the cluster allowlist.",
    ),
    (
        "event_receiver_lagged_total",
        "Overlay events lost by a slow internal receiver.",
    ),
    (
        "handshakes_ignored_total",
        "QUIC handshakes ignored (per-address handshake rate).",
    ),
    (
        "handshakes_refused_total",
        "QUIC handshakes refused (too many in progress).",
    ),
    (
        "notices_dropped_total",
        "Notices to clients dropped because the client's queue was full.",
    ),
    (
        "overlay_handshake_failures_total",
        "Overlay connections whose handshake failed.",
    ),
    (
        "overlay_send_dropped_total",
        "Overlay messages dropped because a peer's send queue was full.",
    ),
    ("relay_bytes_total", "Bytes carried by relay sessions."),
    (
        "relay_sessions_capped_total",
        "Relay sessions ended at their byte cap.",
    ),
    ("relay_sessions_idle_total", "Relay sessions ended idle."),
    (
        "relay_sessions_spliced_total",
        "Relay sessions whose two sides were joined.",
    ),
    (
        "relay_throttled_total",
        "Times a relay session was slowed to its rate limit.",
    ),
    (
        "server_messages_dropped_total",
        "Server-to-server messages dropped (queue full or undecodable).",
    ),
    (
        "server_streams_refused_total",
        "Streams from other servers refused (too many open).",
    ),
];

/// Counters exported per label value (registered at zero per value
/// below where the values are known): name and description.
const LABELLED: &[(&str, &str)] = &[
    (
        "client_requests_refused_total",
        "Client requests and connections refused, by reason.",
    ),
    (
        "overlay_decode_errors_total",
        "Overlay frames that failed to decode, by kind.",
    ),
    (
        "overlay_encode_errors_total",
        "Overlay messages that could not be encoded, by type.",
    ),
    (
        "overlay_messages_received_total",
        "Overlay messages received, by type.",
    ),
    (
        "overlay_messages_sent_total",
        "Overlay messages sent, by type.",
    ),
    (
        "peer_records_rejected_total",
        "Peer records from other servers not applied, by reason.",
    ),
];

/// Gauges: name (without `chatd_`) and description.
const GAUGES: &[(&str, &str)] = &[
    ("client_connections", "Client connections open."),
    ("clients_registered", "Clients registered at this server."),
    (
        "cluster_servers",
        "Live servers this server knows, itself included.",
    ),
    ("letter_bytes_kept", "Bytes of offline letters kept."),
    ("letters_kept", "Offline letters kept."),
    (
        "overlay_active_peers",
        "Overlay active view size (neighbours).",
    ),
    ("overlay_links", "Open overlay QUIC connections."),
    ("overlay_passive_peers", "Overlay passive view size."),
    (
        "peer_table_records",
        "Records in the peer table (tombstones included).",
    ),
    (
        "peer_table_unexpired",
        "Unexpired records in the peer table.",
    ),
    (
        "pending_acks",
        "Registrations waiting for a replica's acknowledgement.",
    ),
    ("relay_sessions", "Relay sessions carried."),
    (
        "udp_receive_buffer_bytes",
        "The UDP socket's receive buffer the kernel granted.",
    ),
    (
        "waiting_meets",
        "Rendezvous requests waiting for the friend.",
    ),
    (
        "build_info",
        "Always 1; the labels say which build runs (version, commit).",
    ),
    (
        "process_start_time_seconds",
        "When the process started, in seconds since the Unix epoch.",
    ),
];

/// The description of a counter the rendezvous core names
/// (`chatd_NAME_total`, one of `rendezvous::server::Stats::COUNTERS`).
fn describe_core_counter(name: &'static str) {
    describe_counter!(
        format!("chatd_{name}_total"),
        format!(
            "Rendezvous core: {} (rendezvous::Stats counter).",
            name.replace('_', " ")
        )
    );
}

/// Describes and registers every metric at zero; sets the build info and
/// the start time. Call once, after installing the recorder.
pub fn register_all() {
    for (name, help) in COUNTERS {
        describe_counter!(format!("chatd_{name}"), *help);
        metrics::counter!(format!("chatd_{name}")).absolute(0);
    }
    for (name, help) in LABELLED {
        describe_counter!(format!("chatd_{name}"), *help);
    }
    for (name, help) in GAUGES {
        describe_gauge!(format!("chatd_{name}"), *help);
        // (These two are set below, with their values and labels.)
        if !matches!(*name, "build_info" | "process_start_time_seconds") {
            metrics::gauge!(format!("chatd_{name}")).set(0.0);
        }
    }
    // (`decode_errors` is exported by kind, with the frame-length errors
    // the driver finds: `chatd_overlay_decode_errors_total{kind}`.)
    for (name, help) in overlay::Stats::help()
        .into_iter()
        .filter(|(n, _)| *n != "decode_errors")
    {
        describe_counter!(
            format!("chatd_overlay_{name}_total"),
            format!("Overlay: {help}")
        );
        metrics::counter!(format!("chatd_overlay_{name}_total")).absolute(0);
    }
    for t in overlay::MessageType::ALL {
        metrics::counter!("chatd_overlay_messages_sent_total", "type" => t.name()).absolute(0);
        metrics::counter!("chatd_overlay_messages_received_total", "type" => t.name()).absolute(0);
    }
    for name in rendezvous::server::Stats::COUNTERS {
        describe_core_counter(name);
        metrics::counter!(format!("chatd_{name}_total")).absolute(0);
    }
    for kind in overlay::DecodeError::KINDS {
        metrics::counter!("chatd_overlay_decode_errors_total", "kind" => kind).absolute(0);
    }
    for code in rendezvous::ErrorCode::ALL {
        metrics::counter!("chatd_client_requests_refused_total", "reason" => code.label())
            .absolute(0);
    }
    metrics::gauge!(
        "chatd_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => env!("CHATD_COMMIT")
    )
    .set(1.0);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!("chatd_process_start_time_seconds").set(started);
}
