//! The one Server-Sent Events parser: a bounded, incremental wrapper around
//! [`sse_parse`] that also tells how the stream ended (closed cleanly or cut
//! inside an event) and whether an event was dropped for being too large.

use std::collections::VecDeque;

use sse_parse::{Event, SseParser};

/// How an event stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// Every event was closed by a blank line.
    Clean,
    /// The stream stopped inside an event that was never closed by a blank
    /// line; that event is lost.
    Partial,
}

/// Incremental SSE reader holding at most `max_event_bytes` of the event
/// being assembled, plus the chunk being fed.
///
/// Feed chunks as they arrive, drain [`next_event`](Self::next_event) after
/// each one, and call [`finish`](Self::finish) at the end of the body. Chunk
/// boundaries never change the events read.
#[derive(Debug)]
pub struct SseReader {
    parser: SseParser,
    /// Events set aside by `finish` so that its end-of-stream probe cannot be
    /// mistaken for them.
    set_aside: VecDeque<Event>,
    end: Option<StreamEnd>,
}

impl SseReader {
    /// A reader that drops (and resynchronises past) any event larger than
    /// `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        SseReader {
            parser: SseParser::new().max_buffer(max_event_bytes),
            set_aside: VecDeque::new(),
            end: None,
        }
    }

    /// Feeds the next chunk of the body. Chunks fed after
    /// [`finish`](Self::finish) are ignored.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.end.is_none() {
            self.parser.feed(chunk);
        }
    }

    /// The next complete event, in stream order. Its `event` field is
    /// `"message"` when the stream did not name it.
    pub fn next_event(&mut self) -> Option<Event> {
        self.set_aside
            .pop_front()
            .or_else(|| self.parser.next_event())
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
        self.set_aside
            .extend(std::iter::from_fn(|| self.parser.next_event()));
        // Probe with two line breaks: the first ends an unterminated line
        // (or is swallowed as the LF of a CRLF, or is itself the blank line),
        // so the second at the latest closes an open event, dispatching it
        // if it holds data. An event that only overflows the bound once its
        // last line is decoded was open too.
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
