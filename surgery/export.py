from dataclasses import dataclass
@dataclass
class ExportInfo: pass
def export_onnx(*a, **k): raise NotImplementedError
