"""One distribution, ``megaportraits``: the SDK, the export side, and the native op library.

The native parts (cpp_ext/) are built by the ``build_ext`` command below; see README.md for
where ONNX Runtime's headers come from.
"""
from setuptools import setup

setup(
    name="megaportraits",
    version="0.1.0",
    description="One-shot neural head avatars (MegaPortraits) on ONNX Runtime",
    python_requires=">=3.10",
    package_dir={"megaportraits": "sdk/megaportraits", "megaportraits_export": "export/megaportraits_export"},
    packages=["megaportraits", "megaportraits_export"],
    install_requires=["numpy>=1.24", "onnxruntime>=1.17", "opencv-python-headless>=4.8", "av>=12", "tqdm>=4.60"],
    extras_require={
        "export": ["torch>=2.4", "onnx>=1.16", "onnxscript>=0.2", "safetensors>=0.4", "tensorboard>=2.14"],
        "gpu": ["onnxruntime-gpu>=1.17"],
        "dev": ["pytest>=7", "onnx>=1.16", "matplotlib>=3.7"],
    },
    entry_points={"console_scripts": ["megaportraits=megaportraits.cli:main"]},
)
