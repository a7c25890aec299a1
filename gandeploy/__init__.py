"""gandeploy: train GAN generators, export them to ONNX and TensorRT, and sample them in production."""

__version__ = "0.1.0"

__all__ = ["Overloaded", "Sampler", "SamplerError"]


def __getattr__(name: str):
    # lazy, so `import gandeploy` and `gandeploy --help` stay fast and need no torch import
    if name in __all__:
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'gandeploy' has no attribute {name!r}")
