"""Layers: each owns its parameters and calls ops; nets compose them."""
from .activation import ReLU
from .base import Buffers, Layer, TensorSpec
from .conv import Conv, LocallyConnected
from .fc import FC, Flatten
from .merge import Add, Concat, GlobalAvgPool
from .norm import LRN, BatchNorm, Dropout
from .pool import AvgPool, L2Pool, MaxPool

__all__ = ["Add", "AvgPool", "BatchNorm", "Buffers", "Concat", "Conv", "Dropout", "FC", "Flatten",
           "GlobalAvgPool", "L2Pool", "LRN", "Layer", "LocallyConnected", "MaxPool", "ReLU", "TensorSpec"]
