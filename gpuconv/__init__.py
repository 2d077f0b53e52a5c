"""gpuconv: a GPU-native ConvNet framework."""
__version__ = "0.1.0"
