//! The framer against frames built by hand from the spec's layouts and header blocks
//! compressed by another zlib (Python's, primed with the same dictionary), round trips, and a
//! connection driven by a client written here.

use crate::codec::{FrameDecoder, FrameEncoder};
use crate::frame::{FLAG_FIN, Setting, rst, setting};
use crate::*;
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder, FramedRead, FramedWrite};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn decode_all(decoder: &mut FrameDecoder, bytes: &[u8]) -> Vec<Frame> {
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    while let Some(frame) = decoder.decode(&mut buf).unwrap() {
        frames.push(frame);
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    frames
}

#[test]
fn the_dictionary_is_the_spdy3_one() {
    // zlib's Adler-32 of the dictionary is its id in every SPDY/3 header stream (the 4 bytes
    // after 78 f9 in a first header block).
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in dictionary::DICTIONARY {
        a = (a + u32::from(byte)) % 65521;
        b = (b + a) % 65521;
    }
    assert_eq!(dictionary::DICTIONARY.len(), 1423);
    assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    assert!(dictionary::DICTIONARY.starts_with(b"\0\0\0\x07options"));
    assert!(dictionary::DICTIONARY.ends_with(b",enq=0."));
}

#[test]
fn syn_streams_compressed_by_another_zlib_decode_with_the_stream_carried_over() {
    // Two SYN_STREAMs as client-go's port-forward opens them (error, then data), the second
    // block compressed in the same zlib stream as the first.
    let first = hex("800300010000003d0000000100000000000078f9e3c6a7c202253a48f95b044eea16061606409ab308125f99a0\
         74cc68004e892545a989b9d0c2863515141500000000ffff");
    let second = hex("800300010000001600000003000000000000225333a8a44a04000000ffff");
    let mut decoder = FrameDecoder::default();
    let frames = decode_all(&mut decoder, &[first, second].concat());
    let expected = |id, kind| Frame::SynStream {
        stream_id: id,
        associated_to: 0,
        priority: 0,
        flags: 0,
        headers: Headers::new().with("port", "8080").with("requestid", "0").with("streamtype", kind),
    };
    assert_eq!(frames, vec![expected(1, "error"), expected(3, "data")]);
    assert_eq!(frames[1].clone(), expected(3, "data"));
    if let Frame::SynStream { headers, .. } = &frames[0] {
        assert_eq!(headers.get("streamType"), Some("error"));
        assert_eq!(headers.get("requestID"), Some("0"));
    }
}

#[test]
fn fixed_layout_frames_read_as_the_spec_draws_them() {
    let bytes = [
        // RST_STREAM stream 5, CANCEL
        hex("80030003000000080000000500000005"),
        // SETTINGS: 1 entry, flags 0, INITIAL_WINDOW_SIZE = 65536
        hex("800300040000000c000000010000000700010000"),
        // PING 7
        hex("8003000600000004"),
        hex("00000007"),
        // GOAWAY last 9, status OK
        hex("80030007000000080000000900000000"),
        // WINDOW_UPDATE stream 1, +4096
        hex("80030009000000080000000100001000"),
        // DATA stream 1, FIN, "hi"
        hex("0000000101000002"),
        b"hi".to_vec(),
        // An unknown control frame type 42 with 3 bytes
        hex("8003002a00000003aabbcc"),
    ]
    .concat();
    let frames = decode_all(&mut FrameDecoder::default(), &bytes);
    assert_eq!(
        frames,
        vec![
            Frame::RstStream { stream_id: 5, status: rst::CANCEL },
            Frame::Settings {
                flags: 0,
                entries: vec![Setting { flags: 0, id: setting::INITIAL_WINDOW_SIZE, value: 65536 }]
            },
            Frame::Ping { id: 7 },
            Frame::GoAway { last_good_stream_id: 9, status: 0 },
            Frame::WindowUpdate { stream_id: 1, delta: 4096 },
            Frame::Data { stream_id: 1, flags: FLAG_FIN, data: Bytes::from_static(b"hi") },
            Frame::Unknown { kind: 42 },
        ]
    );
}

#[test]
fn every_frame_round_trips_through_encoder_and_decoder() {
    let frames = vec![
        Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 3,
            flags: FLAG_FIN,
            headers: Headers::new().with("streamType", "stdout"),
        },
        Frame::SynReply { stream_id: 1, flags: 0, headers: Headers::new() },
        Frame::Headers { stream_id: 1, flags: 0, headers: Headers::new().with("a", "1\u{0}2").with("b", "") },
        Frame::RstStream { stream_id: 3, status: rst::REFUSED_STREAM },
        Frame::Settings { flags: 1, entries: vec![Setting { flags: 1, id: 4, value: 100 }] },
        Frame::Ping { id: 2 },
        Frame::GoAway { last_good_stream_id: 7, status: 2 },
        Frame::WindowUpdate { stream_id: 0, delta: 1 << 20 },
        Frame::Data { stream_id: 9, flags: 0, data: Bytes::from(vec![7u8; 100_000]) },
    ];
    let mut encoder = FrameEncoder::new();
    let mut wire = BytesMut::new();
    for frame in frames.clone() {
        encoder.encode(frame, &mut wire).unwrap();
    }
    let decoded = decode_all(&mut FrameDecoder::default(), &wire);
    assert_eq!(decoded, frames);
    let Frame::Headers { headers, .. } = &decoded[2] else { panic!() };
    assert_eq!(headers.get("A"), Some("1"), "the first of NUL-separated values");
}

#[test]
fn a_header_block_from_a_wrong_dictionary_or_garbage_is_an_error_not_a_panic() {
    let mut bad = hex("800300020000000c00000001");
    bad.extend_from_slice(&[0x78, 0x9c, 0xff, 0xff, 0xff, 0xff, 0, 0]);
    let mut buf = BytesMut::from(&bad[..]);
    assert!(FrameDecoder::default().decode(&mut buf).is_err());
    // A control frame of version 2 is refused.
    let mut v2 = BytesMut::from(&hex("800200060000000400000007")[..]);
    assert!(FrameDecoder::default().decode(&mut v2).is_err());
    // A frame over the limit is refused before its payload arrives.
    let mut big = BytesMut::from(&hex("0000000100ffffff")[..]);
    assert!(FrameDecoder::new(1024).decode(&mut big).is_err());
}

/// A SPDY client over one end of a duplex pipe; the server over the other.
struct Client {
    frames: FramedRead<tokio::io::ReadHalf<tokio::io::DuplexStream>, FrameDecoder>,
    sink: FramedWrite<tokio::io::WriteHalf<tokio::io::DuplexStream>, FrameEncoder>,
}

impl Client {
    async fn next(&mut self) -> Frame {
        tokio::time::timeout(Duration::from_secs(5), self.frames.next())
            .await
            .expect("a frame in time")
            .unwrap()
            .unwrap()
    }
    async fn send(&mut self, frame: Frame) {
        self.sink.send(frame).await.unwrap();
    }
    async fn open(&mut self, id: u32, kind: &str) {
        let headers = Headers::new().with("streamType", kind);
        self.send(Frame::SynStream { stream_id: id, associated_to: 0, priority: 0, flags: 0, headers }).await;
    }
}

fn pair(config: Config) -> (Client, Connection, Incoming) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let (connection, incoming) = Connection::server(b, config);
    let (read, write) = tokio::io::split(a);
    let client = Client {
        frames: FramedRead::new(read, FrameDecoder::default()),
        sink: FramedWrite::new(write, FrameEncoder::new()),
    };
    (client, connection, incoming)
}

#[tokio::test]
async fn client_streams_are_answered_and_carry_data_both_ways_with_fin() {
    let (mut client, _connection, mut incoming) = pair(Config::default());
    client.open(1, "stdin").await;
    let mut stream = incoming.accept().await.unwrap();
    assert_eq!(stream.id(), 1);
    assert_eq!(stream.headers().get("streamtype"), Some("stdin"));
    assert_eq!(client.next().await, Frame::SynReply { stream_id: 1, flags: 0, headers: Headers::new() });

    client.send(Frame::Data { stream_id: 1, flags: 0, data: Bytes::from_static(b"hello ") }).await;
    client.send(Frame::Data { stream_id: 1, flags: FLAG_FIN, data: Bytes::from_static(b"world") }).await;
    let mut got = String::new();
    stream.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "hello world");

    stream.write_all(b"back").await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(client.next().await, Frame::Data { stream_id: 1, flags: 0, data: Bytes::from_static(b"back") });
    assert_eq!(client.next().await, Frame::Data { stream_id: 1, flags: FLAG_FIN, data: Bytes::new() });
}

#[tokio::test]
async fn pings_are_echoed_and_bad_stream_ids_reset() {
    let (mut client, _connection, mut incoming) = pair(Config::default());
    client.send(Frame::Ping { id: 1 }).await;
    assert_eq!(client.next().await, Frame::Ping { id: 1 });
    // Even ids belong to the server.
    client.open(2, "x").await;
    assert_eq!(client.next().await, Frame::RstStream { stream_id: 2, status: rst::PROTOCOL_ERROR });
    client.open(3, "x").await;
    let _open = incoming.accept().await.unwrap();
    assert!(matches!(client.next().await, Frame::SynReply { stream_id: 3, .. }));
    // Ids must grow.
    client.open(1, "x").await;
    assert_eq!(client.next().await, Frame::RstStream { stream_id: 1, status: rst::PROTOCOL_ERROR });
    // Data for a stream never opened.
    client.send(Frame::Data { stream_id: 11, flags: 0, data: Bytes::from_static(b"?") }).await;
    assert_eq!(client.next().await, Frame::RstStream { stream_id: 11, status: rst::INVALID_STREAM });
}

#[tokio::test]
async fn a_peer_that_keeps_windows_is_sent_no_more_than_its_window() {
    let (mut client, _connection, mut incoming) = pair(Config::default());
    // The client announces it keeps windows: a 10-byte initial window.
    let entries = vec![Setting { flags: 0, id: setting::INITIAL_WINDOW_SIZE, value: 10 }];
    client.send(Frame::Settings { flags: 0, entries }).await;
    client.open(1, "stdout").await;
    let mut stream = incoming.accept().await.unwrap();
    let _reply = client.next().await;
    let writer = tokio::spawn(async move {
        stream.write_all(&[1u8; 25]).await.unwrap();
        stream.shutdown().await.unwrap();
        stream
    });
    let Frame::Data { data, .. } = client.next().await else { panic!() };
    assert_eq!(data.len(), 10);
    assert!(tokio::time::timeout(Duration::from_millis(100), client.frames.next()).await.is_err(), "window spent");
    client.send(Frame::WindowUpdate { stream_id: 1, delta: 100 }).await;
    let Frame::Data { data, .. } = client.next().await else { panic!() };
    assert_eq!(data.len(), 15);
    assert_eq!(client.next().await, Frame::Data { stream_id: 1, flags: FLAG_FIN, data: Bytes::new() });
    writer.await.unwrap();
}

#[tokio::test]
async fn a_reader_returns_window_to_the_peer_as_it_consumes() {
    let (mut client, _connection, mut incoming) = pair(Config::default());
    client.open(1, "stdin").await;
    let mut stream = incoming.accept().await.unwrap();
    let _reply = client.next().await;
    client.send(Frame::Data { stream_id: 1, flags: 0, data: Bytes::from(vec![0u8; 40_000]) }).await;
    let mut buf = vec![0u8; 40_000];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(client.next().await, Frame::WindowUpdate { stream_id: 1, delta: 40_000 });
    assert_eq!(client.next().await, Frame::WindowUpdate { stream_id: 0, delta: 40_000 });
}

#[tokio::test]
async fn a_reset_from_the_peer_fails_the_reader_and_the_writer() {
    let (mut client, _connection, mut incoming) = pair(Config::default());
    client.open(1, "stdout").await;
    let mut stream = incoming.accept().await.unwrap();
    let _reply = client.next().await;
    client.send(Frame::RstStream { stream_id: 1, status: rst::CANCEL }).await;
    let mut buf = [0u8; 8];
    let err = stream.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert!(stream.write_all(b"x").await.is_err() || stream.write_all(b"x").await.is_err());
}

#[tokio::test]
async fn closing_sends_the_queued_data_then_goaway_and_ends_the_transport() {
    let (mut client, connection, mut incoming) = pair(Config::default());
    client.open(1, "stdout").await;
    let mut stream = incoming.accept().await.unwrap();
    let _reply = client.next().await;
    stream.write_all(b"last words").await.unwrap();
    stream.shutdown().await.unwrap();
    drop(connection);
    assert_eq!(client.next().await, Frame::Data { stream_id: 1, flags: 0, data: Bytes::from_static(b"last words") });
    assert_eq!(client.next().await, Frame::Data { stream_id: 1, flags: FLAG_FIN, data: Bytes::new() });
    assert_eq!(client.next().await, Frame::GoAway { last_good_stream_id: 1, status: 0 });
    assert!(client.frames.next().await.is_none());
}

#[tokio::test]
async fn the_peer_going_away_ends_incoming_and_every_stream() {
    let (mut client, connection, mut incoming) = pair(Config::default());
    client.open(1, "stdin").await;
    let mut stream = incoming.accept().await.unwrap();
    drop(client);
    let mut buf = Vec::new();
    // The peer vanished without FIN: the reader ends.
    let _ = stream.read_to_end(&mut buf).await;
    assert!(incoming.accept().await.is_none());
    tokio::time::timeout(Duration::from_secs(5), connection.closed()).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed_with_goaway() {
    let config = Config { idle_timeout: Some(Duration::from_secs(30)), ..Config::default() };
    let (mut client, connection, _incoming) = pair(config);
    tokio::time::sleep(Duration::from_secs(20)).await;
    client.send(Frame::Ping { id: 1 }).await;
    assert_eq!(client.next().await, Frame::Ping { id: 1 });
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(!connection.is_closed(), "activity restarted the clock");
    let goaway = tokio::time::timeout(Duration::from_secs(60), client.frames.next()).await.unwrap().unwrap().unwrap();
    assert!(matches!(goaway, Frame::GoAway { .. }), "{goaway:?}");
    connection.closed().await;
}
