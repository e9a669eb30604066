//! Loss curves of every run in one SVG: training loss above, validation loss below.

use super::compare::RunReport;
use super::ReportError;
use plotters::prelude::*;
use std::path::Path;

pub fn loss_svg(reports: &[RunReport], path: &Path) -> Result<(), ReportError> {
    let err = |e: &dyn std::fmt::Display| ReportError::Chart {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let root = SVGBackend::new(path, (1000, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let panels = root.split_evenly((2, 1));
    for (panel, (title, pick)) in panels.iter().zip([
        (
            "Training loss",
            (|r: &RunReport| &r.train_curve) as fn(&RunReport) -> &Vec<(f64, f64)>,
        ),
        ("Validation loss", |r: &RunReport| &r.val_curve),
    ]) {
        let points: Vec<&(f64, f64)> = reports.iter().flat_map(|r| pick(r).iter()).collect();
        let max_x = points.iter().map(|p| p.0).fold(1.0, f64::max);
        let (lo, hi) = points
            .iter()
            .map(|p| p.1)
            .filter(|v| v.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            });
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        let pad = ((hi - lo) * 0.05).max(1e-3);
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..max_x, (lo - pad)..(hi + pad))
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss (nats / token)")
            .draw()
            .map_err(|e| err(&e))?;
        for (i, r) in reports.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let curve: Vec<(f64, f64)> = pick(r)
                .iter()
                .copied()
                .filter(|p| p.1.is_finite())
                .collect();
            if curve.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(curve, color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(r.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
