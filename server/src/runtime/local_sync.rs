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
///
/// Waiters queue in arrival order and a released place wakes exactly one,
/// so a long queue (a burst of handshakes) costs one wake-up per place, not
/// one per waiter. A waiter that gives up (its connection timed out) leaves
/// the queue, and one that is woken but dropped before it takes the place
/// hands the wake-up on to the next.
pub struct Gate {
    free: Cell<usize>,
    waiters: RefCell<std::collections::VecDeque<Rc<Waiter>>>,
}

/// One waiting [`Enter`], shared with the gate's queue.
struct Waiter {
    waker: RefCell<Waker>,
    state: Cell<WaitState>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum WaitState {
    /// In the queue.
    Queued,
    /// Taken off the queue and woken for a free place.
    Woken,
    /// Gave up or got a place; the queue drops it when it reaches it.
    Gone,
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
        Enter {
            gate: self.clone(),
            waiter: None,
        }
    }

    /// A place if one is free now and no one is queued for it; `None`
    /// otherwise (for those who must not queue). A waiter already woken for
    /// a place it has not taken yet is not counted: should this take that
    /// place, the waiter goes back to the front of the queue.
    pub fn try_enter(self: &Rc<Self>) -> Option<Pass> {
        let free = self.free.get();
        let waiting = self
            .waiters
            .borrow()
            .iter()
            .any(|w| w.state.get() != WaitState::Gone);
        if free == 0 || waiting {
            return None;
        }
        self.free.set(free - 1);
        Some(Pass {
            gate: Some(self.clone()),
        })
    }

    /// Places free now.
    pub fn free(&self) -> usize {
        self.free.get()
    }

    /// Wakes the first waiter still waiting, if a place is free.
    fn wake_next(&self) {
        if self.free.get() == 0 {
            return;
        }
        let next = loop {
            let Some(w) = self.waiters.borrow_mut().pop_front() else {
                return;
            };
            if w.state.get() == WaitState::Queued {
                break w;
            }
        };
        next.state.set(WaitState::Woken);
        // Outside the queue's borrow, as in `Phase::advance`.
        let waker = next.waker.borrow().clone();
        waker.wake();
    }

    /// Waiters in the queue, given-up ones included (for tests).
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.waiters.borrow().len()
    }
}

/// Future of [`Gate::enter`].
pub struct Enter {
    gate: Rc<Gate>,
    waiter: Option<Rc<Waiter>>,
}

impl Future for Enter {
    type Output = Pass;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Pass> {
        let this = self.get_mut();
        let g = &this.gate;
        if g.free.get() > 0 {
            g.free.set(g.free.get() - 1);
            if let Some(w) = this.waiter.take() {
                w.state.set(WaitState::Gone);
            }
            return Poll::Ready(Pass {
                gate: Some(g.clone()),
            });
        }
        match &this.waiter {
            Some(w) => {
                if !w.waker.borrow().will_wake(cx.waker()) {
                    *w.waker.borrow_mut() = cx.waker().clone();
                }
                if w.state.get() == WaitState::Woken {
                    // Woken, but another task took the place first: back to
                    // the front of the queue, not the end.
                    w.state.set(WaitState::Queued);
                    g.waiters.borrow_mut().push_front(w.clone());
                }
            }
            None => {
                let w = Rc::new(Waiter {
                    waker: RefCell::new(cx.waker().clone()),
                    state: Cell::new(WaitState::Queued),
                });
                g.waiters.borrow_mut().push_back(w.clone());
                this.waiter = Some(w);
            }
        }
        Poll::Pending
    }
}

impl Drop for Enter {
    fn drop(&mut self) {
        if let Some(w) = self.waiter.take() {
            let woken = w.state.get() == WaitState::Woken;
            w.state.set(WaitState::Gone);
            if woken {
                self.gate.wake_next();
            }
        }
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
            g.wake_next();
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

    #[test]
    fn try_enter_takes_a_free_place_or_none() {
        let flag = Arc::new(Flag(false.into()));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let g = Gate::new(2);
        let mut a = g.try_enter().expect("a free place");
        let b = g.try_enter().expect("the second place");
        assert!(g.try_enter().is_none(), "full");
        a.release();
        let c = g.try_enter().expect("given back");
        let mut waiting = Box::pin(g.enter());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        assert!(g.try_enter().is_none());
        drop(b);
        assert!(
            waiting.as_mut().poll(&mut cx).is_ready(),
            "a waiter is served as before"
        );
        drop(c);
    }

    struct Count(std::sync::atomic::AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn counter() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(0.into()));
        (c.clone(), Waker::from(c))
    }

    fn woken(c: &Count) -> usize {
        c.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A release wakes one waiter, in arrival order; given-up waiters are
    /// skipped, and a woken waiter that is dropped passes the wake-up on.
    #[test]
    fn a_released_place_wakes_one_waiter_in_order() {
        let (free_c, free_w) = counter();
        let g = Gate::new(1);
        let mut pass = match Box::pin(g.enter())
            .as_mut()
            .poll(&mut Context::from_waker(&free_w))
        {
            Poll::Ready(p) => p,
            Poll::Pending => panic!("a free place"),
        };
        let counters: Vec<_> = (0..5).map(|_| counter()).collect();
        let mut waiting: Vec<_> = (0..5).map(|_| Box::pin(g.enter())).collect();
        for (f, (_, w)) in waiting.iter_mut().zip(&counters) {
            assert!(f.as_mut().poll(&mut Context::from_waker(w)).is_pending());
            // Polled again (a timer woke its task): still one queue entry.
            assert!(f.as_mut().poll(&mut Context::from_waker(w)).is_pending());
        }
        assert_eq!(g.queued(), 5);
        // The first gives up; the second is woken, and only the second.
        drop(waiting.remove(0));
        pass.release();
        let wakes: Vec<usize> = counters.iter().map(|(c, _)| woken(c)).collect();
        assert_eq!(wakes, [0, 1, 0, 0, 0]);
        // The second is dropped before it runs: the third gets the wake-up.
        drop(waiting.remove(0));
        let wakes: Vec<usize> = counters.iter().map(|(c, _)| woken(c)).collect();
        assert_eq!(wakes, [0, 1, 1, 0, 0]);
        // A newcomer barges in first; the woken third goes back to the front.
        let mut barging = Box::pin(g.enter());
        let Poll::Ready(mut held) = barging.as_mut().poll(&mut Context::from_waker(&free_w)) else {
            panic!("the place was free")
        };
        let third = &counters[2].1;
        assert!(waiting[0]
            .as_mut()
            .poll(&mut Context::from_waker(third))
            .is_pending());
        held.release();
        let wakes: Vec<usize> = counters.iter().map(|(c, _)| woken(c)).collect();
        assert_eq!(wakes, [0, 1, 2, 0, 0], "the third is first in line again");
        assert!(waiting[0]
            .as_mut()
            .poll(&mut Context::from_waker(third))
            .is_ready());
        assert_eq!(woken(&free_c), 0);
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
