//! Training-time augmentation, applied per batch to the `u8` images (airbench's pre-padded
//! float copy of the data alone is 778 MB): horizontal flips and translations with reflect
//! padding. Every choice comes from a generator seeded by `(seed, epoch, image index)`, so a
//! run repeats exactly whatever the batch order, the batch size or the thread count.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::images::{CHANNELS, IMAGE_SIDE};

/// How images are mirrored left-right.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flip {
    #[default]
    None,
    /// Each image, each epoch, with probability ½.
    Random,
    /// airbench's "alternating flip": a random half of the images (fixed for the run) in
    /// epoch 0; in every odd epoch the whole set mirrored relative to that.
    Alternating,
}

/// What happens to each training image before a step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Augmentation {
    #[serde(default)]
    pub flip: Flip,
    /// Shift by up to this many pixels in each direction (uniform, independently per axis),
    /// the border filled by reflection (PyTorch's `reflect`: the edge pixel is not repeated).
    #[serde(default)]
    pub translate: usize,
}

impl Augmentation {
    pub fn is_none(&self) -> bool {
        self.flip == Flip::None && self.translate == 0
    }

    pub fn validate(&self) -> Result<(), String> {
        match self.translate < IMAGE_SIDE {
            true => Ok(()),
            false => Err(format!(
                "translate {} must be below the image side {IMAGE_SIDE}",
                self.translate
            )),
        }
    }

    /// The flip and the shift `(dy, dx)` of image `index` in `epoch` (0-based).
    pub fn choice(&self, seed: u64, epoch: usize, index: usize) -> (bool, (isize, isize)) {
        let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, epoch as u64, index as u64));
        let flip = match self.flip {
            Flip::None => false,
            Flip::Random => rng.random_bool(0.5),
            Flip::Alternating => {
                // The image's own coin, the same in every epoch.
                let mut own = ChaCha8Rng::seed_from_u64(mix(seed, u64::MAX, index as u64));
                own.random_bool(0.5) ^ (epoch % 2 == 1)
            }
        };
        let r = self.translate as i64;
        let shift = match r {
            0 => (0, 0),
            _ => (
                rng.random_range(-r..=r) as isize,
                rng.random_range(-r..=r) as isize,
            ),
        };
        (flip, shift)
    }

    /// Writes image `pixels` (CHW `u8`) as `f32` in `[0, 1]`, flipped then shifted: output
    /// `(y, x)` takes the flipped image's `(y + dy, x + dx)`, reflected at the borders.
    pub fn apply(
        &self,
        pixels: &[u8],
        (flip, (dy, dx)): (bool, (isize, isize)),
        out: &mut Vec<f32>,
    ) {
        let side = IMAGE_SIDE as isize;
        let reflect = |i: isize| -> usize {
            let i = if i < 0 { -i } else { i };
            (if i >= side { 2 * (side - 1) - i } else { i }) as usize
        };
        for c in 0..CHANNELS {
            let plane = &pixels[c * IMAGE_SIDE * IMAGE_SIDE..(c + 1) * IMAGE_SIDE * IMAGE_SIDE];
            for y in 0..side {
                let row = &plane[reflect(y + dy) * IMAGE_SIDE..][..IMAGE_SIDE];
                for x in 0..side {
                    let sx = reflect(x + dx);
                    let sx = if flip { IMAGE_SIDE - 1 - sx } else { sx };
                    out.push(row[sx] as f32 / 255.0);
                }
            }
        }
    }
}

/// splitmix64 over the three numbers: distinct inputs, unrelated streams.
fn mix(seed: u64, epoch: u64, index: u64) -> u64 {
    let mut z = seed
        ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93).rotate_left(17);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Vec<u8> {
        (0..CHANNELS * IMAGE_SIDE * IMAGE_SIDE)
            .map(|i| (i * 7 % 251) as u8)
            .collect()
    }

    fn at(img: &[f32], c: usize, y: usize, x: usize) -> f32 {
        img[(c * IMAGE_SIDE + y) * IMAGE_SIDE + x]
    }

    #[test]
    fn flip_and_shift_move_pixels_with_reflection() {
        let px = image();
        let orig =
            |c: usize, y: usize, x: usize| px[(c * IMAGE_SIDE + y) * IMAGE_SIDE + x] as f32 / 255.0;
        let aug = Augmentation {
            flip: Flip::Random,
            translate: 2,
        };
        let mut out = Vec::new();
        aug.apply(&px, (false, (0, 0)), &mut out);
        assert_eq!(at(&out, 1, 5, 7), orig(1, 5, 7));
        out.clear();
        aug.apply(&px, (true, (0, 0)), &mut out);
        assert_eq!(at(&out, 2, 3, 0), orig(2, 3, 31));
        out.clear();
        // Shift (dy, dx) = (-2, 1): output (0, 31) reads (-2, 32) → reflected (2, 30).
        aug.apply(&px, (false, (-2, 1)), &mut out);
        assert_eq!(at(&out, 0, 0, 31), orig(0, 2, 30));
        assert_eq!(at(&out, 0, 10, 10), orig(0, 8, 11));
        out.clear();
        // Flipped and shifted: output (4, 0) reads the flipped image at (4, -1) → (4, 1) of the
        // flipped image = (4, 30) of the original.
        aug.apply(&px, (true, (0, -1)), &mut out);
        assert_eq!(at(&out, 0, 4, 0), orig(0, 4, 30));
    }

    #[test]
    fn choices_repeat_for_a_seed_and_alternate_by_epoch() {
        let aug = Augmentation {
            flip: Flip::Alternating,
            translate: 2,
        };
        let flips = |epoch| {
            (0..1000)
                .map(|i| aug.choice(7, epoch, i).0)
                .collect::<Vec<_>>()
        };
        assert_eq!(flips(0), flips(0));
        assert_eq!(flips(0), flips(2));
        let (e0, e1) = (flips(0), flips(1));
        assert!(
            e0.iter().zip(&e1).all(|(a, b)| a != b),
            "odd epochs mirror all"
        );
        let half = e0.iter().filter(|&&f| f).count();
        assert!((400..600).contains(&half), "{half} of 1000 flipped");
        let shifts: Vec<_> = (0..1000).map(|i| aug.choice(7, 0, i).1).collect();
        assert!(shifts
            .iter()
            .all(|&(y, x)| (-2..=2).contains(&y) && (-2..=2).contains(&x)));
        assert!(shifts.contains(&(-2, 2)) && shifts.contains(&(0, 0)));
        assert_ne!(
            shifts,
            (0..1000).map(|i| aug.choice(8, 0, i).1).collect::<Vec<_>>()
        );
        assert_ne!(
            shifts,
            (0..1000).map(|i| aug.choice(7, 1, i).1).collect::<Vec<_>>()
        );
        assert!(Augmentation {
            translate: 32,
            ..aug
        }
        .validate()
        .is_err());
    }
}
