"""gandeploy: train GAN generators, export them to ONNX and TensorRT, and sample them in production."""

__version__ = "0.1.0"
