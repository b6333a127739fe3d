//! The TLS 1.2 session-id cache, partitioned by listener kind.
//!
//! Every core and every ServerConfig share one cache so that a session id
//! resumes wherever the connection lands. Listeners that treat client
//! certificates differently must not resume each other's sessions, though:
//! a session made where no certificate was asked for would otherwise resume
//! on a listener that requires one. Each kind therefore sees the cache
//! through its own key prefix, as its tickets have their own scope
//! ([`super::ticket_keys::ScopedTickets`]).

use std::sync::Arc;

use rustls::server::StoresServerSessions;

/// One listener kind's view of the shared session cache.
#[derive(Debug)]
pub struct ScopedSessions {
    inner: Arc<dyn StoresServerSessions>,
    scope: u8,
}

impl ScopedSessions {
    /// A view in which only keys put under `scope` are found.
    pub fn new(inner: Arc<dyn StoresServerSessions>, scope: u8) -> Arc<Self> {
        Arc::new(ScopedSessions { inner, scope })
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(key.len() + 1);
        k.push(self.scope);
        k.extend_from_slice(key);
        k
    }
}

impl StoresServerSessions for ScopedSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.inner.put(self.key(&key), value)
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.get(&self.key(key))
    }
    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.take(&self.key(key))
    }
    fn can_cache(&self) -> bool {
        self.inner.can_cache()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ServerSessionMemoryCache;

    #[test]
    fn scopes_do_not_see_each_others_sessions() {
        let shared: Arc<dyn StoresServerSessions> = ServerSessionMemoryCache::new(16);
        let none = ScopedSessions::new(shared.clone(), 0);
        let required = ScopedSessions::new(shared.clone(), 2);
        assert!(none.put(b"id".to_vec(), b"state".to_vec()));
        assert_eq!(none.get(b"id").as_deref(), Some(&b"state"[..]));
        assert_eq!(required.get(b"id"), None);
        assert_eq!(required.take(b"id"), None);
        // The same scope on another core (another view) finds it.
        let none_elsewhere = ScopedSessions::new(shared, 0);
        assert_eq!(none_elsewhere.take(b"id").as_deref(), Some(&b"state"[..]));
        assert_eq!(none.get(b"id"), None);
        assert!(none.can_cache());
    }
}
