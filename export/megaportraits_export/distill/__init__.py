"""Distilling a real-time student from any teacher bundle (issue 14).

Modules: :mod:`.graph` (the ``student`` graph and the student bundle), :mod:`.targets` (the
teacher's cross-driven renderings, run through the SDK), :mod:`.trainer` (the distillation loop:
losses, resume, progress, TensorBoard, torchrun), :mod:`.cli` (``python -m megaportraits_export
distill``).
"""
