//! What the daemon remembers between sessions about S3 locations (the
//! packs format's held manifests and `refs/` scans): maps held once in
//! `DaemonState` and reached through every store made for a caller
//! (`S3Store::memory`), one map per type of value, made on first use. A
//! store made elsewhere (a test) has a memory of its own.

use std::any::{Any, TypeId};
use std::sync::Arc;

use dashmap::DashMap;

#[derive(Default)]
pub(crate) struct Memory {
    maps: DashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl Memory {
    /// The map of the values of type `V`, by location (`S3Store::location`).
    /// Give each use its own type (a newtype), so two uses never share a map.
    pub(crate) fn map<V: Send + Sync + 'static>(&self) -> Arc<DashMap<String, V>> {
        let any = self.maps.entry(TypeId::of::<V>()).or_insert_with(|| Arc::new(DashMap::<String, V>::new())).clone();
        // Stored under V's TypeId, so always a map of V.
        any.downcast::<DashMap<String, V>>().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_map_per_type_shared_by_every_holder() {
        struct A(u32);
        struct B(u32);
        let memory = Memory::default();
        memory.map::<A>().insert("loc".into(), A(1));
        memory.map::<B>().insert("loc".into(), B(2));
        assert_eq!(memory.map::<A>().get("loc").map(|a| a.0), Some(1));
        assert_eq!(memory.map::<B>().get("loc").map(|b| b.0), Some(2));
        assert!(Memory::default().map::<A>().is_empty(), "another memory: its own maps");
    }
}
