//! Results: a small JSON writer (no serde: flat objects of numbers and
//! strings), latency summaries from HDR histograms, and the one-line
//! progress report.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// A JSON object built field by field.
#[derive(Default)]
pub struct Json {
    text: String,
}

impl Json {
    /// Adds a number (written as an integer when it is one).
    pub fn num(&mut self, key: &str, value: f64) -> &mut Json {
        self.key(key);
        if value.is_finite() {
            if value.fract() == 0.0 && value.abs() < 1e15 {
                let _ = write!(self.text, "{}", value as i64);
            } else {
                let _ = write!(self.text, "{value:.6}");
            }
        } else {
            self.text.push_str("null");
        }
        self
    }

    /// Adds a string.
    pub fn str(&mut self, key: &str, value: &str) -> &mut Json {
        self.key(key);
        self.text.push('"');
        for ch in value.chars() {
            match ch {
                '"' => self.text.push_str("\\\""),
                '\\' => self.text.push_str("\\\\"),
                ch if ch.is_control() => {
                    let _ = write!(self.text, "\\u{:04x}", ch as u32);
                }
                ch => self.text.push(ch),
            }
        }
        self.text.push('"');
        self
    }

    /// Adds a boolean.
    pub fn bool(&mut self, key: &str, value: bool) -> &mut Json {
        self.key(key);
        self.text.push_str(if value { "true" } else { "false" });
        self
    }

    /// Adds a nested object.
    pub fn obj(&mut self, key: &str, value: &Json) -> &mut Json {
        self.key(key);
        self.text.push_str(&value.finish());
        self
    }

    /// Adds an array of objects.
    pub fn arr(&mut self, key: &str, values: &[Json]) -> &mut Json {
        self.key(key);
        self.text.push('[');
        let items: Vec<String> = values.iter().map(Json::finish).collect();
        self.text.push_str(&items.join(","));
        self.text.push(']');
        self
    }

    fn key(&mut self, key: &str) {
        if !self.text.is_empty() {
            self.text.push(',');
        }
        let _ = write!(self.text, "\"{key}\":");
    }

    /// The object as text.
    pub fn finish(&self) -> String {
        format!("{{{}}}", self.text)
    }
}

/// A latency histogram in nanoseconds (1 ns .. 60 s, 3 significant digits).
pub fn latency_histogram() -> Histogram<u64> {
    // invariant: these bounds are valid for hdrhistogram (low >= 1, high >= 2 * low, sigfig <= 5).
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Percentiles of a latency histogram, in microseconds.
pub fn latency_json(histogram: &Histogram<u64>) -> Json {
    let us = |nanos: u64| nanos as f64 / 1000.0;
    let mut json = Json::default();
    json.num("count", histogram.len() as f64)
        .num("p50", us(histogram.value_at_quantile(0.50)))
        .num("p99", us(histogram.value_at_quantile(0.99)))
        .num("p999", us(histogram.value_at_quantile(0.999)))
        .num("max", us(histogram.max()));
    json
}

/// The latency distribution as (quantile, microseconds) points, for a CDF.
pub fn latency_cdf_json(histogram: &Histogram<u64>) -> Vec<Json> {
    if histogram.is_empty() {
        return Vec::new();
    }
    let mut quantiles: Vec<f64> = (1..=99).map(|percent| f64::from(percent) / 100.0).collect();
    quantiles.extend([0.995, 0.999, 0.9995, 0.9999, 1.0]);
    quantiles
        .into_iter()
        .map(|quantile| {
            let mut json = Json::default();
            json.num("q", quantile)
                .num("us", histogram.value_at_quantile(quantile) as f64 / 1000.0);
            json
        })
        .collect()
}

/// "p50 12.3 us, p99 45.6 us, p99.9 78.9 us, max 1.2 ms".
pub fn latency_line(histogram: &Histogram<u64>) -> String {
    if histogram.is_empty() {
        return "no samples".to_owned();
    }
    format!(
        "p50 {}, p99 {}, p99.9 {}, max {}",
        human_nanos(histogram.value_at_quantile(0.50)),
        human_nanos(histogram.value_at_quantile(0.99)),
        human_nanos(histogram.value_at_quantile(0.999)),
        human_nanos(histogram.max())
    )
}

/// Nanoseconds in a readable unit.
pub fn human_nanos(nanos: u64) -> String {
    match nanos {
        n if n < 10_000 => format!("{:.2} us", n as f64 / 1000.0),
        n if n < 10_000_000 => format!("{:.1} us", n as f64 / 1000.0),
        n => format!("{:.2} ms", n as f64 / 1e6),
    }
}

/// MiB per second.
pub fn mib_per_s(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / (1024.0 * 1024.0) / seconds
    } else {
        0.0
    }
}
