//! The memory LMTP connections hold, against `lmtp.max_memory`.
//!
//! Each connection holds a message whole until every recipient has it, so
//! `lmtp.max_connections` times the largest `max_message_size` is the most
//! LMTP could hold without this: gigabytes, from an MTA that opens many
//! connections or a client on the LMTP network that means harm. Past the
//! budget a connection's message is shed (its recipients are told
//! `452 4.3.1` and the MTA retries later) rather than the server running
//! out of memory. Only messages count: a connection between messages holds
//! none, so an MTA's idle cached connections never stand in a message's
//! way. LMTP is served by core 0 alone (as is the metrics endpoint, which
//! shows the count), so the count is a cell.

use std::cell::Cell;
use std::rc::Rc;

/// The budget and what all connections hold of it.
#[derive(Debug)]
pub struct LmtpMemory {
    limit: u64,
    used: Cell<u64>,
}

impl LmtpMemory {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Rc<Self> {
        Rc::new(LmtpMemory {
            limit,
            used: Cell::new(0),
        })
    }

    /// A connection's share, empty to begin with.
    pub fn hold(self: &Rc<Self>) -> Hold {
        Hold {
            budget: self.clone(),
            held: 0,
        }
    }

    /// Bytes held by all connections.
    pub fn used(&self) -> u64 {
        self.used.get()
    }

    /// The budget (`lmtp.max_memory`).
    pub fn limit(&self) -> u64 {
        self.limit
    }
}

/// What one connection holds; given back when dropped.
#[derive(Debug)]
pub struct Hold {
    budget: Rc<LmtpMemory>,
    held: u64,
}

impl Hold {
    /// Records that the connection now holds `bytes`. False, recording
    /// nothing, when that grows past the budget while other connections
    /// hold some: a connection alone always goes ahead, so that one message
    /// of any size the tenants allow can still be delivered.
    pub fn set(&mut self, bytes: u64) -> bool {
        let others = self.budget.used.get() - self.held;
        if bytes > self.held && others > 0 && others.saturating_add(bytes) > self.budget.limit {
            return false;
        }
        self.budget.used.set(others + bytes);
        self.held = bytes;
        true
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.budget.used.set(self.budget.used.get() - self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_past_the_budget_is_refused_only_while_others_hold_memory() {
        let budget = LmtpMemory::new(100);
        let mut a = budget.hold();
        let mut b = budget.hold();
        // Alone, a connection goes past the budget.
        assert!(a.set(150));
        assert_eq!(budget.used(), 150);
        // Another may not grow while it does...
        assert!(!b.set(1));
        assert_eq!(budget.used(), 150);
        // ...and may once it has shrunk.
        assert!(a.set(60));
        assert!(b.set(40));
        assert!(!b.set(41));
        assert!(!a.set(61));
        // Shrinking always succeeds.
        assert!(a.set(10));
        assert!(b.set(90));
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 90);
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
