"""The official EMOPortraits stage-1 base model (Samsung, CVPR 2024; CC BY-NC-SA 4.0) as a bundle.

- :mod:`.networks`: their networks' layout in inference form, written here (no code of theirs);
- :mod:`.model`: the three branches the exporter turns into graphs;
- :mod:`.folds`: spectral norm, weight standardisation and BatchNorm folded into plain weights;
- :mod:`.keymap`: every key of their state dict -> ours (or deliberately dropped);
- :mod:`.command`: ``python -m megaportraits_export convert emoportraits``.
"""
LICENCE = "CC BY-NC-SA 4.0"
SOURCE_REPOSITORY = "https://github.com/neeek2303/EMOPortraits"
