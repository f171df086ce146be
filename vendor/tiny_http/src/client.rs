use std::io::Result as IoResult;
use std::io::{BufRead, BufReader, BufWriter, ErrorKind, Read, Write};

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{HTTPVersion, Header, Method};
use crate::util::RefinedTcpStream;
use crate::util::{AnswerDone, AnswerWriter, AnswersInFlight, Behind, BodyBudget, BodyHold};
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::{Limits, Request};

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<RefinedTcpStream>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<RefinedTcpStream>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    // wafer's fix: the bounds on this client
    limits: Limits,

    // wafer's fix: with `Limits::max_buffered_body`, where this thread learns that the answer
    //  to the request in flight is written (see `util::AnswerWriter`): when, or that it was lost
    in_flight: Option<AnswerDone>,

    // wafer's fix: the server's count of answers not yet written
    answers: AnswersInFlight,

    // wafer's fix: the server's budget of buffered body bytes (`Limits::body_budget`)
    budget: BodyBudget,
}

/// How a request's body is framed, once `check_framing` has found it unambiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    None,
    Length(u64),
    Chunked,
}

/// Why no request was read (wafer's fix: every refusal closes the connection, since what
/// follows a request the server could not frame cannot be trusted to be a request).
#[derive(Debug)]
enum ReadError {
    /// The connection ended, failed, or stayed idle: close without an answer.
    Closed,
    /// Answer with this status, then close.
    Refuse(u16),
}

/// How the answer to the previous request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answered {
    /// Written whole, at that instant (`None`: there was none).
    Whole(Option<Instant>),
    /// Lost with the connection: the client cannot tell where the next answer would begin.
    Lost,
}

/// How much input is read, at most, after a refusal so that the client sees the answer rather
/// than a reset, and for how long.
const LINGER_BYTES: u64 = 1024 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(1);

/// Empty lines accepted before a request line (RFC 9112 §2.2: some clients send a CRLF after a
/// body).
const MAX_LEADING_EMPTY_LINES: usize = 2;

/// What went wrong reading one line of a head.
enum LineError {
    TooLong,
    /// A bare CR or LF, or a byte that is not ASCII.
    Malformed,
    TimedOut,
    Closed,
}

impl LineError {
    fn refusal(self, too_long: u16) -> ReadError {
        match self {
            LineError::TooLong => ReadError::Refuse(too_long),
            LineError::Malformed => ReadError::Refuse(400),
            LineError::TimedOut => ReadError::Refuse(408),
            LineError::Closed => ReadError::Closed,
        }
    }
}

fn timed_out(e: &std::io::Error) -> bool {
    // Linux reports a socket timeout as EAGAIN.
    matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock)
}

/// One CRLF-terminated line of at most `max` bytes (CRLF excluded), as ASCII.
fn read_line<R: BufRead>(reader: &mut R, max: usize) -> Result<Vec<u8>, LineError> {
    let mut line = Vec::new();
    loop {
        let buf = match reader.fill_buf() {
            Ok([]) => return Err(LineError::Closed),
            Ok(buf) => buf,
            Err(ref e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(ref e) if timed_out(e) => return Err(LineError::TimedOut),
            Err(_) => return Err(LineError::Closed),
        };
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                line.extend_from_slice(&buf[..i]);
                reader.consume(i + 1);
                if line.pop() != Some(b'\r') {
                    return Err(LineError::Malformed);
                }
                if line.len() > max {
                    return Err(LineError::TooLong);
                }
                // No CR but the last, nothing but printable ASCII and tabs.
                if line
                    .iter()
                    .any(|&b| !(b == b'\t' || (b' '..=b'~').contains(&b)))
                {
                    return Err(LineError::Malformed);
                }
                return Ok(line);
            }
            None => {
                let n = buf.len();
                line.extend_from_slice(buf);
                reader.consume(n);
                // One more byte may be the line's CR.
                if line.len() > max + 1 {
                    return Err(LineError::TooLong);
                }
            }
        }
    }
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(
        mut write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        limits: Limits,
        answers: AnswersInFlight,
        budget: BodyBudget,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();
        if let Some(t) = limits.io_timeout {
            // The option belongs to the socket, which both halves share.
            if read_socket.set_io_timeout(Some(t)).is_err() {
                log::error!("Could not set the io timeout of a connection");
            }
            write_socket.set_io_timeout(Some(t)).ok();
        }

        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(1024, read_socket));
        let first_header = source.next_reader();

        ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(1024, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            limits,
            in_flight: None,
            answers,
            budget,
        }
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        let limits = self.limits.clone();
        // Waiting for the next request: an idle connection ends without an answer. The answer
        // to the previous one may still be on its way; nothing is written, nor another request
        // handed out, before it is done (one request in flight per connection, answers in order).
        let mut idle_until = None;
        loop {
            // Our turn on the stream comes once the previous request's body has been read.
            let reader = self
                .next_header_source
                .wait_turn()
                .ok_or(ReadError::Closed)?;
            reader.get_mut().set_deadline(idle_until);
            let waited = match reader.fill_buf() {
                Ok([]) => Err(false),
                Ok(_) => Ok(()),
                Err(ref e) => Err(timed_out(e)),
            };
            match (waited, self.finish_in_flight()) {
                (Ok(()), Answered::Whole(_)) => break,
                // Idle while the answer was being made or written: the connection may stay
                // idle until one io timeout after the answer's end, not a second io timeout.
                (Err(true), Answered::Whole(Some(end))) => match limits.io_timeout {
                    Some(t) if end + t > Instant::now() => idle_until = Some(end + t),
                    _ => return Err(ReadError::Closed),
                },
                _ => return Err(ReadError::Closed),
            }
        }
        let reader = self
            .next_header_source
            .wait_turn()
            .ok_or(ReadError::Closed)?;
        // From its first byte, the head must arrive whole within the io timeout.
        if let Some(t) = limits.io_timeout {
            reader.get_mut().set_deadline(Some(Instant::now() + t));
        }

        let mut line = Vec::new();
        for _ in 0..=MAX_LEADING_EMPTY_LINES {
            line = read_line(reader, limits.max_request_line).map_err(|e| e.refusal(414))?;
            if !line.is_empty() {
                break;
            }
        }
        let (method, path, version) = parse_request_line(&line)?;

        let mut headers = Vec::new();
        let mut budget = limits.max_header_bytes;
        loop {
            let line = read_line(reader, budget.saturating_sub(2)).map_err(|e| e.refusal(431))?;
            if line.is_empty() {
                break;
            }
            budget -= line.len() + 2;
            headers.push(parse_header(&line).ok_or(ReadError::Refuse(400))?);
        }
        let body = check_framing(&headers, &version)?;
        let remote_addr = self.remote_addr.as_ref().ok().copied().flatten();
        if let Some(default) = limits.max_buffered_body {
            // wafer's fix: a route may take a body of another size (`Limits::body_limit`).
            let max = match &limits.body_limit {
                Some(decide) if body != Body::None => decide.limit(&method, &path),
                _ => default,
            };
            let hold = self.budget.hold(max > default);
            return self.read_buffered(
                method,
                path,
                version,
                headers,
                remote_addr,
                body,
                (max, hold),
            );
        }
        // The body is read by whoever takes the request, each read bounded by the io timeout.
        reader.get_mut().set_deadline(None);

        // building the writer for the request
        let writer = self.sink.next().ok_or(ReadError::Closed)?;

        // follow-up for next potential request
        let mut data_source = self.source.next_reader();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // building the next reader
        crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            // wafer's fix: upstream unwrapped this; a client gone before `peer_addr` panicked the
            // connection thread.
            remote_addr,
            data_source,
            writer,
        )
        .map_err(|e| {
            use crate::request::RequestCreationError;
            match e {
                RequestCreationError::CreationIoError(ref e) if timed_out(e) => {
                    ReadError::Refuse(408)
                }
                RequestCreationError::CreationIoError(_) => ReadError::Closed,
                RequestCreationError::ExpectationFailed => ReadError::Refuse(417),
            }
        })
    }

    /// The rest of a request with `Limits::max_buffered_body`: its body read whole here, within
    /// the limit `max` (413, unread when `Content-Length` says so), within the server's budget
    /// taken through `hold` (503, likewise) and within the io timeout of the head's end (408),
    /// and a writer that hands the answer back to this thread.
    #[allow(clippy::too_many_arguments)]
    fn read_buffered(
        &mut self,
        method: Method,
        path: String,
        version: HTTPVersion,
        headers: Vec<Header>,
        remote_addr: Option<SocketAddr>,
        body: Body,
        (max, mut hold): (usize, BodyHold),
    ) -> Result<Request, ReadError> {
        let expect = headers
            .iter()
            .find(|h| h.field.equiv("Expect"))
            .map(|h| h.value.as_str());
        let expects_continue = match expect {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("100-continue") => true,
            Some(_) => return Err(ReadError::Refuse(417)),
        };
        if let Body::Length(n) = body {
            if n > max as u64 {
                return Err(ReadError::Refuse(413));
            }
            // Within the limit, so `n` fits a `usize`.
            if !hold.grow(n as usize) {
                return Err(ReadError::Refuse(503));
            }
        }
        if expects_continue && body != Body::None && version == HTTPVersion(1, 1) {
            let mut writer = self.sink.next().ok_or(ReadError::Closed)?;
            writer
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .and_then(|()| writer.flush())
                .map_err(|_| ReadError::Closed)?;
        }
        let reader = self
            .next_header_source
            .wait_turn()
            .ok_or(ReadError::Closed)?;
        if let Some(t) = self.limits.io_timeout {
            reader.get_mut().set_deadline(Some(Instant::now() + t));
        }
        let data = read_body(reader, body, max, self.limits.max_header_bytes, &mut hold)?;
        reader.get_mut().set_deadline(None);

        let sink = self.sink.next().ok_or(ReadError::Closed)?;
        let behind = Behind {
            max: self.limits.max_answers_behind,
            io_timeout: self.limits.io_timeout,
            min_rate: self.limits.min_answer_rate,
        };
        let (writer, done) = AnswerWriter::new(sink, &self.answers, behind);
        self.in_flight = Some(done);
        Ok(crate::request::new_buffered_request(
            self.secure,
            method,
            path,
            version,
            headers,
            remote_addr,
            data,
            hold,
            writer,
        ))
    }

    /// Waits until the answer to the request in flight, if any, is written or lost.
    fn finish_in_flight(&mut self) -> Answered {
        match self.in_flight.take() {
            None => Answered::Whole(None),
            Some(done) => match done.recv() {
                Ok(Some(end)) => Answered::Whole(Some(end)),
                _ => Answered::Lost,
            },
        }
    }

    /// Answers `status` with `Connection: close`, then reads (and drops) what the client still
    /// sends for a moment, so that its kernel does not reset the connection before it has read
    /// the answer.
    fn refuse(&mut self, status: u16) {
        use crate::StatusCode;

        if let Some(mut writer) = self.sink.next() {
            // Written here rather than by `Response`, which leaves `Connection` to the server.
            // A 503 (the body budget is spent) is worth trying again in a moment.
            let retry = if status == 503 {
                "Retry-After: 1\r\n"
            } else {
                ""
            };
            let head = format!(
                "HTTP/1.1 {} {}\r\nContent-Length: 0\r\nConnection: close\r\n{}\r\n",
                status,
                StatusCode(status).default_reason_phrase(),
                retry
            );
            if writer
                .write_all(head.as_bytes())
                .and_then(|()| writer.flush())
                .is_err()
            {
                return;
            }
        }
        if let Some(reader) = self.next_header_source.wait_turn() {
            reader.get_mut().shutdown_write();
            reader
                .get_mut()
                .set_deadline(Some(Instant::now() + LINGER_TIME));
            let _ = std::io::copy(&mut reader.take(LINGER_BYTES), &mut std::io::sink());
        }
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            // wafer's fix: the connection ends once the last answer is written.
            self.finish_in_flight();
            return None;
        }

        let rq = match self.read() {
            Ok(rq) => rq,
            Err(ReadError::Closed) => {
                self.finish_in_flight();
                return None;
            }
            Err(ReadError::Refuse(status)) => {
                // wafer's fix: the application hears of the requests it never sees.
                if let Some(on_refusal) = &self.limits.on_refusal {
                    on_refusal.call(status);
                }
                self.refuse(status);
                return None;
            }
        };

        // updating the status of the connection
        let connection_header = rq
            .headers()
            .iter()
            .find(|h| h.field.equiv("Connection"))
            .map(|h| h.value.as_str());

        let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

        match lowercase {
            Some(ref val) if val.contains("close") => self.no_more_requests = true,
            Some(ref val) if val.contains("upgrade") => self.no_more_requests = true,
            Some(ref val)
                if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
            {
                self.no_more_requests = true
            }
            None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
            _ => (),
        };

        // returning the request
        Some(rq)
    }
}

/// Parses the request line, `METHOD SP TARGET SP HTTP/1.x` (wafer's fix: exactly three parts;
/// a version other than 1.0 or 1.1 is answered 505 and the connection closed).
fn parse_request_line(line: &[u8]) -> Result<(Method, String, HTTPVersion), ReadError> {
    let bad = || ReadError::Refuse(400);
    // `read_line` let only ASCII through.
    let line = std::str::from_utf8(line).map_err(|_| bad())?;
    let mut parts = line.split(' ');
    let (method, path, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(p), Some(v), None) if !m.is_empty() && !p.is_empty() => (m, p, v),
        _ => return Err(bad()),
    };
    let method: Method = method.parse().map_err(|_| bad())?;
    let version = match version {
        "HTTP/1.1" => HTTPVersion(1, 1),
        "HTTP/1.0" => HTTPVersion(1, 0),
        v if v.len() == 8
            && v.starts_with("HTTP/")
            && v.as_bytes()[5].is_ascii_digit()
            && v.as_bytes()[6] == b'.'
            && v.as_bytes()[7].is_ascii_digit() =>
        {
            return Err(ReadError::Refuse(505))
        }
        _ => return Err(bad()),
    };
    Ok((method, path.to_owned(), version))
}

/// One header line; `None` for a folded line (leading whitespace, RFC 9112 §5.2), an empty or
/// spaced name, or no colon.
fn parse_header(line: &[u8]) -> Option<Header> {
    if line.first().map_or(true, |b| *b == b' ' || *b == b'\t') {
        return None;
    }
    let line = std::str::from_utf8(line).ok()?;
    if line.split(':').next().map_or(true, str::is_empty) {
        return None;
    }
    Header::from_str(line).ok()
}

/// Refuses the framings a proxy in front could read differently (request smuggling): a
/// `Content-Length` that is not a plain number, two that differ, `Transfer-Encoding` beside a
/// `Content-Length` or in HTTP/1.0 (400), and any transfer coding but a lone `chunked` (501).
fn check_framing(headers: &[Header], version: &HTTPVersion) -> Result<Body, ReadError> {
    let bad = || ReadError::Refuse(400);
    let mut length: Option<u64> = None;
    for h in headers.iter().filter(|h| h.field.equiv("Content-Length")) {
        let v = h.value.as_str();
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: u64 = v.parse().map_err(|_| bad())?;
        if length.is_some_and(|l| l != n) {
            return Err(bad());
        }
        length = Some(n);
    }
    let codings: Vec<&str> = headers
        .iter()
        .filter(|h| h.field.equiv("Transfer-Encoding"))
        .map(|h| h.value.as_str())
        .collect();
    if codings.is_empty() {
        return Ok(match length {
            None | Some(0) => Body::None,
            Some(n) => Body::Length(n),
        });
    }
    if length.is_some() || *version == HTTPVersion(1, 0) {
        return Err(bad());
    }
    match codings.as_slice() {
        [only] if only.trim().eq_ignore_ascii_case("chunked") => Ok(Body::Chunked),
        _ => Err(ReadError::Refuse(501)),
    }
}

/// The longest chunk-size line read (size and extensions).
const MAX_CHUNK_LINE: usize = 1024;

/// A whole body, as framed, of at most `max` bytes (413 past it); trailers of a chunked body,
/// within `max_trailer_bytes` (431), are read and dropped. A chunked body takes each chunk's
/// bytes from the server's budget through `hold` before reading it (503 past it); a body of a
/// known length has taken them already.
fn read_body<R: BufRead>(
    reader: &mut R,
    body: Body,
    max: usize,
    max_trailer_bytes: usize,
    hold: &mut BodyHold,
) -> Result<Vec<u8>, ReadError> {
    match body {
        Body::None => Ok(Vec::new()),
        Body::Length(n) => {
            let n: usize =
                std::convert::TryFrom::try_from(n).map_err(|_| ReadError::Refuse(413))?;
            if n > max {
                return Err(ReadError::Refuse(413));
            }
            let mut data = vec![0; n];
            fill(reader, &mut data)?;
            Ok(data)
        }
        Body::Chunked => {
            let mut data = Vec::new();
            loop {
                let line = read_line(reader, MAX_CHUNK_LINE).map_err(|e| e.refusal(400))?;
                let size = line.split(|&b| b == b';').next().unwrap_or_default();
                let size = parse_chunk_size(size).ok_or(ReadError::Refuse(400))?;
                if size == 0 {
                    break;
                }
                if size > max - data.len() {
                    return Err(ReadError::Refuse(413));
                }
                if !hold.grow(size) {
                    return Err(ReadError::Refuse(503));
                }
                let start = data.len();
                data.resize(start + size, 0);
                fill(reader, &mut data[start..])?;
                // The chunk's own CRLF: an empty line.
                read_line(reader, 0).map_err(|e| e.refusal(400))?;
            }
            let mut budget = max_trailer_bytes;
            loop {
                let line =
                    read_line(reader, budget.saturating_sub(2)).map_err(|e| e.refusal(431))?;
                if line.is_empty() {
                    return Ok(data);
                }
                budget -= line.len() + 2;
            }
        }
    }
}

/// A chunk size: hex digits only (no sign, no spaces, no `0x`), small enough for `usize`.
fn parse_chunk_size(hex: &[u8]) -> Option<usize> {
    if hex.is_empty() || hex.len() > 15 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    usize::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// Fills `buf` from `reader`: a timeout is 408, an early end closes without an answer.
fn fill<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<(), ReadError> {
    let mut done = 0;
    while done < buf.len() {
        match reader.read(&mut buf[done..]) {
            Ok(0) => return Err(ReadError::Closed),
            Ok(n) => done += n,
            Err(ref e) if e.kind() == ErrorKind::Interrupted => {}
            Err(ref e) if timed_out(e) => return Err(ReadError::Refuse(408)),
            Err(_) => return Err(ReadError::Closed),
        }
    }
    Ok(())
}

#[cfg(test)]
mod test {
    use super::ReadError;
    use crate::common::HTTPVersion;

    fn status(line: &str) -> Option<u16> {
        match super::parse_request_line(line.as_bytes()) {
            Ok(_) => None,
            Err(ReadError::Refuse(s)) => Some(s),
            Err(ReadError::Closed) => Some(0),
        }
    }

    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line(b"GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == HTTPVersion(1, 1));

        assert!(super::parse_request_line(b"GET /hello").is_err());
        assert!(super::parse_request_line(b"qsd qsd qsd").is_err());
    }

    #[test]
    fn request_lines_are_strict() {
        for (line, want) in [
            ("GET / HTTP/1.0", None),
            ("GET /hello HTTP/1.1 extra", Some(400)),
            ("GET  /hello HTTP/1.1", Some(400)),
            (" GET /hello HTTP/1.1", Some(400)),
            ("GET /hello HTTP/2.0", Some(505)),
            ("GET /hello HTTP/0.9", Some(505)),
            ("GET /hello http/1.1", Some(400)),
            ("GET /hello HTTP/1.1\t", Some(400)),
        ] {
            assert_eq!(status(line), want, "{line:?}");
        }
    }

    #[test]
    fn header_lines_are_strict() {
        for (line, ok) in [
            ("Host: a", true),
            ("Host:a", true),
            (" Host: a", false),
            ("\tHost: a", false),
            ("Host : a", false),
            (": a", false),
            ("Host a", false),
        ] {
            assert_eq!(
                super::parse_header(line.as_bytes()).is_some(),
                ok,
                "{line:?}"
            );
        }
    }

    #[test]
    fn lines_end_in_crlf_and_are_bounded() {
        use super::{read_line, LineError};
        let read = |input: &[u8], max| {
            let mut r = std::io::BufReader::with_capacity(4, input);
            match read_line(&mut r, max) {
                Ok(l) => Ok(String::from_utf8(l).unwrap()),
                Err(LineError::TooLong) => Err("too long"),
                Err(LineError::Malformed) => Err("malformed"),
                Err(LineError::TimedOut) => Err("timed out"),
                Err(LineError::Closed) => Err("closed"),
            }
        };
        assert_eq!(
            read(b"GET / HTTP/1.1\r\nHost", 100),
            Ok("GET / HTTP/1.1".into())
        );
        assert_eq!(read(b"abcdefgh\r\n", 8), Ok("abcdefgh".into()));
        assert_eq!(read(b"abcdefghi\r\n", 8), Err("too long"));
        assert_eq!(read(b"abcdefghijklmnop", 8), Err("too long"));
        assert_eq!(read(b"abc\ndef\r\n", 100), Err("malformed"));
        assert_eq!(read(b"abc\rdef\r\n", 100), Err("malformed"));
        assert_eq!(read("ab\u{e9}\r\n".as_bytes(), 100), Err("malformed"));
        assert_eq!(read(b"abc", 100), Err("closed"));
    }
}
