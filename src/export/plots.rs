//! Pictures of a run: `curves.png` (loss and accuracy per epoch, train and validation) and
//! `confusion.png` (the test confusion matrix), drawn with plotters into an RGB buffer and
//! written as PNG by the `image` crate (the one that decodes pictures; plotters' own encoder
//! would build a second, older `image`), atomically. Text uses the DejaVu Sans font compiled
//! into the binary (assets/), so no system font is needed.

use std::path::Path;
use std::sync::Once;

use image::ImageEncoder;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::error::{Error, Result};
use crate::head::{Evaluation, TrainReport};

static FONT: Once = Once::new();

fn font() {
    FONT.call_once(|| {
        let _ = register_font("sans-serif", FontStyle::Normal, include_bytes!("../../assets/DejaVuSans.ttf"));
    });
}

fn plot_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io { path: path.to_path_buf(), source: std::io::Error::other(e.to_string()) }
}

/// Draws on a white `size` canvas with `draw`, then writes it to `path` as PNG.
fn draw_png(path: &Path, size: (u32, u32), draw: impl FnOnce(&DrawingArea<BitMapBackend, plotters::coord::Shift>) -> Result<()>) -> Result<()> {
    let mut rgb = vec![255u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        draw(&root)?;
        root.present().map_err(|e| plot_error(path, e))?;
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&rgb, size.0, size.1, image::ExtendedColorType::Rgb8)
        .map_err(|e| plot_error(path, e))?;
    crate::fsutil::write_atomic(path, &png)
}

/// Draws `curves.png`: training and validation loss (left) and accuracy (right) per epoch,
/// with the epoch kept marked.
pub fn training_curves(report: &TrainReport, path: &Path) -> Result<()> {
    font();
    let err = |e| plot_error(path, e);
    draw_png(path, (1000, 420), |root| {
        root.fill(&WHITE).map_err(err)?;
        let (left, right) = root.split_horizontally(500);
        let epochs = report.history.len().max(1) as f64;
        let series = |f: &dyn Fn(&crate::head::EpochRecord) -> Option<f64>| -> Vec<(f64, f64)> {
            report.history.iter().filter_map(|r| f(r).map(|v| (r.epoch as f64, v))).collect()
        };
        #[allow(clippy::type_complexity)] // one panel: its area, its name, its two curves
        let panels: [(&DrawingArea<_, _>, &str, Vec<(f64, f64)>, Vec<(f64, f64)>); 2] = [
            (&left, "loss", series(&|r| Some(r.train_loss)), series(&|r| r.val_loss)),
            (&right, "accuracy", series(&|r| Some(r.train_accuracy)), series(&|r| r.val_accuracy)),
        ];
        for (area, name, train, val) in panels {
            let max = train.iter().chain(&val).map(|p| p.1).fold(f64::MIN, f64::max);
            let min = train.iter().chain(&val).map(|p| p.1).fold(f64::MAX, f64::min);
            let (lo, hi) = if name == "accuracy" { (min.clamp(0.0, 1.0) * 0.95, 1.0) } else { (0.0, max * 1.05 + 1e-9) };
            let mut chart = ChartBuilder::on(area)
                .caption(format!("{name} per epoch"), ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(32)
                .y_label_area_size(48)
                .build_cartesian_2d(1.0..epochs.max(2.0), lo..hi)
                .map_err(err)?;
            chart.configure_mesh().x_desc("epoch").y_desc(name).draw().map_err(err)?;
            chart
                .draw_series(LineSeries::new(train, BLUE.stroke_width(2)))
                .map_err(err)?
                .label("train")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLUE.stroke_width(2)));
            chart
                .draw_series(LineSeries::new(val, RED.stroke_width(2)))
                .map_err(err)?
                .label("validation")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], RED.stroke_width(2)));
            let best = report.best_epoch as f64;
            chart
                .draw_series(LineSeries::new([(best, lo), (best, hi)], BLACK.mix(0.4)))
                .map_err(err)?
                .label("epoch kept")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLACK.mix(0.4)));
            chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(err)?;
        }
        Ok(())
    })
}

/// Draws `confusion.png`: rows are true classes, columns predicted ones; each cell is shaded
/// by the share of its row and shows its count.
pub fn confusion_matrix(eval: &Evaluation, path: &Path) -> Result<()> {
    font();
    let err = |e| plot_error(path, e);
    let k = eval.confusion.len().max(1);
    let cell = (560 / k).clamp(24, 64) as i32;
    let (margin_left, margin_top) = (150, 120);
    let size = (margin_left + cell * k as i32 + 20, margin_top + cell * k as i32 + 40);
    draw_png(path, (size.0 as u32, size.1 as u32), |root| {
        root.fill(&WHITE).map_err(err)?;
        root.draw(&Text::new(
            format!("test confusion matrix ({} pictures, accuracy {:.1}%)", eval.rows, 100.0 * eval.accuracy),
            (10, 10),
            ("sans-serif", 18),
        ))
        .map_err(err)?;
        root.draw(&Text::new("rows: true class, columns: predicted", (10, 34), ("sans-serif", 14))).map_err(err)?;
        for (i, c) in eval.per_class.iter().enumerate() {
            let y = margin_top + cell * i as i32 + cell / 2 - 7;
            root.draw(&Text::new(c.class.clone(), (10, y), ("sans-serif", 13))).map_err(err)?;
            let x = margin_left + cell * i as i32 + 2;
            let label: String = c.class.chars().take(6).collect();
            root.draw(&Text::new(label, (x, margin_top - 20), ("sans-serif", 12))).map_err(err)?;
        }
        for (i, row) in eval.confusion.iter().enumerate() {
            let total: u64 = row.iter().sum::<u64>().max(1);
            for (j, &n) in row.iter().enumerate() {
                let share = n as f64 / total as f64;
                let shade = (255.0 * (1.0 - share)) as u8;
                let (x0, y0) = (margin_left + cell * j as i32, margin_top + cell * i as i32);
                let color = if i == j { RGBColor(shade, 255, shade) } else { RGBColor(255, shade, shade) };
                root.draw(&Rectangle::new([(x0, y0), (x0 + cell, y0 + cell)], color.filled())).map_err(err)?;
                root.draw(&Rectangle::new([(x0, y0), (x0 + cell, y0 + cell)], BLACK.mix(0.2))).map_err(err)?;
                root.draw(&Text::new(n.to_string(), (x0 + cell / 2 - 8, y0 + cell / 2 - 7), ("sans-serif", 13))).map_err(err)?;
            }
        }
        Ok(())
    })
}
