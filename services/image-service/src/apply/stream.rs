//! Where a layer's tar stream may end, as containerd decides it (Go's `archive/tar` reader,
//! then the rest of the stream read for the digest): the archive is complete when the stream
//! stops right after an entry's data (its padding to 512 bytes and the two zero end-of-archive
//! blocks missing), inside that padding, at a header boundary, after the first zero block or
//! after both; it is refused when the stream stops inside a header, inside an entry's data or
//! inside a zero block, or when the block after the first zero block is not zeros.
//!
//! The `tar` crate wants the padding. [`Padded`] hands out the source's bytes and, once the
//! source ends, zeros up to the next 512-byte boundary; the applier then checks, with
//! [`Position`], that none of those zeros was taken for a header ([`Position::check_header`])
//! or for data ([`Position::check_data`]), only for the padding of the last entry
//! ([`Position::check_end`]), and reads the end-of-archive blocks itself ([`check_trailer`]).
//!
//! One difference remains, from the `tar` crate: an extended header (PAX `x`, GNU `L`/`K`)
//! with no entry after it is refused, where Go drops it.

use super::ApplyError;
use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

const BLOCK: u64 = 512;

/// How far the stream got; shared by [`Padded`] (which the archive owns) and the applier.
#[derive(Debug, Default)]
pub struct Position {
    /// Bytes the source held so far (all of them once `ended`).
    real: Cell<u64>,
    /// Bytes handed out: the source's, then the zeros made up after its end.
    served: Cell<u64>,
    ended: Cell<bool>,
}

impl Position {
    fn made_up(&self) -> bool {
        self.served.get() > self.real.get()
    }

    /// Where the stream is now (the end of the entry data just read, after
    /// [`Position::check_data`]).
    pub fn served(&self) -> u64 {
        self.served.get()
    }

    fn cut(&self, inside: String) -> ApplyError {
        ApplyError::Truncated { at: self.real.get(), inside }
    }

    /// The error the archive reported while reading a header: a cut if the stream had ended.
    pub fn header_error(&self, err: io::Error) -> ApplyError {
        if self.ended.get() { self.cut("an entry's header".into()) } else { ApplyError::Archive(err) }
    }

    /// An entry's header (with its extended headers) was read from the stream itself.
    pub fn check_header(&self) -> Result<(), ApplyError> {
        if self.made_up() { Err(self.cut("an entry's header".into())) } else { Ok(()) }
    }

    /// The entry `name`'s data, `size` bytes, was read whole (`read` bytes) from the stream
    /// itself.
    pub fn check_data(&self, name: &[u8], read: u64, size: u64) -> Result<(), ApplyError> {
        if read < size || self.made_up() {
            let name = String::from_utf8_lossy(name);
            return Err(self.cut(format!("the data of {name:?} ({size} bytes)")));
        }
        Ok(())
    }

    /// The archive found no further entry; the last entry's data ended at `data_end`. Zeros
    /// made up past the stream's end may only have been that entry's padding.
    pub fn check_end(&self, data_end: u64) -> Result<(), ApplyError> {
        if self.made_up() && self.served.get() > data_end.next_multiple_of(BLOCK) {
            return Err(self.cut("the end-of-archive blocks".into()));
        }
        Ok(())
    }
}

/// The layer's bytes, then, once they end, zeros up to the next 512-byte boundary.
pub struct Padded<R> {
    inner: R,
    position: Rc<Position>,
}

impl<R> Padded<R> {
    pub fn new(inner: R, position: Rc<Position>) -> Padded<R> {
        Padded { inner, position }
    }
}

impl<R: Read> Read for Padded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let position = &self.position;
        if !position.ended.get() {
            let n = self.inner.read(buf)?;
            if n > 0 {
                position.real.set(position.real.get() + n as u64);
                position.served.set(position.served.get() + n as u64);
                return Ok(n);
            }
            position.ended.set(true);
        }
        let served = position.served.get();
        let missing = served.next_multiple_of(BLOCK) - served;
        let n = buf.len().min(missing as usize);
        buf[..n].fill(0);
        position.served.set(served + n as u64);
        Ok(n)
    }
}

/// What follows the block of zeros the archive stopped at (if it stopped at one rather than at
/// the stream's end): nothing, or a second block of zeros, then anything.
pub fn check_trailer(stream: &mut impl Read, at: u64) -> Result<(), ApplyError> {
    let mut block = [0u8; BLOCK as usize];
    let mut filled = 0;
    while filled < block.len() {
        match stream.read(&mut block[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ApplyError::Archive(e)),
        }
    }
    if filled == 0 {
        return Ok(());
    }
    if filled < block.len() {
        return Err(ApplyError::Truncated { at: at + filled as u64, inside: "the end-of-archive blocks".into() });
    }
    if block.iter().any(|b| *b != 0) {
        return Err(ApplyError::Invalid(format!("the block at {at} follows a zero block but is not zeros")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_to_the_next_block_once_the_source_ends() {
        let position = Rc::new(Position::default());
        let mut padded = Padded::new(&[7u8; 700][..], position.clone());
        let mut out = Vec::new();
        padded.read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), 1024);
        assert!(out[..700].iter().all(|b| *b == 7) && out[700..].iter().all(|b| *b == 0));
        assert!(position.made_up());
        assert_eq!((position.real.get(), position.served()), (700, 1024));
        // The data ended at 700: the zeros were its padding.
        position.check_end(700).unwrap();
        assert!(matches!(position.check_end(512), Err(ApplyError::Truncated { at: 700, .. })));

        let position = Rc::new(Position::default());
        let mut out = Vec::new();
        Padded::new(&[1u8; 1024][..], position.clone()).read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), 1024);
        assert!(!position.made_up());
    }

    #[test]
    fn reads_the_end_of_archive_blocks_as_go_does() {
        assert!(check_trailer(&mut &[][..], 0).is_ok());
        assert!(check_trailer(&mut &[0u8; 512][..], 0).is_ok());
        assert!(check_trailer(&mut &[0u8; 5000][..], 0).is_ok());
        let mut junk = [0u8; 600];
        junk[520] = 1;
        assert!(check_trailer(&mut &junk[..], 0).is_ok());
        assert!(matches!(check_trailer(&mut &[0u8; 100][..], 1024), Err(ApplyError::Truncated { at: 1124, .. })));
        assert!(matches!(check_trailer(&mut &[1u8; 512][..], 0), Err(ApplyError::Invalid(_))));
    }
}
