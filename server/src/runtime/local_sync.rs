//! Two small single-core synchronization tools for tasks of one runtime
//! (no atomics, no locks: everything here lives on one core).
//!
//! - [`Phase`]: the core's shutdown phase (serving → draining → closing),
//!   which tasks can wait on.
//! - [`Gate`]: a counting semaphore that bounds TLS handshakes in flight.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Where a core is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Serving = 0,
    /// Not accepting; sessions may finish.
    Draining = 1,
    /// The drain deadline passed: remaining sessions are closed.
    Closing = 2,
}

/// The shutdown phase of one core.
#[derive(Default)]
pub struct Phase {
    stage: Cell<u8>,
    waiters: RefCell<Wakers>,
}

/// Wakers of pending futures, one slot per future: a future polled again
/// updates its slot, and a dropped one frees it, so a connection that waits
/// on the phase at every read does not leave a waker (holding its whole
/// task alive) behind each time.
#[derive(Default)]
struct Wakers {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Wakers {
    /// Records `w` in the future's slot, taking a slot on first use.
    fn register(&mut self, slot: &mut Option<usize>, w: &Waker) {
        let i = match *slot {
            Some(i) => i,
            None => {
                let i = self.free.pop().unwrap_or_else(|| {
                    self.slots.push(None);
                    self.slots.len() - 1
                });
                *slot = Some(i);
                i
            }
        };
        match &mut self.slots[i] {
            Some(old) if old.will_wake(w) => {}
            s => *s = Some(w.clone()),
        }
    }

    /// Frees a dropped future's slot.
    fn remove(&mut self, i: usize) {
        if let Some(s) = self.slots.get_mut(i) {
            *s = None;
            self.free.push(i);
        }
    }

    /// Takes every waker (slots stay with their futures until dropped).
    fn take_all(&mut self) -> Vec<Waker> {
        self.slots.iter_mut().filter_map(Option::take).collect()
    }

    /// Slots in use (for tests).
    #[cfg(test)]
    fn in_use(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

impl Phase {
    /// The current stage.
    pub fn get(&self) -> Stage {
        match self.stage.get() {
            0 => Stage::Serving,
            1 => Stage::Draining,
            _ => Stage::Closing,
        }
    }

    /// Moves forward to `s` (never back) and wakes every waiter.
    pub fn advance(&self, s: Stage) {
        if (s as u8) > self.stage.get() {
            self.stage.set(s as u8);
            // Wake outside the borrow: a waker may drop the last reference
            // to a task, whose `Reached` then frees its slot.
            let wakers = self.waiters.borrow_mut().take_all();
            for w in wakers {
                w.wake();
            }
        }
    }

    /// Resolves once the stage is at least `s`.
    pub fn reached(&self, s: Stage) -> Reached<'_> {
        Reached {
            phase: self,
            stage: s,
            slot: None,
        }
    }
}

/// Future of [`Phase::reached`].
pub struct Reached<'a> {
    phase: &'a Phase,
    stage: Stage,
    slot: Option<usize>,
}

impl Future for Reached<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.phase.get() >= this.stage {
            return Poll::Ready(());
        }
        this.phase
            .waiters
            .borrow_mut()
            .register(&mut this.slot, cx.waker());
        Poll::Pending
    }
}

impl Drop for Reached<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot.take() {
            self.phase.waiters.borrow_mut().remove(i);
        }
    }
}

/// A counting semaphore for tasks of one core.
pub struct Gate {
    free: Cell<usize>,
    waiters: RefCell<std::collections::VecDeque<Waker>>,
}

impl Gate {
    /// A gate letting `n` holders through at once.
    pub fn new(n: usize) -> Rc<Self> {
        Rc::new(Gate {
            free: Cell::new(n.max(1)),
            waiters: RefCell::new(std::collections::VecDeque::new()),
        })
    }

    /// Waits for a place; the place is given back when the pass is dropped.
    pub fn enter(self: &Rc<Self>) -> Enter {
        Enter { gate: self.clone() }
    }

    /// Places free now.
    pub fn free(&self) -> usize {
        self.free.get()
    }
}

/// Future of [`Gate::enter`].
pub struct Enter {
    gate: Rc<Gate>,
}

impl Future for Enter {
    type Output = Pass;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Pass> {
        let g = &self.gate;
        if g.free.get() > 0 {
            g.free.set(g.free.get() - 1);
            return Poll::Ready(Pass {
                gate: Some(g.clone()),
            });
        }
        g.waiters.borrow_mut().push_back(cx.waker().clone());
        Poll::Pending
    }
}

/// A place in a [`Gate`].
pub struct Pass {
    gate: Option<Rc<Gate>>,
}

impl Pass {
    /// Gives the place back early.
    pub fn release(&mut self) {
        if let Some(g) = self.gate.take() {
            g.free.set(g.free.get() + 1);
            // Wake every waiter: one that was cancelled must not strand the
            // place. (Outside the borrow, as in `Phase::advance`.)
            let wakers: Vec<Waker> = g.waiters.borrow_mut().drain(..).collect();
            for w in wakers {
                w.wake();
            }
        }
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn gate_and_phase() {
        let flag = Arc::new(Flag(false.into()));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let g = Gate::new(1);
        let mut first = Box::pin(g.enter());
        let Poll::Ready(mut pass) = first.as_mut().poll(&mut cx) else {
            panic!("first enter waits")
        };
        let mut second = Box::pin(g.enter());
        assert!(second.as_mut().poll(&mut cx).is_pending());
        pass.release();
        assert!(
            flag.0.load(std::sync::atomic::Ordering::SeqCst),
            "waiter woken"
        );
        assert!(second.as_mut().poll(&mut cx).is_ready());

        let p = Phase::default();
        let mut r = Box::pin(p.reached(Stage::Closing));
        assert!(r.as_mut().poll(&mut cx).is_pending());
        p.advance(Stage::Draining);
        assert!(r.as_mut().poll(&mut cx).is_pending());
        p.advance(Stage::Closing);
        assert!(r.as_mut().poll(&mut cx).is_ready());
        p.advance(Stage::Serving);
        assert_eq!(p.get(), Stage::Closing, "never goes back");
    }

    /// The leak the soak found: every read waited on the phase with a new
    /// future, and each left its waker (and so its task) behind for good.
    #[test]
    fn waiting_on_the_phase_again_and_again_holds_one_slot_at_most() {
        let flag = Arc::new(Flag(false.into()));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let p = Phase::default();
        let mut held = Box::pin(p.reached(Stage::Closing));
        for _ in 0..1000 {
            assert!(held.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(p.waiters.borrow().in_use(), 1, "re-polls reuse the slot");
        for _ in 0..1000 {
            let mut r = Box::pin(p.reached(Stage::Closing));
            assert!(r.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(
            p.waiters.borrow().in_use(),
            1,
            "dropped futures free theirs"
        );
        assert!(p.waiters.borrow().slots.len() <= 2);
        p.advance(Stage::Closing);
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
        assert!(held.as_mut().poll(&mut cx).is_ready());
        drop(held);
        assert_eq!(p.waiters.borrow().in_use(), 0);
    }
}
