//! `show`: look at the data, as the tutorial does with `plt.imshow(x_train[a])`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use simplecnn_cifar::IMAGE_SIDE;

use crate::data::data_dir;
use crate::pictures::blit;
use crate::plots::register_font;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Split {
    Train,
    Test,
}

#[derive(clap::Args)]
pub struct ShowArgs {
    /// Index of the image to write.
    #[arg(long, default_value_t = 0)]
    pub index: usize,
    #[arg(long, value_enum, default_value = "train")]
    pub split: Split,
    /// Images per class in the grid (1 to 100).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub per_class: u16,
    /// Pixels per image pixel (1 to 64).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub scale: u16,
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, default_value = "results/show")]
    pub out: PathBuf,
}

const CAPTION: usize = 40;

fn save_png(path: &Path, buf: Vec<u8>, w: usize, h: usize) -> Result<()> {
    crate::pictures::save_png(path, buf, w, h)?;
    println!("wrote {}", path.display());
    Ok(())
}

pub fn run(args: ShowArgs) -> Result<()> {
    let (scale, per_class) = (usize::from(args.scale), usize::from(args.per_class));
    let dir = data_dir(args.data);
    let data = simplecnn_cifar::load(&dir)?;
    let (set, split) = match args.split {
        Split::Train => (&data.train, "train"),
        Split::Test => (&data.test, "test"),
    };
    if args.index >= set.len() {
        bail!(
            "--index {} is out of range: the {split} split has {} images",
            args.index,
            set.len()
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    register_font();

    // One image with its class name underneath.
    let side = IMAGE_SIDE * scale;
    let (w, h) = (side.max(200), side + CAPTION);
    let mut buf = vec![255u8; w * h * 3];
    blit(&mut buf, w, ((w - side) / 2, 0), set, args.index, scale);
    let class = &data.class_names[set.label(args.index) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w as u32, h as u32)).into_drawing_area();
        let text = format!(
            "{split}[{}]: {class} ({})",
            args.index,
            set.label(args.index)
        );
        let style = TextStyle::from(("sans-serif", 18).into_font()).pos(
            plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Center,
            ),
        );
        root.draw_text(&text, &style, ((w / 2) as i32, (side + CAPTION / 2) as i32))?;
        root.present()?;
    }
    save_png(
        &args.out.join(format!(
            "{split}-{}-{}.png",
            args.index,
            file_name_part(class)
        )),
        buf,
        w,
        h,
    )?;

    // A grid: one row per class, the first `per_class` images of that class.
    let label_w = 110;
    let cell = IMAGE_SIDE * 3 + 4;
    let classes = data.class_names.len();
    let (gw, gh) = (label_w + per_class * cell, classes * cell);
    let mut grid = vec![255u8; gw * gh * 3];
    for (c, row) in (0..classes).zip(0..) {
        let picks = (0..set.len())
            .filter(|&i| set.label(i) as usize == c)
            .take(per_class);
        for (k, i) in picks.enumerate() {
            blit(
                &mut grid,
                gw,
                (label_w + k * cell + 2, row * cell + 2),
                set,
                i,
                3,
            );
        }
    }
    {
        let root =
            BitMapBackend::with_buffer(&mut grid, (gw as u32, gh as u32)).into_drawing_area();
        for (c, name) in data.class_names.iter().enumerate() {
            root.draw_text(
                name,
                &("sans-serif", 16).into_font().color(&BLACK),
                (6, (c * cell + cell / 2 - 8) as i32),
            )?;
        }
        root.present()?;
    }
    save_png(
        &args.out.join(format!("{split}-samples-per-class.png")),
        grid,
        gw,
        gh,
    )
}

/// A class name (from the data's own files) as part of a file name: letters, digits, `-` and
/// `_` kept, anything else (`/`, `..`'s dots) made `_`, so the picture stays in the folder
/// the user chose.
fn file_name_part(name: &str) -> String {
    name.chars()
        .map(|c| match c.is_alphanumeric() || c == '-' || c == '_' {
            true => c,
            false => '_',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn class_names_cannot_climb_out_of_the_folder() {
        assert_eq!(super::file_name_part("../../etc/x"), "______etc_x");
        assert_eq!(super::file_name_part("automobile"), "automobile");
    }
}
