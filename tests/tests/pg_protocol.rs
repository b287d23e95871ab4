//! The Postgres wire protocol at the byte level, for what drivers never
//! send but a hostile or broken client can: a startup packet without a user,
//! a failed login (which must end without ReadyForQuery, as Postgres ends
//! it), and a Bind with more values than the statement has parameters.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use fedsql_tests::FedsqlServer;

fn connect(server: &FedsqlServer) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

fn startup(stream: &mut TcpStream, params: &[(&str, &str)]) {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend(body);
    stream.write_all(&packet).unwrap();
}

fn message(stream: &mut TcpStream, kind: u8, body: &[u8]) {
    let mut packet = vec![kind];
    packet.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    packet.extend_from_slice(body);
    stream.write_all(&packet).unwrap();
}

/// Reads backend messages until `stop` is seen or the server closes the
/// connection; returns (type, body) pairs.
fn read_until(stream: &mut TcpStream, stop: u8) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let mut header = [0u8; 5];
        if stream.read_exact(&mut header).is_err() {
            return out;
        }
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        stream.read_exact(&mut body).unwrap();
        let kind = header[0];
        out.push((kind, body));
        if kind == stop {
            return out;
        }
    }
}

/// A connection logged in to `demo`, at its first ReadyForQuery.
fn logged_in(server: &FedsqlServer) -> TcpStream {
    let mut stream = connect(server);
    startup(&mut stream, &[("user", "fedsql"), ("database", "demo")]);
    let ready = read_until(&mut stream, b'Z');
    assert_eq!(ready.last().map(|m| m.0), Some(b'Z'));
    stream
}

/// The first DataRow of `replies`.
fn data_row(replies: &[(u8, Vec<u8>)]) -> &(u8, Vec<u8>) {
    replies
        .iter()
        .find(|(k, _)| *k == b'D')
        .unwrap_or_else(|| panic!("no row: {replies:?}"))
}

/// The SQLSTATE (`C` field) of an ErrorResponse body.
fn code(body: &[u8]) -> String {
    body.split(|b| *b == 0)
        .find_map(|f| f.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).to_string())
        .unwrap_or_default()
}

#[test]
fn a_startup_without_user_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let mut stream = connect(&server);
    startup(&mut stream, &[("database", "demo")]);
    let messages = read_until(&mut stream, b'Z');
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0].0, b'E');
    assert_eq!(code(&messages[0].1), "28000");
    assert!(String::from_utf8_lossy(&messages[0].1).contains("no PostgreSQL user name"));
}

#[test]
fn a_failed_login_ends_without_ready_for_query() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let mut stream = connect(&server);
    startup(&mut stream, &[("user", "fedsql"), ("database", "nope")]);
    let messages = read_until(&mut stream, b'Z');
    let kinds: Vec<u8> = messages.iter().map(|(k, _)| *k).collect();
    // FATAL is the last message: the connection closes, no ReadyForQuery.
    assert_eq!(kinds.last(), Some(&b'E'), "{kinds:?}");
    assert!(!kinds.contains(&b'Z'), "{kinds:?}");
    assert_eq!(code(&messages[messages.len() - 1].1), "3D000");
}

#[test]
fn bind_with_too_many_values_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let mut stream = logged_in(&server);

    // Parse "SELECT $1::int8 + 1", then Bind two values.
    let mut parse = b"\0SELECT CAST($1 AS BIGINT) + 1\0".to_vec();
    parse.extend_from_slice(&0i16.to_be_bytes());
    message(&mut stream, b'P', &parse);
    let mut bind = b"\0\0".to_vec();
    bind.extend_from_slice(&0i16.to_be_bytes());
    bind.extend_from_slice(&2i16.to_be_bytes());
    for value in [&b"41"[..], &b"7"[..]] {
        bind.extend_from_slice(&(value.len() as i32).to_be_bytes());
        bind.extend_from_slice(value);
    }
    bind.extend_from_slice(&0i16.to_be_bytes());
    message(&mut stream, b'B', &bind);
    message(&mut stream, b'S', &[]);
    let replies = read_until(&mut stream, b'Z');
    let error = replies
        .iter()
        .find(|(k, _)| *k == b'E')
        .unwrap_or_else(|| panic!("no error for a Bind of 2 values to 1 parameter: {replies:?}"));
    assert_eq!(code(&error.1), "08P01");
    assert!(String::from_utf8_lossy(&error.1).contains("supplies 2 parameters"));

    // The same statement bound with one value runs: 41 + 1.
    let mut bind = b"\0\0".to_vec();
    bind.extend_from_slice(&0i16.to_be_bytes());
    bind.extend_from_slice(&1i16.to_be_bytes());
    bind.extend_from_slice(&2i32.to_be_bytes());
    bind.extend_from_slice(b"41");
    bind.extend_from_slice(&0i16.to_be_bytes());
    message(&mut stream, b'B', &bind);
    message(&mut stream, b'E', b"\0\0\0\0\0");
    message(&mut stream, b'S', &[]);
    let replies = read_until(&mut stream, b'Z');
    let row = data_row(&replies);
    assert!(row.1.ends_with(b"42"), "{row:?}");
}

#[test]
fn invalid_utf8_is_22021_for_that_statement_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let mut stream = logged_in(&server);

    // Simple protocol: 0xc3 0x28 is not UTF-8 (a lead byte without its
    // continuation). pgwire alone would run it with U+FFFD in it.
    message(&mut stream, b'Q', b"SELECT 'caf\xc3\x28' AS t\0");
    let replies = read_until(&mut stream, b'Z');
    let kinds: Vec<u8> = replies.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, vec![b'E', b'Z'], "{replies:?}");
    assert_eq!(code(&replies[0].1), "22021");
    assert!(
        String::from_utf8_lossy(&replies[0].1)
            .contains("invalid byte sequence for encoding \"UTF8\": 0xc3"),
        "{:?}",
        String::from_utf8_lossy(&replies[0].1)
    );

    // Extended protocol: Parse with a stray 0xff.
    let mut parse = b"\0SELECT 1 AS \xff\0".to_vec();
    parse.extend_from_slice(&0i16.to_be_bytes());
    message(&mut stream, b'P', &parse);
    message(&mut stream, b'S', &[]);
    let replies = read_until(&mut stream, b'Z');
    let error = replies.iter().find(|(k, _)| *k == b'E').unwrap();
    assert_eq!(code(&error.1), "22021", "{replies:?}");

    // The connection goes on, and valid multi-byte text is untouched.
    message(&mut stream, b'Q', "SELECT 'café ☕' AS t\0".as_bytes());
    let replies = read_until(&mut stream, b'Z');
    let row = data_row(&replies);
    assert!(
        row.1
            .windows("café ☕".len())
            .any(|w| w == "café ☕".as_bytes()),
        "{replies:?}"
    );
}
