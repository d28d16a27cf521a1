"""Suite-wide settings: one torch thread.

On a loaded 2-core machine, small tensors run many times slower with two intra-op threads
than with one; the tests check behaviour, not speed.
"""
import torch

torch.set_num_threads(1)
