"""Build script.  The metadata and dependencies are in setup.cfg; this file only adds what
setup.cfg cannot say: the CUDA sources live in the top-level ``kernels/`` folder, and a wheel
(or a non-editable install) carries them as package data in ``gpuconv/_kernels``, where
``gpuconv.cuda`` looks when there is no checkout beside the package."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["gpuconv", "gpuconv.*"]) + ["gpuconv._kernels"],
    package_dir={"gpuconv._kernels": "kernels"},
    package_data={
        "gpuconv._kernels": ["*.cu", "*.cuh"],
        "gpuconv.emu": ["*.h", "*.cuh"],   # the emulator's stand-in headers
    },
)
