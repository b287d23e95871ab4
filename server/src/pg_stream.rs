//! The Postgres wire's byte stream, checked before pgwire decodes it.
//!
//! pgwire decodes a statement's text lossily: invalid UTF-8 would become
//! U+FFFD and run as something the client never sent. PostgreSQL refuses it
//! with `22021 invalid byte sequence for encoding "UTF8"`, for that
//! statement only. [`CheckedStream`] sits between the socket and pgwire's
//! codec, follows the message framing, and replaces the text of a `Query`
//! or `Parse` message that is not UTF-8 with [`invalid_utf8_marker`]'s
//! statement, which the statement front ([`invalid_utf8`]) answers with
//! `22021`. Every other byte passes through unchanged.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a statement's text starts with when its bytes were not UTF-8.
/// U+FFFF is a noncharacter: no client sends it in SQL.
const MARKER: &str = "\u{FFFF}fedsql:invalid-utf8:";

/// The statement text that stands for bytes that are not UTF-8; names the
/// first offending bytes the way PostgreSQL does (`0xc3 0x28`).
pub fn invalid_utf8_marker(bytes: &[u8], error: std::str::Utf8Error) -> String {
    let start = error.valid_up_to();
    let len = error.error_len().unwrap_or(bytes.len() - start).clamp(1, 4);
    let shown: Vec<String> = bytes[start..]
        .iter()
        .take(len)
        .map(|b| format!("0x{b:02x}"))
        .collect();
    format!("{MARKER}{}", shown.join(" "))
}

/// The offending bytes (`0xc3 0x28`) if `sql` stands for a statement that
/// was not UTF-8.
pub fn invalid_utf8(sql: &str) -> Option<&str> {
    sql.strip_prefix(MARKER)
}

/// Untyped packets (before and at start-up) are at most this long; a longer
/// one is not Postgres's protocol, and pgwire is left to refuse it.
const MAX_UNTYPED: usize = 10_000;
/// The request codes after which the next packet is untyped again.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    /// Start-up: packets without a type byte.
    Untyped,
    /// Typed messages, at a message boundary.
    Typed,
    /// Inside a message passed on unchecked: this many bytes of it are left.
    Passing(usize),
    /// The bytes do not follow the protocol: everything passes, pgwire
    /// reports what is wrong.
    Raw,
}

/// A stream whose `Query`/`Parse` texts are checked for UTF-8 (see the
/// module docs). Writes go straight to the inner stream.
pub struct CheckedStream<S> {
    inner: S,
    framing: Framing,
    /// Bytes read but not yet framed (part of a message).
    incoming: BytesMut,
    /// Framed bytes ready for the reader.
    ready: BytesMut,
}

impl<S> CheckedStream<S> {
    /// Wraps `inner`; `buffered` is what the codec already read from it
    /// (during TLS negotiation), which only moves the framing on.
    pub fn new(inner: S, buffered: &[u8]) -> Self {
        let mut stream = CheckedStream {
            inner,
            framing: Framing::Untyped,
            incoming: BytesMut::new(),
            ready: BytesMut::new(),
        };
        stream.feed(buffered);
        stream.ready.clear();
        // A message cut off at the end of the buffer is already partly with
        // the codec: its rest passes unchecked.
        if !stream.incoming.is_empty() {
            stream.framing = match stream.message_len() {
                Some(total) if total > stream.incoming.len() => {
                    Framing::Passing(total - stream.incoming.len())
                }
                _ => Framing::Raw,
            };
            stream.incoming.clear();
        }
        stream
    }

    /// The length of the message (or packet) at the start of `incoming`,
    /// once its header is there.
    fn message_len(&self) -> Option<usize> {
        let at = usize::from(self.framing == Framing::Typed);
        let header = self.incoming.get(at..at + 4)?;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        Some(len + at)
    }

    /// Frames `bytes`, moving whole checked messages to `ready`.
    fn feed(&mut self, bytes: &[u8]) {
        self.incoming.extend_from_slice(bytes);
        loop {
            match self.framing {
                Framing::Raw => {
                    let all = self.incoming.split();
                    self.ready.unsplit(all);
                    return;
                }
                Framing::Passing(left) => {
                    let n = left.min(self.incoming.len());
                    let part = self.incoming.split_to(n);
                    self.ready.unsplit(part);
                    self.framing = if n == left {
                        Framing::Typed
                    } else {
                        Framing::Passing(left - n)
                    };
                    if self.incoming.is_empty() {
                        return;
                    }
                }
                Framing::Untyped => {
                    let Some(total) = self.message_len() else {
                        return;
                    };
                    if !(8..=MAX_UNTYPED).contains(&total) {
                        self.framing = Framing::Raw;
                        continue;
                    }
                    if self.incoming.len() < total {
                        return;
                    }
                    let code = u32::from_be_bytes([
                        self.incoming[4],
                        self.incoming[5],
                        self.incoming[6],
                        self.incoming[7],
                    ]);
                    let packet = self.incoming.split_to(total);
                    self.ready.unsplit(packet);
                    if code != SSL_REQUEST && code != GSSENC_REQUEST {
                        self.framing = Framing::Typed;
                    }
                }
                Framing::Typed => {
                    let Some(total) = self.message_len() else {
                        return;
                    };
                    if total < 5 {
                        self.framing = Framing::Raw;
                        continue;
                    }
                    let kind = self.incoming[0];
                    if kind != b'Q' && kind != b'P' {
                        self.framing = Framing::Passing(total);
                        continue;
                    }
                    if self.incoming.len() < total {
                        return;
                    }
                    let message = self.incoming.split_to(total);
                    self.ready.extend_from_slice(&checked(&message));
                }
            }
        }
    }
}

/// `message` (a whole `Query` or `Parse`), with its statement text replaced
/// by the marker if it is not UTF-8.
fn checked(message: &[u8]) -> Vec<u8> {
    let kind = message[0];
    let body = &message[5..];
    // Parse: statement name, then the text; Query: the text.
    let text_start = if kind == b'P' {
        match body.iter().position(|&b| b == 0) {
            Some(end) => end + 1,
            None => return message.to_vec(),
        }
    } else {
        0
    };
    let Some(text_len) = body[text_start..].iter().position(|&b| b == 0) else {
        return message.to_vec();
    };
    let text = &body[text_start..text_start + text_len];
    let Err(error) = std::str::from_utf8(text) else {
        return message.to_vec();
    };
    let marker = invalid_utf8_marker(text, error);
    let mut new_body = Vec::with_capacity(body.len());
    new_body.extend_from_slice(&body[..text_start]);
    new_body.extend_from_slice(marker.as_bytes());
    new_body.extend_from_slice(&body[text_start + text_len..]);
    let mut out = Vec::with_capacity(new_body.len() + 5);
    out.put_u8(kind);
    out.put_u32((new_body.len() + 4) as u32);
    out.extend_from_slice(&new_body);
    out
}

impl<S: AsyncRead + Unpin> AsyncRead for CheckedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = buf.remaining().min(this.ready.len());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // End of stream: what was held back goes as it is.
                if this.incoming.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                let rest = this.incoming.split();
                this.ready.unsplit(rest);
                continue;
            }
            let filled = read.filled().to_vec();
            this.feed(&filled);
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CheckedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup() -> Vec<u8> {
        let mut body = Vec::new();
        body.put_u32(196_608);
        body.extend_from_slice(b"user\0me\0\0");
        let mut p = Vec::new();
        p.put_u32((body.len() + 4) as u32);
        p.extend_from_slice(&body);
        p
    }

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.put_u32((body.len() + 4) as u32);
        m.extend_from_slice(body);
        m
    }

    /// Feeds `bytes` one at a time (the worst split) and returns the output.
    fn run(stream: &mut CheckedStream<()>, bytes: &[u8]) -> Vec<u8> {
        for b in bytes {
            stream.feed(&[*b]);
        }
        stream.ready.split().to_vec()
    }

    #[test]
    fn valid_messages_pass_unchanged_however_they_are_split() {
        let mut input = startup();
        input.extend(message(b'p', b"password\0"));
        input.extend(message(b'Q', "SELECT 'é'\0".as_bytes()));
        input.extend(message(b'P', b"s1\0SELECT $1\0\0\0"));
        input.extend(message(b'S', b""));
        let mut stream = CheckedStream::new((), &[]);
        assert_eq!(run(&mut stream, &input), input);
        let mut whole = CheckedStream::new((), &[]);
        whole.feed(&input);
        assert_eq!(whole.ready.to_vec(), input);
    }

    #[test]
    fn invalid_text_becomes_the_marker() {
        let mut input = startup();
        let bad = message(b'Q', b"SELECT '\xc3\x28'\0");
        input.extend(&bad);
        input.extend(message(b'P', b"s\0SELECT 1 \xff\0\0\0"));
        let mut stream = CheckedStream::new((), &[]);
        let out = run(&mut stream, &input);
        let rest = &out[startup().len()..];
        let query = message(b'Q', format!("{MARKER}0xc3\0").as_bytes());
        assert_eq!(&rest[..query.len()], &query[..]);
        let mut parse_body = b"s\0".to_vec();
        parse_body.extend(format!("{MARKER}0xff").as_bytes());
        parse_body.extend(b"\0\0\0");
        assert_eq!(&rest[query.len()..], &message(b'P', &parse_body)[..]);
        assert_eq!(invalid_utf8(&format!("{MARKER}0xff")), Some("0xff"));
        assert_eq!(invalid_utf8("SELECT 1"), None);
    }

    #[test]
    fn requests_before_startup_and_buffered_bytes_keep_the_framing() {
        // An SSL request, then start-up, then a bad query.
        let mut ssl = Vec::new();
        ssl.put_u32(8);
        ssl.put_u32(SSL_REQUEST);
        let mut input = ssl.clone();
        input.extend(startup());
        input.extend(message(b'Q', b"\xff\0"));
        let mut stream = CheckedStream::new((), &[]);
        let out = run(&mut stream, &input);
        assert!(out.ends_with(&message(b'Q', format!("{MARKER}0xff\0").as_bytes())));

        // The codec already holds the start-up packet and half a message.
        let mut held = startup();
        let half = message(b'X', b"abcd");
        held.extend(&half[..6]);
        let mut stream = CheckedStream::new((), &held);
        let mut after = half[6..].to_vec();
        after.extend(message(b'Q', b"\xff\0"));
        let out = run(&mut stream, &after);
        assert_eq!(&out[..half.len() - 6], &half[6..]);
        assert!(out.ends_with(&message(b'Q', format!("{MARKER}0xff\0").as_bytes())));
    }
}
