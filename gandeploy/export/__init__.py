"""Export: a trained generator -> ONNX (FP32, FP16) and TensorRT engines whose numbers were checked, described by
manifest.json. `gandeploy export` calls `export`; everything here works without the CLI."""

from .exporter import ExportOptions, add_engine, export
from ..formats.manifest import load_export, load_manifest

__all__ = ["ExportOptions", "add_engine", "export", "load_export", "load_manifest"]
