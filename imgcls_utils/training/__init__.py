"""Stage 2, training: processed data becomes a model folder in Trained_Models.

``recipe`` is the run from start to end (``TrainingRun``), made of: ``hardware`` (strategy,
precision, XLA), ``models`` (the network for ``model.family``), ``loop`` (optimizer, schedule,
loss, callbacks, the resumable fit), ``checkpoints`` (the per-epoch state a run resumes from),
``baselines`` (classical models on the same split) and ``model_folders`` (the folder's layout,
saving it atomically, loading it with integrity checks).
"""
