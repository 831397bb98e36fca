//! Errors of the checkpoint reader, written for the person who has to decide what to do with the file.

/// Why a checkpoint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pickle names a global outside the allowlist: loading it with torch could run arbitrary code.
    #[error(
        "the checkpoint's pickle calls `{0}`, which is not a tensor; convert it to .safetensors or use a trusted file"
    )]
    UnsafeGlobal(String),

    /// The pickle uses an opcode that builds or calls arbitrary objects.
    #[error(
        "the checkpoint's pickle uses the {0} opcode, which builds arbitrary objects and is not needed for tensors; \
         convert it to .safetensors or use a trusted file"
    )]
    UnsafeOpcode(String),

    /// The file is not what a state dict pickle looks like (truncated, corrupt, or another kind of data).
    #[error("the checkpoint is corrupt or not a PyTorch state dict: {0}")]
    Malformed(String),

    /// The file exceeds a safety limit (sizes, nesting, counts).
    #[error("the checkpoint exceeds a safety limit: {0}")]
    Limit(String),

    /// A valid checkpoint in a form this reader does not handle.
    #[error("unsupported checkpoint: {0}")]
    Unsupported(String),

    #[error("cannot read the checkpoint: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn malformed(msg: impl Into<String>) -> Error {
    Error::Malformed(msg.into())
}
