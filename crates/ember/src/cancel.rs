//! Stopping a running generation: the [`CancelToken`] a front-end sets (Ctrl-C, a web "cancel" button, a server
//! shutdown), and the check the networks make between their layers so a long step stops within a layer, not at
//! the end of the step (a 4096² UNet step takes minutes on a CPU).
//!
//! The pipeline installs the request's token for the calling thread with [`cancel_scope`]; the UNet, the VAE and
//! CLIP call [`check_between_layers`], which fails with [`CancelledError`] once the token is set. The pipeline turns
//! any error of a cancelled run into [`crate::Error::Cancelled`]. Networks called outside a scope never stop.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Shared flag a front-end sets to stop a running generation.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
    pub fn reset(&self) {
        self.0.store(false, Ordering::SeqCst)
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

thread_local! {
    /// The token of the run this thread is computing, if any.
    static CURRENT: RefCell<Option<CancelToken>> = const { RefCell::new(None) };
}

/// While alive, [`check_between_layers`] on this thread answers for `token`; dropping it restores the previous one.
pub struct CancelScope {
    previous: Option<CancelToken>,
    /// The scope belongs to the thread whose thread-local it set.
    _not_send: PhantomData<*const ()>,
}

pub fn cancel_scope(token: &CancelToken) -> CancelScope {
    let previous = CURRENT.with(|c| c.replace(Some(token.clone())));
    CancelScope {
        previous,
        _not_send: PhantomData,
    }
}

impl Drop for CancelScope {
    fn drop(&mut self) {
        CURRENT.with(|c| *c.borrow_mut() = self.previous.take());
    }
}

/// The error a network returns when its run was cancelled between two layers.
#[derive(Debug, thiserror::Error)]
#[error("cancelled")]
pub struct CancelledError;

/// Fails with [`CancelledError`] when this thread's run has been cancelled; called by the networks between layers.
pub fn check_between_layers() -> candle_core::Result<()> {
    let cancelled = CURRENT.with(|c| c.borrow().as_ref().is_some_and(CancelToken::is_cancelled));
    if cancelled {
        return Err(candle_core::Error::wrap(CancelledError));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_follows_the_scope_of_this_thread() {
        let token = CancelToken::new();
        assert!(check_between_layers().is_ok(), "no scope: never cancelled");
        {
            let _scope = cancel_scope(&token);
            assert!(check_between_layers().is_ok());
            token.cancel();
            let err = check_between_layers().expect_err("cancelled");
            // candle may append a backtrace.
            assert!(err.to_string().starts_with("cancelled"), "{err}");
            // Another thread has no scope.
            assert!(std::thread::spawn(check_between_layers).join().expect("thread").is_ok());
        }
        assert!(check_between_layers().is_ok(), "the scope ended");
    }
}
