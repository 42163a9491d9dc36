"""XLA compiler options of the train and eval steps, chosen per backend.

Every option set here was measured with `python -m sslprune_jax.bench
--sections=options` (masked train step, alternating blocks in one process)
and kept only where it won; the bench's README table has the figures.

On CPU, XLA's default leaves convolutions, the elementwise work around them
(batch norm, ReLU, the masked SGD update) and reductions to its own emitters
and Eigen. Turning on XLA:CPU's YNNPACK fusions of dots, elementwise ops and
reductions (`xla_cpu_experimental_ynn_fusion_type`) hands those fusions to
YNNPACK, and with them the layout work of the convolutions; on the 2-core
AVX-512 machine, with XLA's convolutions, the CIFAR ResNet-18 step runs
1.6x faster at width 1 and 1.2x at width 1/4, ResNet-50's 1.4x, and the
`:quick` network's step at the same speed within noise. Where the
convolutions are oneDNN's custom calls (`model.conv_impl`, see
`sslprune_jax.kernels`) what is left is elementwise work and reductions,
which XLA's own fusions do faster than YNNPACK's (`--sections=kernels`
with `--xla_options=none` and `cpu_ynn`): there 'auto' is XLA's defaults.
Results equal the default's to float rounding (tests/test_xla_options.py).

GPU and TPU keep XLA's defaults: no measurement there says otherwise.

Options travel with each program (`jax.jit(..., compiler_options=...)`),
not through the process-wide `XLA_FLAGS`, so a notebook that has already
started JAX gets them too, and other programs in the process are untouched.
"""

from __future__ import annotations

from typing import Any

# `xla_cpu_experimental_ynn_fusion_type` takes a comma-separated list of the
# proto enum's names (the short forms only work in XLA_FLAGS).
_YNN_FUSIONS = ','.join(
    f'LIBRARY_FUSION_TYPE_{kind}' for kind in ('DOT', 'ELTWISE', 'REDUCE')
)

# Named option sets; 'auto' picks one per platform and convolution
# implementation (`AUTO`; XLA's defaults where it has no entry).
PRESETS: dict[str, dict[str, Any]] = {
    'none': {},
    'cpu_ynn': {'xla_cpu_experimental_ynn_fusion_type': _YNN_FUSIONS},
}
AUTO = {('cpu', 'xla'): 'cpu_ynn'}
CHOICES = ('auto', *PRESETS)


# Programs run once per run (initialising the variables): XLA:CPU's LLVM
# optimisations cost 3.7 s of compile for the :quick network's init and win
# nothing back; at level 0 it compiles in 1.0 s (values equal to 1 ulp).
_ONE_OFF = {'cpu': {'xla_backend_optimization_level': 0}}


def one_off_options(platform: str) -> dict[str, Any] | None:
  """`compiler_options` of programs that run once (None: XLA's defaults)."""
  return dict(_ONE_OFF.get(platform, {})) or None


def preset_for(choice: str, platform: str, conv_impl: str = 'xla') -> str:
  """The preset `choice` means on `platform` ('cpu', 'gpu', 'tpu', ...)
  for a network whose convolutions are `conv_impl`'s ('xla', 'onednn').

  Raises:
    ValueError: an unknown choice, or a CPU preset forced on another
      platform (its options mean nothing there).
  """
  if choice not in CHOICES:
    raise ValueError(
        f'Unknown train.xla_options {choice!r}; valid: ' f'{CHOICES}.'
    )
  if choice == 'auto':
    return AUTO.get((platform, conv_impl), 'none')
  if choice not in presets_for(platform):
    raise ValueError(
        f'train.xla_options={choice!r} is for the CPU; the '
        f'devices are {platform!r}.'
    )
  return choice


def presets_for(platform: str) -> tuple[str, ...]:
  """The presets that mean something on `platform` (the `cpu_` ones only
  on the CPU)."""
  return tuple(
      name
      for name in PRESETS
      if not name.startswith('cpu_') or platform == 'cpu'
  )


def compiler_options(
    choice: str, platform: str, conv_impl: str = 'xla'
) -> dict[str, Any] | None:
  """`jax.jit`'s `compiler_options` for `choice` on `platform` with
  `conv_impl`'s convolutions (None: XLA's defaults)."""
  return dict(PRESETS[preset_for(choice, platform, conv_impl)]) or None
