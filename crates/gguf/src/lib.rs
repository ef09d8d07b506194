//! GGUF v3, the file format of llama.cpp, and the block formats tritium writes into it.
//!
//! [`write::Writer`] assembles metadata and tensors into a file (aligned, in the strict order
//! current llama.cpp demands); [`read::Gguf`] parses one from bytes (a memory map, say) and checks
//! every count, length and offset against the buffer before anything is read, so a malformed file
//! is an error, never a panic or an out-of-bounds read. [`blocks`] packs and unpacks TQ2_0, TQ1_0,
//! I2_S, Q8_0 and F16 exactly as ggml (and bitnet.cpp for I2_S) define them. [`names`] is the one
//! table of metadata keys and tensor names.

pub mod blocks;
pub mod hparams;
pub mod names;
pub mod read;
pub mod types;
pub mod write;

pub use read::{Gguf, TensorInfo};
pub use types::{GgmlType, Value};
pub use write::Writer;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not a GGUF file (magic {0:02x?}, expected \"GGUF\")")]
    Magic([u8; 4]),
    #[error("GGUF version {0} is not supported (only 3)")]
    Version(u32),
    #[error("file is truncated: {what} at byte {offset} needs {need} bytes, {have} remain")]
    Truncated {
        what: String,
        offset: usize,
        need: usize,
        have: usize,
    },
    #[error("{0}")]
    Invalid(String),
}
