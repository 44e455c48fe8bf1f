"""The exporter's one error: the model cannot be exported, or the export does not match PyTorch."""


class ExportError(RuntimeError):
    """The model cannot be exported, or the export does not match PyTorch."""
