use std::sync::{Arc, Mutex};

/// The bytes of request bodies a server holds at once (wafer's fix, `Limits::body_budget`):
/// every connection thread takes the bytes of the body it is about to read from here, and they
/// come back when the request is answered or dropped. Without a budget every take succeeds.
#[derive(Clone, Default)]
pub struct BodyBudget {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    total: usize,
    large: usize,
    /// (bytes held by all bodies, bytes held by large ones)
    held: Mutex<(usize, usize)>,
}

impl BodyBudget {
    /// At most `total` bytes of bodies at once; of them at most `large` by large bodies.
    pub(crate) fn new(total: usize, large: usize) -> BodyBudget {
        BodyBudget {
            inner: Some(Arc::new(Inner {
                total,
                large: large.min(total),
                held: Mutex::new((0, 0)),
            })),
        }
    }

    /// An empty hold on this budget, for one body (`large`: a body whose limit is over the
    /// server's `max_buffered_body`).
    pub(crate) fn hold(&self, large: bool) -> BodyHold {
        BodyHold {
            budget: self.clone(),
            large,
            bytes: 0,
        }
    }

    /// The bytes held now: (all bodies, large ones).
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        self.inner.as_ref().map_or((0, 0), |i| *i.lock())
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, usize)> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The bytes one body holds of its server's [`BodyBudget`], given back when this is dropped.
pub struct BodyHold {
    budget: BodyBudget,
    large: bool,
    bytes: usize,
}

impl BodyHold {
    /// Takes `n` more bytes; false (taking nothing) when they would go past the budget.
    pub(crate) fn grow(&mut self, n: usize) -> bool {
        let Some(inner) = &self.budget.inner else {
            return true;
        };
        let mut held = inner.lock();
        let total = held.0.checked_add(n).filter(|&t| t <= inner.total);
        let large = match self.large {
            true => held.1.checked_add(n).filter(|&l| l <= inner.large),
            false => Some(held.1),
        };
        match (total, large) {
            (Some(total), Some(large)) => {
                *held = (total, large);
                self.bytes += n;
                true
            }
            _ => false,
        }
    }
}

impl Drop for BodyHold {
    fn drop(&mut self) {
        if let Some(inner) = &self.budget.inner {
            let mut held = inner.lock();
            held.0 -= self.bytes;
            if self.large {
                held.1 -= self.bytes;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BodyBudget;

    #[test]
    fn holds_stay_within_the_budget_and_give_their_bytes_back() {
        let budget = BodyBudget::new(100, 60);
        let mut a = budget.hold(true);
        assert!(a.grow(50));
        let mut b = budget.hold(true);
        assert!(!b.grow(11), "large bodies past their share");
        assert!(b.grow(10));
        let mut c = budget.hold(false);
        assert!(!c.grow(41), "past the total");
        assert!(c.grow(40));
        assert_eq!(budget.held(), (100, 60));
        drop(a);
        assert_eq!(budget.held(), (50, 10));
        drop((b, c));
        assert_eq!(budget.held(), (0, 0));
        let mut unbounded = BodyBudget::default().hold(true);
        assert!(unbounded.grow(usize::MAX));
    }
}
