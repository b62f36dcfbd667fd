"""Drop-in shims with the names and signatures of other libraries, backed by flowfast kernels."""

from flowfast.compat import torchcfm

__all__ = ["torchcfm"]
