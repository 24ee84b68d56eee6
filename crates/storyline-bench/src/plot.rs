//! The per-run plot: end-to-end latency by percentile (an HdrHistogram-style "nines" axis), with p50, p90,
//! p99 and p99.9 marked; and the soak plot: the server's resources over time. SVG only, with plotters' built-in
//! text layout: no system fonts are needed.

use std::path::Path;

use anyhow::anyhow;
use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::soak::sampler::Sample;

const WIDTH: u32 = 800;
const HEIGHT: u32 = 480;
const MARKS: [(f64, &str); 4] = [(0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p99.9")];

/// x on the nines axis for quantile `q`: 0.9 → 1, 0.99 → 2, 0.999 → 3.
fn nines(q: f64) -> f64 {
    -(1.0 - q).log10()
}

/// The percentile at position `x` of the nines axis, as a label.
fn percentile_label(x: f64) -> String {
    let percent = 100.0 * (1.0 - 10f64.powf(-x));
    let decimals = usize::from(x > 2.0) + usize::from(x > 3.0) + usize::from(x > 4.0);
    format!("{percent:.decimals$}%")
}

/// Writes the latency plot of `histogram` (µs) to `path`.
pub fn write_latency_plot(path: &Path, title: &str, histogram: &Histogram<u64>) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("plot: {e}"))?;
    let ms = |us: u64| us as f64 / 1000.0;
    // Show as many nines as there are samples to support (at least 1, at most 5).
    let max_x = (histogram.len().max(1) as f64).log10().clamp(1.0, 5.0);
    let top = (ms(histogram.max()) * 1.15).max(1.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..max_x, 0f64..top)
        .map_err(|e| anyhow!("plot: {e}"))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("end-to-end latency (ms)")
        .x_label_formatter(&|x| percentile_label(*x))
        .draw()
        .map_err(|e| anyhow!("plot: {e}"))?;
    if histogram.is_empty() {
        root.draw(&Text::new("no deliveries recorded", (WIDTH as i32 / 2 - 80, HEIGHT as i32 / 2), ("sans-serif", 16)))
            .map_err(|e| anyhow!("plot: {e}"))?;
    } else {
        const STEPS: u32 = 400;
        let points = (0..=STEPS).map(|k| {
            let x = max_x * f64::from(k) / f64::from(STEPS);
            let q = if k == STEPS { 1.0 } else { 1.0 - 10f64.powf(-x) };
            (x, ms(histogram.value_at_quantile(q)))
        });
        chart.draw_series(LineSeries::new(points, BLUE.stroke_width(2))).map_err(|e| anyhow!("plot: {e}"))?;
        for (q, name) in MARKS {
            let x = nines(q);
            if x > max_x {
                continue;
            }
            let value = ms(histogram.value_at_quantile(q));
            chart
                .draw_series([
                    PathElement::new(vec![(x, 0.0), (x, value)], RED.mix(0.6)),
                    PathElement::new(vec![(0.0, value), (x, value)], RED.mix(0.3)),
                ])
                .map_err(|e| anyhow!("plot: {e}"))?;
            chart
                .draw_series([Text::new(format!("{name} {value:.2} ms"), (x, value), ("sans-serif", 13).into_font())])
                .map_err(|e| anyhow!("plot: {e}"))?;
        }
        let max = ms(histogram.max());
        chart
            .draw_series([Text::new(format!("max {max:.2} ms"), (max_x * 0.82, max), ("sans-serif", 13).into_font())])
            .map_err(|e| anyhow!("plot: {e}"))?;
    }
    root.present().map_err(|e| anyhow!("plot: {e}"))?;
    Ok(())
}

/// One panel of the soak plot: a title and up to two series (name, colour, value of a sample).
type Panel<'a> = (&'a str, [(&'a str, RGBColor, fn(&Sample) -> Option<f64>); 2]);

/// Writes the soak plot: resident memory, open descriptors and streams, threads and tokio tasks over the run's
/// minutes, one panel each, with the end of the warm-up marked.
pub fn write_soak_plot(path: &Path, title: &str, samples: &[Sample], warmup_secs: f64) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (WIDTH, HEIGHT * 2)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("plot: {e}"))?;
    let root = root.titled(title, ("sans-serif", 18)).map_err(|e| anyhow!("plot: {e}"))?;
    let panels: [Panel<'_>; 3] = [
        ("resident memory (MiB)", [("RSS", BLUE, |s| s.rss_kib.map(|k| k / 1024.0)), ("", BLUE, |_| None)]),
        ("open file descriptors / streams", [("fds", RED, |s| s.fds), ("open streams", GREEN, |s| s.streams)]),
        ("threads / tokio tasks", [("threads", MAGENTA, |s| s.threads), ("tokio tasks", BLACK, |s| s.tasks)]),
    ];
    let minutes = samples.last().map_or(1.0, |s| s.t_secs / 60.0).max(1.0 / 60.0);
    for (area, (caption, series)) in root.split_evenly((3, 1)).iter().zip(panels) {
        let values = || samples.iter().flat_map(|s| series.iter().filter_map(move |(_, _, get)| get(s)));
        let top = values().fold(0.0f64, f64::max) * 1.1 + 1.0;
        let bottom = (values().fold(f64::INFINITY, f64::min) * 0.9).min(top - 1.0).max(0.0);
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 14))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..minutes, bottom..top)
            .map_err(|e| anyhow!("plot: {e}"))?;
        chart.configure_mesh().x_desc("minutes").draw().map_err(|e| anyhow!("plot: {e}"))?;
        let warmup = warmup_secs / 60.0;
        if warmup < minutes {
            chart
                .draw_series([PathElement::new(vec![(warmup, bottom), (warmup, top)], BLACK.mix(0.3))])
                .map_err(|e| anyhow!("plot: {e}"))?
                .label("end of warm-up")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.mix(0.3)));
        }
        for (name, colour, get) in series {
            if name.is_empty() {
                continue;
            }
            let points = samples.iter().filter_map(|s| get(s).map(|v| (s.t_secs / 60.0, v)));
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(|e| anyhow!("plot: {e}"))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|e| anyhow!("plot: {e}"))?;
    }
    root.present().map_err(|e| anyhow!("plot: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nines_axis_labels_percentiles() {
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(nines(0.9)), "90%");
        assert_eq!(percentile_label(nines(0.99)), "99%");
        assert_eq!(percentile_label(nines(0.999)), "99.9%");
        assert_eq!(percentile_label(4.0), "99.99%");
    }

    #[test]
    fn a_soak_plot_has_its_three_panels() {
        let dir = std::env::temp_dir().join(format!("storyline-bench-soak-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("soak.svg");
        let samples: Vec<Sample> = (0..100)
            .map(|t| Sample {
                t_secs: f64::from(t) * 2.0,
                rss_kib: Some(20_000.0 + f64::from(t)),
                fds: Some(50.0),
                threads: Some(7.0),
                tasks: Some(40.0),
                streams: Some(16.0),
            })
            .collect();
        write_soak_plot(&path, "soak test", &samples, 30.0).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        for text in ["soak test", "resident memory", "open file descriptors", "tokio tasks", "end of warm-up"] {
            assert!(svg.contains(text), "missing {text}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_plot_is_written_with_its_marks() {
        let dir = std::env::temp_dir().join(format!("storyline-bench-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("latency.svg");
        let mut histogram = crate::stats::new_histogram();
        for v in 1..=10_000u64 {
            histogram.record(v * 10).unwrap();
        }
        write_latency_plot(&path, "test run", &histogram).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..50]);
        for text in ["test run", "p50", "p99.9", "percentile"] {
            assert!(svg.contains(text), "missing {text}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
