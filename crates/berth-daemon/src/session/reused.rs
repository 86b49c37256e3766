//! A future's heap allocation, reused from one request to the next.
//!
//! A session's task is as large as the largest state it can be suspended in, and answering a
//! request is by far the largest (the request, the asker, every step of the longest request
//! family): were it part of the task, each idle connection would carry it — about 2 KiB a
//! connection, 2 MiB for a thousand idle clients. So the answer runs in a box of its own.
//!
//! A 2 KiB allocation is outside the C allocator's per-thread cache, so a busy session keeps
//! its box and fills it again for each request — but only so many sessions at once
//! ([`Kept`]): a thousand clients that each make a burst of requests and then wait would
//! otherwise leave a thousand boxes behind (and, freed later, the holes they leave between
//! live allocations are rarely given back to the system). The others allocate a box per
//! answer and free it at once. A kept box is given back when its session falls quiet
//! ([`Reused::release`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{ready, Context, Poll};

use futures_util::future::{Fuse, FutureExt};

/// How many sessions may keep their box between requests, daemon-wide.
pub(crate) struct Kept {
    count: AtomicUsize,
    max: usize,
}

impl Kept {
    /// At most `max` boxes kept at once.
    pub(crate) fn new(max: usize) -> Self {
        Kept {
            count: AtomicUsize::new(0),
            max,
        }
    }

    /// Takes a place, if one is free.
    fn take(&self) -> bool {
        self.count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    fn give_back(&self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A box for futures of type `F`, kept between runs while it holds a place in [`Kept`].
pub(crate) struct Reused<'k, F> {
    slot: Option<Pin<Box<Fuse<F>>>>,
    kept: &'k Kept,
    /// Whether this box holds one of `kept`'s places.
    placed: bool,
}

impl<'k, F: Future> Reused<'k, F> {
    pub(crate) fn new(kept: &'k Kept) -> Self {
        Reused {
            slot: None,
            kept,
            placed: false,
        }
    }

    /// Runs `future` in the box (allocated now if there is none): the returned future
    /// finishes with `future`'s output, and drops `future`'s state as soon as it has it. Call
    /// [`Reused::finished`] after it.
    pub(crate) fn run(&mut self, future: F) -> Running<'_, F> {
        let fused = future.fuse();
        let slot = match self.slot.take() {
            Some(mut slot) => {
                slot.set(fused);
                self.slot.insert(slot)
            }
            None => self.slot.insert(Box::pin(fused)),
        };
        Running(slot.as_mut())
    }

    /// After a run: the box is kept if it holds a place or can take one, else freed now.
    pub(crate) fn finished(&mut self) {
        if !self.placed {
            self.placed = self.kept.take();
        }
        if !self.placed {
            self.slot = None;
        }
    }

    /// Frees the box and gives its place back (between runs). Whether there was one.
    pub(crate) fn release(&mut self) -> bool {
        if std::mem::take(&mut self.placed) {
            self.kept.give_back();
        }
        self.slot.take().is_some()
    }

    /// Whether a box is kept between runs.
    pub(crate) fn is_kept(&self) -> bool {
        self.slot.is_some()
    }
}

impl<F> Drop for Reused<'_, F> {
    fn drop(&mut self) {
        if self.placed {
            self.kept.give_back();
        }
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

    fn address<F>(reused: &Reused<'_, F>) -> Option<usize> {
        reused
            .slot
            .as_ref()
            .map(|b| &**b as *const Fuse<F> as usize)
    }

    /// Runs share one allocation while the box holds a place; after a release the next run
    /// allocates again; a run's state is dropped as soon as it finishes; a box without a
    /// place is freed after each run; places are given back on release and on drop.
    #[tokio::test]
    async fn runs_reuse_the_box_while_it_holds_a_place() {
        let state = std::sync::Arc::new(());
        let make = |n: u32| {
            let held = state.clone();
            async move {
                tokio::task::yield_now().await;
                drop(held);
                n * 2
            }
        };
        let kept = Kept::new(1);
        let mut reused = Reused::new(&kept);
        assert!(!reused.is_kept());
        let mut first = reused.run(make(1));
        assert!(!first.is_done());
        assert_eq!((&mut first).await, 2);
        assert!(first.is_done());
        reused.finished();
        assert!(reused.is_kept());
        let at = address(&reused);
        assert_eq!(reused.run(make(2)).await, 4);
        reused.finished();
        assert_eq!(
            at,
            address(&reused),
            "the second run reuses the first's box"
        );
        assert_eq!(std::sync::Arc::strong_count(&state), 1);

        // The only place is taken: another session's box is freed after each run.
        let mut other = Reused::new(&kept);
        assert_eq!(other.run(make(3)).await, 6);
        other.finished();
        assert!(!other.is_kept());

        assert!(reused.release());
        assert!(!reused.is_kept() && !reused.release());
        // The place is free again.
        assert_eq!(other.run(make(4)).await, 8);
        other.finished();
        assert!(other.is_kept());
        drop(other);
        assert_eq!(kept.count.load(Ordering::Relaxed), 0);
    }
}
