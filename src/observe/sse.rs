//! The one Server-Sent Events reader: a bounded, incremental wrapper around [`sse_parse`] that
//! also tells how the stream ended (closed cleanly or cut inside an event) and whether an event
//! was dropped for being too large.
//!
//! The parser copies every event into owned strings, line by line. The reader spares it the
//! events LLM APIs send by the thousand: in a stream with only LF line ends, a whole block of
//! one `data:` line, optionally after one `event:` line, that begins where the parser is between
//! events, is read in place (its UTF-8 checked) and handed over as borrowed strings. Every other
//! block (comments, `id`, several `data` lines, a byte-order mark, an oversized event, invalid
//! UTF-8) and every part of an event cut by a chunk boundary goes through the parser, and a stream
//! that shows a CR goes through it whole from there; the two read every stream the same (tested
//! against the parser alone on arbitrary input and splits).

use std::collections::VecDeque;

use memchr::memchr;
use sse_parse::SseParser;

/// Where the first blank line (`\n\n`, the end of an event in a stream with LF line ends) starts
/// in `bytes`. One line feed search per line: an LLM API's event is one `data` line, maybe after
/// one `event` line, so its end is the first or second line feed found (cheaper than a search
/// for the two-byte pattern, measured in benches/README.md).
fn event_end(bytes: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr(b'\n', &bytes[from..]) {
        let at = from + i;
        if bytes.get(at + 1) == Some(&b'\n') {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// How an event stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// Every event was closed by a blank line.
    Clean,
    /// The stream stopped inside an event that was never closed by a blank
    /// line; that event is lost.
    Partial,
}

/// One event: its type (`"message"` when the stream did not name it) and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

/// Incremental SSE reader holding at most `max_event_bytes` of the event
/// being assembled, plus the chunk being fed.
///
/// Feed chunks as they arrive ([`feed_with`](Self::feed_with), or
/// [`feed`](Self::feed) and drain [`next_event`](Self::next_event)), and call
/// [`finish`](Self::finish) at the end of the body. Chunk boundaries never
/// change the events read.
#[derive(Debug)]
pub struct SseReader {
    parser: SseParser,
    max_event_bytes: usize,
    /// Events read by `feed` and not taken yet.
    queue: VecDeque<SseEvent>,
    end: Option<StreamEnd>,
    /// Whole events may be read in place: no CR (and no byte-order mark) seen so far.
    in_place: bool,
    /// The parser holds no part of an event: the bytes it was fed end where an event ends.
    between: bool,
    /// The last byte of the stream so far (what the parser was last fed when not `between`).
    last: Option<u8>,
}

impl SseReader {
    /// A reader that drops (and resynchronises past) any event larger than
    /// `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        SseReader {
            parser: SseParser::new().max_buffer(max_event_bytes),
            max_event_bytes,
            queue: VecDeque::new(),
            end: None,
            in_place: true,
            between: true,
            last: None,
        }
    }

    /// Feeds the next chunk of the body and hands each event it completes to `on_event`
    /// (type, data), in stream order. Chunks fed after [`finish`](Self::finish) are ignored.
    pub fn feed_with(&mut self, chunk: &[u8], on_event: &mut impl FnMut(&str, &str)) {
        if self.end.is_some() || chunk.is_empty() {
            return;
        }
        if self.in_place {
            let starts = self.last.is_none() && chunk[0] == 0xEF;
            if starts || memchr(b'\r', chunk).is_some() {
                self.in_place = false;
            } else if self.last.is_none() {
                // The parser strips a byte-order mark only at the start of the stream: the
                // blocks read in place would leave it believing it is still there.
                self.parser.feed(b"\n");
            }
        }
        let mut rest = chunk;
        if !self.in_place {
            self.parse(rest, on_event);
            self.last = chunk.last().copied();
            return;
        }
        if !self.between {
            // The parser holds the start of an event: it gets everything up to its end.
            let end = if self.last == Some(b'\n') && rest[0] == b'\n' {
                Some(1)
            } else {
                event_end(rest).map(|i| i + 2)
            };
            let Some(end) = end else {
                self.parse(rest, on_event);
                self.last = chunk.last().copied();
                return;
            };
            self.parse(&rest[..end], on_event);
            rest = &rest[end..];
            self.between = true;
        }
        while let Some(i) = event_end(rest) {
            if !self.in_place_event(&rest[..i], on_event) {
                self.parse(&rest[..i + 2], on_event);
            }
            rest = &rest[i + 2..];
        }
        if !rest.is_empty() {
            self.parse(rest, on_event);
            self.between = false;
        }
        self.last = chunk.last().copied();
    }

    /// Feeds the next chunk of the body; its events wait for
    /// [`next_event`](Self::next_event).
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut queue = std::mem::take(&mut self.queue);
        self.feed_with(chunk, &mut |event, data| {
            queue.push_back(SseEvent {
                event: event.to_owned(),
                data: data.to_owned(),
            })
        });
        self.queue = queue;
    }

    /// The next event [`feed`](Self::feed) read, in stream order.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        self.queue.pop_front()
    }

    /// Whether an event larger than the bound has been dropped so far.
    pub fn dropped_oversized(&self) -> bool {
        self.parser.overflows() > 0
    }

    /// Ends the stream and tells whether it was cut inside an event. Events
    /// completed before the end stay available from
    /// [`next_event`](Self::next_event). Calling it again returns the same
    /// answer.
    pub fn finish(&mut self) -> StreamEnd {
        if let Some(end) = self.end {
            return end;
        }
        // Every event the parser completed was handed over when it was fed. Probe with two line
        // breaks: the first ends an unterminated line (or is swallowed as the LF of a CRLF, or is
        // itself the blank line), so the second at the latest closes an open event, dispatching
        // it if it holds data. An event that only overflows the bound once its last line is
        // decoded was open too.
        let overflows = self.parser.overflows();
        self.parser.feed(b"\n\n");
        let cut = self.parser.next_event().is_some() || self.parser.overflows() > overflows;
        self.parser.finish();
        let end = if cut {
            StreamEnd::Partial
        } else {
            StreamEnd::Clean
        };
        self.end = Some(end);
        end
    }

    /// Feeds `bytes` to the parser and hands over the events it completes.
    fn parse(&mut self, bytes: &[u8], on_event: &mut impl FnMut(&str, &str)) {
        self.parser.feed(bytes);
        while let Some(event) = self.parser.next_event() {
            on_event(&event.event, &event.data);
        }
    }

    /// Reads `block` (an event's lines, LF-separated, without the blank line that ends it) in
    /// place when it is one `data` line, optionally after one `event` line, within the bound and
    /// valid UTF-8; false (nothing read) otherwise.
    fn in_place_event(&mut self, block: &[u8], on_event: &mut impl FnMut(&str, &str)) -> bool {
        if block.len() > self.max_event_bytes {
            return false;
        }
        let (name, data) = match memchr(b'\n', block) {
            None => (None, block),
            Some(j) => match field(&block[..j], b"event") {
                Some(name) => (Some(name), &block[j + 1..]),
                None => return false,
            },
        };
        if memchr(b'\n', data).is_some() {
            return false;
        }
        let Some(data) = field(data, b"data") else {
            return false;
        };
        let name = match name {
            None | Some(b"") => "message",
            Some(name) => match std::str::from_utf8(name) {
                Ok(name) => name,
                Err(_) => return false,
            },
        };
        match std::str::from_utf8(data) {
            Ok(data) => {
                on_event(name, data);
                true
            }
            Err(_) => false,
        }
    }
}

/// The value of `line` when it is the field `name` (`name`, or `name:` and the value, one
/// leading space dropped).
fn field<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(name)?;
    if rest.is_empty() {
        return Some(rest);
    }
    let value = rest.strip_prefix(b":")?;
    Some(value.strip_prefix(b" ").unwrap_or(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(event name, data)` pairs.
    type Events = Vec<(String, String)>;

    /// Reads `input` fed in pieces of `piece` bytes: the `(event, data)`
    /// pairs, how the stream ended and whether an event was dropped.
    fn read(input: &[u8], piece: usize, max: usize) -> (Events, StreamEnd, bool) {
        let mut reader = SseReader::new(max);
        let mut events = Vec::new();
        for chunk in input.chunks(piece.max(1)) {
            reader.feed(chunk);
            while let Some(event) = reader.next_event() {
                events.push((event.event, event.data));
            }
        }
        let end = reader.finish();
        while let Some(event) = reader.next_event() {
            events.push((event.event, event.data));
        }
        (events, end, reader.dropped_oversized())
    }

    fn ev(event: &str, data: &str) -> (String, String) {
        (event.to_owned(), data.to_owned())
    }

    /// Every split of `input` into two and three pieces, and every piece
    /// size, reads the same as the whole input, which must match `expected`.
    fn check(input: &str, expected: &[(String, String)], end: StreamEnd) {
        let bytes = input.as_bytes();
        let whole = read(bytes, bytes.len(), 1 << 20);
        assert_eq!(whole, (expected.to_vec(), end, false), "{input:?}");
        for piece in 1..=bytes.len() {
            assert_eq!(
                read(bytes, piece, 1 << 20),
                whole,
                "{input:?} in pieces of {piece}"
            );
        }
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let mut reader = SseReader::new(1 << 20);
                let mut events = Vec::new();
                for part in [&bytes[..i], &bytes[i..j], &bytes[j..]] {
                    reader.feed(part);
                    while let Some(event) = reader.next_event() {
                        events.push((event.event, event.data));
                    }
                }
                let got = (events, reader.finish(), reader.dropped_oversized());
                assert_eq!(got, whole, "{input:?} split at {i} and {j}");
            }
        }
    }

    /// The end of an event is the first `\n\n`, wherever the line feeds fall.
    #[test]
    fn event_end_finds_the_first_blank_line() {
        let cases: &[(&[u8], Option<usize>)] = &[
            (b"", None),
            (b"\n", None),
            (b"\n\n", Some(0)),
            (b"data: x\n\n", Some(7)),
            (b"event: a\ndata: x\n\ndata: y\n\n", Some(16)),
            (b"data: a\ndata: b\ndata: c\n", None),
            (b"data: x\r\n\r\n", None),
            (b"data: x\n\n\n", Some(7)),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                event_end(bytes),
                *want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
            let naive = bytes.windows(2).position(|w| w == b"\n\n");
            assert_eq!(event_end(bytes), naive);
        }
    }

    #[test]
    fn reads_events_whatever_the_splits() {
        use StreamEnd::{Clean, Partial};
        let cases: &[(&str, Events, StreamEnd)] = &[
            ("data: a\n\n", vec![ev("message", "a")], Clean),
            ("data: a\r\n\r\n", vec![ev("message", "a")], Clean),
            (
                "data: a\r\rdata: b\r\r",
                vec![ev("message", "a"), ev("message", "b")],
                Clean,
            ),
            (
                "data: a\r\n\ndata: b\n\r\n",
                vec![ev("message", "a"), ev("message", "b")],
                Clean,
            ),
            (
                "event: message_start\ndata: {\"type\":\"message_start\"}\n\n",
                vec![ev("message_start", "{\"type\":\"message_start\"}")],
                Clean,
            ),
            (
                ": ping\n\ndata: x\n\n: ping\n\n",
                vec![ev("message", "x")],
                Clean,
            ),
            (
                "data: one\ndata: two\ndata:three\n\n",
                vec![ev("message", "one\ntwo\nthree")],
                Clean,
            ),
            (
                "data: {\"a\":1}\n\ndata: [DONE]\n\n",
                vec![ev("message", "{\"a\":1}"), ev("message", "[DONE]")],
                Clean,
            ),
            ("id: 7\nretry: 10\nevent: x\n\n", vec![], Clean),
            ("\u{feff}data: bom\n\n", vec![ev("message", "bom")], Clean),
            ("data: é ü 漢\n\n", vec![ev("message", "é ü 漢")], Clean),
            ("data: a\n\ndata: cut", vec![ev("message", "a")], Partial),
            ("data: a\n\ndata: cut\n", vec![ev("message", "a")], Partial),
            ("data: a\n\ndata: cut\r", vec![ev("message", "a")], Partial),
            (
                "data: a\n\ndata: cut\r\n",
                vec![ev("message", "a")],
                Partial,
            ),
            ("data", vec![], Partial),
            ("data: a\n\n: ping", vec![ev("message", "a")], Clean),
            ("data: a\n\nevent: only\n", vec![ev("message", "a")], Clean),
            ("data: a\n\r", vec![ev("message", "a")], Clean),
            ("", vec![], Clean),
        ];
        for (input, expected, end) in cases {
            check(input, expected, *end);
        }
    }

    #[test]
    fn drops_oversized_events_and_recovers() {
        let big = format!("data: {}\n\n", "x".repeat(5000));
        let input = format!("data: small\n\n{big}data: after\n\n");
        for piece in [1, 3, 100, input.len()] {
            let (events, end, dropped) = read(input.as_bytes(), piece, 1000);
            assert_eq!(events, vec![ev("message", "small"), ev("message", "after")]);
            assert_eq!(end, StreamEnd::Clean);
            assert!(dropped);
        }
        let (events, _, dropped) = read(b"data: small\n\n", 1, 1000);
        assert_eq!(events, vec![ev("message", "small")]);
        assert!(!dropped);
    }

    #[test]
    fn oversized_event_does_not_grow_memory() {
        let mut reader = SseReader::new(1024);
        reader.feed(b"data: ");
        let chunk = [b'x'; 4096];
        for _ in 0..256 {
            reader.feed(&chunk);
            assert!(reader.next_event().is_none());
        }
        reader.feed(b"\n\ndata: ok\n\n");
        assert_eq!(reader.next_event().map(|e| e.data), Some("ok".to_owned()));
        assert!(reader.dropped_oversized());
    }

    #[test]
    fn finish_keeps_undrained_events_and_is_idempotent() {
        let mut reader = SseReader::new(1024);
        reader.feed(b"data: a\n\ndata: b\n\ndata: c");
        assert_eq!(reader.finish(), StreamEnd::Partial);
        assert_eq!(reader.finish(), StreamEnd::Partial);
        reader.feed(b"\n\n");
        let rest: Vec<String> = std::iter::from_fn(|| reader.next_event())
            .map(|e| e.data)
            .collect();
        assert_eq!(rest, ["a", "b"]);
    }

    /// What the parser alone reads from `input` (the reader before it read events in place):
    /// the events, how the stream ended and whether an event was dropped.
    fn parser_alone(input: &[u8], max: usize) -> (Events, StreamEnd, bool) {
        let mut parser = SseParser::new().max_buffer(max);
        parser.feed(input);
        let mut events = Vec::new();
        while let Some(e) = parser.next_event() {
            events.push((e.event, e.data));
        }
        let overflows = parser.overflows();
        parser.feed(b"\n\n");
        let cut = parser.next_event().is_some() || parser.overflows() > overflows;
        let end = if cut {
            StreamEnd::Partial
        } else {
            StreamEnd::Clean
        };
        (events, end, parser.overflows() > 0)
    }

    /// Reads `input` cut at the given offsets.
    fn read_split(input: &[u8], cuts: &[usize], max: usize) -> (Events, StreamEnd, bool) {
        let mut reader = SseReader::new(max);
        let mut events = Vec::new();
        let mut from = 0;
        for &to in cuts.iter().chain(std::iter::once(&input.len())) {
            let to = to.clamp(from, input.len());
            reader.feed_with(&input[from..to], &mut |e, d| {
                events.push((e.to_owned(), d.to_owned()))
            });
            from = to;
        }
        let end = reader.finish();
        (events, end, reader.dropped_oversized())
    }

    #[test]
    fn reads_as_the_parser_alone_whatever_the_input_and_splits() {
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // Pieces LLM streams and broken ones are made of, most of them whole events.
        const PIECES: &[&[u8]] = &[
            b"data: {\"a\":1}\n\n",
            b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
            b"event: message_delta\ndata: {\"type\":\"x\"}\n\n",
            b"event:\ndata:x\n\n",
            b"data: [DONE]\n\n",
            b"data:\n\n",
            b"data\n\n",
            b"data: one\ndata: two\n\n",
            b": keep-alive\n\n",
            b"id: 7\ndata: x\n\n",
            b"retry: 10\n\n",
            b"event: only\n\n",
            b"data: \xff\xfe bad utf8\n\n",
            b"data: \xc3\xa9 \xe6\xbc\xa2\n\n",
            b"data: a\r\n\r\n",
            b"\xef\xbb\xbfdata: bom\n\n",
            b"\n",
            b"data: cut",
            b"event: x\n",
            b"data: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n\n",
        ];
        for round in 0..3000 {
            let n = (next() % 8) as usize;
            let mut input = Vec::new();
            for _ in 0..n {
                let piece = PIECES[(next() % PIECES.len() as u64) as usize];
                // Now and then a piece is cut short, or a raw byte slips in.
                match next() % 10 {
                    0 => input.extend_from_slice(&piece[..(next() as usize) % piece.len()]),
                    1 => input.push(b"\n\r:d \xef"[(next() % 6) as usize]),
                    _ => input.extend_from_slice(piece),
                }
            }
            let max = if round % 3 == 0 { 40 } else { 1 << 16 };
            let expected = parser_alone(&input, max);
            let mut cuts: Vec<usize> = (0..(next() % 5))
                .map(|_| (next() as usize) % (input.len() + 1))
                .collect();
            cuts.sort_unstable();
            assert_eq!(
                read_split(&input, &cuts, max),
                expected,
                "{:?} cut at {cuts:?}, bound {max}",
                String::from_utf8_lossy(&input)
            );
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        const ALPHABET: &[u8] = b"data:event \r\n:\xEF\xBB\xBF\xFF{}[DONE]";
        for _ in 0..200 {
            let len = (next() % 400) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| match next() % 4 {
                    0 => next() as u8,
                    _ => ALPHABET[(next() % ALPHABET.len() as u64) as usize],
                })
                .collect();
            let piece = (next() % 17) as usize + 1;
            let (events, _, _) = read(&bytes, piece, 64);
            assert_eq!(read(&bytes, bytes.len(), 64).0, events);
            assert!(events.iter().all(|(_, data)| data.len() <= 64));
        }
    }
}
