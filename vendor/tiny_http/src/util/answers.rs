use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{RefinedTcpStream, SequentialWriter};

/// Answers that are not yet written (wafer's fix, with `Limits::max_buffered_body`): a request
/// counts from the moment it is handed to `recv()` until its answer has been written to the
/// client, or abandoned with its connection. A server shutting down waits on this so that
/// answers already given reach their clients. It also counts the answers written behind (see
/// [`AnswerWriter`]).
#[derive(Clone, Default)]
pub struct AnswersInFlight {
    inner: Arc<(Mutex<usize>, Condvar)>,
    behind: Arc<AtomicUsize>,
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

    /// A place for one more thread writing an answer behind, if fewer than `max` are.
    fn behind_place(&self, max: usize) -> Option<BehindPlace> {
        self.behind
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| BehindPlace(self.behind.clone()))
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

/// How answers are written behind (`Limits::max_answers_behind`, `io_timeout`,
/// `min_answer_rate`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Behind {
    pub max: usize,
    pub io_timeout: Option<Duration>,
    /// Bytes per second: with an io timeout, each piece written behind must be taken within
    /// the time this rate gives it (the first piece the io timeout more).
    pub min_rate: usize,
}

impl Behind {
    /// Writes `buf` whole, by `deadline` pushed back by what `buf` may take at the least rate;
    /// each write waits at most the io timeout, and never past the deadline.
    fn write_by(
        &self,
        w: &mut RefinedTcpStream,
        mut buf: &[u8],
        deadline: &mut Instant,
    ) -> std::io::Result<()> {
        let Some(io_timeout) = self.io_timeout else {
            return w.write_all(buf);
        };
        let rate = self.min_rate.max(1) as f64;
        *deadline += Duration::from_secs_f64(buf.len() as f64 / rate);
        while !buf.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client took the answer too slowly",
                ));
            }
            w.set_write_timeout(Some(io_timeout.min(left)))?;
            match w.write(buf) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// One of the `Limits::max_answers_behind` threads; given back when dropped.
struct BehindPlace(Arc<AtomicUsize>);

impl Drop for BehindPlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

type Sink = SequentialWriter<BufWriter<RefinedTcpStream>>;

/// The connection's side of an answer in flight: it learns there when the answer was written
/// whole (`Some`), or that it was lost with the connection (`None`, or nothing).
pub(crate) type AnswerDone = Receiver<Option<Instant>>;

/// Whoever holds this holds the client's socket for one answer; dropping it tells the
/// connection that the answer is done, and whether it was written whole.
struct Holder {
    sink: Sink,
    written: bool,
    done: Sender<Option<Instant>>,
    _ticket: AnswerTicket,
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.done.send(self.written.then(Instant::now));
    }
}

impl Holder {
    /// Cuts the connection, so that a thread waiting to read from it stops waiting.
    fn cut(&mut self) {
        self.written = false;
        self.sink.with_turn(|w| w.get_mut().shutdown_both());
    }
}

enum Route {
    /// Written to the socket as it takes it, by the thread that answers.
    Direct(Holder, Behind),
    /// The socket was full: the rest goes to the thread writing behind.
    Behind(Sender<Vec<u8>>),
    Gone,
}

/// Where an answer's bytes go (wafer's fix, with `Limits::max_buffered_body`). Held in memory
/// until a `flush` (or `PIECE` bytes), then written straight to the client's socket by the
/// thread that answers, as much as the socket takes without waiting: a small answer, the
/// usual one, is written by one system call and nobody else is woken for it. When the socket is
/// full (a client that does not read, a large answer), the rest is handed to a thread of its
/// own that waits on the client, each write bounded by the io timeout; at most
/// `Limits::max_answers_behind` such threads at once, past which the connection is cut. Either
/// way, whoever answers never waits on a client. Dropping the writer ends the answer.
pub(crate) struct AnswerWriter {
    held: Vec<u8>,
    route: Route,
    answers: AnswersInFlight,
}

impl AnswerWriter {
    const PIECE: usize = 64 * 1024;

    /// A writer for one answer onto `sink`, whose end the connection learns from the returned
    /// receiver; `max_behind` bounds the threads writing behind.
    pub(crate) fn new(
        sink: Sink,
        answers: &AnswersInFlight,
        behind: Behind,
    ) -> (AnswerWriter, AnswerDone) {
        let (done, done_rx) = mpsc::channel();
        let holder = Holder {
            sink,
            written: false,
            done,
            _ticket: answers.ticket(),
        };
        let writer = AnswerWriter {
            held: Vec::new(),
            route: Route::Direct(holder, behind),
            answers: answers.clone(),
        };
        (writer, done_rx)
    }

    fn hand_over(&mut self) {
        if self.held.is_empty() {
            return;
        }
        match &mut self.route {
            Route::Direct(holder, _) => {
                let held = &self.held;
                // The buffer of the connection's writer is empty between answers; were it not,
                // its bytes would go first, behind.
                let sent = holder.sink.with_turn(|w| {
                    if w.buffer().is_empty() {
                        w.get_ref().send_now(held)
                    } else {
                        Ok(0)
                    }
                });
                match sent {
                    Ok(n) if n == self.held.len() => self.held.clear(),
                    Ok(n) => {
                        self.held.drain(..n);
                        self.go_behind();
                    }
                    // The client is gone: the rest has nowhere to go.
                    Err(_) => {
                        holder.cut();
                        self.route = Route::Gone;
                        self.held.clear();
                    }
                }
            }
            Route::Behind(rest) => {
                // The thread writing behind may have given up; the rest then has nowhere to go.
                let _ = rest.send(std::mem::take(&mut self.held));
            }
            Route::Gone => self.held.clear(),
        }
    }

    /// Ends the answer unfinished (its body failed midway, or whoever wrote it panicked): what
    /// is held is dropped and the connection cut, so that the client can take neither what it
    /// got for the whole answer nor the next answer for the rest of this one.
    pub(crate) fn abandon(&mut self) {
        self.held.clear();
        match std::mem::replace(&mut self.route, Route::Gone) {
            Route::Direct(mut holder, _) => holder.cut(),
            // An empty piece, never sent otherwise, tells the thread writing behind to cut.
            Route::Behind(rest) => {
                let _ = rest.send(Vec::new());
            }
            Route::Gone => {}
        }
    }

    /// Hands what is held, and all that follows, to a thread that writes it as the client reads.
    fn go_behind(&mut self) {
        let Route::Direct(mut holder, behind) = std::mem::replace(&mut self.route, Route::Gone)
        else {
            return;
        };
        let first = std::mem::take(&mut self.held);
        let Some(place) = self.answers.behind_place(behind.max) else {
            log::warn!(
                "answers written behind: all {} threads busy; connection cut",
                behind.max
            );
            holder.cut();
            return;
        };
        let (rest, pieces) = mpsc::channel::<Vec<u8>>();
        let spawned = std::thread::Builder::new()
            .name("tiny-http-answer".into())
            .spawn(move || {
                let mut holder = holder;
                let written = holder.sink.with_turn(|w| {
                    // Each piece may take what it would at the least rate, the first the io
                    // timeout more: the whole answer has a deadline, however little each write
                    // moves.
                    w.flush()?;
                    let mut deadline = Instant::now() + behind.io_timeout.unwrap_or_default();
                    let mut out = behind.write_by(w.get_mut(), &first, &mut deadline);
                    for piece in pieces {
                        if out.is_err() {
                            break;
                        }
                        if piece.is_empty() {
                            out = Err(std::io::Error::other("the answer was abandoned"));
                            break;
                        }
                        out = behind.write_by(w.get_mut(), &piece, &mut deadline);
                    }
                    // Later writes on the socket get the io timeout again.
                    let _ = w.get_mut().set_write_timeout(behind.io_timeout);
                    out
                });
                match written {
                    Ok(()) => holder.written = true,
                    Err(_) => holder.cut(),
                }
                // The place goes back before the connection and the count hear the answer is
                // done: whoever they let go on may need it at once.
                drop(place);
                drop(holder);
            });
        match spawned {
            Ok(_) => self.route = Route::Behind(rest),
            // The holder went with the closure: the connection learns the answer was lost.
            Err(e) => log::error!("could not start a thread to write an answer: {e}"),
        }
    }
}

impl Write for AnswerWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.held.extend_from_slice(buf);
        if self.held.len() >= Self::PIECE {
            self.hand_over();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.hand_over();
        Ok(())
    }
}

impl Drop for AnswerWriter {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.abandon();
            return;
        }
        self.hand_over();
        if let Route::Direct(holder, _) = &mut self.route {
            holder.written = true;
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
