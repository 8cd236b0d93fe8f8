//! Number formats the benchmark reports share (they read as the Python reports they replace did:
//! `{:.1%}`, `{:g}`, a median of an even count is the mean of the middle two).

/// `x` as a percentage with `decimals` digits: `0.8201` -> `82.0%`.
pub fn percent(x: f64, decimals: usize) -> String {
    format!("{:.*}%", decimals, x * 100.0)
}

/// Up to six significant digits without trailing zeros: `40.0` -> `40`, `12.5` -> `12.5`.
pub fn g(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let magnitude = x.abs().log10().floor() as i32;
    let decimals = usize::try_from(5 - magnitude).unwrap_or(0);
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Latencies in a table: whole ms from 100 on, one decimal below.
pub fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The median; `None` for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(percent(0.8201, 1), "82.0%");
        assert_eq!(percent(0.85, 0), "85%");
        assert_eq!(g(40.0), "40");
        assert_eq!(g(12.5), "12.5");
        assert_eq!(g(1000.0), "1000");
        assert_eq!(g(0.333333333), "0.333333");
        assert_eq!(g(0.0), "0");
        assert_eq!(ms(99.94), "99.9");
        assert_eq!(ms(123.4), "123");
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(mean(&[1.0, 2.0]), 1.5);
    }
}
