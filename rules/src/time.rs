//! `parse_time(pattern, millis[, zone])`: formats epoch milliseconds with a Joda-Time pattern, as AWS
//! does (<https://docs.aws.amazon.com/iot/latest/developerguide/iot-sql-functions.html#iot-sql-function-parse-time>).
//!
//! chrono does the calendar work; the Joda pattern letters are translated here because chrono's own
//! format strings are strftime-style. Supported letters: `G y M d D E a H h k K m s S Z z` and quoted
//! literals. Zones: `UTC`/`GMT`/`Z` and fixed offsets such as `+01:00`; named regions such as
//! `America/Belize` give Undefined in Grove (there is no time-zone database in this pure crate).

use chrono::{DateTime, Datelike, FixedOffset, Timelike};

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Parses `UTC`, `GMT`, `Z`, `+hh`, `+hh:mm`, `+hhmm` (and `-`), optionally after `UTC`/`GMT`.
fn zone(name: &str) -> Option<(FixedOffset, String)> {
    let upper = name.trim().to_ascii_uppercase();
    if matches!(upper.as_str(), "UTC" | "GMT" | "Z" | "ETC/UTC" | "ETC/GMT") {
        return Some((FixedOffset::east_opt(0)?, "UTC".to_string()));
    }
    let rest = upper
        .strip_prefix("UTC")
        .or_else(|| upper.strip_prefix("GMT"))
        .unwrap_or(&upper);
    let (sign, digits) = match rest.as_bytes().first()? {
        b'+' => (1, &rest[1..]),
        b'-' => (-1, &rest[1..]),
        _ => return None,
    };
    let digits: String = digits.chars().filter(|c| *c != ':').collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) || !matches!(digits.len(), 1 | 2 | 4) {
        return None;
    }
    let (h, m) = if digits.len() == 4 {
        (
            digits[..2].parse::<i32>().ok()?,
            digits[2..].parse::<i32>().ok()?,
        )
    } else {
        (digits.parse::<i32>().ok()?, 0)
    };
    if h > 18 || m > 59 {
        return None;
    }
    let secs = sign * (h * 3600 + m * 60);
    Some((FixedOffset::east_opt(secs)?, offset_text(secs, true)))
}

fn offset_text(secs: i32, colon: bool) -> String {
    let sign = if secs < 0 { '-' } else { '+' };
    let a = secs.abs();
    if colon {
        format!("{sign}{:02}:{:02}", a / 3600, a % 3600 / 60)
    } else {
        format!("{sign}{:02}{:02}", a / 3600, a % 3600 / 60)
    }
}

fn num(out: &mut String, value: i64, width: usize) {
    out.push_str(&format!("{value:0width$}"));
}

/// Formats `millis` (since the Unix epoch) in `zone` with the Joda `pattern`; `None` for an unknown
/// zone, an unsupported pattern letter, or a time out of chrono's range.
pub(crate) fn format(pattern: &str, millis: i64, zone_name: &str) -> Option<String> {
    let (offset, zone_label) = zone(zone_name)?;
    let t: DateTime<FixedOffset> = DateTime::from_timestamp_millis(millis)?.with_timezone(&offset);
    let mut out = String::new();
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // Quoted literal; '' inside (or on its own) is a single quote.
            let mut j = i + 1;
            if chars.get(j) == Some(&'\'') {
                out.push('\'');
                i = j + 1;
                continue;
            }
            while j < chars.len() {
                if chars[j] == '\'' {
                    if chars.get(j + 1) == Some(&'\'') {
                        out.push('\'');
                        j += 2;
                        continue;
                    }
                    break;
                }
                out.push(chars[j]);
                j += 1;
            }
            i = j + 1;
            continue;
        }
        if !c.is_ascii_alphabetic() {
            out.push(c);
            i += 1;
            continue;
        }
        let mut n = 1;
        while chars.get(i + n) == Some(&c) {
            n += 1;
        }
        i += n;
        match c {
            'G' => out.push_str(if t.year() > 0 { "AD" } else { "BC" }),
            'y' | 'Y' | 'x' => {
                if n == 2 {
                    num(&mut out, i64::from(t.year().rem_euclid(100)), 2);
                } else {
                    num(&mut out, i64::from(t.year()), n);
                }
            }
            'M' if n >= 4 => out.push_str(MONTHS[t.month0() as usize]),
            'M' if n == 3 => out.push_str(&MONTHS[t.month0() as usize][..3]),
            'M' => num(&mut out, i64::from(t.month()), n),
            'd' => num(&mut out, i64::from(t.day()), n),
            'D' => num(&mut out, i64::from(t.ordinal()), n),
            'E' => {
                let day = DAYS[t.weekday().num_days_from_monday() as usize];
                out.push_str(if n >= 4 { day } else { &day[..3] });
            }
            'a' => out.push_str(if t.hour() < 12 { "AM" } else { "PM" }),
            'H' => num(&mut out, i64::from(t.hour()), n),
            'k' => num(
                &mut out,
                i64::from(if t.hour() == 0 { 24 } else { t.hour() }),
                n,
            ),
            'K' => num(&mut out, i64::from(t.hour() % 12), n),
            'h' => num(&mut out, i64::from(t.hour12().1), n),
            'm' => num(&mut out, i64::from(t.minute()), n),
            's' => num(&mut out, i64::from(t.second()), n),
            'S' => {
                // Fraction of a second: the first n digits of the milliseconds.
                let ms = format!("{:03}", t.nanosecond() / 1_000_000);
                let digits: String = ms.chars().chain(std::iter::repeat('0')).take(n).collect();
                out.push_str(&digits);
            }
            'Z' => out.push_str(&offset_text(offset.local_minus_utc(), n >= 2)),
            'z' => out.push_str(&zone_label),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joda_patterns() {
        let cases = [
            (
                "yyyy-MM-dd'T'HH:mm:ss.SSSZ",
                0,
                "UTC",
                Some("1970-01-01T00:00:00.000+0000"),
            ),
            (
                "yyyy.MM.dd G 'at' HH:mm:ss z",
                100_000_000,
                "UTC",
                Some("1970.01.02 AD at 03:46:40 UTC"),
            ),
            ("yyyy", 1_496_000_000_000, "UTC", Some("2017")),
            (
                "EEE, d MMM yy hh:mm a",
                1_496_000_000_000,
                "+02:00",
                Some("Sun, 28 May 17 09:33 PM"),
            ),
            ("EEEE MMMM", 0, "UTC", Some("Thursday January")),
            ("HH:mm ZZ z", 0, "-05:30", Some("18:30 -05:30 -05:30")),
            ("''yyyy''", 0, "UTC", Some("'1970'")),
            ("yyyy", 0, "America/Belize", None),
            ("qqq", 0, "UTC", None),
        ];
        for (pattern, ms, zone, expected) in cases {
            assert_eq!(format(pattern, ms, zone).as_deref(), expected, "{pattern}");
        }
    }
}
