//! Plots of a run (plotters, with an embedded font so no system font library is needed) and
//! the model graph.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;
use simplecnn_train::History;

/// DejaVu Sans (Bitstream Vera licence, see assets/DejaVuSans-LICENSE.txt).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

pub fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// A named line of `(epoch, value)` points.
pub struct Series {
    pub name: String,
    pub colour: RGBColor,
    pub points: Vec<(f64, f64)>,
}

/// One chart of series per epoch, as the tutorial plots history: train vs validation.
pub fn chart(path: &Path, title: &str, y_label: &str, series: &[Series]) -> Result<()> {
    register_font();
    crate::files::write_atomic(path, |tmp| {
        let root = BitMapBackend::new(tmp, (800, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let all = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
        let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        let pad = ((hi - lo) * 0.1).max(1e-3);
        let last = series
            .iter()
            .map(|s| s.points.len())
            .max()
            .unwrap_or(0)
            .max(2) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 26))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(1f64..last, (lo - pad)..(hi + pad))?;
        // Epochs are whole numbers: one tick each (up to 20), labelled without decimals.
        let epoch_label = |x: &f64| match x.fract() == 0.0 {
            true => format!("{x:.0}"),
            false => String::new(),
        };
        chart
            .configure_mesh()
            .x_labels((last as usize).min(20))
            .x_label_formatter(&epoch_label)
            .x_desc("epoch")
            .y_desc(y_label)
            .label_style(("sans-serif", 15))
            .draw()?;
        for s in series {
            if s.points.is_empty() {
                continue;
            }
            let colour = s.colour;
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    colour.stroke_width(2),
                ))?
                .label(s.name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 4, colour.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()?;
        root.present()?;
        Ok(())
    })
}

/// `loss.png` (loss vs val_loss) and `accuracy.png` (acc vs val_acc) in `dir`.
pub fn loss_and_accuracy(history: &History, dir: &Path) -> Result<()> {
    let pair = |train, val| {
        [
            Series {
                name: "train".into(),
                colour: BLUE,
                points: train,
            },
            Series {
                name: "validation".into(),
                colour: RED,
                points: val,
            },
        ]
    };
    let loss = pair(
        pick(history, |e| Some(e.loss)),
        pick(history, |e| e.val_loss),
    );
    chart(&dir.join("loss.png"), "Model loss", "loss", &loss)?;
    let acc = pair(pick(history, |e| Some(e.acc)), pick(history, |e| e.val_acc));
    chart(
        &dir.join("accuracy.png"),
        "Model accuracy",
        "accuracy",
        &acc,
    )
}

/// `(epoch, value)` for the epochs that have the value.
pub fn pick(
    history: &History,
    f: impl Fn(&simplecnn_train::EpochMetrics) -> Option<f64>,
) -> Vec<(f64, f64)> {
    history
        .epochs
        .iter()
        .filter_map(|e| f(e).map(|v| (e.epoch as f64, v)))
        .collect()
}

pub fn write_dot(model: &simplecnn_model::Network, path: &Path) -> Result<()> {
    std::fs::write(path, model.to_dot())
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    let svg = path.with_extension("svg");
    match std::process::Command::new("dot")
        .arg("-Tsvg")
        .arg(path)
        .arg("-o")
        .arg(&svg)
        .status()
    {
        Ok(s) if s.success() => println!("wrote {}", svg.display()),
        _ => println!("(Graphviz `dot` not found: no SVG; apt-get install graphviz)"),
    }
    Ok(())
}
