//! SPDY/3.1, server side, as the Kubernetes streaming protocols use it (exec, attach and
//! port-forward after an `Upgrade: SPDY/3.1`). No crate provides a server, so crisp has this
//! one: [`frame`] (frames as values and their wire layout), [`codec`] (bytes to frames with the
//! connection's zlib header streams and the SPDY/3 [`dictionary`]), and [`Connection`] (streams
//! the client opens, flow control, PING, GOAWAY, RST). See `connection`'s header for the
//! behaviour a server can rely on.

pub mod codec;
mod connection;
pub mod dictionary;
pub mod frame;
mod window;

#[cfg(test)]
mod tests;

pub use connection::{Config, Connection, DEFAULT_WINDOW, Incoming, RecvStream, SendStream, Stream};
pub use frame::{Frame, FrameError, Headers};

/// A connection that cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("SPDY transport: {0}")]
    Io(#[from] std::io::Error),
}
