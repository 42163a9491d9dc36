"""PyTorch's masked train step of the bench's CIFAR networks, as a yardstick.

It now lives in `sslprune_jax.bench.torch_side`, and is importable from here
as before.
"""

from sslprune_jax.bench.torch_side import available
from sslprune_jax.bench.torch_side import main
from sslprune_jax.bench.torch_side import Remote
from sslprune_jax.bench.torch_side import Stepper

__all__ = ['available', 'main', 'Remote', 'Stepper']

if __name__ == '__main__':
  main()
