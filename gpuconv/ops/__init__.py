"""Ops: pure functions on arrays, each with a NumPy path (the spec) and a CUDA path.

Every public op dispatches on where its input lives: NumPy arrays run the NumPy
reference, cupy arrays run the kernels of ``kernels/<op>.cu``.
"""
