"""Export: a trained generator -> ONNX (FP32, FP16) and TensorRT engines whose numbers were checked, described by
manifest.json. `gandeploy export` calls `export`; everything here works without the CLI."""

from ..formats.manifest import load_export, load_manifest
from .exporter import ExportOptions, add_engine, export


def export_module(*args, **kwargs):
    """Export any PyTorch generator module: see gandeploy.export.module.export_module."""
    from .module import export_module as run

    return run(*args, **kwargs)


__all__ = ["ExportOptions", "add_engine", "export", "export_module", "load_export", "load_manifest"]
