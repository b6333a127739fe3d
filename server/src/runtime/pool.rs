//! A small thread pool for work that must not run on a core's event loop:
//! password hashing, opening a maildrop, expunging with fsync, compaction.
//!
//! Jobs are closures; the result comes back through a oneshot channel whose
//! waker crosses threads (monoio's `sync` feature makes that legal). monoio's
//! own `spawn_blocking` is not used: it panics unless every runtime is given
//! a pool, and a pool of our own can be shared by all cores and sized once.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Queue {
    jobs: Mutex<(VecDeque<Job>, bool)>,
    ready: Condvar,
}

/// The shared blocking pool.
#[derive(Clone)]
pub struct BlockingPool {
    queue: Arc<Queue>,
}

/// The job's sender went away without an answer (its thread panicked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("blocking job was lost (worker panicked)")]
pub struct JobLost;

impl BlockingPool {
    /// Starts `threads` workers.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let queue = Arc::new(Queue {
            jobs: Mutex::new((VecDeque::new(), false)),
            ready: Condvar::new(),
        });
        for i in 0..threads.max(1) {
            let q = queue.clone();
            std::thread::Builder::new()
                .name(format!("pop3sd-blocking-{i}"))
                .spawn(move || worker(q))?;
        }
        Ok(BlockingPool { queue })
    }

    /// Runs `f` on a worker; the returned future resolves with its result.
    pub fn run<T, F>(&self, f: F) -> impl std::future::Future<Output = Result<T, JobLost>>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = futures_channel::oneshot::channel();
        self.submit(Box::new(move || {
            let _ = tx.send(f());
        }));
        async move { rx.await.map_err(|_| JobLost) }
    }

    /// Queues a job whose result nobody waits for (compaction after QUIT).
    pub fn detach<F: FnOnce() + Send + 'static>(&self, f: F) {
        self.submit(Box::new(f));
    }

    fn submit(&self, job: Job) {
        let mut q = self.queue.jobs.lock().unwrap_or_else(|p| p.into_inner());
        q.0.push_back(job);
        drop(q);
        self.queue.ready.notify_one();
    }

    /// Jobs waiting for a worker.
    pub fn backlog(&self) -> usize {
        self.queue.jobs.lock().map(|q| q.0.len()).unwrap_or(0)
    }

    /// Lets the workers finish the queue and exit.
    pub fn shutdown(&self) {
        let mut q = self.queue.jobs.lock().unwrap_or_else(|p| p.into_inner());
        q.1 = true;
        drop(q);
        self.queue.ready.notify_all();
    }
}

fn worker(q: Arc<Queue>) {
    loop {
        let job = {
            let mut g = q.jobs.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(j) = g.0.pop_front() {
                    break j;
                }
                if g.1 {
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
