//! `response_curve.png`: the log response g(z) of each channel and their mean, drawn with
//! `plotters` on a bitmap (the font compiled in, as for the crop plot).

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};

/// Width and height of the PNG.
pub const SIZE: (u32, u32) = (900, 600);

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::bad_file(path, format!("drawing the response plot: {e}"))
}

/// Draws g(z) per channel (red, green, blue, or grey for one channel) and, for several
/// channels, their mean (black, dashed).
///
/// # Errors
/// Drawing or encoding failures, naming the file.
pub fn response(path: &Path, g: &[Vec<f64>]) -> Result<()> {
    crate::ops::crop::plot::register();
    let lo = g.iter().flatten().copied().fold(f64::INFINITY, f64::min);
    let hi = g
        .iter()
        .flatten()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    let draw = || -> std::result::Result<(), String> {
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption("camera response g(z) (log exposure)", ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..255f64, (lo - pad)..(hi + pad))
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("pixel value z")
            .y_desc("g(z) = ln E + ln t")
            .draw()
            .map_err(|e| e.to_string())?;
        let colours: Vec<RGBColor> = if g.len() == 3 {
            vec![RED, GREEN, BLUE]
        } else {
            vec![RGBColor(90, 90, 90); g.len()]
        };
        let names = ["red", "green", "blue"];
        for (k, curve) in g.iter().enumerate() {
            let colour = colours[k];
            let label = if g.len() == 3 { names[k] } else { "grey" };
            chart
                .draw_series(LineSeries::new(
                    curve.iter().enumerate().map(|(z, &v)| (z as f64, v)),
                    colour.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        }
        if g.len() > 1 {
            let mean: Vec<(f64, f64)> = (0..256)
                .map(|z| {
                    (
                        z as f64,
                        g.iter().map(|c| c[z]).sum::<f64>() / g.len() as f64,
                    )
                })
                .collect();
            chart
                .draw_series(DashedLineSeries::new(mean, 6, 4, BLACK.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label("mean")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| e.to_string())?;
        Ok(())
    };
    draw().map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))
}
