//! The test set's pictures in TensorBoard: when a run has the `tensorboard` callback, the
//! confusion matrix and the most confident mistakes go to `logs/test/` as image summaries at
//! the last epoch's step, beside the training curves.

use std::path::Path;

use anyhow::{Context, Result};
use simplecnn_cifar::LabeledImages;
use simplecnn_tensorboard::EventWriter;
use simplecnn_train::Evaluation;

/// Writes `confusion` and `mistakes` into `<logs>/test/` (replacing what an earlier, killed
/// attempt of the same run wrote there).
pub fn write_test_images(
    logs: &Path,
    step: i64,
    set: &LabeledImages,
    test: &Evaluation,
    class_names: &[String],
) -> Result<()> {
    let dir = logs.join("test");
    let mut writer = EventWriter::continue_in(&dir, |_| false)
        .with_context(|| format!("cannot write TensorBoard logs in {}", dir.display()))?;
    for tag in ["confusion", "mistakes"] {
        let tmp = simplecnn_files::temporary_name(&dir.join(format!("{tag}.png")));
        let drawn = match tag {
            "confusion" => crate::pictures::confusion_png(&tmp, class_names, &test.confusion),
            _ => crate::pictures::mistakes_png(&tmp, set, &test.mistakes, class_names),
        };
        let read = drawn.and_then(|()| {
            let png = simplecnn_files::read(&tmp)?;
            let (w, h) = image::image_dimensions(&tmp)?;
            Ok((png, w, h))
        });
        let _ = std::fs::remove_file(&tmp);
        let (png, w, h) = read?;
        writer
            .png_image(tag, step, &png, w, h)
            .with_context(|| format!("cannot write {}", writer.path().display()))?;
    }
    writer
        .flush()
        .with_context(|| format!("cannot write {}", writer.path().display()))
}
