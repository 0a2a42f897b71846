"""A trained YOLOX export re-shaped into the YOLOv8-detect layout that `model.detector: onnx` reads.

YOLOX-Nano (Megvii, Apache-2.0; `models/yolox_nano.onnx`, NOTICE) is the one permissively licensed trained
detector we can ship. Its raw ONNX output is [1, A, 5 + C] on grid cells (offsets and log sizes per stride,
objectness, class scores) and it wants BGR 0-255 input. `yolox_as_yolov8` wraps the unchanged network in a few ONNX
nodes so that it takes what `ruth_vision.ppe_detector` feeds (RGB, NCHW, 0-1, letterboxed grey 114) and returns
what it decodes ([1, 4 + C, A]: cx, cy, w, h in input pixels, then objectness x class score per class). The
result is deterministic: the same input file gives the same bytes, so it can be pinned by SHA-256.

`onnx` is imported only here (a build-time/`dev` dependency; serving needs only ONNX Runtime).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["export_yolox_as_yolov8", "yolox_as_yolov8"]


def _grid(size: int, strides: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    cells, scale = [], []
    for stride in strides:
        side = size // stride
        ys, xs = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
        cells.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        scale.append(np.full((side * side, 1), stride))
    return (
        np.concatenate(cells).astype(np.float32)[np.newaxis],
        np.concatenate(scale).astype(np.float32)[np.newaxis],
    )


def yolox_as_yolov8(model: Any, strides: tuple[int, ...] = (8, 16, 32)) -> Any:
    """A new ModelProto: RGB 0-1 in -> BGR 0-255 -> the YOLOX graph -> decoded, transposed [1, 4 + C, A] out."""
    import onnx
    from onnx import helper, numpy_helper

    graph = onnx.GraphProto()
    graph.CopyFrom(model.graph)
    (original_in,) = graph.input
    (original_out,) = graph.output
    size = original_in.type.tensor_type.shape.dim[2].dim_value
    anchors = original_out.type.tensor_type.shape.dim[1].dim_value
    width = original_out.type.tensor_type.shape.dim[2].dim_value
    cells, scale = _grid(size, strides)
    if cells.shape[1] != anchors:
        raise ValueError(f"{anchors} anchors in the output, {cells.shape[1]} from strides {strides} at {size} px")
    raw_in, raw_out = "yolox_bgr255", "yolox_raw"
    for node in graph.node:
        node.input[:] = [raw_in if name == original_in.name else name for name in node.input]
        node.output[:] = [raw_out if name == original_out.name else name for name in node.output]
    constants: dict[str, np.ndarray | tuple[np.ndarray, np.ndarray]] = {
        "c_255": np.array(255.0, np.float32),
        "c_bgr": np.array([2, 1, 0], np.int64),
        "c_cells": cells,
        "c_scale": scale,
        "c_xy": (np.array([0], np.int64), np.array([2], np.int64)),
        "c_wh": (np.array([2], np.int64), np.array([4], np.int64)),
        "c_obj": (np.array([4], np.int64), np.array([5], np.int64)),
        "c_cls": (np.array([5], np.int64), np.array([width], np.int64)),
        "c_axis": np.array([2], np.int64),
    }
    initializers = []
    for name, value in constants.items():
        if isinstance(value, tuple):
            initializers += [
                numpy_helper.from_array(value[0], f"{name}_start"),
                numpy_helper.from_array(value[1], f"{name}_end"),
            ]
        else:
            initializers.append(numpy_helper.from_array(value, name))
    images = "images"
    pre = [
        helper.make_node("Mul", [images, "c_255"], ["rgb255"]),
        helper.make_node("Gather", ["rgb255", "c_bgr"], [raw_in], axis=1),
    ]
    post = [
        helper.make_node("Slice", [raw_out, "c_xy_start", "c_xy_end", "c_axis"], ["xy_off"]),
        helper.make_node("Add", ["xy_off", "c_cells"], ["xy_cells"]),
        helper.make_node("Mul", ["xy_cells", "c_scale"], ["xy"]),
        helper.make_node("Slice", [raw_out, "c_wh_start", "c_wh_end", "c_axis"], ["wh_log"]),
        helper.make_node("Exp", ["wh_log"], ["wh_cells"]),
        helper.make_node("Mul", ["wh_cells", "c_scale"], ["wh"]),
        helper.make_node("Slice", [raw_out, "c_obj_start", "c_obj_end", "c_axis"], ["objectness"]),
        helper.make_node("Slice", [raw_out, "c_cls_start", "c_cls_end", "c_axis"], ["class_scores"]),
        helper.make_node("Mul", ["class_scores", "objectness"], ["scores"]),
        helper.make_node("Concat", ["xy", "wh", "scores"], ["decoded"], axis=2),
        helper.make_node("Transpose", ["decoded"], ["output0"], perm=[0, 2, 1]),
    ]
    new_graph = helper.make_graph(
        [*pre, *graph.node, *post],
        "yolox_as_yolov8_detect",
        [helper.make_tensor_value_info(images, onnx.TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", onnx.TensorProto.FLOAT, [1, 4 + width - 5, anchors])],
        initializer=[*graph.initializer, *initializers],
    )
    wrapped = helper.make_model(new_graph, opset_imports=list(model.opset_import), producer_name="ruth_vision")
    wrapped.ir_version = model.ir_version
    helper.set_model_props(wrapped, {"source": "YOLOX-Nano (Megvii, Apache-2.0)", "layout": "yolov8-detect"})
    onnx.checker.check_model(wrapped, full_check=True)
    return wrapped


def export_yolox_as_yolov8(source: Path) -> bytes:
    """The wrapped network's bytes (deterministic). `source` is a checked copy of YOLOX-Nano: the one `ruthctl
    weights fetch` put in the weights dir against the pose_estimator spec's pin (this package checks no pins and
    writes no files: it takes paths and returns bytes)."""
    import onnx

    return yolox_as_yolov8(onnx.load(str(source))).SerializeToString(deterministic=True)
