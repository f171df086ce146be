use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Answers that connection threads still have to write (wafer's fix, with
/// `Limits::max_buffered_body`): a request counts from the moment it is handed to `recv()`
/// until its answer has been written to the client, or abandoned with its connection. A server
/// shutting down waits on this so that answers already given reach their clients.
#[derive(Clone, Default)]
pub struct AnswersInFlight {
    inner: Arc<(Mutex<usize>, Condvar)>,
}

/// One answer in flight; dropping it counts the answer done.
pub struct AnswerTicket {
    answers: AnswersInFlight,
}

impl AnswersInFlight {
    pub(crate) fn ticket(&self) -> AnswerTicket {
        *self.count() += 1;
        AnswerTicket {
            answers: self.clone(),
        }
    }

    fn count(&self) -> std::sync::MutexGuard<'_, usize> {
        self.inner.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until no answer is in flight, at most `timeout`; true when none is.
    pub fn wait(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        let mut count = self.count();
        while *count > 0 {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            count = match self.inner.1.wait_timeout(count, left) {
                Ok((c, _)) => c,
                Err(e) => e.into_inner().0,
            };
        }
        true
    }
}

impl Drop for AnswerTicket {
    fn drop(&mut self) {
        let mut count = self.answers.count();
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.answers.inner.1.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_the_last_ticket() {
        let answers = AnswersInFlight::default();
        assert!(answers.wait(Duration::ZERO));
        let (a, b) = (answers.ticket(), answers.ticket());
        assert!(!answers.wait(Duration::from_millis(10)));
        drop(a);
        let later = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(b);
        });
        assert!(answers.wait(Duration::from_secs(5)));
        later.join().unwrap();
    }
}
