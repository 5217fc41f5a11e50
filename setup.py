"""The one thing pyproject.toml cannot say: configs/ and cuda/ sit at the top of the checkout (where
users and docs name them) but install inside the package, as ``binarydm/configs`` and ``binarydm/cuda``.

setuptools' ``packages.find`` cannot add packages that live outside ``binarydm/``, and an explicit
package list in pyproject.toml would have to name every subpackage by hand; so the list is found here
and the two data directories are mapped in. Everything else (metadata, dependencies) is in
pyproject.toml; ``binarydm.resources`` finds the files in both places.
"""

from setuptools import find_packages, setup

DATA_DIRS = {"binarydm.configs": "configs", "binarydm.cuda": "cuda"}

setup(
    packages=find_packages(include=["binarydm", "binarydm.*"]) + list(DATA_DIRS),
    package_dir=DATA_DIRS,
    package_data={
        # The shipped Fashion-MNIST teacher (diffusers format) that the offline demo binarizes, its packed
        # W1A4 student, and the latent miniatures' pipeline directories (one folder per component).
        "binarydm": ["assets/*/*.json", "assets/*/*.safetensors", "assets/*.safetensors",
                     "assets/*/*/*.json", "assets/*/*/*.safetensors", "assets/*/*/*.txt"],
        "binarydm.configs": ["*.yaml"],
        # Sources and headers only: cuda/build/ (cubins built on one machine) stays out.
        "binarydm.cuda": ["*.cu", "*.cuh"],
    },
    include_package_data=False,
)
