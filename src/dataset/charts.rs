//! SVG bar charts of the token statistics: total tokens and mean tokens per example, one bar
//! per variant, each with its value written above it.

use super::{DatasetError, Result, VariantStats};
use crate::fsutil::write_atomic;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};

const SIZE: (u32, u32) = (900, 520);

/// Writes `total_tokens.svg` and `mean_tokens.svg` into `dir`; returns their paths.
pub fn write_charts(rows: &[VariantStats], dir: &Path) -> Result<Vec<PathBuf>> {
    let names: Vec<String> = rows.iter().map(|r| r.variant.clone()).collect();
    let charts = [
        (
            "total_tokens.svg",
            "Total tokens per variant",
            "total tokens",
            rows.iter()
                .map(|r| r.total_tokens as f64)
                .collect::<Vec<_>>(),
            0,
        ),
        (
            "mean_tokens.svg",
            "Mean tokens per example",
            "mean tokens per example",
            rows.iter().map(|r| r.mean_tokens).collect(),
            2,
        ),
    ];
    let mut paths = Vec::new();
    for (file, title, y_desc, values, decimals) in charts {
        let path = dir.join(file);
        let svg = bar_chart(title, y_desc, &names, &values, decimals).map_err(|message| {
            DatasetError::Chart {
                path: path.clone(),
                message,
            }
        })?;
        write_atomic(&path, svg.as_bytes())?;
        paths.push(path);
    }
    Ok(paths)
}

/// One bar per name, labelled with its value (`decimals` places).
pub fn bar_chart(
    title: &str,
    y_desc: &str,
    names: &[String],
    values: &[f64],
    decimals: usize,
) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let max = values.iter().copied().fold(0.0, f64::max);
        // Headroom for the value labels above the tallest bar.
        let top = if max > 0.0 { max * 1.15 } else { 1.0 };
        let n = values.len().max(1);
        // An integer range counts its end as a value: 0..n-1 gives exactly n segments.
        let segments = 0..n - 1;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(80)
            .build_cartesian_2d(segments.into_segmented(), 0.0..top)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17))
            .x_desc("variant")
            .y_desc(y_desc)
            .x_labels(n)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()
            .map_err(|e| e.to_string())?;
        let bar = RGBColor(66, 114, 196).filled();
        chart
            .draw_series(values.iter().enumerate().map(|(i, &v)| {
                let mut r = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), v),
                    ],
                    bar,
                );
                r.set_margin(0, 0, 6, 6);
                r
            }))
            .map_err(|e| e.to_string())?;
        let label = ("sans-serif", 16)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        chart
            .draw_series(values.iter().enumerate().map(|(i, &v)| {
                Text::new(
                    format!("{v:.decimals$}"),
                    (SegmentValue::CenterOf(i), v),
                    label.clone(),
                )
            }))
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, total: usize, mean: f64) -> VariantStats {
        VariantStats {
            variant: name.into(),
            dialogues: 1,
            examples: 1,
            total_tokens: total,
            mean_tokens: mean,
            max_tokens: total,
            min_tokens: total,
            user_mean_tokens: 0.0,
            model_mean_tokens: 0.0,
            template_tokens: 0.0,
            train_examples: 1,
            val_examples: 0,
        }
    }

    #[test]
    fn writes_both_charts_with_titles_labels_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let rows = [row("model1", 707115, 265.63), row("model4", 22753, 76.87)];
        let paths = write_charts(&rows, &dir.path().join("charts")).unwrap();
        assert_eq!(paths.len(), 2);
        let total = std::fs::read_to_string(&paths[0]).unwrap();
        assert!(total.starts_with("<svg"), "{total:.80}");
        for want in [
            "Total tokens per variant",
            "total tokens",
            "variant",
            "model1",
            "model4",
            "707115",
            "22753",
        ] {
            assert!(total.contains(want), "missing {want}");
        }
        let mean = std::fs::read_to_string(&paths[1]).unwrap();
        for want in ["Mean tokens per example", "265.63", "76.87"] {
            assert!(mean.contains(want), "missing {want}");
        }
        // No variants, or only zeros: still a valid chart.
        assert!(bar_chart("t", "y", &[], &[], 0).unwrap().contains("</svg>"));
        assert!(bar_chart("t", "y", &["a".into()], &[0.0], 0)
            .unwrap()
            .contains("</svg>"));
    }
}
