//! One image of any size, made into a model's input the way Keras' `image_dataset_from_directory`
//! does by default: decoded, then `tf.image.resize(image, size)` (bilinear, no antialiasing,
//! half-pixel centres), kept as floats (not rounded back to bytes).

use std::path::Path;

use crate::error::{io_err, CifarError, Result};

/// The largest image file `load_image_for_model` reads (a photo is a few MB).
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;

/// The largest width or height of an image to decode.
pub const MAX_IMAGE_SIDE: u32 = 16_384;

/// `tf.image.resize(..., method="bilinear", antialias=False)` of an interleaved `(h, w, c)`
/// image: TensorFlow's `ResizeBilinear` with `half_pixel_centers=True`. Source coordinates are
/// `(out + 0.5) · in/out − 0.5`; the lower neighbour is clamped at 0, the upper at the last
/// row/column, and the weight is the distance from the floor.
pub fn resize_bilinear(
    src: &[f32],
    (h, w, c): (usize, usize, usize),
    (out_h, out_w): (usize, usize),
) -> Vec<f32> {
    assert_eq!(src.len(), h * w * c, "image buffer and shape disagree");
    struct Tap {
        lower: usize,
        upper: usize,
        lerp: f32,
    }
    let taps = |in_len: usize, out_len: usize| -> Vec<Tap> {
        let scale = in_len as f32 / out_len as f32;
        (0..out_len)
            .map(|o| {
                let x = (o as f32 + 0.5) * scale - 0.5;
                let floor = x.floor();
                Tap {
                    lower: floor.max(0.0) as usize,
                    upper: (x.ceil() as usize).min(in_len - 1),
                    lerp: x - floor,
                }
            })
            .collect()
    };
    let (ys, xs) = (taps(h, out_h), taps(w, out_w));
    let at = |y: usize, x: usize, ch: usize| src[(y * w + x) * c + ch];
    let mut out = Vec::with_capacity(out_h * out_w * c);
    for ty in &ys {
        for tx in &xs {
            for ch in 0..c {
                let top_left = at(ty.lower, tx.lower, ch);
                let top_right = at(ty.lower, tx.upper, ch);
                let bottom_left = at(ty.upper, tx.lower, ch);
                let bottom_right = at(ty.upper, tx.upper, ch);
                let top = top_left + (top_right - top_left) * tx.lerp;
                let bottom = bottom_left + (bottom_right - bottom_left) * tx.lerp;
                out.push(top + (bottom - top) * ty.lerp);
            }
        }
    }
    out
}

/// Decodes the image file at `path`, refusing files over [`MAX_IMAGE_FILE_BYTES`] and images
/// over [`MAX_IMAGE_SIDE`] on a side before their pixels are allocated.
pub(crate) fn decode_bounded(path: &Path) -> Result<image::DynamicImage> {
    let fail = |message: String| CifarError::Decode {
        path: path.into(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    if meta.len() > MAX_IMAGE_FILE_BYTES {
        return Err(fail(format!(
            "{} bytes is larger than the {MAX_IMAGE_FILE_BYTES} bytes an image may have",
            meta.len()
        )));
    }
    let bytes = simplecnn_files::read(path).map_err(io_err(path))?;
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| fail(e.to_string()))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    reader.limits(limits);
    reader.decode().map_err(|e| fail(e.to_string()))
}

/// Reads the image file at `path` (PNG or JPEG, any size) as a model input of `channels` (1 or
/// 3) planes of `height x width`: resized as [`resize_bilinear`] and divided by 255, planar
/// (`C, H, W`) like the training batches.
pub fn load_image_for_model(
    path: &Path,
    height: usize,
    width: usize,
    channels: usize,
) -> Result<Vec<f32>> {
    let fail = |message: String| CifarError::Decode {
        path: path.into(),
        message,
    };
    if channels != 1 && channels != 3 {
        return Err(fail(format!(
            "the model takes {channels} channels; images give 1 (grey) or 3 (RGB)"
        )));
    }
    let img = decode_bounded(path)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return Err(fail(format!("the image is {w}x{h}")));
    }
    let pixels: Vec<f32> = match channels {
        1 => img.to_luma8().into_raw(),
        _ => img.to_rgb8().into_raw(),
    }
    .into_iter()
    .map(f32::from)
    .collect();
    let resized = resize_bilinear(&pixels, (h, w, channels), (height, width));
    let plane = height * width;
    let mut planar = vec![0f32; resized.len()];
    for (i, px) in resized.chunks_exact(channels).enumerate() {
        for (ch, &v) in px.iter().enumerate() {
            planar[ch * plane + i] = v / 255.0;
        }
    }
    Ok(planar)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TensorFlow 2.21.0 (`tf.image.resize`, bilinear, antialias=False) on a 3x4 one-channel
    /// image with values 0, 10, …, 110 (row-major), to 2x3 and to 5x7; printed by
    /// `benches/reference/tf_resize.py` and copied here.
    #[test]
    fn resize_matches_tensorflow() {
        let src: Vec<f32> = (0..12).map(|i| i as f32 * 10.0).collect();
        let down = resize_bilinear(&src, (3, 4, 1), (2, 3));
        let tf_down = [
            11.666667f32,
            25.0,
            38.333336, //
            71.666664,
            85.0,
            98.333336,
        ];
        let up = resize_bilinear(&src, (3, 4, 1), (5, 7));
        let tf_up = [
            0.0f32, 3.5714293, 9.285715, 15.0, 20.714287, 26.428574, 30.0, //
            16.000002, 19.57143, 25.285717, 31.000002, 36.714287, 42.428574, 46.0, //
            40.0, 43.57143, 49.285713, 55.0, 60.714287, 66.42857, 70.0, //
            64.00001, 67.571434, 73.28572, 79.00001, 84.714294, 90.42858, 94.00001, //
            80.0, 83.57143, 89.28571, 95.0, 100.71429, 106.42857, 110.0,
        ];
        for (got, want) in [(down, &tf_down[..]), (up, &tf_up[..])] {
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-3, "{got:?} vs {want:?}");
            }
        }
        // Same size: the image itself.
        assert_eq!(resize_bilinear(&src, (3, 4, 1), (3, 4)), src);
    }

    #[test]
    fn an_image_file_becomes_planar_model_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("red.png");
        let img = image::RgbImage::from_fn(64, 48, |x, _| image::Rgb([255, (x * 4) as u8, 0]));
        img.save(&path).unwrap();
        let x = load_image_for_model(&path, 32, 32, 3).unwrap();
        assert_eq!(x.len(), 3 * 32 * 32);
        assert!(x[..1024].iter().all(|&v| (v - 1.0).abs() < 1e-6));
        assert!(x[2048..].iter().all(|&v| v == 0.0));
        // The green ramp is resized, not clipped: the 2x downscale averages columns 2i, 2i+1.
        assert!(
            (x[1024 + 5] - (4.0 * 10.5) / 255.0).abs() < 1e-5,
            "{}",
            x[1024 + 5]
        );

        let text = dir.path().join("notes.png");
        std::fs::write(&text, "not an image").unwrap();
        let err = load_image_for_model(&text, 32, 32, 3)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("notes.png") && err.contains("not a readable image"),
            "{err}"
        );
        let err = load_image_for_model(dir.path(), 32, 32, 3)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }
}
