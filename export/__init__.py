"""edgeprompt.export: ONNX and GGUF exporters and quantizers (installed from the ``export/`` folder)."""
