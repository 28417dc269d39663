//! The `/metrics` page: one prometheus-client registry per scrape, whose collectors are the
//! components that count (the agent's snapshot, the metrics server, pod metadata, RED histograms,
//! the service graph), encoded by the library in the OpenMetrics text format.
//!
//! Components describe their series through the small writers here ([`counter`], [`gauge`],
//! [`histogram`], [`info`]) so that every family is named, typed and escaped one way: counter
//! names end in `_total` (the encoder adds the suffix to the samples; the family is declared
//! without it), label values are escaped (the library writes them as given, and peers choose
//! some of them: service names, routes, addresses), help texts are escaped.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::Arc;

use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::exemplar::Exemplar;
pub use prometheus_client::registry::Registry;

/// Content type of the page (OpenMetrics 1.0 text, what the library encodes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A component whose series appear on the page.
pub trait Exposed: fmt::Debug + Send + Sync + 'static {
    /// Writes the component's families (each name once on the whole page).
    fn expose(&self, page: &mut DescriptorEncoder) -> fmt::Result;
}

/// Registers a shared component as a collector of `registry`.
pub fn register<T: Exposed>(registry: &mut Registry, component: Arc<T>) {
    registry.register_collector(Box::new(Collected(component)));
}

/// Encodes `registry` as the page's text (with its closing `# EOF`).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail; a collector's error would only truncate the page.
    if let Err(error) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::warn!(%error, "encoding the metrics page failed; the page is truncated");
    }
    out
}

/// The page of one component alone (tests and tools).
pub fn page_of<T: Exposed>(component: Arc<T>) -> String {
    let mut registry = Registry::default();
    register(&mut registry, component);
    encode(&registry)
}

#[derive(Debug)]
struct Collected<T>(Arc<T>);

impl<T: Exposed> Collector for Collected<T> {
    fn encode(&self, mut page: DescriptorEncoder) -> fmt::Result {
        self.0.expose(&mut page)
    }
}

/// A label value, escaped as the text format requires (backslash, double quote, newline).
#[derive(Clone, Copy, Debug)]
pub struct LabelText<'a>(pub &'a str);

impl EncodeLabelValue for LabelText<'_> {
    fn encode(&self, out: &mut LabelValueEncoder) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => out.write_str("\\\\")?,
                '"' => out.write_str("\\\"")?,
                '\n' => out.write_str("\\n")?,
                c => out.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// One series' labels: names (ours: valid label names) and values (escaped when written).
pub type Labels<'a> = Vec<(&'a str, LabelText<'a>)>;

/// Labels from name/value pairs.
pub fn labels<'a>(pairs: &[(&'a str, &'a str)]) -> Labels<'a> {
    pairs
        .iter()
        .map(|&(name, value)| (name, LabelText(value)))
        .collect()
}

/// A help text escaped as OpenMetrics requires.
fn help_text(help: &str) -> String {
    help.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A gauge's value: integer or float.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GaugeValue {
    Int(u64),
    Float(f64),
}

/// Writes a counter family; `name` ends in `_total`. Series without labels are written bare.
pub fn counter<'a>(
    page: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels<'a>, u64)>,
) -> fmt::Result {
    let base = name.strip_suffix("_total").unwrap_or(name);
    debug_assert!(base != name, "counter {name} must end in _total");
    let help = help_text(help);
    let mut family = page.encode_descriptor(base, &help, None, MetricType::Counter)?;
    for (labels, value) in series {
        if labels.is_empty() {
            family.encode_counter::<(), _, u64>(&value, None)?;
        } else {
            family
                .encode_family(&labels)?
                .encode_counter::<(), _, u64>(&value, None)?;
        }
    }
    Ok(())
}

/// Writes a gauge family.
pub fn gauge<'a>(
    page: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels<'a>, GaugeValue)>,
) -> fmt::Result {
    let help = help_text(help);
    let mut family = page.encode_descriptor(name, &help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        let write = |m: &mut MetricEncoder| match value {
            GaugeValue::Int(v) => m.encode_gauge(&i64::try_from(v).unwrap_or(i64::MAX)),
            // The encoder spells infinities `inf`, which the format does not allow: a gauge
            // with no finite value reads as NaN (none of ours is infinite but by a bug).
            GaugeValue::Float(v) => m.encode_gauge(&if v.is_finite() { v } else { f64::NAN }),
        };
        if labels.is_empty() {
            write(&mut family)?;
        } else {
            write(&mut family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// One histogram series: per-bucket (not cumulative) counts for `bounds` and a last one above
/// them (`+Inf`), and the sum of the observations.
#[derive(Debug)]
pub struct HistogramSeries<'a> {
    pub labels: Labels<'a>,
    pub bucket_counts: &'a [u64],
    pub sum: f64,
    pub count: u64,
}

/// Writes a histogram family over `bounds` (explicit upper bounds, ascending). Writes nothing
/// when there is no series (an empty family is noise).
pub fn histogram<'a>(
    page: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    bounds: &[f64],
    series: impl IntoIterator<Item = HistogramSeries<'a>>,
) -> fmt::Result {
    let mut series = series.into_iter().peekable();
    if series.peek().is_none() {
        return Ok(());
    }
    let help = help_text(help);
    let mut family = page.encode_descriptor(name, &help, None, MetricType::Histogram)?;
    let mut buckets = Vec::with_capacity(bounds.len() + 1);
    for s in series {
        buckets.clear();
        for (i, count) in s.bucket_counts.iter().enumerate() {
            // The encoder writes f64::MAX as `+Inf`.
            buckets.push((bounds.get(i).copied().unwrap_or(f64::MAX), *count));
        }
        if buckets.last().is_none_or(|(bound, _)| *bound != f64::MAX) {
            buckets.push((f64::MAX, 0));
        }
        let no_exemplars: Option<&HashMap<usize, Exemplar<(), f64>>> = None;
        family.encode_family(&s.labels)?.encode_histogram(
            s.sum,
            s.count,
            &buckets,
            no_exemplars,
        )?;
    }
    Ok(())
}

/// Writes an info family: `name` without its `_info` suffix, one `<name>_info{labels} 1` per
/// label set. Writes nothing when there is none.
pub fn info<'a>(
    page: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label_sets: impl IntoIterator<Item = Labels<'a>>,
) -> fmt::Result {
    let mut label_sets = label_sets.into_iter().peekable();
    if label_sets.peek().is_none() {
        return Ok(());
    }
    let help = help_text(help);
    let mut family = page.encode_descriptor(name, &help, None, MetricType::Info)?;
    for labels in label_sets {
        family.encode_info(&labels)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Sample;

    impl Exposed for Sample {
        fn expose(&self, page: &mut DescriptorEncoder) -> fmt::Result {
            counter(
                page,
                "demo_requests_total",
                "Requests, \"quoted\" \\ and\nwrapped.",
                [(Vec::new(), 3), (labels(&[("route", "/a\"b\\c\nd")]), 4)],
            )?;
            gauge(
                page,
                "demo_level",
                "A level.",
                [
                    (Vec::new(), GaugeValue::Int(7)),
                    (labels(&[("kind", "x")]), GaugeValue::Float(f64::NAN)),
                    (labels(&[("kind", "y")]), GaugeValue::Float(f64::INFINITY)),
                    (labels(&[("kind", "z")]), GaugeValue::Float(0.25)),
                ],
            )?;
            histogram(
                page,
                "demo_seconds",
                "Durations.",
                &[0.1, 1.0],
                [HistogramSeries {
                    labels: labels(&[("job", "j")]),
                    bucket_counts: &[1, 2, 3],
                    sum: 4.5,
                    count: 6,
                }],
            )?;
            histogram(page, "demo_empty_seconds", "None.", &[1.0], [])?;
            info(page, "target", "Target metadata", [labels(&[("job", "j")])])
        }
    }

    fn page() -> String {
        page_of(Arc::new(Sample))
    }

    #[test]
    fn families_are_typed_escaped_and_closed() {
        let page = page();
        assert!(page.contains("# TYPE demo_requests counter\n"), "{page}");
        assert!(
            page.contains("# HELP demo_requests Requests, \\\"quoted\\\" \\\\ and\\nwrapped.\n"),
            "{page}"
        );
        assert!(page.contains("\ndemo_requests_total 3\n"), "{page}");
        assert!(
            page.contains("\ndemo_requests_total{route=\"/a\\\"b\\\\c\\nd\"} 4\n"),
            "{page}"
        );
        assert!(page.contains("\ndemo_level 7\n"), "{page}");
        assert!(page.contains("\ndemo_level{kind=\"x\"} NaN\n"), "{page}");
        assert!(page.contains("\ndemo_level{kind=\"y\"} NaN\n"), "{page}");
        assert!(page.contains("\ndemo_level{kind=\"z\"} 0.25\n"), "{page}");
        assert!(page.contains("# TYPE demo_seconds histogram\n"), "{page}");
        assert!(
            page.contains("demo_seconds_bucket{le=\"0.1\",job=\"j\"} 1\n"),
            "{page}"
        );
        assert!(
            page.contains("demo_seconds_bucket{le=\"1.0\",job=\"j\"} 3\n"),
            "{page}"
        );
        assert!(
            page.contains("demo_seconds_bucket{le=\"+Inf\",job=\"j\"} 6\n"),
            "{page}"
        );
        assert!(page.contains("demo_seconds_count{job=\"j\"} 6\n"), "{page}");
        assert!(!page.contains("demo_empty_seconds"), "{page}");
        assert!(page.contains("# TYPE target info\n"), "{page}");
        assert!(page.contains("\ntarget_info{job=\"j\"} 1\n"), "{page}");
        assert!(page.ends_with("# EOF\n"), "{page}");
    }
}
