"""Stage 1, data: a source becomes checked, split, preprocessed batches.

``sources`` (and ``idx``) turn ``data.source`` into a folder of class folders in Raw_Data, which
is never written to afterwards; ``scan`` accounts for every file (``images`` decodes them the
same way everywhere, ``duplicates`` groups copies) and ``scan_report`` summarises it;
``trained_classes`` decides which class folders are trained; ``split`` makes the stratified,
seeded split that keeps copies together; ``processed`` decodes the split once into shards in
Processed_Data; ``input_pipeline`` streams them as tf.data batches with the augmentation.
"""
