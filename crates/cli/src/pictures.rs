//! Pictures of data and of a model's answers: image grids, the confusion matrix as a heat map,
//! the most confident mistakes.

use std::path::Path;

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use simplecnn_cifar::{LabeledImages, IMAGE_SIDE};
use simplecnn_train::Mistake;

use crate::plots::register_font;

/// Copies image `i` of `set`, upscaled `scale` times, into an RGB buffer of width `stride`.
pub fn blit(
    buf: &mut [u8],
    stride: usize,
    (x0, y0): (usize, usize),
    set: &LabeledImages,
    i: usize,
    scale: usize,
) {
    let img = set.image(i);
    let plane = IMAGE_SIDE * IMAGE_SIDE;
    for y in 0..IMAGE_SIDE * scale {
        for x in 0..IMAGE_SIDE * scale {
            let src = (y / scale) * IMAGE_SIDE + x / scale;
            let dst = ((y0 + y) * stride + x0 + x) * 3;
            for c in 0..3 {
                buf[dst + c] = img[c * plane + src];
            }
        }
    }
}

pub fn save_png(path: &Path, buf: Vec<u8>, w: usize, h: usize) -> Result<()> {
    let img = image::RgbImage::from_raw(w as u32, h as u32, buf).context("buffer size")?;
    crate::files::write_atomic(path, |tmp| {
        Ok(img.save_with_format(tmp, image::ImageFormat::Png)?)
    })
}

fn centred(size: u32) -> TextStyle<'static> {
    TextStyle::from(("sans-serif", size).into_font()).pos(Pos::new(HPos::Center, VPos::Center))
}

/// `confusion[true][predicted]` as a labelled heat map: one row per true class, one column per
/// predicted class, the count in each cell, shaded by the share of its row.
pub fn confusion_png(path: &Path, class_names: &[String], confusion: &[Vec<usize>]) -> Result<()> {
    let n = class_names.len();
    if confusion.len() != n || confusion.iter().any(|r| r.len() != n) {
        bail!("the confusion matrix is not {n}x{n} (one row and column per class)");
    }
    register_font();
    let (cell_w, cell_h) = (84usize, 44usize);
    let (left, top, bottom) = (120usize, 84usize, 16usize);
    let (w, h) = (left + n * cell_w + 16, top + n * cell_h + bottom);
    let mut buf = vec![255u8; w * h * 3];
    let total: usize = confusion.iter().flatten().sum();
    let correct: usize = (0..n).map(|c| confusion[c][c]).sum();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w as u32, h as u32)).into_drawing_area();
        let title = format!(
            "Confusion matrix: {total} images, {correct} right ({:.2} %)",
            100.0 * correct as f64 / total.max(1) as f64
        );
        root.draw_text(&title, &centred(20), ((w / 2) as i32, 18))?;
        root.draw_text(
            "true \u{2193}   predicted \u{2192}",
            &centred(13),
            ((left / 2) as i32, (top - 20) as i32),
        )?;
        for (c, name) in class_names.iter().enumerate() {
            let x = (left + c * cell_w + cell_w / 2) as i32;
            root.draw_text(name, &centred(13), (x, (top - 20) as i32))?;
            let y = (top + c * cell_h + cell_h / 2) as i32;
            let style = TextStyle::from(("sans-serif", 14).into_font())
                .pos(Pos::new(HPos::Right, VPos::Center));
            root.draw_text(name, &style, ((left - 8) as i32, y))?;
        }
        for (t, row) in confusion.iter().enumerate() {
            let row_total = row.iter().sum::<usize>().max(1) as f64;
            for (p, &count) in row.iter().enumerate() {
                let share = count as f64 / row_total;
                // White to a deep blue by the share of the row.
                let mix = |full: f64, none: f64| (none + (full - none) * share).round() as u8;
                let colour = RGBColor(mix(8.0, 255.0), mix(48.0, 255.0), mix(107.0, 255.0));
                let (x0, y0) = ((left + p * cell_w) as i32, (top + t * cell_h) as i32);
                let (x1, y1) = (x0 + cell_w as i32 - 1, y0 + cell_h as i32 - 1);
                root.draw(&Rectangle::new([(x0, y0), (x1, y1)], colour.filled()))?;
                root.draw(&Rectangle::new(
                    [(x0, y0), (x1, y1)],
                    RGBColor(200, 200, 200).stroke_width(1),
                ))?;
                let ink = if share > 0.5 { WHITE } else { BLACK };
                root.draw_text(
                    &count.to_string(),
                    &centred(15).color(&ink),
                    (x0 + cell_w as i32 / 2, y0 + cell_h as i32 / 2),
                )?;
            }
        }
        root.present()?;
    }
    save_png(path, buf, w, h)
}

/// How many mistakes `mistakes_png` shows, in rows of [`MISTAKE_COLUMNS`].
pub const MISTAKES_SHOWN: usize = 36;
pub const MISTAKE_COLUMNS: usize = 6;

/// A grid of the images of `set` that `mistakes` names (most confident first), each upscaled 4x
/// and captioned "true → predicted (p)".
pub fn mistakes_png(
    path: &Path,
    set: &LabeledImages,
    mistakes: &[Mistake],
    class_names: &[String],
) -> Result<()> {
    let shown = &mistakes[..mistakes.len().min(MISTAKES_SHOWN)];
    for m in shown {
        if m.index >= set.len() || m.label >= class_names.len() || m.predicted >= class_names.len()
        {
            bail!("mistake {m:?} does not name an image and classes of this set");
        }
    }
    register_font();
    let scale = 4;
    let side = IMAGE_SIDE * scale;
    let (cell_w, cell_h, top) = (210usize, side + 34, 44usize);
    let rows = shown.len().div_ceil(MISTAKE_COLUMNS).max(1);
    let (w, h) = (MISTAKE_COLUMNS * cell_w, top + rows * cell_h);
    let mut buf = vec![255u8; w * h * 3];
    for (k, m) in shown.iter().enumerate() {
        let (col, row) = (k % MISTAKE_COLUMNS, k / MISTAKE_COLUMNS);
        let origin = (col * cell_w + (cell_w - side) / 2, top + row * cell_h + 4);
        blit(&mut buf, w, origin, set, m.index, scale);
    }
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w as u32, h as u32)).into_drawing_area();
        let title = match shown.len() {
            0 => "No mistakes".to_string(),
            n => format!("The {n} most confident mistakes: true \u{2192} predicted (probability)"),
        };
        root.draw_text(&title, &centred(20), ((w / 2) as i32, top as i32 / 2))?;
        for (k, m) in shown.iter().enumerate() {
            let (col, row) = (k % MISTAKE_COLUMNS, k / MISTAKE_COLUMNS);
            let caption = format!(
                "{} \u{2192} {} ({:.2})",
                class_names[m.label], class_names[m.predicted], m.probability
            );
            let x = (col * cell_w + cell_w / 2) as i32;
            let y = (top + row * cell_h + side + 4 + 15) as i32;
            root.draw_text(&caption, &centred(14), (x, y))?;
        }
        root.present()?;
    }
    save_png(path, buf, w, h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("class{i}")).collect()
    }

    /// Reads the PNG back: its size, and how many of its pixels are not white.
    fn ink(path: &Path) -> (u32, u32, usize) {
        let img = image::open(path).unwrap().to_rgb8();
        let inked = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        (img.width(), img.height(), inked)
    }

    #[test]
    fn confusion_png_is_drawn_and_a_bad_matrix_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("confusion.png");
        let confusion = vec![vec![5, 1, 0], vec![0, 6, 0], vec![2, 2, 2]];
        confusion_png(&path, &names(3), &confusion).unwrap();
        let (w, h, inked) = ink(&path);
        assert_eq!((w, h), (120 + 3 * 84 + 16, 84 + 3 * 44 + 16));
        // Three full cells (5/6, 6/6 and none above 1/2 in the last row) are dark, and text.
        assert!(inked > 3 * 84 * 44, "{inked} pixels inked");
        let err = confusion_png(&path, &names(2), &confusion).unwrap_err();
        assert!(err.to_string().contains("not 2x2"), "{err}");
    }

    #[test]
    fn mistakes_png_shows_the_images_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mistakes.png");
        let n = 8;
        let pixels: Vec<u8> = (0..n * 3 * IMAGE_SIDE * IMAGE_SIDE)
            .map(|i| (i % 251) as u8)
            .collect();
        let set = LabeledImages::new(pixels, vec![0; n], 2).unwrap();
        let mistakes: Vec<Mistake> = (0..7)
            .map(|i| Mistake {
                index: i,
                label: 0,
                predicted: 1,
                probability: 0.9,
            })
            .collect();
        mistakes_png(&path, &set, &mistakes, &names(2)).unwrap();
        let (w, h, inked) = ink(&path);
        assert_eq!((w, h), (6 * 210, 44 + 2 * (128 + 34)));
        assert!(inked >= 7 * 128 * 128 / 2, "{inked} pixels inked");
        let bad = [Mistake {
            index: 99,
            ..mistakes[0].clone()
        }];
        assert!(mistakes_png(&path, &set, &bad, &names(2)).is_err());
    }
}
