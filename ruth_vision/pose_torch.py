"""PyTorch as a pose engine: the pinned MoveNet ONNX file converted to a torch module (onnx2torch), on CPU or CUDA.

Why a third runtime: ONNX Runtime's CUDA build (onnxruntime-gpu with its CUDA/cuDNN wheels) is hundreds of MB and
must match the host's CUDA; many GPU hosts already hold a CUDA build of PyTorch. The same pinned, checksummed ONNX
file (the one ONNX Runtime runs) is converted in memory at load, so there are no new weights to pin, and the output
equals ONNX Runtime's to float precision (tests/unit/ruth_vision/test_pose_torch.py).

Two things the conversion needs, both handled here:
- The graph's convolutions use `auto_pad=SAME_UPPER`, which onnx2torch does not convert. For a fixed input size the
  padding is a number, so it is written out explicitly (`explicit_pads`) before conversion.
- onnx2torch imports `torchvision.ops` at import time for its NMS and RoIAlign converters. MoveNet uses neither, so
  where torchvision is not installed (e.g. the CPU-only torch wheel) a stand-in module that refuses those two ops is
  registered for the import.
"""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np


class TorchEngineError(RuntimeError):
    pass


def explicit_pads(model: Any, input_shape: tuple[int, int, int, int]) -> Any:
    """Replace `auto_pad=SAME_*` on Conv/MaxPool nodes by explicit `pads` for an input of `input_shape` (NHWC)."""
    from onnx import helper, shape_inference

    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, input_shape, strict=True):
        dim.ClearField("dim_param")
        dim.dim_value = value
    inferred = shape_inference.infer_shapes(model)
    shapes = {
        info.name: [d.dim_value for d in info.type.tensor_type.shape.dim]
        for info in [*inferred.graph.value_info, *inferred.graph.input]
    }
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MaxPool"):
            continue
        attrs = {a.name: a for a in node.attribute}
        auto_pad = attrs.get("auto_pad")
        mode = auto_pad.s.decode() if auto_pad is not None else "NOTSET"
        if mode not in ("SAME_UPPER", "SAME_LOWER"):
            continue
        x = shapes.get(node.input[0])
        if not x or 0 in x[2:]:
            raise TorchEngineError(f"no static shape for the input of {node.name} ({x})")
        kernel = (
            list(initializers[node.input[1]].dims[2:]) if node.op_type == "Conv" else list(attrs["kernel_shape"].ints)
        )
        strides = list(attrs["strides"].ints) if "strides" in attrs else [1] * len(kernel)
        dilations = list(attrs["dilations"].ints) if "dilations" in attrs else [1] * len(kernel)
        begins, ends = [], []
        for size, k, s, d in zip(x[2:], kernel, strides, dilations, strict=True):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            low = total // 2 if mode == "SAME_UPPER" else total - total // 2
            begins.append(low)
            ends.append(total - low)
        node.attribute.remove(auto_pad)
        node.attribute.append(helper.make_attribute("pads", begins + ends))
    return model


def _import_onnx2torch() -> Any:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        stand_in, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")

        def absent(*_: Any, **__: Any) -> Any:
            raise TorchEngineError("torchvision is not installed: this graph needs NMS/RoIAlign, MoveNet does not")

        ops.nms = ops.batched_nms = ops.roi_align = absent  # type: ignore[attr-defined]
        stand_in.ops = ops  # type: ignore[attr-defined]
        sys.modules.setdefault("torchvision", stand_in)
        sys.modules.setdefault("torchvision.ops", ops)
    try:
        import onnx2torch
    except ImportError as exc:
        raise TorchEngineError(f"the torch engine needs onnx2torch and onnx ({exc}): the `torch` extra") from exc
    return onnx2torch


class TorchRunner:
    """The ONNX network as a torch module on `device` ('cpu', 'cuda', 'cuda:N'), for one fixed input size."""

    def __init__(self, weights: Path, size: int, device: str = "cpu", threads: int = 2) -> None:
        try:
            import onnx
            import torch
        except ImportError as exc:
            raise TorchEngineError(f"the torch engine needs torch and onnx installed ({exc})") from exc
        onnx2torch = _import_onnx2torch()
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise TorchEngineError(f"{device} was asked for but torch sees no CUDA device")
        if device == "cpu":
            torch.set_num_threads(threads)
        self._torch = torch
        self.device = torch.device(device)
        graph = explicit_pads(onnx.load(str(weights)), (1, size, size, 3))
        self._module = onnx2torch.convert(graph).eval().to(self.device)
        self.size = size
        #: "eager", or "cuda graph" once `capture_cuda_graph` succeeded (one launch per frame instead of ~600)
        self.mode = "eager"
        self._graph: Any = None

    def capture_cuda_graph(self) -> str:
        """On CUDA, record the whole network as one CUDA graph (static shapes: the input size is fixed). Returns the
        mode in use; a graph that can't be captured (an op that syncs with the host) leaves the eager path."""
        torch = self._torch
        if self.device.type != "cuda":
            return self.mode
        try:
            static_in = torch.zeros((1, self.size, self.size, 3), dtype=torch.uint8, device=self.device)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(3):  # warm-up on a side stream, as graph capture requires
                    self._module(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.inference_mode():
                static_out = self._module(static_in)
            self._graph = (graph, static_in, static_out)
            self.mode = "cuda graph"
        except Exception as exc:  # noqa: BLE001 - capture is an optimisation; eager stays correct
            self._graph = None
            self.mode = f"eager (cuda graph capture failed: {type(exc).__name__}: {str(exc)[:160]})"
        return self.mode

    def run(self, tensor: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(tensor))
            if self._graph is not None:
                graph, static_in, static_out = self._graph
                static_in.copy_(x, non_blocking=False)
                graph.replay()
                return np.asarray(static_out.cpu().numpy())
            out = self._module(x.to(self.device))
        return np.asarray(out.detach().cpu().numpy())
