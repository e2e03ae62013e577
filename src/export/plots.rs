//! Pictures of a run: `curves.png` (loss and accuracy per epoch, train and validation, the
//! kept epoch and the L2 penalties marked), `confusion.png` (the test confusion matrix),
//! `recall.png` (the test recall of every class) and `reliability.png` (the reliability diagram
//! of the test probabilities), drawn with plotters into an RGB buffer and
//! written as PNG by the `image` crate (the one that decodes pictures; plotters' own encoder
//! would build a second, older `image`), atomically. Text uses the DejaVu Sans font compiled
//! into the binary (assets/), so no system font is needed.

use std::path::Path;
use std::sync::Once;

use image::ImageEncoder;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle, FontTransform};

use crate::error::{Error, Result};
use crate::head::{EpochRecord, Evaluation, TrainReport};

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

/// Width in pixels of `text` at `size` points in DejaVu Sans, about (0.6 em a character).
fn text_width(text: &str, size: u32) -> i32 {
    (text.chars().count() as f64 * size as f64 * 0.6).ceil() as i32
}

/// The epochs where the L2 penalty changes (the first included), with the new penalty.
fn penalty_changes(history: &[EpochRecord]) -> Vec<(i32, f64)> {
    let mut last = None;
    let mut out = Vec::new();
    for r in history {
        if let Some(l2) = r.l2 {
            if last != Some(l2) {
                out.push((r.epoch as i32, l2));
                last = Some(l2);
            }
        }
    }
    out
}

/// An L2 penalty as a short label, two significant digits at most: `1e-4`, `3e-2`, `1`,
/// `5.5e-3`.
fn short_l2(l2: f64) -> String {
    let text = format!("{l2:.1e}");
    text.replace(".0e", "e").replace("e0", "")
}

/// Draws `curves.png`: training and validation loss (left) and accuracy (right) per epoch (per
/// L-BFGS iteration on the tuned path: `report.unit`), on an axis of whole epochs; the epoch
/// kept is a solid black line, labelled; on the tuned L2
/// path, a dotted line and the penalty's value where the penalty changes.
pub fn training_curves(report: &TrainReport, path: &Path) -> Result<()> {
    font();
    let err = |e| plot_error(path, e);
    draw_png(path, (1100, 460), |root| {
        root.fill(&WHITE).map_err(err)?;
        let (left, right) = root.split_horizontally(550);
        let last = report.history.len().max(2) as i32;
        let series = |f: &dyn Fn(&EpochRecord) -> Option<f64>| -> Vec<(i32, f64)> {
            report.history.iter().filter_map(|r| f(r).map(|v| (r.epoch as i32, v))).collect()
        };
        let changes = penalty_changes(&report.history);
        let unit = report.unit.name();
        #[allow(clippy::type_complexity)] // one panel: its area, its name, its two curves
        let panels: [(&DrawingArea<_, _>, &str, Vec<(i32, f64)>, Vec<(i32, f64)>); 2] = [
            (&left, "loss", series(&|r| Some(r.train_loss)), series(&|r| r.val_loss)),
            (&right, "accuracy", series(&|r| Some(r.train_accuracy)), series(&|r| r.val_accuracy)),
        ];
        for (area, name, train, val) in panels {
            let max = train.iter().chain(&val).map(|p| p.1).fold(f64::MIN, f64::max);
            let min = train.iter().chain(&val).map(|p| p.1).fold(f64::MAX, f64::min);
            let (lo, hi) = if name == "accuracy" { (min.clamp(0.0, 1.0) * 0.95, 1.0) } else { (0.0, max * 1.05 + 1e-9) };
            let mut chart = ChartBuilder::on(area)
                .caption(format!("{name} per {unit}"), ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(52)
                .build_cartesian_2d(1..last, lo..hi)
                .map_err(err)?;
            let ticks = (last as usize).min(10);
            // Loss falls and accuracy rises: the legend goes where the curves are not.
            let corner = if name == "loss" { SeriesLabelPosition::LowerLeft } else { SeriesLabelPosition::LowerRight };
            chart
                .configure_mesh()
                .x_labels(ticks)
                .x_label_formatter(&|e| e.to_string())
                .light_line_style(WHITE)
                .bold_line_style(BLACK.mix(0.1))
                .x_desc(unit)
                .y_desc(name)
                .draw()
                .map_err(err)?;
            if changes.len() > 1 {
                let grey = RGBColor(110, 110, 110);
                for (i, &(epoch, l2)) in changes.iter().enumerate() {
                    let line = chart.draw_series(DashedLineSeries::new([(epoch, lo), (epoch, hi)], 3, 4, grey.into())).map_err(err)?;
                    if i == 0 {
                        line.label("L2 penalty (its value) from here").legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], grey));
                    }
                    let style = ("sans-serif", 12).into_font().color(&grey);
                    chart.draw_series([EmptyElement::at((epoch, hi)) + Text::new(short_l2(l2), (3, 2), style)]).map_err(err)?;
                }
            }
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
            let best = report.best_epoch as i32;
            chart
                .draw_series(LineSeries::new([(best, lo), (best, hi)], BLACK.stroke_width(2)))
                .map_err(err)?
                .label(format!("{unit} kept: {best}"))
                .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLACK.stroke_width(2)));
            chart.configure_series_labels().position(corner).background_style(WHITE.mix(0.85)).border_style(BLACK).draw().map_err(err)?;
        }
        Ok(())
    })
}

/// Draws `confusion.png`: rows are true classes, columns predicted ones; each cell is shaded
/// by the share of its row and shows its count. Class names are written in full: the row
/// names level, the column names turned upright.
pub fn confusion_matrix(eval: &Evaluation, path: &Path) -> Result<()> {
    font();
    let err = |e| plot_error(path, e);
    let k = eval.confusion.len().max(1);
    let cell = (560 / k).clamp(24, 64) as i32;
    let longest = eval.per_class.iter().map(|c| text_width(&c.class, 13)).max().unwrap_or(40);
    let (margin_left, margin_top) = (longest + 24, 64 + longest + 12);
    let title = format!("test confusion matrix ({} pictures, accuracy {:.1}%)", eval.rows, 100.0 * eval.accuracy);
    let width = (margin_left + cell * k as i32 + 20).max(text_width(&title, 18) + 20);
    let size = (width, margin_top + cell * k as i32 + 20);
    draw_png(path, (size.0 as u32, size.1 as u32), |root| {
        root.fill(&WHITE).map_err(err)?;
        root.draw(&Text::new(title, (10, 10), ("sans-serif", 18))).map_err(err)?;
        root.draw(&Text::new("rows: true class, columns: predicted", (10, 34), ("sans-serif", 14))).map_err(err)?;
        let upright = ("sans-serif", 13).into_font().transform(FontTransform::Rotate270);
        for (i, c) in eval.per_class.iter().enumerate() {
            let y = margin_top + cell * i as i32 + cell / 2 - 7;
            root.draw(&Text::new(c.class.clone(), (10, y), ("sans-serif", 13))).map_err(err)?;
            let x = margin_left + cell * i as i32 + cell / 2 - 7;
            root.draw(&Text::new(c.class.clone(), (x, margin_top - 6), upright.clone())).map_err(err)?;
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
                let text = n.to_string();
                root.draw(&Text::new(text.clone(), (x0 + cell / 2 - text_width(&text, 13) / 2, y0 + cell / 2 - 7), ("sans-serif", 13))).map_err(err)?;
            }
        }
        Ok(())
    })
}

/// Draws `recall.png`: every class's test recall (its pictures predicted right) as a bar, with
/// its count, and the balanced accuracy (their mean) as a line.
pub fn class_recall(eval: &Evaluation, path: &Path) -> Result<()> {
    font();
    let err = |e| plot_error(path, e);
    let k = eval.per_class.len().max(1);
    let bar = 26;
    let longest = eval.per_class.iter().map(|c| text_width(&c.class, 13)).max().unwrap_or(40);
    let (margin_left, margin_top, plot_w) = (longest + 24, 64, 520);
    let size = (margin_left + plot_w + 110, margin_top + bar * k as i32 + 50);
    draw_png(path, (size.0 as u32, size.1 as u32), |root| {
        root.fill(&WHITE).map_err(err)?;
        let title = format!(
            "test recall per class (balanced accuracy {:.1}%, accuracy {:.1}%, macro F1 {:.3})",
            100.0 * eval.balanced_accuracy,
            100.0 * eval.accuracy,
            eval.macro_f1
        );
        root.draw(&Text::new(title, (10, 10), ("sans-serif", 16))).map_err(err)?;
        root.draw(&Text::new("share of each class's test pictures predicted right", (10, 34), ("sans-serif", 13))).map_err(err)?;
        let x_of = |v: f64| margin_left + (v.clamp(0.0, 1.0) * plot_w as f64) as i32;
        for tick in 0..=10 {
            let x = x_of(tick as f64 / 10.0);
            let y1 = margin_top + bar * k as i32;
            root.draw(&PathElement::new([(x, margin_top), (x, y1)], BLACK.mix(0.12))).map_err(err)?;
            let label = format!("{}%", tick * 10);
            root.draw(&Text::new(label.clone(), (x - text_width(&label, 11) / 2, y1 + 6), ("sans-serif", 11))).map_err(err)?;
        }
        for (i, c) in eval.per_class.iter().enumerate() {
            let y0 = margin_top + bar * i as i32;
            root.draw(&Text::new(c.class.clone(), (10, y0 + bar / 2 - 7), ("sans-serif", 13))).map_err(err)?;
            root.draw(&Rectangle::new([(margin_left, y0 + 4), (x_of(c.accuracy), y0 + bar - 4)], RGBColor(70, 130, 180).filled())).map_err(err)?;
            let label = format!("{:.1}% ({}/{})", 100.0 * c.accuracy, c.correct, c.total);
            root.draw(&Text::new(label, (x_of(c.accuracy) + 6, y0 + bar / 2 - 7), ("sans-serif", 12))).map_err(err)?;
        }
        let x = x_of(eval.balanced_accuracy);
        root.draw(&PathElement::new([(x, margin_top - 4), (x, margin_top + bar * k as i32)], RED.stroke_width(2))).map_err(err)?;
        root.draw(&Text::new("balanced accuracy", (x + 4, margin_top - 16), ("sans-serif", 11).into_font().color(&RED))).map_err(err)?;
        Ok(())
    })
}

/// Draws `reliability.png`: the test pictures binned by their top probability (15 bins); each
/// bin's bar is the share predicted right, against the diagonal of perfect calibration, with
/// the bin's mean confidence marked and its count written; the expected calibration error
/// before and after the temperature in the title. Nothing is drawn without calibration figures.
pub fn reliability_diagram(eval: &Evaluation, path: &Path) -> Result<()> {
    font();
    let err = |e| plot_error(path, e);
    let Some(cal) = &eval.calibration else { return Ok(()) };
    draw_png(path, (620, 620), |root| {
        root.fill(&WHITE).map_err(err)?;
        let before = cal
            .ece_before_temperature
            .map(|b| format!(", {:.1}% before the temperature (scale {:.2})", 100.0 * b, cal.logit_scale.unwrap_or(1.0)))
            .unwrap_or_default();
        let mut chart = ChartBuilder::on(root)
            .caption(format!("reliability on test: ECE {:.1}%{before}", 100.0 * cal.ece), ("sans-serif", 15))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(52)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)
            .map_err(err)?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .bold_line_style(BLACK.mix(0.1))
            .x_desc("confidence (top probability)")
            .y_desc("share predicted right")
            .x_label_formatter(&|v| format!("{v:.1}"))
            .y_label_formatter(&|v| format!("{v:.1}"))
            .draw()
            .map_err(err)?;
        let shown: Vec<_> = cal.bins.iter().filter(|b| b.rows > 0).collect();
        chart
            .draw_series(shown.iter().map(|b| Rectangle::new([(b.lower, 0.0), (b.upper, b.accuracy)], RGBColor(70, 130, 180).filled())))
            .map_err(err)?
            .label("share right, per bin")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], RGBColor(70, 130, 180).filled()));
        chart.draw_series(shown.iter().map(|b| Rectangle::new([(b.lower, 0.0), (b.upper, b.accuracy)], BLACK.mix(0.5)))).map_err(err)?;
        chart
            .draw_series(shown.iter().map(|b| Circle::new((b.confidence, b.accuracy), 4, RED.filled())))
            .map_err(err)?
            .label("mean confidence of the bin")
            .legend(|(x, y)| Circle::new((x + 7, y), 4, RED.filled()));
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.6).stroke_width(1)))
            .map_err(err)?
            .label("perfect calibration")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLACK.mix(0.6)));
        for b in &shown {
            let (x, y) = chart.backend_coord(&((b.lower + b.upper) / 2.0, b.accuracy));
            let label = b.rows.to_string();
            root.draw(&Text::new(label.clone(), (x - text_width(&label, 10) / 2, y - 16), ("sans-serif", 10))).map_err(err)?;
        }
        chart.configure_series_labels().position(SeriesLabelPosition::UpperLeft).background_style(WHITE.mix(0.85)).border_style(BLACK).draw().map_err(err)?;
        Ok(())
    })
}

/// Draws `coverage.png`: accuracy on the test pictures kept against the share kept, as the
/// threshold on each score in `curves` (name, `(kept, accuracy)` points, the most confident
/// first) rises, from 5% kept on (fewer pictures make a noisy start); `at` marks the run's
/// threshold (share kept, accuracy).
pub fn coverage_curves(curves: &[(String, Vec<(f64, f64)>)], at: Option<(f64, f64)>, path: &Path) -> Result<()> {
    font();
    let err = |e| plot_error(path, e);
    let lowest = curves.iter().flat_map(|(_, c)| c.iter().filter(|p| p.0 >= 0.05).map(|p| p.1)).fold(1.0f64, f64::min);
    let floor = ((lowest * 10.0).floor() / 10.0).clamp(0.0, 0.9);
    draw_png(path, (620, 520), |root| {
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(root)
            .caption("accuracy on the test pictures kept", ("sans-serif", 15))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(52)
            .build_cartesian_2d(0.0..1.0, floor..1.0)
            .map_err(err)?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .bold_line_style(BLACK.mix(0.1))
            .x_desc("share of test pictures kept")
            .y_desc("accuracy on them")
            .x_label_formatter(&|v| format!("{v:.1}"))
            .y_label_formatter(&|v| format!("{v:.2}"))
            .draw()
            .map_err(err)?;
        let colours = [RGBColor(70, 130, 180), RGBColor(220, 120, 40), RGBColor(80, 160, 80)];
        for (i, (name, points)) in curves.iter().enumerate() {
            let colour = colours[i % colours.len()];
            chart
                .draw_series(LineSeries::new(points.iter().copied().filter(|p| p.0 >= 0.05), colour.stroke_width(2)))
                .map_err(err)?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
        }
        if let Some((kept, acc)) = at {
            chart
                .draw_series([Circle::new((kept, acc), 5, RED.filled())])
                .map_err(err)?
                .label(format!("the run's threshold: {:.1}% kept, {:.1}% right", 100.0 * kept, 100.0 * acc))
                .legend(|(x, y)| Circle::new((x + 7, y), 4, RED.filled()));
        }
        chart.configure_series_labels().position(SeriesLabelPosition::LowerLeft).background_style(WHITE.mix(0.85)).border_style(BLACK).draw().map_err(err)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::short_l2;

    #[test]
    fn penalty_labels_are_short() {
        let labels: Vec<String> = [1.0, 0.3, 1e-4, 0.0055, 0.17].iter().map(|&v| short_l2(v)).collect();
        assert_eq!(labels, ["1", "3e-1", "1e-4", "5.5e-3", "1.7e-1"]);
    }
}
