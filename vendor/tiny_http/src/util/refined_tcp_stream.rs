use std::io::Result as IoResult;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use crate::connection::Connection;
#[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
use crate::ssl::SslStream;

pub(crate) enum Stream {
    Http(Connection),
    #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
    Https(SslStream),
}

impl Stream {
    /// A second handle on the same stream. Fails when the process is out of file descriptors
    /// (wafer's fix: upstream's `Clone` unwrapped this and killed the accept thread on EMFILE).
    fn try_clone(&self) -> IoResult<Self> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.try_clone().map(Stream::Http),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => Ok(Stream::Https(ssl_stream.clone())),
        }
    }
}

impl From<Connection> for Stream {
    fn from(tcp_stream: Connection) -> Self {
        Stream::Http(tcp_stream)
    }
}

impl Stream {
    fn secure(&self) -> bool {
        match self {
            Stream::Http(_) => false,
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => true,
        }
    }

    fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.peer_addr(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.peer_addr(),
        }
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.set_read_timeout(t),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.set_read_timeout(t),
        }
    }

    fn set_write_timeout(&self, t: Option<Duration>) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.set_write_timeout(t),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.set_write_timeout(t),
        }
    }

    fn shutdown(&mut self, how: Shutdown) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.shutdown(how),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.shutdown(how),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.read(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.write(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.write(buf),
        }
    }

    fn flush(&mut self) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.flush(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.flush(),
        }
    }
}

pub struct RefinedTcpStream {
    stream: Stream,
    close_read: bool,
    close_write: bool,
    /// wafer's fix: the longest wait of one read or write (`Limits::io_timeout`).
    io_timeout: Option<Duration>,
    /// wafer's fix: when set, reads fail once it has passed, and no read waits beyond it.
    deadline: Option<Instant>,
    /// wafer's fix: the read timeout last set on the socket through this half, so that it is
    /// set again only when it changes (one system call fewer per request).
    read_timeout: Option<Duration>,
}

impl RefinedTcpStream {
    /// The read and the write half of one stream; an error when no descriptor is left for the
    /// second handle (the stream is then closed).
    pub(crate) fn new<S>(stream: S) -> IoResult<(RefinedTcpStream, RefinedTcpStream)>
    where
        S: Into<Stream>,
    {
        let stream: Stream = stream.into();

        let (read, write) = (stream.try_clone()?, stream);

        let read = RefinedTcpStream {
            stream: read,
            close_read: true,
            close_write: false,
            io_timeout: None,
            deadline: None,
            read_timeout: None,
        };

        let write = RefinedTcpStream {
            stream: write,
            close_read: false,
            close_write: true,
            io_timeout: None,
            deadline: None,
            read_timeout: None,
        };

        Ok((read, write))
    }

    /// Returns true if this struct wraps around a secure connection.
    #[inline]
    pub(crate) fn secure(&self) -> bool {
        self.stream.secure()
    }

    pub(crate) fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        self.stream.peer_addr()
    }

    /// Bounds every read and write on the socket (both halves: the option is the socket's).
    pub(crate) fn set_io_timeout(&mut self, t: Option<Duration>) -> IoResult<()> {
        self.stream.set_read_timeout(t)?;
        self.stream.set_write_timeout(t)?;
        self.io_timeout = t;
        self.read_timeout = t;
        Ok(())
    }

    /// wafer's fix: sets the socket's write timeout (the option is the socket's: both halves).
    pub(crate) fn set_write_timeout(&mut self, t: Option<Duration>) -> IoResult<()> {
        self.stream.set_write_timeout(t)
    }

    /// Sets the socket's read timeout unless it is set to `t` already.
    fn set_read_timeout(&mut self, t: Option<Duration>) -> IoResult<()> {
        if self.read_timeout != t {
            self.stream.set_read_timeout(t)?;
            self.read_timeout = t;
        }
        Ok(())
    }

    /// Reads on this half fail with `TimedOut` from `deadline` on (`None`: each read is bounded
    /// by the io timeout only).
    pub(crate) fn set_deadline(&mut self, deadline: Option<Instant>) {
        if deadline.is_none() {
            let _ = self.set_read_timeout(self.io_timeout);
        }
        self.deadline = deadline;
    }

    /// wafer's fix: writes as much of `buf` as the socket takes at once, without waiting for
    /// the client to read: `Ok(0)` when its buffer is full (and wherever this is not supported).
    pub(crate) fn send_now(&self, buf: &[u8]) -> IoResult<usize> {
        match &self.stream {
            Stream::Http(connection) => connection.send_now(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => Ok(0),
        }
    }

    /// wafer's fix: ends the connection both ways, so that a thread waiting to read from it
    /// stops waiting.
    pub(crate) fn shutdown_both(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Sends FIN: the client sees the end of the answer while its input is still read.
    pub(crate) fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

impl Drop for RefinedTcpStream {
    fn drop(&mut self) {
        if self.close_read {
            self.stream.shutdown(Shutdown::Read).ok();
        }

        if self.close_write {
            self.stream.shutdown(Shutdown::Write).ok();
        }
    }
}

impl Read for RefinedTcpStream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the deadline passed",
                ));
            }
            // One more system call per read that waits, only while a deadline is set (heads and
            // bodies not yet in the buffer).
            self.set_read_timeout(Some(self.io_timeout.map_or(left, |t| t.min(left))))?;
        }
        self.stream.read(buf)
    }
}

impl Write for RefinedTcpStream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> IoResult<()> {
        self.stream.flush()
    }
}
