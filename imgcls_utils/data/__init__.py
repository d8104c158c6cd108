"""Stage 1, data: a source becomes checked, split, preprocessed batches.

``sources`` (and ``idx``) turn ``data.source`` into a folder of class folders in Raw_Data, which
is never written to afterwards; ``scan`` accounts for every file (``images`` decodes them the
same way everywhere, ``manifest`` keeps what each file held between scans, ``duplicates`` groups
copies, with candidate pairs from ``lsh``) and ``scan_report`` summarises it; ``trained_classes``
decides which class folders are trained; ``split`` makes the stratified, seeded split that keeps
copies together; ``processed`` decodes the split once into shards (``shards``) in Processed_Data;
``input_pipeline`` streams them as tf.data batches with the augmentation. ``engine`` runs the
tasks of scan, grouping and shards in this process or on a Ray cluster.
"""
