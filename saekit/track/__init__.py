"""SAE-Track (Xu et al. 2024, papers.md §7): a series of SAEs over a model's training checkpoints, each
warm-started from the previous one, and the analyses of how their features form and drift.

* ``config.py``: the ``[track]`` table of a run config, and the checkpoints it names.
* ``series.py``: the series, one engine run per checkpoint, resumable as a whole.
* ``measure.py``: codes, activations and losses of every checkpoint on the same tokens.
* ``report.py``: the results saved as data and plots.

The maths of the analyses (drift, the progress measure, trajectories) is in
:mod:`saekit.analysis.dynamics`.
"""
