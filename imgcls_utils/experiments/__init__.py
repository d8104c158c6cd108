"""Many runs, compared: ``notebook_runs`` executes the three notebooks with papermill (one run
of ``imgcls run``), ``sweep`` runs a grid of settings over seeds and ``sweep_report`` turns it
into tables, ``crossval`` trains one model per fold, and ``tables`` writes their Markdown.
"""
