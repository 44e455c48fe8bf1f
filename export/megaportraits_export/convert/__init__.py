"""Converters from other projects' released weights into this project's bundles.

``python -m megaportraits_export convert emoportraits ...``: the official EMOPortraits stage-1
model (see :mod:`megaportraits_export.convert.emoportraits`);
``python -m megaportraits_export convert liveportrait ...``: LivePortrait's published weights
(see :mod:`megaportraits_export.convert.liveportrait`).
"""
