//! Locks that survive a panic. A poisoned lock only means a task panicked
//! mid-update; what crossmon guards is counters, maps and caches that stay
//! usable, so it keeps serving them rather than failing every later caller.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

pub fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// A value one stage publishes whole and others read: a reader gets the
/// latest `Arc` at once, never waiting for the writer, and keeps it as
/// long as it reads.
pub type Published<T> = std::sync::Arc<arc_swap::ArcSwap<T>>;

pub fn published<T>(value: T) -> Published<T> {
    std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(value))
}
