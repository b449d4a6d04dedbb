//! `<output>_visualization.png`: mean pattern before (with the crop square and the radius
//! circle) and after cropping, the histogram of per-pattern radii with the chosen radius, and
//! the histogram of retention with the thresholds. Drawn with `plotters` on a bitmap, with a
//! font compiled into the binary (DejaVu Sans Mono, assets/fonts), so no system fonts are
//! needed.

use std::path::Path;
use std::sync::Once;

use ndarray::ArrayD;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::error::{Error, Result};

/// Width and height of the PNG.
pub const SIZE: (u32, u32) = (1200, 900);

static FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSansMono.ttf");

pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// What the figure shows.
pub struct Inputs {
    pub mean_before: ArrayD<f64>,
    pub mean_after: ArrayD<f64>,
    pub radius: u64,
    /// Where the crop circle is drawn on the mean pattern (the mean centre).
    pub centre: (f64, f64),
    pub radii: Vec<f64>,
    pub retention: Vec<f64>,
    pub min_retention: f64,
    pub target_retention: f64,
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::bad_file(path, format!("drawing the plot: {e}"))
}

/// A log-scaled grey image of `a` in the area, with optional circle and square overlays.
fn image<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    a: &ArrayD<f64>,
    title: &str,
    overlay: Option<((f64, f64), u64)>,
) -> std::result::Result<(), String> {
    let (h, w) = (a.shape()[0], a.shape()[1]);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(40)
        .build_cartesian_2d(0f64..w as f64, h as f64..0f64)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_mesh()
        .draw()
        .map_err(|e| e.to_string())?;
    let lo = a
        .iter()
        .copied()
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let hi = a.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo.ln(), hi.ln())
    } else {
        (0.0, 1.0)
    };
    // At most 160 x 160 cells, each the mean of the pixels it covers.
    let step = (h.max(w) as f64 / 160.0).ceil().max(1.0) as usize;
    let mut cells = Vec::new();
    for y0 in (0..h).step_by(step) {
        for x0 in (0..w).step_by(step) {
            let (y1, x1) = ((y0 + step).min(h), (x0 + step).min(w));
            let mut s = 0.0;
            for y in y0..y1 {
                for x in x0..x1 {
                    s += a[[y, x]];
                }
            }
            let v = s / ((y1 - y0) * (x1 - x0)) as f64;
            let t = if v > 0.0 {
                ((v.ln() - lo) / (hi - lo)).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let g = (t * 255.0) as u8;
            cells.push(Rectangle::new(
                [(x0 as f64, y0 as f64), (x1 as f64, y1 as f64)],
                RGBColor(g, g, g).filled(),
            ));
        }
    }
    chart.draw_series(cells).map_err(|e| e.to_string())?;
    if let Some(((cy, cx), r)) = overlay {
        let circle: Vec<(f64, f64)> = (0..=360)
            .map(|d| {
                let t = f64::from(d).to_radians();
                (cx + r as f64 * t.cos(), cy + r as f64 * t.sin())
            })
            .collect();
        chart
            .draw_series(LineSeries::new(circle, RED.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(format!("radius {r}"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], RED));
        let (y0, x0) = ((cy + 0.5).floor() - r as f64, (cx + 0.5).floor() - r as f64);
        let side = 2.0 * r as f64 + 1.0;
        chart
            .draw_series([Rectangle::new(
                [(x0, y0), (x0 + side, y0 + side)],
                YELLOW.stroke_width(1),
            )])
            .map_err(|e| e.to_string())?;
        draw_legend(&mut chart)?;
    }
    Ok(())
}

/// A histogram of `values` with vertical marker lines.
fn histogram<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    values: &[f64],
    title: &str,
    x_label: &str,
    markers: &[(f64, RGBColor, String)],
) -> std::result::Result<(), String> {
    let mut lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let mut hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    for (m, _, _) in markers {
        lo = lo.min(*m);
        hi = hi.max(*m);
    }
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        (lo, hi) = (lo - 0.5, hi + 0.5);
    }
    let pad = (hi - lo) * 0.05;
    let (lo, hi) = (lo - pad, hi + pad);
    let bins = 40usize;
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0u32; bins];
    for &v in values {
        counts[(((v - lo) / width) as usize).min(bins - 1)] += 1;
    }
    let top = f64::from(counts.iter().copied().max().unwrap_or(1).max(1)) * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(lo..hi, 0f64..top)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("patterns")
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(counts.iter().enumerate().map(|(i, &c)| {
            let x0 = lo + i as f64 * width;
            Rectangle::new(
                [(x0, 0.0), (x0 + width, f64::from(c))],
                BLUE.mix(0.6).filled(),
            )
        }))
        .map_err(|e| e.to_string())?;
    for (m, colour, label) in markers {
        let c = *colour;
        chart
            .draw_series(LineSeries::new([(*m, 0.0), (*m, top)], c.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], c));
    }
    draw_legend(&mut chart)
}

/// The box of the chart's labelled series.
fn draw_legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
) -> std::result::Result<(), String> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}

/// Draws the figure to `path` (PNG, [`SIZE`]).
///
/// # Errors
/// Drawing or encoding failures, naming the file.
pub fn write(path: &Path, inputs: &Inputs) -> Result<()> {
    register();
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let areas = root.split_evenly((2, 2));
    let draw = || -> std::result::Result<(), String> {
        image(
            &areas[0],
            &inputs.mean_before,
            "mean pattern before (log scale)",
            Some((inputs.centre, inputs.radius)),
        )?;
        image(
            &areas[1],
            &inputs.mean_after,
            "mean pattern after cropping",
            None,
        )?;
        histogram(
            &areas[2],
            &inputs.radii,
            "per-pattern retention radius",
            "radius (pixels)",
            &[(
                inputs.radius as f64,
                RED,
                format!("global radius {}", inputs.radius),
            )],
        )?;
        histogram(
            &areas[3],
            &inputs.retention,
            "retention after cropping",
            "kept / total",
            &[
                (
                    inputs.min_retention,
                    RED,
                    format!("min {}", inputs.min_retention),
                ),
                (
                    inputs.target_retention,
                    GREEN,
                    format!("target {}", inputs.target_retention),
                ),
            ],
        )
    };
    draw().map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))
}
