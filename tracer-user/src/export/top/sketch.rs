//! Latency quantiles of `tracer top`: a DDSketch (the `sketches-ddsketch` crate) with a stated
//! relative accuracy, so p50/p95/p99 are within [`RELATIVE_ACCURACY`] of the exact quantile of
//! the values recorded (rank `floor(q * (n - 1))`), independent of the semconv buckets.

use sketches_ddsketch::{Config, DDSketch};

/// Every quantile returned is within this fraction of the exact one (1 %).
pub const RELATIVE_ACCURACY: f64 = 0.01;
/// Bins per sketch at most: at 1 % accuracy, 2048 bins cover a ratio of about e^40 between the
/// smallest and largest value, far more than nanoseconds to hours. Bounds memory per row.
const MAX_BINS: u32 = 2048;
/// Durations are recorded in microseconds; anything shorter counts as zero.
const MIN_VALUE_US: f64 = 1e-3;

/// Durations of one row or edge.
#[derive(Clone)]
pub struct LatencySketch {
    sketch: DDSketch,
}

impl std::fmt::Debug for LatencySketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencySketch")
            .field("count", &self.sketch.count())
            .finish()
    }
}

impl Default for LatencySketch {
    fn default() -> Self {
        LatencySketch {
            sketch: DDSketch::new(Config::new(RELATIVE_ACCURACY, MAX_BINS, MIN_VALUE_US)),
        }
    }
}

impl LatencySketch {
    /// Records one duration (nanoseconds).
    pub fn record_ns(&mut self, ns: u64) {
        self.sketch.add(ns as f64 / 1_000.0);
    }

    /// The `q` quantile (0..=1) in milliseconds; `None` when nothing was recorded.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        self.sketch
            .quantile(q.clamp(0.0, 1.0))
            .ok()
            .flatten()
            .map(|us| us / 1_000.0)
    }

    pub fn count(&self) -> usize {
        self.sketch.count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact quantile with the sketch's rank convention.
    fn exact(sorted: &[f64], q: f64) -> f64 {
        let rank = (q * (sorted.len() as f64 - 1.0)) as usize;
        sorted[rank]
    }

    fn check(name: &str, values_ms: &[f64]) {
        let mut sketch = LatencySketch::default();
        for v in values_ms {
            sketch.record_ns((v * 1e6).round() as u64);
        }
        let mut sorted: Vec<f64> = values_ms.iter().map(|v| (v * 1e6).round() / 1e6).collect();
        sorted.sort_by(f64::total_cmp);
        assert_eq!(sketch.count(), values_ms.len());
        for q in [0.5, 0.9, 0.95, 0.99, 0.999] {
            let want = exact(&sorted, q);
            let got = sketch.quantile_ms(q).expect("non-empty");
            let error = (got - want).abs() / want;
            // A hair over the bound for the float rounding of the bin edges.
            assert!(
                error <= RELATIVE_ACCURACY + 1e-9,
                "{name}: q={q} sketch {got} exact {want} error {error}"
            );
        }
    }

    /// A small deterministic generator (xorshift), so the tests need no seed crate.
    fn uniform(state: &mut u64) -> f64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state >> 11) as f64 / (1u64 << 53) as f64
    }

    #[test]
    fn quantiles_are_within_the_stated_error_on_a_uniform_distribution() {
        let mut s = 0x9e37_79b9_7f4a_7c15;
        let values: Vec<f64> = (0..20_000).map(|_| 1.0 + 99.0 * uniform(&mut s)).collect();
        check("uniform 1..100 ms", &values);
    }

    #[test]
    fn quantiles_are_within_the_stated_error_on_a_long_tailed_distribution() {
        // Exponential with a 5 ms mean plus a 1 % tail around 2 s: what a slow endpoint looks like.
        let mut s = 42;
        let values: Vec<f64> = (0..20_000)
            .map(|i| {
                let u = uniform(&mut s).max(1e-12);
                if i % 100 == 0 {
                    2_000.0 + 500.0 * u
                } else {
                    0.05 - 5.0 * u.ln()
                }
            })
            .collect();
        check("exponential + tail", &values);
    }

    #[test]
    fn quantiles_are_within_the_stated_error_on_a_bimodal_distribution() {
        let values: Vec<f64> = (0..1_000)
            .map(|i| {
                if i % 10 == 0 {
                    250.0 + i as f64 * 0.01
                } else {
                    0.2 + (i % 7) as f64 * 0.01
                }
            })
            .collect();
        check("bimodal", &values);
    }

    #[test]
    fn an_empty_sketch_has_no_quantiles_and_one_value_is_every_quantile() {
        let mut sketch = LatencySketch::default();
        assert_eq!(sketch.quantile_ms(0.5), None);
        sketch.record_ns(12_000_000);
        for q in [0.0, 0.5, 0.99, 1.0] {
            let got = sketch.quantile_ms(q).expect("one value");
            assert!((got - 12.0).abs() / 12.0 <= RELATIVE_ACCURACY, "{q}: {got}");
        }
    }
}
