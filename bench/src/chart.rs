//! The latency chart: p50 and p99 per mode and concurrency, as a PNG.

use std::path::Path;

use anyhow::{Context, anyhow};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::RunResult;

/// Fonts tried in order; `REPLYWAY_BENCH_FONT` first.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn register_font() -> anyhow::Result<()> {
    let env = std::env::var("REPLYWAY_BENCH_FONT").ok();
    let path = env
        .iter()
        .map(String::as_str)
        .chain(FONTS.iter().copied())
        .find(|p| Path::new(p).is_file())
        .context("no TrueType font found (set REPLYWAY_BENCH_FONT to a .ttf file)")?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{path} is not a usable font"))
}

/// Draws p50 (thick) and p99 (thin) latency per mode over the concurrency levels.
pub fn draw(results: &[RunResult], path: &Path) -> anyhow::Result<()> {
    register_font()?;
    let mut levels: Vec<usize> = results.iter().map(|r| r.concurrency).collect();
    levels.sort_unstable();
    levels.dedup();
    let mut modes: Vec<&str> = Vec::new();
    for r in results {
        if !modes.contains(&r.mode.as_str()) {
            modes.push(&r.mode);
        }
    }
    let top = results
        .iter()
        .map(|r| r.latencies.p(99.0).as_secs_f64() * 1000.0)
        .fold(1.0, f64::max)
        * 1.15;

    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Round-trip latency: p50 (thick) and p99 (thin)",
            ("sans-serif", 24),
        )
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.3f64..(levels.len() as f64 - 0.7), 0f64..top)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_labels(levels.len())
        .x_label_formatter(&|x| {
            let i = x.round() as usize;
            if (x - i as f64).abs() < 0.01 {
                levels
                    .get(i)
                    .map_or_else(String::new, |c| format!("concurrency {c}"))
            } else {
                String::new()
            }
        })
        .y_desc("milliseconds")
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let colors = [
        RGBColor(40, 40, 40),
        RGBColor(0, 114, 178),
        RGBColor(213, 94, 0),
        RGBColor(0, 158, 115),
    ];
    for (m, mode) in modes.iter().enumerate() {
        let color = colors[m % colors.len()];
        for (q, width) in [(50.0, 4), (99.0, 1)] {
            let points: Vec<(f64, f64)> = levels
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    results
                        .iter()
                        .find(|r| r.mode == *mode && r.concurrency == *c)
                        .map(|r| (i as f64, r.latencies.p(q).as_secs_f64() * 1000.0))
                })
                .collect();
            let series = chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(width)))
                .map_err(|e| anyhow!("{e}"))?;
            if q == 50.0 {
                series.label(*mode).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(4))
                });
            }
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))
                .map_err(|e| anyhow!("{e}"))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
