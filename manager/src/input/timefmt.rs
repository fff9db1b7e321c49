//! Calendar arithmetic for FVCOM time axes and the configuration: proleptic Gregorian dates to
//! Unix seconds and back, CF `units` strings, and durations as people write them (`90s`, `12h`).

use anyhow::{anyhow, bail, Result};

/// Days from 1970-01-01 to the given civil date (Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The Modified Julian Day epoch, 1858-11-17, in Unix seconds.
pub const MJD_EPOCH: f64 = -3_506_716_800.0;

/// Parses `YYYY-MM-DD`, `YYYY-MM-DD HH:MM[:SS[.fff]]`, with `T` or space, optional `Z`.
pub fn parse_datetime(s: &str) -> Result<f64> {
    let t = s.trim().trim_end_matches('Z').trim_end_matches(" UTC");
    let bad = || anyhow!("`{s}` is not a date-time (expected YYYY-MM-DD[THH:MM:SS])");
    let (date, time) = match t.find(['T', ' ']) {
        Some(i) => (&t[..i], t[i + 1..].trim()),
        None => (t, ""),
    };
    let mut dp = date.split('-');
    let y: i64 = dp.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let m: u32 = dp.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let d: u32 = dp.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    if dp.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let mut secs = 0.0;
    if !time.is_empty() {
        let mut tp = time.split(':');
        let hh: f64 = tp.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let mm: f64 = tp.next().unwrap_or("0").parse().map_err(|_| bad())?;
        let ss: f64 = tp.next().unwrap_or("0").parse().map_err(|_| bad())?;
        if tp.next().is_some()
            || !(0.0..24.0).contains(&hh)
            || !(0.0..60.0).contains(&mm)
            || !(0.0..61.0).contains(&ss)
        {
            return Err(bad());
        }
        secs = hh * 3600.0 + mm * 60.0 + ss;
    }
    Ok(days_from_civil(y, m, d) as f64 * 86_400.0 + secs)
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` (fractions of a second are rounded away).
pub fn format_datetime(unix: f64) -> String {
    let s = unix.round() as i64;
    let days = s.div_euclid(86_400);
    let rem = s.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A CF time `units` string, e.g. `days since 1858-11-17 00:00:00`: (seconds per unit, epoch).
pub fn parse_cf_units(units: &str) -> Result<(f64, f64)> {
    // The unit is matched in lower case; the date keeps its case (ISO's `T`, a trailing `Z`).
    let trimmed = units.trim();
    let at = trimmed
        .to_ascii_lowercase()
        .find(" since ")
        .ok_or_else(|| anyhow!("time units `{units}` are not of the form `<unit> since <date>`"))?;
    let (unit, since) = (
        trimmed[..at].to_ascii_lowercase(),
        &trimmed[at + " since ".len()..],
    );
    let scale = match unit.trim() {
        "days" | "day" | "d" => 86_400.0,
        "hours" | "hour" | "h" | "hr" => 3600.0,
        "minutes" | "minute" | "min" => 60.0,
        "seconds" | "second" | "s" | "sec" => 1.0,
        other => bail!("time units `{units}`: unknown unit `{other}`"),
    };
    Ok((scale, parse_datetime(since)?))
}

/// A duration such as `60s`, `30min`, `12h`, `2d`, `1h30min`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<f64> {
    let t = s.trim();
    if let Ok(v) = t.parse::<f64>() {
        if v.is_finite() && v >= 0.0 {
            return Ok(v);
        }
    }
    let bad = || anyhow!("`{s}` is not a duration (write e.g. 60s, 30min, 12h, 2d)");
    let mut total = 0.0;
    let mut rest = t;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_end == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        let after = rest[num_end..].trim_start();
        let unit_end = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let scale = match &after[..unit_end] {
            "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86_400.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = after[unit_end..].trim_start();
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_and_match_known_epochs() {
        assert_eq!(parse_datetime("1970-01-01").unwrap(), 0.0);
        assert_eq!(parse_datetime("1858-11-17 00:00:00").unwrap(), MJD_EPOCH);
        assert_eq!(
            parse_datetime("2024-05-23T01:00:00.000000").unwrap(),
            1_716_426_000.0
        );
        assert_eq!(format_datetime(1_716_426_000.0), "2024-05-23 01:00:00");
        for d in [-800_000i64, -1, 0, 59, 10_000, 20_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        assert!(parse_datetime("2024-13-01").is_err());
        assert!(parse_datetime("yesterday").is_err());
        // CF units as servers write them: any case for the unit, ISO dates with T and Z.
        for (units, scale, epoch) in [
            ("seconds since 1970-01-01T00:00:00Z", 1.0, 0.0),
            ("Hours since 1858-11-17 00:00:00", 3600.0, MJD_EPOCH),
            ("days since 1858-11-17", 86_400.0, MJD_EPOCH),
        ] {
            assert_eq!(parse_cf_units(units).unwrap(), (scale, epoch), "{units}");
        }
        assert!(parse_cf_units("fortnights since 1970-01-01").is_err());
    }

    #[test]
    fn durations_as_people_write_them() {
        assert_eq!(parse_duration("60s").unwrap(), 60.0);
        assert_eq!(parse_duration("30min").unwrap(), 1800.0);
        assert_eq!(parse_duration("12h").unwrap(), 43_200.0);
        assert_eq!(parse_duration("2d").unwrap(), 172_800.0);
        assert_eq!(parse_duration("1h30min").unwrap(), 5400.0);
        assert_eq!(parse_duration("90").unwrap(), 90.0);
        assert!(parse_duration("12 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn cf_units() {
        let (s, e) = parse_cf_units("days since 2013-01-01").unwrap();
        assert_eq!(s, 86_400.0);
        assert_eq!(e, parse_datetime("2013-01-01").unwrap());
        assert!(parse_cf_units("fortnights since 2000-01-01").is_err());
    }
}
