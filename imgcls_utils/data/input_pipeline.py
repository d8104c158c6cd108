"""The input pipeline: Processed_Data shards -> tf.data batches, and the training augmentation.

Records are parsed in parallel, cached in memory as uint8 when they fit, shuffled (training),
batched, augmented on the fly (training only) and prefetched. Pixels stay in [0, 255]: every
model scales them itself, so a saved model needs nothing but an image.
"""

from __future__ import annotations

from ..config import Config, Section
from .processed import ProcessedData
from .split import SPLITS

READ_BUFFER_BYTES = 1 << 20
STATISTICS = "statistics"
# Training images the batch-norm statistics are recomputed on before each validation: enough for
# the averages to settle (a convolution's are averaged over every position of every image too),
# few enough to cost little. 4,096 made the refresh a fifth of each epoch on 5,600 Fashion-MNIST
# images (``bench/training.py --only wrappers``); 1,280 is 20 batches of the default 64, all of
# the digits' 1,257 training images.
STATISTICS_IMAGES = 1280


def should_cache(processed: ProcessedData, data: Section) -> bool:
    """Whether to keep the decoded images in memory: ``data.cache``, where ``auto`` means when
    the decoded images of all splits fit within ``data.cache_budget_mb``; otherwise every epoch
    streams from the shards."""
    if data.cache == "auto":
        return processed.decoded_bytes() <= data.cache_budget_mb * (1 << 20)
    return data.cache


def make_datasets(cfg: Config, processed: ProcessedData) -> dict:
    """Train (shuffled, augmented), val and test datasets of a processed dataset, and
    ``statistics``: a shuffled sample of unaugmented training batches, the images the model sees
    at inference time, for recomputing batch-norm statistics."""
    augmentation = build_augmentation(cfg.augment, cfg.data.seed)
    cache = should_cache(processed, cfg.data)
    datasets = {split: make_dataset(processed, split, cfg.train.batch_size,
                                    training=split == "train", cache=cache,
                                    augmentation=augmentation, seed=cfg.data.seed,
                                    min_steps=cfg.train.min_steps_per_epoch)
                for split in SPLITS}
    batches = -(-min(STATISTICS_IMAGES, processed.count("train")) // cfg.train.batch_size)
    # Not cached: it reads only its first batches (the shards are in random order) each time.
    datasets[STATISTICS] = make_dataset(
        processed, "train", cfg.train.batch_size, training=True, cache=False,
        seed=cfg.data.seed).map(lambda images, labels: images).take(batches)
    return datasets


def make_dataset(processed: ProcessedData, split: str, batch_size: int, *, training: bool = False,
                 augmentation=None, cache: bool = True, seed: int = 0, min_steps: int = 1):
    """Stream one split as batches of ``(float32 pixels in [0, 255], int label)``.

    Records are parsed in parallel (serially when op determinism meets a stateful
    augmentation, as tf.data would run them anyway) and, with ``cache``, kept in memory as uint8
    after the first epoch. Training batches are shuffled, reshuffled passes over the split are chained until an
    epoch has at least ``min_steps`` batches, and, when ``augmentation`` is given, batches are
    augmented on the fly; validation and test batches are never augmented and keep the
    manifest's order (``processed.paths(split)``): their shards are read one after the other.
    """
    from tensorflow.python.framework.config import is_op_determinism_enabled

    from ..quiet_tensorflow import tf

    autotune = tf.data.AUTOTUNE
    # Under op determinism tf.data runs a pipeline serially when one of its functions keeps state
    # (the augmentation layers' seed generators are variables): it rewrites each parallel map
    # into a plain one, and TensorFlow 2.21's rewrite logs "E0000 ... NodeDef mentions attribute
    # use_unbounded_threadpool" on every run. Build the serial pipeline it would run anyway.
    parallel = (None if training and augmentation is not None and is_op_determinism_enabled()
                else autotune)
    shape = processed.input_shape
    features = {"image": tf.io.FixedLenFeature([], tf.string),
                "label": tf.io.FixedLenFeature([], tf.int64)}

    def parse(record):
        example = tf.io.parse_single_example(record, features)
        return tf.reshape(tf.io.decode_raw(example["image"], tf.uint8), shape), example["label"]

    def to_float(images, labels):
        images = tf.cast(images, tf.float32)
        if training and augmentation is not None:
            images = augmentation(images, training=True)
        return images, labels

    dataset = tf.data.TFRecordDataset(processed.shards(split), buffer_size=READ_BUFFER_BYTES,
                                      num_parallel_reads=autotune if training else None)
    # A known length lets Keras size its epochs instead of running into the end of the data.
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(processed.count(split)))
    dataset = dataset.map(parse, num_parallel_calls=parallel)
    if cache:
        dataset = dataset.cache()  # uint8: a quarter of the memory float32 would take
    if training:
        dataset = dataset.shuffle(4 * batch_size + 1024, seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.repeat(passes_per_epoch(processed.count(split), batch_size, min_steps))
    dataset = dataset.batch(batch_size).map(to_float, num_parallel_calls=parallel)
    return dataset.prefetch(autotune)


def passes_per_epoch(images: int, batch_size: int, min_steps: int) -> int:
    """Passes over ``images`` that make an epoch of at least ``min_steps`` batches. Why: on a
    few hundred images an epoch is a handful of steps, too few between the validations that
    early stopping and the learning-rate schedule act on (and for batch-norm statistics)."""
    return max(1, -(-min_steps * batch_size // max(images, 1)))


def build_augmentation(augment: Section, seed: int):
    """The ``augment`` section as a Keras preprocessing pipeline, or None when it is disabled."""
    from ..quiet_tensorflow import keras

    layers = keras.layers
    steps = []
    if augment.flip != "none":
        steps.append(layers.RandomFlip(augment.flip, seed=seed, name="random_flip"))
    if augment.rotation:
        steps.append(layers.RandomRotation(augment.rotation, fill_mode="constant", seed=seed,
                                           name="random_rotation"))
    if augment.zoom:
        steps.append(layers.RandomZoom(augment.zoom, fill_mode="constant", seed=seed,
                                       name="random_zoom"))
    if augment.translation:
        steps.append(layers.RandomTranslation(augment.translation, augment.translation,
                                              fill_mode="constant", seed=seed,
                                              name="random_translation"))
    if augment.contrast:
        steps.append(layers.RandomContrast(augment.contrast, value_range=(0, 255), seed=seed,
                                           name="random_contrast"))
    if not augment.enabled or not steps:
        return None
    return keras.Sequential(steps, name="augmentation")
