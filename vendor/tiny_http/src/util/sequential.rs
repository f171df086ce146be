use std::io::Result as IoResult;
use std::io::{Read, Write};

use std::sync::mpsc::channel;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

use std::mem;

pub struct SequentialReaderBuilder<R>
where
    R: Read + Send,
{
    inner: SequentialReaderBuilderInner<R>,
}

enum SequentialReaderBuilderInner<R>
where
    R: Read + Send,
{
    First(R),
    NotFirst(Receiver<R>),
}

pub struct SequentialReader<R>
where
    R: Read + Send,
{
    inner: SequentialReaderInner<R>,
    next: Sender<R>,
}

enum SequentialReaderInner<R>
where
    R: Read + Send,
{
    MyTurn(R),
    Waiting(Receiver<R>),
    Empty,
}

pub struct SequentialWriterBuilder<W>
where
    W: Write + Send,
{
    writer: Arc<Mutex<W>>,
    next_trigger: Option<Receiver<()>>,
}

pub struct SequentialWriter<W>
where
    W: Write + Send,
{
    trigger: Option<Receiver<()>>,
    writer: Arc<Mutex<W>>,
    on_finish: Sender<()>,
}

impl<R: Read + Send> SequentialReaderBuilder<R> {
    pub fn new(reader: R) -> SequentialReaderBuilder<R> {
        SequentialReaderBuilder {
            inner: SequentialReaderBuilderInner::First(reader),
        }
    }
}

impl<W: Write + Send> SequentialWriterBuilder<W> {
    pub fn new(writer: W) -> SequentialWriterBuilder<W> {
        SequentialWriterBuilder {
            writer: Arc::new(Mutex::new(writer)),
            next_trigger: None,
        }
    }
}

impl<R: Read + Send> Iterator for SequentialReaderBuilder<R> {
    type Item = SequentialReader<R>;

    fn next(&mut self) -> Option<SequentialReader<R>> {
        Some(self.next_reader())
    }
}

impl<R: Read + Send> SequentialReaderBuilder<R> {
    /// The next reader; there always is one (wafer's fix: callers need not unwrap).
    pub fn next_reader(&mut self) -> SequentialReader<R> {
        let (tx, rx) = channel();

        let inner = mem::replace(&mut self.inner, SequentialReaderBuilderInner::NotFirst(rx));

        match inner {
            SequentialReaderBuilderInner::First(reader) => SequentialReader {
                inner: SequentialReaderInner::MyTurn(reader),
                next: tx,
            },

            SequentialReaderBuilderInner::NotFirst(previous) => SequentialReader {
                inner: SequentialReaderInner::Waiting(previous),
                next: tx,
            },
        }
    }
}

impl<W: Write + Send> Iterator for SequentialWriterBuilder<W> {
    type Item = SequentialWriter<W>;
    fn next(&mut self) -> Option<SequentialWriter<W>> {
        let (tx, rx) = channel();
        let mut next_next_trigger = Some(rx);
        ::std::mem::swap(&mut next_next_trigger, &mut self.next_trigger);

        Some(SequentialWriter {
            trigger: next_next_trigger,
            writer: self.writer.clone(),
            on_finish: tx,
        })
    }
}

impl<R: Read + Send> SequentialReader<R> {
    /// The underlying reader, once every reader before this one is done with it (waits for
    /// that); `None` if one of them was lost without passing it on.
    ///
    /// wafer's fix: lets the connection set deadlines on the stream and read a head with
    /// `BufRead` rather than a byte at a time.
    pub fn wait_turn(&mut self) -> Option<&mut R> {
        if let SequentialReaderInner::Waiting(ref recv) = self.inner {
            self.inner = match recv.recv() {
                Ok(reader) => SequentialReaderInner::MyTurn(reader),
                Err(_) => SequentialReaderInner::Empty,
            };
        }
        match self.inner {
            SequentialReaderInner::MyTurn(ref mut reader) => Some(reader),
            _ => None,
        }
    }
}

impl<R: Read + Send> Read for SequentialReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        match self.wait_turn() {
            Some(reader) => reader.read(buf),
            // wafer's fix: upstream unwrapped here, panicking the reading thread.
            None => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the stream was lost by an earlier reader",
            )),
        }
    }
}

impl<W: Write + Send> SequentialWriter<W> {
    /// wafer's fix: `f` on the writer itself, once every writer before this one is done (waits
    /// for that).
    pub fn with_turn<T>(&mut self, f: impl FnOnce(&mut W) -> T) -> T {
        if let Some(previous) = self.trigger.take() {
            // An error: the previous writer is gone, which also ends its turn.
            let _ = previous.recv();
        }
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut writer)
    }
}

impl<W: Write + Send> Write for SequentialWriter<W> {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        if let Some(v) = self.trigger.as_mut() {
            v.recv().unwrap()
        }
        self.trigger = None;

        self.writer.lock().unwrap().write(buf)
    }

    fn flush(&mut self) -> IoResult<()> {
        if let Some(v) = self.trigger.as_mut() {
            v.recv().unwrap()
        }
        self.trigger = None;

        self.writer.lock().unwrap().flush()
    }
}

impl<R> Drop for SequentialReader<R>
where
    R: Read + Send,
{
    fn drop(&mut self) {
        let inner = mem::replace(&mut self.inner, SequentialReaderInner::Empty);

        match inner {
            SequentialReaderInner::MyTurn(reader) => {
                self.next.send(reader).ok();
            }
            SequentialReaderInner::Waiting(recv) => {
                if let Ok(reader) = recv.recv() {
                    self.next.send(reader).ok();
                }
            }
            SequentialReaderInner::Empty => (),
        }
    }
}

impl<W> Drop for SequentialWriter<W>
where
    W: Write + Send,
{
    fn drop(&mut self) {
        self.on_finish.send(()).ok();
    }
}
