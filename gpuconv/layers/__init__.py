"""Layers: each owns its parameters and calls ops; nets compose them."""
from .activation import ReLU
from .base import Buffers, Layer, TensorSpec
from .conv import Conv, LocallyConnected
from .fc import FC, Flatten
from .norm import LRN, BatchNorm, Dropout
from .pool import AvgPool, L2Pool, MaxPool

__all__ = ["AvgPool", "BatchNorm", "Buffers", "Conv", "Dropout", "FC", "Flatten", "L2Pool", "LRN",
           "Layer", "LocallyConnected", "MaxPool", "ReLU", "TensorSpec"]
