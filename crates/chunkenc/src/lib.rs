//! Chunk encodings: how tiermon stores a run of samples of one series.
//!
//! - [`XorChunk`]: the appendable in-memory chunk of the head, Gorilla's
//!   encoding as Prometheus uses it (delta-of-delta timestamps, XOR'd
//!   floats); cheap to append to one sample at a time.
//! - [`sealed`]: the on-disk encoding of a finished run, with pcodec: it
//!   finds what Gorilla cannot — decimal values as scaled integers, steady
//!   counter increments, regular intervals — and entropy-codes the rest.
//!   Sealed chunks are what compaction rewrites into day-long runs.
//!
//! Both are lossless to the bit, NaN payloads (the staleness marker) and
//! infinities included. Decoders return [`Error`] on corrupt input, never
//! panic.

mod bits;
pub mod sealed;
pub(crate) mod xor;

pub use xor::{MAX_SAMPLES, MAX_SPAN, XorChunk, XorIter};

/// A chunk could not be decoded.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The bytes end before the chunk does.
    #[error("chunk truncated: {0}")]
    Truncated(&'static str),
    /// The bytes are not a chunk of a known version.
    #[error("corrupt chunk: {0}")]
    Corrupt(String),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
