//! The stamp the tool embeds in everything it sends — message bodies, `clientMessageId`s,
//! custom event data, baseline frames — so a receiver can tell, without any shared state,
//! which run and sender a delivery belongs to, its per-sender sequence number and when it
//! was sent. Server-assigned ids and offsets stay opaque: loss and order are judged on
//! these sequence numbers only.
//!
//! Format: `lt:RRRRRRRR:SENDER:SEQ:MICROS` — run id in 8 hex digits, sender and sequence
//! in decimal, send time in Unix microseconds. At most 62 characters, so it also fits a
//! `clientMessageId` (≤ 64). Only `[0-9a-f:lt]` characters, so JSON never escapes it and a
//! plain substring search finds it in a raw frame.

use std::time::{SystemTime, UNIX_EPOCH};

/// One decoded stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Random per run, so leftovers from earlier runs on the same server are ignored.
    pub run: u32,
    /// Which visitor / publisher sent it (an index within the run).
    pub sender: u32,
    /// Per-sender sequence number, starting at 1.
    pub seq: u64,
    /// Send time, Unix microseconds (wall clock, so child processes agree).
    pub sent_us: u64,
}

impl Stamp {
    /// `lt:RRRRRRRR:SENDER:SEQ:MICROS`.
    pub fn encode(&self) -> String {
        format!(
            "lt:{:08x}:{}:{}:{}",
            self.run, self.sender, self.seq, self.sent_us
        )
    }

    /// The stamp followed by filler up to `size` bytes, for realistic message sizes.
    pub fn body(&self, size: usize) -> String {
        let mut s = self.encode();
        if s.len() < size {
            s.push(' ');
            while s.len() < size {
                s.push('x');
            }
        }
        s
    }

    /// Parses a stamp at the start of `s` (trailing text is ignored).
    pub fn parse(s: &str) -> Option<Stamp> {
        let rest = s.strip_prefix("lt:")?;
        let end = rest
            .find(|c: char| !(c.is_ascii_hexdigit() || c == ':'))
            .unwrap_or(rest.len());
        let mut parts = rest[..end].split(':');
        let run = u32::from_str_radix(parts.next()?, 16).ok()?;
        let sender = parts.next()?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        let sent_us = parts.next()?.parse().ok()?;
        Some(Stamp {
            run,
            sender,
            seq,
            sent_us,
        })
    }

    /// Finds this run's stamp anywhere in `text` (e.g. a raw JSON frame).
    pub fn find(text: &str, run: u32) -> Option<Stamp> {
        Stamp::find_needle(text, &Stamp::needle(run))
    }

    /// What every stamp of `run` starts with, for [`find_needle`](Self::find_needle): made
    /// once per receiver, not once per frame.
    pub fn needle(run: u32) -> String {
        format!("lt:{run:08x}:")
    }

    /// [`find`](Self::find) with the run's [`needle`](Self::needle).
    pub fn find_needle(text: &str, needle: &str) -> Option<Stamp> {
        let at = text.find(needle)?;
        Stamp::parse(&text[at..])
    }

    /// Microseconds from send until now (0 if the clock went backwards).
    pub fn age_us(&self) -> u64 {
        now_us().saturating_sub(self.sent_us)
    }
}

/// Wall-clock now in Unix microseconds.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A fresh random run id.
pub fn new_run_id() -> u32 {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_fits_a_client_message_id() {
        let s = Stamp {
            run: u32::MAX,
            sender: u32::MAX,
            seq: u64::MAX,
            sent_us: u64::MAX,
        };
        assert!(s.encode().len() <= 64, "{}", s.encode().len());
        assert_eq!(Stamp::parse(&s.encode()), Some(s));
        let b = s.body(200);
        assert_eq!(b.len(), 200);
        assert_eq!(Stamp::parse(&b), Some(s));
    }

    #[test]
    fn finds_a_stamp_inside_a_json_frame() {
        let s = Stamp {
            run: 0xabc,
            sender: 3,
            seq: 7,
            sent_us: 1_700_000_000_000_000,
        };
        let frame = format!(
            r#"{{"type":"message:new","data":{{"id":"1","body":"{}","clientMessageId":"x"}}}}"#,
            s.body(80)
        );
        assert_eq!(Stamp::find(&frame, 0xabc), Some(s));
        assert_eq!(Stamp::find(&frame, 0xabd), None);
        assert_eq!(Stamp::parse("lt:zz:1:2:3"), None);
    }
}
