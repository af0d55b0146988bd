//! The CRI log line format: a stream's bytes cut into lines, each written as
//! `<timestamp> <stdout|stderr> <P|F> <content>\n`.
//!
//! A line ends at `\n` (a `\r` before it is dropped, as containerd does) and is full (`F`). A
//! line longer than the limit is cut into partial lines (`P`) of exactly the limit, its last
//! piece full; a stream that ends without a newline ends with a partial line. An empty line is
//! a full line with no content. The timestamp is RFC 3339 in UTC with nanoseconds.

use std::time::SystemTime;

/// Which of a container's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Turns one stream's chunks into CRI log lines.
#[derive(Debug)]
pub struct Splitter {
    stream: Stream,
    /// The longest content written as one line; 0 for no limit.
    max: usize,
    /// Bytes of the line not ended yet.
    pending: Vec<u8>,
}

impl Splitter {
    pub fn new(stream: Stream, max: usize) -> Self {
        Splitter { stream, max, pending: Vec::new() }
    }

    /// Appends to `out` the log lines `data` completes (read at `now`).
    pub fn push(&mut self, data: &[u8], now: SystemTime, out: &mut Vec<u8>) {
        let stamp = timestamp(now);
        let mut rest = data;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            self.pending.extend_from_slice(&rest[..end]);
            rest = &rest[end + 1..];
            if self.pending.last() == Some(&b'\r') {
                self.pending.pop();
            }
            let line = std::mem::take(&mut self.pending);
            let mut content = line.as_slice();
            while self.max > 0 && content.len() > self.max {
                self.write(&stamp, b'P', &content[..self.max], out);
                content = &content[self.max..];
            }
            self.write(&stamp, b'F', content, out);
        }
        self.pending.extend_from_slice(rest);
        // A line only as long as the limit may still end with its newline: cut only beyond it.
        if self.max > 0 && self.pending.len() > self.max {
            let mut start = 0;
            while self.pending.len() - start > self.max {
                let piece = &self.pending[start..start + self.max];
                write_line(&stamp, self.stream, b'P', piece, out);
                start += self.max;
            }
            self.pending.drain(..start);
        }
    }

    /// Appends to `out` what is left when the stream ended: a line without newline, partial.
    pub fn finish(&mut self, now: SystemTime, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.write(&timestamp(now), b'P', &line, out);
        }
    }

    fn write(&self, stamp: &str, tag: u8, content: &[u8], out: &mut Vec<u8>) {
        write_line(stamp, self.stream, tag, content, out);
    }
}

fn write_line(stamp: &str, stream: Stream, tag: u8, content: &[u8], out: &mut Vec<u8>) {
    out.reserve(stamp.len() + content.len() + 12);
    out.extend_from_slice(stamp.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.push(b' ');
    out.push(tag);
    out.push(b' ');
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// `2026-11-29T03:01:17.123456789Z`: what the kubelet parses as RFC3339Nano.
fn timestamp(now: SystemTime) -> String {
    humantime::format_rfc3339_nanos(now).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const T: &str = "2026-11-28T03:01:17.000000005Z";

    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::new(1_795_834_877, 5)
    }

    fn split(stream: Stream, max: usize, chunks: &[&[u8]], end: bool) -> String {
        let mut s = Splitter::new(stream, max);
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, at(), &mut out);
        }
        if end {
            s.finish(at(), &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_timestamp_is_rfc3339_in_utc_with_nanoseconds() {
        assert_eq!(timestamp(at()), T);
    }

    #[test]
    fn a_line_with_newline_is_full_and_crlf_loses_its_cr() {
        let got = split(Stream::Stdout, 16, &[b"hello\nworld\r\n\n"], true);
        assert_eq!(got, format!("{T} stdout F hello\n{T} stdout F world\n{T} stdout F \n"));
    }

    #[test]
    fn a_line_split_across_chunks_is_one_line() {
        let got = split(Stream::Stderr, 16, &[b"hel", b"lo", b"\n"], false);
        assert_eq!(got, format!("{T} stderr F hello\n"));
    }

    #[test]
    fn a_stream_ending_without_newline_ends_partial() {
        let got = split(Stream::Stdout, 16, &[b"a\nbye"], true);
        assert_eq!(got, format!("{T} stdout F a\n{T} stdout P bye\n"));
    }

    #[test]
    fn a_long_line_is_cut_at_the_limit_into_partials_then_full() {
        let got = split(Stream::Stdout, 4, &[b"abcdefghij\n"], true);
        assert_eq!(got, format!("{T} stdout P abcd\n{T} stdout P efgh\n{T} stdout F ij\n"));
        // Cut as the bytes arrive, whatever the chunks.
        let got = split(Stream::Stdout, 4, &[b"abc", b"defg", b"hij", b"\n"], true);
        assert_eq!(got, format!("{T} stdout P abcd\n{T} stdout P efgh\n{T} stdout F ij\n"));
    }

    #[test]
    fn a_line_exactly_the_limit_is_full() {
        let got = split(Stream::Stdout, 4, &[b"abcd", b"\n", b"efghijkl\n"], true);
        assert_eq!(got, format!("{T} stdout F abcd\n{T} stdout P efgh\n{T} stdout F ijkl\n"));
    }

    #[test]
    fn no_limit_keeps_long_lines_whole() {
        let long = "x".repeat(100_000);
        let got = split(Stream::Stdout, 0, &[long.as_bytes(), b"\n"], true);
        assert_eq!(got, format!("{T} stdout F {long}\n"));
    }
}
