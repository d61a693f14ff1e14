"""The torch bridge (extra ``[torch]``): an ONNX graph as a ``torch.nn.Module`` whose parameters are the graph's
float weights, and the write-back of trained values into the same initializers (:mod:`.module`); the operators
are in :mod:`.math_ops`, :mod:`.nn_ops`, :mod:`.shape_ops` and, for onnxruntime's ``com.microsoft`` operators,
:mod:`.contrib_ops`."""
from onnxprune.training.bridge.module import OnnxModule, unsupported_ops, write_back

__all__ = ["OnnxModule", "unsupported_ops", "write_back"]
