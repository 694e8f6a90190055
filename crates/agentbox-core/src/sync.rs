//! Locks that outlive a panic elsewhere.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locking a [`Mutex`] whatever another thread did while holding it: every lock in agentbox guards
/// data that stays consistent between statements, so a panic elsewhere never leaves it half-changed.
pub trait LockExt<T: ?Sized> {
    /// Locks, taking the data even when a panicking thread poisoned the lock.
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> LockExt<T> for Mutex<T> {
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reading and writing an [`RwLock`] whatever another thread did while holding it, for the same reason as
/// [`LockExt`].
pub trait RwLockExt<T: ?Sized> {
    /// Locks for reading, taking the data even when a panicking thread poisoned the lock.
    fn read_unpoisoned(&self) -> RwLockReadGuard<'_, T>;
    /// Locks for writing, taking the data even when a panicking thread poisoned the lock.
    fn write_unpoisoned(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RwLockExt<T> for RwLock<T> {
    fn read_unpoisoned(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_unpoisoned(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_gives_its_data() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock_unpoisoned();
            panic!("poisoning the lock");
        })
        .join();
        assert!(m.is_poisoned());
        *m.lock_unpoisoned() += 1;
        assert_eq!(*m.lock_unpoisoned(), 2);
    }

    #[test]
    fn a_poisoned_rwlock_still_gives_its_data() {
        let l = std::sync::Arc::new(RwLock::new(1));
        let l2 = l.clone();
        let _ = std::thread::spawn(move || {
            let _g = l2.write_unpoisoned();
            panic!("poisoning the lock");
        })
        .join();
        assert!(l.is_poisoned());
        *l.write_unpoisoned() += 1;
        assert_eq!(*l.read_unpoisoned(), 2);
    }
}
