//! A small thread pool for work that must not run on a core's event loop:
//! password hashing, opening a maildrop that is not in the kernel's caches
//! (a cached one is opened on the core), expunging with fsync, compaction.
//!
//! Jobs are closures; the result comes back through a oneshot channel whose
//! waker crosses threads (monoio's `sync` feature makes that legal). monoio's
//! own `spawn_blocking` is not used: it panics unless every runtime is given
//! a pool, and a pool of our own can be shared by all cores and sized once.
//!
//! Two queues: storage work (a login's maildrop open, a QUIT's expunge, the
//! compaction that still holds the maildrop) always goes first, and password
//! hashes, which anyone can ask for by guessing, wait behind it in a queue of
//! bounded length. A flood of wrong passwords then costs the flood its own
//! answers (`[SYS/TEMP]` once the queue is full), not other users' logins
//! and commits.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Default)]
struct Jobs {
    first: VecDeque<Job>,
    deferrable: VecDeque<Job>,
    closed: bool,
}

struct Queue {
    jobs: Mutex<Jobs>,
    ready: Condvar,
}

/// The shared blocking pool.
#[derive(Clone)]
pub struct BlockingPool {
    queue: Arc<Queue>,
    deferrable_max: usize,
}

/// The job's sender went away without an answer (its thread panicked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("blocking job was lost (worker panicked)")]
pub struct JobLost;

/// Deferrable jobs allowed to wait, per worker thread.
const DEFERRABLE_PER_THREAD: usize = 64;

impl BlockingPool {
    /// Starts `threads` workers.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let queue = Arc::new(Queue {
            jobs: Mutex::new(Jobs::default()),
            ready: Condvar::new(),
        });
        for i in 0..threads {
            let q = queue.clone();
            std::thread::Builder::new()
                .name(format!("pop3sd-blocking-{i}"))
                .spawn(move || worker(q))?;
        }
        Ok(BlockingPool {
            queue,
            deferrable_max: threads * DEFERRABLE_PER_THREAD,
        })
    }

    /// Runs `f` on a worker ahead of any deferrable job; the returned future
    /// resolves with its result.
    pub fn run<T, F>(&self, f: F) -> impl std::future::Future<Output = Result<T, JobLost>>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (job, rx) = with_answer(f);
        self.lock().first.push_back(job);
        self.queue.ready.notify_one();
        async move { rx.await.map_err(|_| JobLost) }
    }

    /// Runs `f` once no other job waits, or refuses it (`None`) when the
    /// deferrable queue is full.
    pub fn try_run_deferrable<T, F>(
        &self,
        f: F,
    ) -> Option<impl std::future::Future<Output = Result<T, JobLost>>>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let mut q = self.lock();
        if q.deferrable.len() >= self.deferrable_max {
            return None;
        }
        let (job, rx) = with_answer(f);
        q.deferrable.push_back(job);
        drop(q);
        self.queue.ready.notify_one();
        Some(async move { rx.await.map_err(|_| JobLost) })
    }

    /// Queues a job whose result nobody waits for (compaction after QUIT).
    pub fn detach<F: FnOnce() + Send + 'static>(&self, f: F) {
        self.lock().first.push_back(Box::new(f));
        self.queue.ready.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Jobs> {
        self.queue.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Jobs waiting for a worker.
    pub fn backlog(&self) -> usize {
        let q = self.lock();
        q.first.len() + q.deferrable.len()
    }

    /// Lets the workers finish the queue and exit.
    pub fn shutdown(&self) {
        self.lock().closed = true;
        self.queue.ready.notify_all();
    }
}

fn with_answer<T, F>(f: F) -> (Job, futures_channel::oneshot::Receiver<T>)
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = futures_channel::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    (job, rx)
}

fn worker(q: Arc<Queue>) {
    loop {
        let job = {
            let mut g = q.jobs.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(j) = g.first.pop_front().or_else(|| g.deferrable.pop_front()) {
                    break j;
                }
                if g.closed {
                    return;
                }
                g = q.ready.wait(g).unwrap_or_else(|p| p.into_inner());
            }
        };
        // A panicking job must not take the worker with it; its caller sees JobLost.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
            tracing::error!("a blocking job panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_jobs_and_reports_panics() {
        let pool = BlockingPool::new(2).unwrap();
        let r = futures_executor_block_on(pool.run(|| 40 + 2));
        assert_eq!(r, Ok(42));
        let r: Result<(), JobLost> = futures_executor_block_on(pool.run(|| panic!("boom")));
        assert_eq!(r, Err(JobLost));
        pool.shutdown();
    }

    /// Storage work overtakes queued password hashes, and the hashes'
    /// queue has a bound.
    #[test]
    fn first_jobs_overtake_deferrable_ones_whose_queue_is_bounded() {
        let pool = BlockingPool::new(1).unwrap();
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let busy = pool.run(move || {
            let _ = blocked.recv();
        });
        // Let the worker take the blocking job.
        while pool.backlog() > 0 {
            std::thread::yield_now();
        }
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waits = Vec::new();
        for i in 0..DEFERRABLE_PER_THREAD {
            let o = order.clone();
            let w = pool.try_run_deferrable(move || o.lock().unwrap().push(format!("hash{i}")));
            waits.push(w.expect("room in the queue"));
        }
        assert!(
            pool.try_run_deferrable(|| ()).is_none(),
            "the deferrable queue is bounded"
        );
        let o = order.clone();
        let storage = pool.run(move || o.lock().unwrap().push("open".to_string()));
        release.send(()).unwrap();
        futures_executor_block_on(busy).unwrap();
        futures_executor_block_on(storage).unwrap();
        for w in waits {
            futures_executor_block_on(w).unwrap();
        }
        let order = order.lock().unwrap();
        assert_eq!(order[0], "open", "{order:?}");
        assert_eq!(order.len(), DEFERRABLE_PER_THREAD + 1);
        assert!(pool.try_run_deferrable(|| ()).is_some(), "room again");
        pool.shutdown();
    }

    /// A tiny executor for the test (the pool itself is runtime-agnostic).
    fn futures_executor_block_on<F: std::future::Future>(f: F) -> F::Output {
        use std::task::{Context, Poll, Wake, Waker};
        struct Thread(std::thread::Thread);
        impl Wake for Thread {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Thread(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }
}
