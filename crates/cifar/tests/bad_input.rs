//! Every kind of bad input gives an error that names the file; small data made here.

use std::path::Path;

use simplecnn_cifar::{binary, folder, CifarError, ImageFolderOptions, LabeledImages, IMAGE_BYTES};

fn write_png(path: &Path, side: u32, seed: u8) {
    let img = image::RgbImage::from_fn(side, side, |x, y| {
        image::Rgb([seed, (x * 7) as u8, (y * 5) as u8])
    });
    img.save(path).unwrap();
}

/// `root/{train,test}/<class>/<i>.png`, `per_class` images each.
fn make_folders(root: &Path, classes: &[&str], per_class: usize) {
    for split in ["train", "test"] {
        for (c, class) in classes.iter().enumerate() {
            let d = root.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..per_class {
                write_png(&d.join(format!("{i:04}.png")), 32, (c * 20 + i) as u8);
            }
        }
    }
}

fn small_set(n: usize) -> LabeledImages {
    let pixels = (0..n * IMAGE_BYTES).map(|i| (i % 251) as u8).collect();
    LabeledImages::new(pixels, (0..n).map(|i| (i % 10) as u8).collect(), 10).unwrap()
}

fn make_binary(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for f in binary::TRAIN_FILES.iter().chain([&binary::TEST_FILE]) {
        binary::write_batch_file(&dir.join(f), &small_set(n)).unwrap();
    }
}

#[test]
fn image_folders_load_with_cifar_class_order_and_pixels_in_planes() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = ["truck", "airplane", "cat"]; // not all of CIFAR: sorted order
    make_folders(tmp.path(), &classes, 3);
    let opts = ImageFolderOptions {
        shuffle_seed: None,
        ..Default::default()
    };
    let data = folder::load_image_folders(tmp.path(), &opts).unwrap();
    assert_eq!(data.class_names, vec!["airplane", "cat", "truck"]);
    assert_eq!(data.train.len(), 9);
    assert_eq!(data.test.class_counts(), vec![3, 3, 3]);
    // Unshuffled: first image is airplane/0000.png, written with red = 1*20 + 0, green = 7x, blue = 5y.
    let img = data.train.image(0);
    assert_eq!(img[0], 20);
    assert_eq!(img[1024 + 3], 21); // green plane, x = 3
    assert_eq!(img[2048 + 32 * 2], 10); // blue plane, y = 2
}

#[test]
fn all_cifar_classes_follow_label_order_and_shuffle_mixes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sorted = simplecnn_cifar::CLASS_NAMES;
    sorted.sort();
    make_folders(&tmp.path().join("cifar10-jpg"), &sorted, 2);
    let data = simplecnn_cifar::load(tmp.path()).unwrap();
    assert_eq!(data.class_names, simplecnn_cifar::CLASS_NAMES);
    assert_eq!(data.train.class_counts(), vec![2; 10]);
    let labels = data.train.labels();
    assert!(
        labels.windows(2).any(|w| w[0] > w[1]),
        "shuffled order: {labels:?}"
    );
}

#[test]
fn binary_layout_is_detected_and_loaded() {
    let tmp = tempfile::tempdir().unwrap();
    make_binary(&tmp.path().join(binary::BATCHES_DIR), 20);
    let data = binary::load_binary_with(tmp.path(), None).unwrap();
    assert_eq!(data.train.len(), 100);
    assert_eq!(data.test.len(), 20);
    assert_eq!(data.train.image(20), small_set(20).image(0));
    // The official loader insists on 10 000 records per file.
    let err = simplecnn_cifar::load(tmp.path()).unwrap_err();
    assert!(matches!(err, CifarError::WrongSize { .. }), "{err}");
    assert!(err.to_string().contains("data_batch_1.bin"), "{err}");
}

#[test]
fn missing_batch_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    make_binary(tmp.path(), 2);
    std::fs::remove_file(tmp.path().join("data_batch_3.bin")).unwrap();
    let err = binary::load_binary_with(tmp.path(), None).unwrap_err();
    assert!(matches!(err, CifarError::Missing { .. }));
    assert!(err.to_string().contains("data_batch_3.bin"), "{err}");
}

#[test]
fn truncated_and_bad_label_batches_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    make_binary(tmp.path(), 2);
    let f = tmp.path().join("data_batch_2.bin");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes.truncate(bytes.len() - 100);
    std::fs::write(&f, &bytes).unwrap();
    let err = binary::load_binary_with(tmp.path(), None).unwrap_err();
    assert!(matches!(err, CifarError::Truncated { .. }), "{err}");
    assert!(err.to_string().contains("data_batch_2.bin"));

    make_binary(tmp.path(), 2);
    let f = tmp.path().join("test_batch.bin");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[binary::RECORD_BYTES] = 200;
    std::fs::write(&f, &bytes).unwrap();
    let err = binary::load_binary_with(tmp.path(), None).unwrap_err();
    assert!(
        matches!(
            err,
            CifarError::LabelOutOfRange {
                record: 1,
                label: 200,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("test_batch.bin"));
}

#[test]
fn wrongly_sized_image_is_an_error_unless_resizing() {
    let tmp = tempfile::tempdir().unwrap();
    make_folders(tmp.path(), &["a", "b"], 1);
    let odd = tmp.path().join("test/b/odd.png");
    write_png(&odd, 48, 0);
    let opts = ImageFolderOptions::default();
    let err = folder::load_image_folders(tmp.path(), &opts).unwrap_err();
    assert!(
        matches!(
            err,
            CifarError::WrongImageSize {
                width: 48,
                height: 48,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("odd.png"));
    assert!(err.to_string().contains("data.resize"), "{err}");
    let resized = ImageFolderOptions {
        resize: true,
        ..Default::default()
    };
    let data = folder::load_image_folders(tmp.path(), &resized).unwrap();
    assert_eq!(data.test.len(), 3);
}

/// Resizing is TensorFlow's bilinear with half-pixel centres: halving a 64x64 image averages
/// each 2x2 block, so columns 4x (red) become 8o + 2 and rows 2y (green) 4o + 1, exactly.
#[test]
fn resizing_halves_as_tensorflow_does() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("big.png");
    image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 2) as u8, 9]))
        .save(&path)
        .unwrap();
    let planes = folder::decode_image(&path, true).unwrap();
    let plane = 32 * 32;
    for y in 0..32 {
        for x in 0..32 {
            let i = y * 32 + x;
            assert_eq!(planes[i], (8 * x + 2) as u8, "red at {x},{y}");
            assert_eq!(planes[plane + i], (4 * y + 1) as u8, "green at {x},{y}");
            assert_eq!(planes[2 * plane + i], 9);
        }
    }
    // A 32x32 image is used as it is, resize or not.
    write_png(&path, 32, 3);
    assert_eq!(
        folder::decode_image(&path, true).unwrap(),
        folder::decode_image(&path, false).unwrap()
    );
}

#[test]
fn non_image_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    make_folders(tmp.path(), &["a", "b"], 1);
    let bad = tmp.path().join("train/a/notes.jpg");
    std::fs::write(&bad, b"this is not a jpeg").unwrap();
    let err = folder::load_image_folders(tmp.path(), &Default::default()).unwrap_err();
    assert!(matches!(err, CifarError::Decode { .. }), "{err}");
    assert!(err.to_string().contains("notes.jpg"));
}

#[test]
fn empty_class_folder_and_missing_class_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    make_folders(tmp.path(), &["a", "b"], 1);
    std::fs::remove_file(tmp.path().join("test/b/0000.png")).unwrap();
    let err = folder::load_image_folders(tmp.path(), &Default::default()).unwrap_err();
    assert!(err.to_string().contains("no images"), "{err}");
    assert!(err.to_string().contains("test/b"), "{err}");

    std::fs::remove_dir(tmp.path().join("test/b")).unwrap();
    let err = folder::load_image_folders(tmp.path(), &Default::default()).unwrap_err();
    // Both sides are listed.
    assert!(
        err.to_string()
            .contains("class folders (a) are not those of train/ (a, b)"),
        "{err}"
    );
}

#[test]
fn train_folder_without_classes_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("train")).unwrap();
    std::fs::create_dir_all(tmp.path().join("test")).unwrap();
    let err = folder::load_image_folders(tmp.path(), &Default::default()).unwrap_err();
    assert!(err.to_string().contains("no class folders"), "{err}");
}

#[test]
fn folder_without_data_says_how_to_get_it() {
    let tmp = tempfile::tempdir().unwrap();
    let err = simplecnn_cifar::load(tmp.path()).unwrap_err();
    assert!(err.to_string().contains("cargo xtask data"), "{err}");
    let err = simplecnn_cifar::load(&tmp.path().join("nope")).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn batches_without_the_test_batch_name_the_missing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(binary::BATCHES_DIR);
    make_binary(&dir, 3);
    std::fs::remove_file(dir.join(binary::TEST_FILE)).unwrap();
    let err = simplecnn_cifar::load(tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains("test_batch.bin") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn a_batch_file_is_sized_before_it_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("data_batch_1.bin");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(20_000_000_000).unwrap();
    let err = binary::read_batch_file(&path, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("data_batch_1.bin") && err.contains("more than the 1000000 records"),
        "{err}"
    );
    let err = binary::read_batch_file(&path, Some(3))
        .unwrap_err()
        .to_string();
    assert!(err.contains("20000000000 bytes"), "{err}");
    let err = binary::read_batch_file(tmp.path(), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn class_folders_that_cannot_be_classes_are_errors_not_skips() {
    use std::os::unix::ffi::OsStrExt;
    // A link to itself where a class folder would be.
    let tmp = tempfile::tempdir().unwrap();
    make_folders(tmp.path(), &["cat", "dog"], 2);
    let looped = tmp.path().join("train/loop");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    let err = simplecnn_cifar::load(tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains("train/loop") && err.contains("cannot be read"),
        "{err}"
    );

    // A class folder whose name is not UTF-8.
    let tmp = tempfile::tempdir().unwrap();
    make_folders(tmp.path(), &["cat", "dog"], 2);
    let odd = std::ffi::OsStr::from_bytes(b"b\xffd");
    std::fs::create_dir(tmp.path().join("train").join(odd)).unwrap();
    let err = simplecnn_cifar::load(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("not UTF-8"), "{err}");

    // The test split with a class more than train: both lists in the error.
    let tmp = tempfile::tempdir().unwrap();
    make_folders(tmp.path(), &["cat", "dog"], 2);
    std::fs::create_dir(tmp.path().join("test/bird")).unwrap();
    write_png(&tmp.path().join("test/bird/0.png"), 32, 1);
    let err = simplecnn_cifar::load(tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains("bird, cat, dog") && err.contains("(cat, dog)"),
        "{err}"
    );
}
