"""Studies from the SAE papers, one module each, each with ``run(...) -> Result`` (save, load, plot).

* :mod:`~saekit.analysis.matching`: cosine matrices and Hungarian matching, shared by the studies.
* :mod:`~saekit.analysis.dark_matter`: how much of an SAE's error is linearly predictable (papers.md §2).
* :mod:`~saekit.analysis.seed_stability`: which latents SAEs trained with different seeds share (§5).
* :mod:`~saekit.analysis.cross_layer`: SAE Match, features matched across adjacent layers (§10).
* :mod:`~saekit.analysis.steering`: steering vectors, their SAE decomposition and its pathologies (§9).
"""
