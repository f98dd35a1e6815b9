use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::error::{CifarError, Result};

/// Side of a CIFAR image in pixels.
pub const IMAGE_SIDE: usize = 32;
/// Colour planes per image (R, G, B).
pub const CHANNELS: usize = 3;
/// Bytes per image: three 32x32 planes.
pub const IMAGE_BYTES: usize = CHANNELS * IMAGE_SIDE * IMAGE_SIDE;

/// A set of labelled images held as `u8`, each image as R, G and B planes (CHW), row-major.
///
/// The whole of CIFAR-10 is ~184 MB this way; it becomes `f32` only one batch at a time.
#[derive(Clone, Debug, PartialEq)]
pub struct LabeledImages {
    pixels: Vec<u8>,
    labels: Vec<u8>,
    num_classes: usize,
}

/// One mini-batch on a device: images `(N, 3, 32, 32)` f32 in `[0, 1]`, one-hot `(N, classes)` f32,
/// class indices `(N,)` u32.
#[derive(Clone, Debug)]
pub struct Batch {
    pub images: Tensor,
    pub one_hot: Tensor,
    pub labels: Tensor,
}

impl LabeledImages {
    /// Checks that `pixels` holds `labels.len()` whole images and every label is below `num_classes`.
    pub fn new(pixels: Vec<u8>, labels: Vec<u8>, num_classes: usize) -> Result<Self> {
        if pixels.len() != labels.len() * IMAGE_BYTES {
            return Err(CifarError::Other(format!(
                "{} pixel bytes do not make {} images of {IMAGE_BYTES} bytes",
                pixels.len(),
                labels.len()
            )));
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= num_classes)
        {
            return Err(CifarError::Other(format!(
                "label {l} of image {i} is out of range for {num_classes} classes"
            )));
        }
        Ok(Self {
            pixels,
            labels,
            num_classes,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The `i`-th image as 3072 bytes: R plane, G plane, B plane.
    pub fn image(&self, i: usize) -> &[u8] {
        &self.pixels[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]
    }

    pub fn label(&self, i: usize) -> u8 {
        self.labels[i]
    }

    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// How many images each class has.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// The images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Self {
        let mut pixels = Vec::with_capacity(indices.len() * IMAGE_BYTES);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Self {
            pixels,
            labels,
            num_classes: self.num_classes,
        }
    }

    /// The images of the classes in `classes` (old labels), in their order, relabelled by
    /// position: `classes[k]` becomes label `k`. Errors on a label out of range or repeated.
    pub fn keep_classes(&self, classes: &[u8]) -> Result<Self> {
        let mut new_label = vec![None; self.num_classes];
        for (k, &c) in classes.iter().enumerate() {
            match new_label.get_mut(c as usize) {
                None => {
                    return Err(CifarError::Other(format!(
                        "class {c} is out of range for {} classes",
                        self.num_classes
                    )))
                }
                Some(Some(_)) => {
                    return Err(CifarError::Other(format!("class {c} is listed twice")))
                }
                Some(slot) => *slot = Some(k as u8),
            }
        }
        let kept: Vec<usize> = (0..self.len())
            .filter(|&i| new_label[self.labels[i] as usize].is_some())
            .collect();
        let mut out = self.select(&kept);
        for l in &mut out.labels {
            *l = new_label[*l as usize].expect("kept images have a new label");
        }
        out.num_classes = classes.len();
        Ok(out)
    }

    /// The first `n` images of each class, in their order (a class with fewer keeps all).
    pub fn first_per_class(&self, n: usize) -> Self {
        let mut seen = vec![0usize; self.num_classes];
        let kept: Vec<usize> = (0..self.len())
            .filter(|&i| {
                let c = &mut seen[self.labels[i] as usize];
                *c += 1;
                *c <= n
            })
            .collect();
        self.select(&kept)
    }

    /// The first `n` images (all of them when `n >= len`).
    pub fn take(&self, n: usize) -> Self {
        let n = n.min(self.len());
        Self {
            pixels: self.pixels[..n * IMAGE_BYTES].to_vec(),
            labels: self.labels[..n].to_vec(),
            num_classes: self.num_classes,
        }
    }

    /// Splits off the last `fraction` of the images, as Keras' `validation_split` does
    /// (before any shuffling): returns `(first part, last part)`.
    pub fn split_last(&self, fraction: f64) -> (Self, Self) {
        // Keras: split_at = int(n * (1 - validation_split)).
        let at = ((self.len() as f64) * (1.0 - fraction.clamp(0.0, 1.0))) as usize;
        let head = self.take(at);
        let tail = Self {
            pixels: self.pixels[at * IMAGE_BYTES..].to_vec(),
            labels: self.labels[at..].to_vec(),
            num_classes: self.num_classes,
        };
        (head, tail)
    }

    /// Reorders the images with a seeded shuffle (the same seed gives the same order everywhere).
    pub fn shuffle(&mut self, seed: u64) {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        *self = self.select(&order);
    }

    pub(crate) fn append(&mut self, other: LabeledImages) {
        self.pixels.extend_from_slice(&other.pixels);
        self.labels.extend_from_slice(&other.labels);
    }

    /// Builds the batch of the images at `indices` on `device`.
    pub fn batch(&self, indices: &[usize], device: &Device) -> Result<Batch> {
        let mut images = Vec::with_capacity(indices.len() * IMAGE_BYTES);
        for &i in indices {
            images.extend(self.image(i).iter().map(|&p| p as f32 / 255.0));
        }
        self.assemble(indices, images, device)
    }

    /// [`LabeledImages::batch`] with each image flipped and shifted as `augment` chooses for
    /// `epoch` (see [`crate::Augmentation`]).
    pub fn augmented_batch(
        &self,
        indices: &[usize],
        device: &Device,
        augment: &crate::Augmentation,
        seed: u64,
        epoch: usize,
    ) -> Result<Batch> {
        let n = indices.len();
        let mut images = Vec::with_capacity(n * IMAGE_BYTES);
        for &i in indices {
            let choice = augment.choice(seed, epoch, i);
            augment.apply(self.image(i), choice, &mut images);
        }
        self.assemble(indices, images, device)
    }

    /// The batch of `images` (f32, CHW per image) with the labels of `indices`.
    fn assemble(&self, indices: &[usize], images: Vec<f32>, device: &Device) -> Result<Batch> {
        let n = indices.len();
        let mut one_hot = vec![0f32; n * self.num_classes];
        let mut labels = Vec::with_capacity(n);
        for (row, &i) in indices.iter().enumerate() {
            let l = self.labels[i];
            one_hot[row * self.num_classes + l as usize] = 1.0;
            labels.push(l as u32);
        }
        Ok(Batch {
            images: Tensor::from_vec(images, (n, CHANNELS, IMAGE_SIDE, IMAGE_SIDE), device)?,
            one_hot: Tensor::from_vec(one_hot, (n, self.num_classes), device)?,
            labels: Tensor::from_vec(labels, n, device)?,
        })
    }

    /// Batches of `batch_size` over all images in order (the last one may be smaller).
    pub fn batches<'a>(
        &'a self,
        batch_size: usize,
        device: &'a Device,
    ) -> impl Iterator<Item = Result<Batch>> + 'a {
        let n = self.len();
        (0..n).step_by(batch_size.max(1)).map(move |start| {
            let idx: Vec<usize> = (start..(start + batch_size).min(n)).collect();
            self.batch(&idx, device)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(n: usize) -> LabeledImages {
        let pixels = (0..n * IMAGE_BYTES)
            .map(|i| (i / IMAGE_BYTES + i % 2) as u8)
            .collect();
        let labels = (0..n).map(|i| (i % 10) as u8).collect();
        LabeledImages::new(pixels, labels, 10).unwrap()
    }

    #[test]
    fn keep_classes_relabels_in_the_order_given_and_first_per_class_limits() {
        // Image i has label i % 10 and first pixel byte i.
        let set = tiny(35);
        let kept = set.keep_classes(&[7, 2]).unwrap();
        assert_eq!(kept.num_classes(), 2);
        // Images 2, 7, 12, 17, … in their order; 7 → 0 and 2 → 1.
        let firsts: Vec<u8> = (0..kept.len()).map(|i| kept.image(i)[0]).collect();
        assert_eq!(firsts, [2, 7, 12, 17, 22, 27, 32]);
        assert_eq!(kept.labels(), [1, 0, 1, 0, 1, 0, 1]);
        let two = kept.first_per_class(2);
        assert_eq!(two.labels(), [1, 0, 1, 0]);
        assert_eq!(two.image(2)[0], 12);
        assert!(set.keep_classes(&[3, 3]).is_err());
        assert!(set.keep_classes(&[10]).is_err());
    }

    #[test]
    fn rejects_label_out_of_range_and_ragged_pixels() {
        assert!(LabeledImages::new(vec![0; IMAGE_BYTES], vec![10], 10).is_err());
        assert!(LabeledImages::new(vec![0; IMAGE_BYTES - 1], vec![1], 10).is_err());
    }

    #[test]
    fn split_last_takes_the_tail_like_keras() {
        let set = tiny(20);
        let (train, val) = set.split_last(0.1);
        assert_eq!(train.len(), 18);
        assert_eq!(val.len(), 2);
        assert_eq!(val.image(0), set.image(18));
        assert_eq!(val.labels(), &set.labels()[18..]);
    }

    #[test]
    fn shuffle_is_seeded_and_keeps_pairs() {
        let set = tiny(30);
        let mut a = set.clone();
        let mut b = set.clone();
        a.shuffle(7);
        b.shuffle(7);
        assert_eq!(a, b);
        assert_ne!(a.labels(), set.labels());
        for i in 0..a.len() {
            // Each image's first pixel is its original index; its label must have moved with it.
            let original = a.image(i)[0] as usize;
            assert_eq!(a.label(i), set.label(original));
        }
    }

    #[test]
    fn batch_scales_pixels_and_one_hot_encodes() {
        let set = tiny(4);
        let b = set.batch(&[3, 1], &Device::Cpu).unwrap();
        assert_eq!(b.images.dims(), &[2, 3, 32, 32]);
        let px: Vec<f32> = b.images.flatten_all().unwrap().to_vec1().unwrap();
        assert!((px[0] - set.image(3)[0] as f32 / 255.0).abs() < 1e-7);
        assert!(px.iter().all(|&p| (0.0..=1.0).contains(&p)));
        let oh: Vec<Vec<f32>> = b.one_hot.to_vec2().unwrap();
        assert_eq!(oh[0][3], 1.0);
        assert_eq!(oh[1][1], 1.0);
        assert_eq!(oh[0].iter().sum::<f32>(), 1.0);
        assert_eq!(b.labels.to_vec1::<u32>().unwrap(), vec![3, 1]);
    }

    #[test]
    fn batches_cover_every_image_once() {
        let set = tiny(10);
        let sizes: Vec<usize> = set
            .batches(4, &Device::Cpu)
            .map(|b| b.unwrap().labels.dims()[0])
            .collect();
        assert_eq!(sizes, vec![4, 4, 2]);
    }
}
