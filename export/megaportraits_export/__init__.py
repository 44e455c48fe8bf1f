"""megaportraits_export: the PyTorch side of megaportraits.

Networks faithful to MegaPortraits (Drobyshev et al., 2022), synthetic and real data,
losses, training (one GPU to many nodes), evaluation, and export to an ONNX model bundle
that the ``megaportraits`` SDK runs.
"""
