//! Reading a server-sent event stream (`text/event-stream`) from the node's API: the OpenAI
//! routes' answers (`suanli chat`) and a job's events (`suanli job submit --wait`).

use anyhow::{Context, bail};
use futures::StreamExt;
use futures::stream::BoxStream;

/// Largest event accepted: a job's view with its attempts, or one answer chunk, is far smaller.
const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// One event: its name (`event:`, none for the default) and its data lines joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub name: Option<String>,
    pub data: String,
}

/// The events of one response, in order.
pub struct SseReader {
    bytes: BoxStream<'static, reqwest::Result<axum::body::Bytes>>,
    buffer: Vec<u8>,
}

impl std::fmt::Debug for SseReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseReader")
            .field("buffered", &self.buffer.len())
            .finish_non_exhaustive()
    }
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> SseReader {
        SseReader {
            bytes: response.bytes_stream().boxed(),
            buffer: Vec::new(),
        }
    }

    /// The next event with data (comments and empty events are skipped); `None` when the stream
    /// ends.
    pub async fn next(&mut self) -> anyhow::Result<Option<SseEvent>> {
        loop {
            if let Some(end) = find_event_end(&self.buffer) {
                let raw: Vec<u8> = self.buffer.drain(..end).collect();
                if let Some(event) = parse_event(&String::from_utf8_lossy(&raw)) {
                    return Ok(Some(event));
                }
                continue;
            }
            if self.buffer.len() > MAX_EVENT_BYTES {
                bail!("an event of more than {} MiB", MAX_EVENT_BYTES >> 20);
            }
            match self.bytes.next().await {
                Some(chunk) => self
                    .buffer
                    .extend_from_slice(&chunk.context("the event stream broke")?),
                None => return Ok(None),
            }
        }
    }
}

/// The end of the first whole event in `buffer` (after its blank line).
fn find_event_end(buffer: &[u8]) -> Option<usize> {
    buffer
        .windows(2)
        .position(|pair| pair == b"\n\n")
        .map(|at| at + 2)
}

/// An event's fields (`event:`, `data:`; `id:`, `retry:` and comments ignored), or `None` when it
/// has no data.
fn parse_event(text: &str) -> Option<SseEvent> {
    let mut name = None;
    let mut data: Option<String> = None;
    for line in text.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => name = Some(value.to_owned()),
            "data" => match &mut data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            _ => {}
        }
    }
    data.map(|data| SseEvent { name, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_with_their_names_and_data_lines() {
        let event = parse_event("event: offer\nid: 3\ndata: {\"a\":1}\n\n");
        assert_eq!(
            event,
            Some(SseEvent {
                name: Some("offer".into()),
                data: "{\"a\":1}".into()
            })
        );
        let joined = parse_event("data: one\ndata:two\n\n").expect("an event");
        assert_eq!((joined.name, joined.data.as_str()), (None, "one\ntwo"));
        assert_eq!(parse_event(": keep-alive\n\n"), None);
        assert_eq!(find_event_end(b"data: x\n\ndata: y"), Some(9));
        assert_eq!(find_event_end(b"data: x\n"), None);
    }
}
