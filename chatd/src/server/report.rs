//! What `chatd status` and `chatd members` print for people: the admin
//! endpoint's JSON (`/status`, `/members`) as a short summary and a table,
//! in the spirit of `consul members`. `--json` prints the documents as they
//! are, for scripts.

use serde_json::Value;
use std::fmt::Write;

/// An id as people read it: its first 8 characters.
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// Seconds as `3d 4h`, `2h 05m`, `7m 12s` or `42s`.
pub fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s:02}s"),
        (0, _, _) => format!("{h}h {m:02}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn num(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// A server's `clients/capacity`.
fn clients(v: &Value) -> String {
    format!("{}/{}", num(v, "clients"), num(v, "capacity"))
}

/// A server's load as a percentage.
fn load(v: &Value) -> String {
    format!("{:.1}%", v["load"].as_f64().unwrap_or(0.0) * 100.0)
}

/// `/status` as a few lines.
pub fn status_text(st: &Value) -> String {
    let id = st["id"].as_str().unwrap_or("?");
    let ready = if st["ready"].as_bool() == Some(true) {
        "ready"
    } else {
        "NOT READY (not joined to the overlay yet)"
    };
    let active: Vec<&str> = st["active"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(short).collect())
        .unwrap_or_default();
    let servers = st["servers"].as_array().map_or(0, Vec::len);
    let mut out = String::new();
    let _ = writeln!(out, "server    {id}");
    let _ = writeln!(
        out,
        "state     {ready}, up {}, chatd {} (commit {})",
        uptime(num(st, "uptime_s")),
        st["version"].as_str().unwrap_or("?"),
        st["commit"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(
        out,
        "overlay   {} neighbours{}, {} passive, {} connections, {} broadcasts delivered, {} frames dropped",
        active.len(),
        if active.is_empty() {
            String::new()
        } else {
            format!(" ({})", active.join(" "))
        },
        num(st, "passive"),
        num(st, "links"),
        num(st, "payloads_delivered"),
        num(st, "dropped_frames"),
    );
    let _ = writeln!(
        out,
        "cluster   {servers} live servers (`chatd members` lists them)"
    );
    let _ = writeln!(
        out,
        "clients   {} registered, {} connections, {} relay sessions; {} records ({} unexpired)",
        num(st, "clients"),
        num(st, "connections"),
        num(st, "relay_sessions"),
        num(st, "records"),
        num(st, "unexpired"),
    );
    out
}

/// Several servers' `/status` (by admin address, or why it did not
/// answer) as one table.
pub fn status_table(rows: &[(String, Result<Value, String>)]) -> String {
    let head = [
        "ADMIN",
        "ID",
        "STATE",
        "UP",
        "NEIGHBOURS",
        "SERVERS",
        "CLIENTS",
        "VERSION",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|(admin, st)| match st {
            Ok(st) => [
                admin.clone(),
                short(st["id"].as_str().unwrap_or("?")).to_string(),
                if st["ready"].as_bool() == Some(true) {
                    "ready"
                } else {
                    "not ready"
                }
                .to_string(),
                uptime(num(st, "uptime_s")),
                st["active"].as_array().map_or(0, Vec::len).to_string(),
                st["servers"].as_array().map_or(0, Vec::len).to_string(),
                num(st, "clients").to_string(),
                format!(
                    "{} ({})",
                    st["version"].as_str().unwrap_or("?"),
                    st["commit"].as_str().unwrap_or("?")
                ),
            ],
            Err(why) => [
                admin.clone(),
                "-".into(),
                format!("unreachable: {why}"),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
        })
        .collect();
    table(head, &cells)
}

/// Rows under a header, columns left-aligned two spaces apart.
fn table<const N: usize>(head: [&str; N], rows: &[[String; N]]) -> String {
    let mut width = head.map(|h| h.chars().count());
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; N]| {
        let mut l = String::new();
        for (c, w) in cells.iter().zip(width) {
            let _ = write!(l, "{c:<w$}  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(head);
    for r in rows {
        line(r.each_ref().map(String::as_str));
    }
    out
}

/// `chatd lookup`'s servers, least loaded first, each with the
/// `ID@HOST:PORT` to pass as `--server`.
pub fn servers_table(rows: &[Value]) -> String {
    let cells: Vec<[String; 3]> = rows
        .iter()
        .map(|s| {
            [
                match s["addr"].as_str() {
                    Some(a) => format!("{}@{a}", s["id"].as_str().unwrap_or("?")),
                    None => format!("{} (no address)", s["id"].as_str().unwrap_or("?")),
                },
                clients(s),
                load(s),
            ]
        })
        .collect();
    table(["SERVER (--server)", "CLIENTS", "LOAD"], &cells)
}

/// `chatd lookup --peer/--name`'s records, the full id first (what
/// `chatd chat --to` takes).
pub fn peers_table(rows: &[Value]) -> String {
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|p| {
            let private: Vec<&str> = p["private_addrs"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            [
                p["peer"].as_str().unwrap_or("?").to_string(),
                p["name"].as_str().unwrap_or("-").to_string(),
                short(p["home_server"].as_str().unwrap_or("?")).to_string(),
                p["public_addr"].as_str().unwrap_or("-").to_string(),
                if private.is_empty() {
                    "-".into()
                } else {
                    private.join(",")
                },
                num(p, "seq").to_string(),
            ]
        })
        .collect();
    table(["PEER", "NAME", "HOME", "PUBLIC", "PRIVATE", "SEQ"], &cells)
}

/// `/members` as a table, one row per server, the answering one marked.
pub fn members_table(doc: &Value) -> String {
    let rows: Vec<[String; 5]> = doc["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    let mark = if m["this"].as_bool() == Some(true) {
                        "*"
                    } else {
                        ""
                    };
                    [
                        format!("{}{mark}", short(m["id"].as_str().unwrap_or("?"))),
                        m["addr"].as_str().unwrap_or("-").to_string(),
                        m["status"].as_str().unwrap_or("?").to_string(),
                        clients(m),
                        load(m),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = table(["ID", "ADDRESS", "STATUS", "CLIENTS", "LOAD"], &rows);
    let alive = rows.iter().filter(|r| r[2] == "alive").count();
    let _ = writeln!(
        out,
        "{} servers known, {alive} alive (* = the server answering)",
        rows.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_reads_as_people_say_it() {
        assert_eq!(uptime(42), "42s");
        assert_eq!(uptime(432), "7m 12s");
        assert_eq!(uptime(7500), "2h 05m");
        assert_eq!(uptime(3 * 86_400 + 4 * 3600 + 5), "3d 4h");
    }

    #[test]
    fn the_members_table_has_a_row_per_server_aligned() {
        let doc = serde_json::json!({"members": [
            {"id": "aaaaaaaabbbbbbbb", "addr": "127.0.0.1:7000", "status": "alive", "clients": 3, "capacity": 10000, "load": 0.0003, "this": true},
            {"id": "ccccccccdddddddd", "addr": "[::1]:7001", "status": "suspect", "clients": 0, "capacity": 10000, "load": 0.0, "this": false},
            {"id": "eeeeeeeeffffffff", "addr": null, "status": "left", "clients": 0, "capacity": 0, "load": 1.0, "this": false},
        ]});
        let t = members_table(&doc);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert!(lines[0].starts_with("ID ") && lines[0].contains("STATUS"));
        assert!(
            lines[1].starts_with("aaaaaaaa*")
                && lines[1].contains("alive")
                && lines[1].contains("3/10000")
        );
        assert!(lines[2].contains("suspect") && lines[2].contains("[::1]:7001"));
        assert!(lines[3].contains("left") && lines[3].contains(" - "), "{t}");
        // Columns line up: STATUS starts at the same place on every row.
        let col = lines[0].find("STATUS").unwrap();
        for l in &lines[1..4] {
            assert!(l[col..].starts_with(['a', 's', 'l']), "{l}");
        }
        assert_eq!(
            lines[4],
            "3 servers known, 1 alive (* = the server answering)"
        );
    }

    #[test]
    fn lookup_tables_keep_what_the_next_command_needs() {
        let servers = servers_table(&[
            serde_json::json!({"id": "sid1", "addr": "127.0.0.1:7000", "clients": 2, "capacity": 100, "load": 0.02}),
            serde_json::json!({"id": "sid2", "addr": null, "clients": 0, "capacity": 0, "load": 1.0}),
        ]);
        assert!(
            servers
                .lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("sid1@127.0.0.1:7000 ") && l.ends_with("2.0%")),
            "{servers}"
        );
        assert!(servers.contains("sid2 (no address)"), "{servers}");
        let peers = peers_table(&[
            serde_json::json!({"peer": "peerid-full-52", "name": "alice",
            "home_server": "homeserverid", "public_addr": "203.0.113.5:4000",
            "private_addrs": ["10.0.0.2:4000", "[fd00::2]:4000"], "seq": 3}),
        ]);
        let row = peers.lines().nth(1).unwrap_or_default();
        assert!(
            row.starts_with(
                "peerid-full-52  alice  homeserv  203.0.113.5:4000  10.0.0.2:4000,[fd00::2]:4000  3"
            ),
            "{peers}"
        );
    }

    #[test]
    fn several_servers_status_is_one_table() {
        let st = serde_json::json!({"id": "abcdefghijkl", "ready": true, "version": "0.1.0",
            "commit": "1a2b", "uptime_s": 61, "active": ["x", "y"], "servers": ["a", "b", "c"], "clients": 7});
        let t = status_table(&[
            ("127.0.0.1:9100".into(), Ok(st)),
            ("127.0.0.1:9101".into(), Err("connection refused".into())),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("ADMIN ") && lines[0].contains("NEIGHBOURS"));
        assert!(
            lines[1].contains("abcdefgh")
                && lines[1].contains("ready")
                && lines[1].contains("1m 01s")
        );
        assert!(lines[1].contains("0.1.0 (1a2b)"), "{t}");
        assert!(lines[2].contains("unreachable: connection refused"), "{t}");
    }

    #[test]
    fn the_status_summary_names_what_matters() {
        let st = serde_json::json!({
            "id": "abcdefghijkl", "ready": true, "version": "0.1.0", "commit": "1a2b3c4",
            "uptime_s": 7500, "active": ["aaaaaaaaxx", "bbbbbbbbyy"], "passive": 4, "links": 3,
            "payloads_delivered": 9, "dropped_frames": 0, "servers": ["a", "b", "c"],
            "clients": 2, "connections": 2, "records": 5, "unexpired": 4, "relay_sessions": 1,
        });
        let t = status_text(&st);
        assert!(t.contains("server    abcdefghijkl"), "{t}");
        assert!(
            t.contains("ready, up 2h 05m, chatd 0.1.0 (commit 1a2b3c4)"),
            "{t}"
        );
        assert!(t.contains("2 neighbours (aaaaaaaa bbbbbbbb)"), "{t}");
        assert!(t.contains("3 live servers"), "{t}");
        assert!(
            t.contains("2 registered") && t.contains("5 records (4 unexpired)"),
            "{t}"
        );
        let not = status_text(&serde_json::json!({"id": "x", "ready": false}));
        assert!(not.contains("NOT READY"), "{not}");
    }
}
