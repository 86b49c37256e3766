//! A future's heap allocation, reused from one request to the next.
//!
//! A session's task is as large as the largest state it can be suspended in, and answering a
//! request is by far the largest (the request, the asker, every step of the longest request
//! family): were it part of the task, each idle connection would carry it — about 2 KiB a
//! connection, 2 MiB for a thousand idle clients. So the answer runs in a box of its own, which
//! a busy session keeps and fills again for each request (no allocation per request) and an
//! idle one gives back ([`Reused::release`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_util::future::{Fuse, FutureExt};

/// A box for futures of type `F`, kept between runs until released.
pub(crate) struct Reused<F>(Option<Pin<Box<Fuse<F>>>>);

impl<F: Future> Reused<F> {
    pub(crate) fn new() -> Self {
        Reused(None)
    }

    /// Runs `future` in the box (allocated now if it was released): the returned future
    /// finishes with `future`'s output, and drops `future`'s state as soon as it has it.
    pub(crate) fn run(&mut self, future: F) -> Running<'_, F> {
        let fused = future.fuse();
        let slot = match self.0.take() {
            Some(mut slot) => {
                slot.set(fused);
                self.0.insert(slot)
            }
            None => self.0.insert(Box::pin(fused)),
        };
        Running(slot.as_mut())
    }

    /// Frees the box (between runs; a run after this allocates it again). Whether there was
    /// one.
    pub(crate) fn release(&mut self) -> bool {
        self.0.take().is_some()
    }

    /// Whether the box is allocated.
    pub(crate) fn is_kept(&self) -> bool {
        self.0.is_some()
    }
}

/// A future running in a [`Reused`] box.
pub(crate) struct Running<'a, F>(Pin<&'a mut Fuse<F>>);

impl<F: Future> Future for Running<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let output = ready!(self.0.as_mut().poll(cx));
        // Its state (borrowed buffers, a turn) is let go of now, not at the next run.
        self.0.set(Fuse::terminated());
        Poll::Ready(output)
    }
}

impl<F: Future> Running<'_, F> {
    /// Whether the future has finished (its state dropped).
    #[cfg(test)]
    fn is_done(&self) -> bool {
        futures_util::future::FusedFuture::is_terminated(&*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two runs share one allocation; after a release the next run allocates again; a run's
    /// state is dropped as soon as it finishes.
    #[tokio::test]
    async fn runs_reuse_the_box_until_it_is_released() {
        let state = std::sync::Arc::new(());
        let make = |n: u32| {
            let held = state.clone();
            async move {
                tokio::task::yield_now().await;
                drop(held);
                n * 2
            }
        };
        let mut reused = Reused::new();
        assert!(!reused.is_kept());
        let mut first = reused.run(make(1));
        assert!(!first.is_done());
        assert_eq!((&mut first).await, 2);
        assert!(first.is_done());
        let at = reused.0.as_ref().map(|b| &**b as *const Fuse<_> as usize);
        assert_eq!(reused.run(make(2)).await, 4);
        let again = reused.0.as_ref().map(|b| &**b as *const Fuse<_> as usize);
        assert_eq!(at, again, "the second run reuses the first's box");
        assert_eq!(std::sync::Arc::strong_count(&state), 1);
        assert!(reused.release());
        assert!(!reused.is_kept() && !reused.release());
        assert_eq!(reused.run(make(3)).await, 6);
        assert!(reused.is_kept());
    }
}
