//! Availability: `always`, `offline`, or `business_hours` — a weekly schedule in the
//! tenant's IANA time zone. Local wall-clock time is computed per instant with the time
//! zone database, so DST changes move the opening hours with the clocks.
//!
//! Ranges are `"HH:MM-HH:MM"`; `24:00` may end a range; a range whose end is not after its
//! start runs past midnight into the next day (`"22:00-02:00"`).

use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `[tenants.availability]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvailabilityConfig {
    #[serde(default)]
    pub mode: AvailabilityMode,
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Weekday (`mon` … `sun`) → `"HH:MM-HH:MM"` ranges in local time. A missing day is closed.
    #[serde(default)]
    pub hours: BTreeMap<String, Vec<String>>,
    /// Available only while an agent is online (and, with `business_hours`, within hours).
    #[serde(default)]
    pub require_agent: bool,
}

impl Default for AvailabilityConfig {
    fn default() -> Self {
        AvailabilityConfig {
            mode: AvailabilityMode::Always,
            timezone: default_timezone(),
            hours: BTreeMap::new(),
            require_agent: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AvailabilityMode {
    #[default]
    Always,
    BusinessHours,
    Offline,
}

impl AvailabilityMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AvailabilityMode::Always => "always",
            AvailabilityMode::BusinessHours => "business_hours",
            AvailabilityMode::Offline => "offline",
        }
    }
}

fn default_timezone() -> String {
    "UTC".into()
}

const DAYS: [(&str, Weekday); 7] = [
    ("mon", Weekday::Monday),
    ("tue", Weekday::Tuesday),
    ("wed", Weekday::Wednesday),
    ("thu", Weekday::Thursday),
    ("fri", Weekday::Friday),
    ("sat", Weekday::Saturday),
    ("sun", Weekday::Sunday),
];

/// A checked availability setting.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub mode: AvailabilityMode,
    /// `require_agent`: the schedule alone is not enough, an agent must be online.
    pub require_agent: bool,
    tz: TimeZone,
    /// Per weekday (Monday = 0), ranges in minutes since local midnight; `end` may exceed
    /// 1440 for ranges that run into the next day.
    days: [Vec<(u32, u32)>; 7],
}

fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    if m >= 60 || h > 24 || (h == 24 && m != 0) || h * 60 + m > 1440 {
        return None;
    }
    Some(h * 60 + m)
}

impl Schedule {
    /// Checks and compiles the configuration.
    pub fn parse(cfg: &AvailabilityConfig) -> Result<Schedule, String> {
        let tz = TimeZone::get(&cfg.timezone)
            .map_err(|_| format!("unknown time zone {:?}", cfg.timezone))?;
        let mut days: [Vec<(u32, u32)>; 7] = Default::default();
        for (name, ranges) in &cfg.hours {
            let idx = DAYS.iter().position(|(d, _)| d == name).ok_or_else(|| {
                format!("unknown day {name:?} (use mon, tue, wed, thu, fri, sat, sun)")
            })?;
            for r in ranges {
                let bad = || format!("{name}: {r:?} is not HH:MM-HH:MM");
                let (a, b) = r.split_once('-').ok_or_else(bad)?;
                let (start, end) = (
                    parse_hhmm(a).ok_or_else(bad)?,
                    parse_hhmm(b).ok_or_else(bad)?,
                );
                if start == 1440 {
                    return Err(bad());
                }
                days[idx].push((start, if end <= start { end + 1440 } else { end }));
            }
        }
        Ok(Schedule {
            mode: cfg.mode,
            require_agent: cfg.require_agent,
            tz,
            days,
        })
    }

    /// Whether the chat is available at `now_ms`, given whether an agent is online.
    pub fn is_available_with(&self, now_ms: i64, agent_online: bool) -> bool {
        (agent_online || !self.require_agent) && self.is_available(now_ms)
    }

    /// Whether the schedule is open at `now_ms` (agents aside).
    pub fn is_available(&self, now_ms: i64) -> bool {
        match self.mode {
            AvailabilityMode::Always => true,
            AvailabilityMode::Offline => false,
            AvailabilityMode::BusinessHours => {
                let Ok(ts) = Timestamp::from_millisecond(now_ms) else {
                    return false;
                };
                let local = ts.to_zoned(self.tz.clone());
                let today = local.weekday().to_monday_zero_offset() as usize;
                let minute = local.hour() as u32 * 60 + local.minute() as u32;
                let yesterday = (today + 6) % 7;
                self.days[today]
                    .iter()
                    .any(|&(s, e)| s <= minute && minute < e)
                    || self.days[yesterday]
                        .iter()
                        .any(|&(_, e)| e > 1440 && minute < e - 1440)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn berlin_weekdays() -> Schedule {
        let mut hours = BTreeMap::new();
        for d in ["mon", "tue", "wed", "thu", "fri"] {
            hours.insert(d.to_string(), vec!["09:00-17:00".to_string()]);
        }
        hours.insert("sat".into(), vec!["22:00-02:00".into()]);
        Schedule::parse(&AvailabilityConfig {
            mode: AvailabilityMode::BusinessHours,
            timezone: "Europe/Berlin".into(),
            hours,
            require_agent: false,
        })
        .unwrap()
    }

    fn at(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn opening_hours_follow_dst() {
        let s = berlin_weekdays();
        // Friday 27 March 2026 is CET (UTC+1): 08:30 UTC = 09:30 local, open; 07:30 UTC closed.
        assert!(s.is_available(at("2026-03-27T08:30:00Z")));
        assert!(!s.is_available(at("2026-03-27T07:30:00Z")));
        // Monday 30 March 2026 is CEST (UTC+2) after the switch on the 29th:
        // 07:30 UTC = 09:30 local, open; 06:30 UTC = 08:30 local, closed.
        assert!(s.is_available(at("2026-03-30T07:30:00Z")));
        assert!(!s.is_available(at("2026-03-30T06:30:00Z")));
        // Closing follows too: 15:30 UTC is 17:30 CEST, closed; 15:30 UTC on the 27th is 16:30 CET, open.
        assert!(!s.is_available(at("2026-03-30T15:30:00Z")));
        assert!(s.is_available(at("2026-03-27T15:30:00Z")));
    }

    #[test]
    fn overnight_ranges_and_closed_days() {
        let s = berlin_weekdays();
        // Saturday 22:00 to Sunday 02:00 local (CET in January).
        assert!(s.is_available(at("2026-01-10T21:30:00Z"))); // Sat 22:30
        assert!(s.is_available(at("2026-01-11T00:30:00Z"))); // Sun 01:30
        assert!(!s.is_available(at("2026-01-11T01:30:00Z"))); // Sun 02:30
        assert!(!s.is_available(at("2026-01-11T12:00:00Z"))); // Sunday noon
    }

    #[test]
    fn require_agent_needs_an_agent_and_the_hours() {
        let mut s = berlin_weekdays();
        let open = at("2026-03-02T09:00:00Z");
        let closed = at("2026-03-02T19:00:00Z");
        assert!(s.is_available_with(open, false), "not required: hours only");
        s.require_agent = true;
        assert!(!s.is_available_with(open, false));
        assert!(s.is_available_with(open, true));
        assert!(
            !s.is_available_with(closed, true),
            "an agent does not open closed hours"
        );
    }

    #[test]
    fn bad_schedules_are_refused() {
        let mut cfg = AvailabilityConfig {
            mode: AvailabilityMode::BusinessHours,
            timezone: "Europe/Berlin".into(),
            hours: BTreeMap::new(),
            require_agent: false,
        };
        cfg.hours
            .insert("monday".into(), vec!["09:00-17:00".into()]);
        assert!(Schedule::parse(&cfg).is_err());
        cfg.hours.clear();
        cfg.hours.insert("mon".into(), vec!["9-5".into()]);
        assert!(Schedule::parse(&cfg).is_err());
        cfg.hours.insert("mon".into(), vec!["09:00-25:00".into()]);
        assert!(Schedule::parse(&cfg).is_err());
        cfg.hours.insert("mon".into(), vec!["00:00-24:00".into()]);
        assert!(Schedule::parse(&cfg).is_ok());
    }
}
