//! Server-Sent Events, as agentboxd's streaming routes write them: `event:` and `data:` lines, events
//! separated by a blank line, `:` comments as keep-alives.

use crate::ClientError;

/// The longest event accepted: the server sends output in pieces far below this.
const MAX_EVENT: usize = 16 << 20;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its `event:` name (`message` when none).
    pub name: String,
    /// Its `data:` lines, joined by newlines.
    pub data: String,
}

/// An incremental parser: feed it chunks as they arrive.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    name: Option<String>,
    data: Vec<String>,
}

impl Parser {
    /// Adds a chunk; answers the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Event>, ClientError> {
        self.buf.extend_from_slice(chunk);
        if self.buf.len() > MAX_EVENT {
            return Err(ClientError::Protocol(format!("an event stream line is longer than {MAX_EVENT} bytes")));
        }
        let mut events = Vec::new();
        while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() || self.name.is_some() {
                    events.push(Event {
                        name: self.name.take().unwrap_or_else(|| "message".into()),
                        data: std::mem::take(&mut self.data).join("\n"),
                    });
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.name = Some(value.to_owned()),
                "data" => self.data.push(value.to_owned()),
                _ => {}
            }
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_are_put_back_together() {
        let stream =
            b": keep-alive\n\nevent: stdout\ndata: {\"data\":\"a\\n\"}\n\nevent: exit\r\ndata: {\"exit_code\":3}\n\n";
        for cut in 0..stream.len() {
            let mut p = Parser::default();
            let mut got = p.push(&stream[..cut]).unwrap();
            got.extend(p.push(&stream[cut..]).unwrap());
            assert_eq!(
                got,
                [
                    Event { name: "stdout".into(), data: "{\"data\":\"a\\n\"}".into() },
                    Event { name: "exit".into(), data: "{\"exit_code\":3}".into() },
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut p = Parser::default();
        let chunk = vec![b'x'; 1 << 20];
        let mut result = Ok(Vec::new());
        for _ in 0..20 {
            result = p.push(&chunk);
            if result.is_err() {
                break;
            }
        }
        assert!(result.is_err());
    }
}
