#!/usr/bin/env python3
"""Convert the pinned MoveNet MultiPose Lightning TFLite file to a byte-reproducible ONNX file for the GPU profile.

Why a script and a committed file: ONNX Runtime's CUDA execution provider is how the `gpu` profile runs the pose
network on the granted device, and ONNX Runtime can't read TFLite. The converter (tf2onnx) needs TensorFlow, which
needs numpy 2, while the runtime must keep numpy < 2 (Triton 2.51's Python backend misreads BYTES tensors under
numpy 2). So the conversion runs in a throwaway virtual environment of its own, never in the project's `.venv`.

tf2onnx 1.17 is not byte-reproducible: its generated node, constant and dimension names come from a global counter
whose values depend on the order in which its optimisers walk sets, so two runs give the same graph under different
names and in a different order, and the file's SHA-256 can't be pinned. `canonicalise` removes that noise: every node
gets a structural digest (its op, attributes and the digests of what feeds it), the nodes are put in a topological
order that breaks ties by digest, and every internal name is then derived from the position. Doc strings, the source
path and value_info are dropped, identical constants are stored once. The interface (input and output names) is kept.

Steps, run by the project's interpreter (`.venv/bin/python scripts/convert_movenet_onnx.py`):
  1. check the TFLite file in the weights dir against its pinned SHA-256 (`ruthctl weights fetch` puts it there);
  2. create (once, cached) the conversion venv with exact pins and run stage 3 in it;
  3. tf2onnx to a raw ONNX file, then canonicalise it (the `_convert` sub-command; needs `onnx`, so it runs there);
  4. back in `.venv`: run LiteRT and ONNX Runtime (CPU EP) on reference photographs and require the same people,
     boxes and keypoints within --tolerance pixels;
  5. write the file atomically and print its SHA-256 and size.
`--check` converts again and compares with the committed file instead of writing: that is the reproducibility test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Everything in the conversion venv whose version can change the converted bytes, pinned exactly. These resolve
#: together on CPython 3.11 (checked on this machine); numpy 2 is required by TensorFlow 2.21.
CONVERTER_PINS: tuple[str, ...] = (
    "tensorflow-cpu==2.21.0",
    "tf2onnx==1.17.0",
    "onnx==1.23.2",
    "protobuf==7.36.2",
    "numpy==2.4.6",
    "flatbuffers==25.12.19",
)
OPSET = 13
#: Bump when `canonicalise` changes what it writes (it goes into the file's producer_version).
CANONICAL_VERSION = "1"
DEFAULT_OUTPUT = REPO_ROOT / "models" / "movenet_multipose_lightning.onnx"
DEFAULT_TOLERANCE_PX = 0.01


# ---------------------------------------------------------------------------------------------------------------
# Stage 3: runs inside the conversion venv (stdlib + onnx + numpy only; nothing from this project).


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _tensor_digest(tensor: Any) -> str:
    """Content of a TensorProto, independent of its name and of raw_data vs typed-field storage."""
    from onnx import numpy_helper

    array = numpy_helper.to_array(tensor)
    return _digest(str(tensor.data_type), ",".join(str(d) for d in tensor.dims), array.tobytes())


def _attribute_bytes(attribute: Any) -> bytes:
    """An attribute's canonical serialisation: doc strings and embedded tensor names are noise."""
    from onnx import AttributeProto

    copy = AttributeProto()
    copy.CopyFrom(attribute)
    copy.ClearField("doc_string")
    if copy.HasField("t"):
        copy.t.ClearField("name")
        copy.t.ClearField("doc_string")
    for tensor in copy.tensors:
        tensor.ClearField("name")
        tensor.ClearField("doc_string")
    return bytes(copy.SerializeToString(deterministic=True))


def canonicalise(model: Any, metadata: dict[str, str] | None = None) -> Any:
    """A copy of `model` whose serialisation depends only on the computation, not on converter naming noise.

    Raises ValueError for graphs this does not handle (subgraph attributes, i.e. If/Loop/Scan bodies).
    """
    import onnx
    from onnx import numpy_helper

    source = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in source.node for a in n.attribute):
        raise ValueError("canonicalise does not handle subgraphs (If/Loop/Scan); this network should have none")

    graph_inputs = [i.name for i in source.input]
    graph_outputs = [o.name for o in source.output]
    init_key = {t.name: "const:" + _tensor_digest(t) for t in source.initializer if t.name not in graph_inputs}
    init_tensor = {key: t for t in source.initializer for key in [init_key.get(t.name)] if key is not None}

    # Structural digests, in the (topologically sorted) order the file already has.
    value_key: dict[str, str] = {name: "input:" + name for name in graph_inputs}
    value_key.update(init_key)
    value_key[""] = "absent"
    node_digest: list[str] = []
    for node in source.node:
        missing = [name for name in node.input if name not in value_key]
        if missing:
            raise ValueError(f"node {node.name!r} reads {missing} before they are produced: not a topological order")
        digest = _digest(
            node.domain,
            node.op_type,
            *sorted(_attribute_bytes(a) for a in node.attribute),
            "|".join(value_key[name] for name in node.input),
            str(len(node.output)),
        )
        node_digest.append(digest)
        for index, name in enumerate(node.output):
            if name:
                value_key[name] = f"node:{digest}:{index}"

    # Identical computations (same digest) are merged: keeping both would leave their order, and so the bytes,
    # to chance. Their outputs are equal by construction, so consumers may read either.
    first_of: dict[str, int] = {}
    for index, digest in enumerate(node_digest):
        first_of.setdefault(digest, index)
    keep = sorted(set(first_of.values()))
    digest_of_kept = {i: node_digest[i] for i in keep}

    # Deterministic topological order: Kahn's algorithm, ready nodes taken smallest digest first.
    producer: dict[str, int] = {}
    for i in keep:
        for index, name in enumerate(source.node[i].output):
            if name:
                producer[f"node:{node_digest[i]}:{index}"] = i
    deps: dict[int, set[int]] = {i: set() for i in keep}
    users: dict[int, set[int]] = {i: set() for i in keep}
    for i in keep:
        for name in source.node[i].input:
            parent = producer.get(value_key[name])
            if parent is not None:
                deps[i].add(parent)
                users[parent].add(i)
    ready = sorted((i for i in keep if not deps[i]), key=digest_of_kept.__getitem__)
    order: list[int] = []
    while ready:
        current = ready.pop(0)
        order.append(current)
        for user in users[current]:
            deps[user].discard(current)
            if not deps[user]:
                ready.append(user)
        ready.sort(key=digest_of_kept.__getitem__)
    if len(order) != len(keep):
        raise ValueError("the graph has a cycle")

    # Names from positions. Graph outputs keep their names (the interface callers use).
    output_name_of_key = {value_key[name]: name for name in graph_outputs}
    new_name: dict[str, str] = {"absent": ""}
    new_name.update({"input:" + name: name for name in graph_inputs})
    nodes = []
    const_order: list[str] = []
    for position, i in enumerate(order):
        old = source.node[i]
        label = f"n{position:04d}_{old.op_type}"
        for index, name in enumerate(old.output):
            if name:
                key = f"node:{node_digest[i]}:{index}"
                new_name[key] = output_name_of_key.get(key, f"{label}:{index}")
        inputs = []
        for name in old.input:
            key = value_key[name]
            if key.startswith("const:") and key not in new_name:
                new_name[key] = f"c{len(const_order):04d}"
                const_order.append(key)
            inputs.append(new_name[key])
        node = onnx.helper.make_node(
            old.op_type,
            inputs,
            [new_name[f"node:{node_digest[i]}:{index}"] if name else "" for index, name in enumerate(old.output)],
            name=label,
            domain=old.domain or None,
        )
        for attribute in sorted(old.attribute, key=lambda a: a.name):
            node.attribute.append(onnx.AttributeProto.FromString(_attribute_bytes(attribute)))
        nodes.append(node)

    # Initializers that no node reads but an output does (rare), then none of the unused ones.
    for name in graph_outputs:
        key = value_key[name]
        if key.startswith("const:") and key not in new_name:
            new_name[key] = name
            const_order.append(key)
    initializers = [
        numpy_helper.from_array(numpy_helper.to_array(init_tensor[key]), new_name[key]) for key in const_order
    ]

    dim_names: dict[str, str] = {}

    def clean_value(value: Any) -> Any:
        copy = onnx.ValueInfoProto()
        copy.CopyFrom(value)
        copy.ClearField("doc_string")
        copy.name = new_name[value_key[value.name]] if value.name in value_key else value.name
        if copy.type.HasField("tensor_type"):
            for dim in copy.type.tensor_type.shape.dim:
                if dim.HasField("dim_param"):
                    dim.dim_param = dim_names.setdefault(dim.dim_param, f"d{len(dim_names)}")
                dim.ClearField("denotation")
        return copy

    inputs_out = [clean_value(v) for v in source.input if v.name in graph_inputs]
    outputs_out = [clean_value(v) for v in source.output]
    graph = onnx.helper.make_graph(nodes, "movenet_multipose_lightning", inputs_out, outputs_out, initializers)
    result = onnx.helper.make_model(
        graph,
        opset_imports=sorted(
            (onnx.helper.make_opsetid(o.domain, o.version) for o in model.opset_import), key=lambda o: o.domain
        ),
        producer_name=f"{model.producer_name} {model.producer_version.split()[0]} + ruth canonicalise",
        producer_version=CANONICAL_VERSION,
        ir_version=model.ir_version,
    )
    for key, value in sorted((metadata or {}).items()):
        entry = result.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(result, full_check=True)
    return result


def _stage_convert(tflite: Path, raw: Path, out: Path, metadata: dict[str, str]) -> None:
    """tf2onnx, then canonicalise. Run by the conversion venv's interpreter."""
    import onnx

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_ENABLE_ONEDNN_OPTS="0", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "tf2onnx.convert", "--opset", str(OPSET), "--tflite", str(tflite)]
    subprocess.run([*command, "--output", str(raw)], check=True, env=env)
    # Printed to show the noise: this digest changes from run to run, the canonical one does not.
    print(f"raw tf2onnx output: sha256 {hashlib.sha256(raw.read_bytes()).hexdigest()}  size {raw.stat().st_size}")
    canonical = canonicalise(onnx.load(str(raw)), metadata)
    out.write_bytes(canonical.SerializeToString(deterministic=True))


# ---------------------------------------------------------------------------------------------------------------
# Steps 1, 2, 4, 5: run by the project's interpreter (.venv: numpy < 2, ai-edge-litert, onnxruntime).


def default_venv_dir() -> Path:
    """One conversion venv per set of pins, in the user's cache: built once, reused, safe to delete."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    tag = _digest(sys.version.split()[0], *CONVERTER_PINS)[:12]
    return cache / "ruth-ai" / f"onnx-convert-{tag}"


def ensure_converter_venv(venv: Path) -> Path:
    """The conversion venv's interpreter, creating the venv when it is missing or was built from other pins."""
    python = venv / "bin" / "python"
    marker = venv / "ruth-pins.json"
    if python.is_file() and marker.is_file() and json.loads(marker.read_text()) == list(CONVERTER_PINS):
        return python
    if venv.exists():
        shutil.rmtree(venv)
    print(f"creating the conversion venv {venv} ({', '.join(CONVERTER_PINS)})", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *CONVERTER_PINS], check=True)
    marker.write_text(json.dumps(list(CONVERTER_PINS)))
    return python


def convert(tflite: Path, venv: Path, workdir: Path, metadata: dict[str, str]) -> Path:
    """Run stage 3 in the conversion venv; returns the canonical file inside `workdir`."""
    python = ensure_converter_venv(venv)
    out = workdir / "canonical.onnx"
    command = [str(python), str(Path(__file__).resolve()), "_convert", "--tflite", str(tflite)]
    command += ["--raw", str(workdir / "raw.onnx"), "--out", str(out), "--metadata", json.dumps(metadata)]
    subprocess.run(command, check=True)
    return out


def reference_frames() -> dict[str, Any]:
    """Photographs of people that ship in PyPI packages (BGR, as the runtime receives frames)."""
    import cv2
    import skimage.data
    from matplotlib import cbook

    return {
        "astronaut": cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR),
        "grace_hopper": cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))),
    }


def compare_engines(tflite: Path, onnx_file: Path, tolerance_px: float) -> list[str]:
    """LiteRT on the TFLite file vs ONNX Runtime (CPU EP) on the ONNX file. Returns one line per frame; raises
    AssertionError when the people differ in number or any coordinate differs by `tolerance_px` or more."""
    import numpy as np

    from ruth_vision.pose import PoseEngineConfig, build_engine

    lite = build_engine(PoseEngineConfig(engine="litert", weights=tflite))
    onnx_engine = build_engine(PoseEngineConfig(engine="onnx", weights=onnx_file))
    lines = []
    for name, frame in reference_frames().items():
        expected, actual = lite.infer(frame), onnx_engine.infer(frame)
        if len(expected) != len(actual) or not expected:
            raise AssertionError(f"{name}: LiteRT found {len(expected)} people, ONNX Runtime {len(actual)}")
        pairs = list(zip(actual, expected, strict=True))
        kp = max(float(np.abs(a.keypoints[:, :2] - e.keypoints[:, :2]).max()) for a, e in pairs)
        box = max(float(np.abs(np.subtract(a.box, e.box)).max()) for a, e in pairs)
        score = max(abs(a.score - e.score) for a, e in pairs)
        line = f"{name}: {len(actual)} people, max keypoint diff {kp:.5f} px, box {box:.5f} px, score {score:.6f}"
        if max(kp, box) >= tolerance_px:
            raise AssertionError(f"{line}: over the {tolerance_px} px tolerance")
        lines.append(line)
    return lines


def _sha256(path: Path) -> str:
    """For the stages that run in the conversion venv, which has none of our packages (python_backends.weights)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    stage = sub.add_parser("_convert", help="internal: tf2onnx + canonicalise, inside the conversion venv")
    stage.add_argument("--tflite", type=Path, required=True)
    stage.add_argument("--raw", type=Path, required=True)
    stage.add_argument("--out", type=Path, required=True)
    stage.add_argument("--metadata", default="{}")
    canon = sub.add_parser("canonicalise", help="canonicalise an existing ONNX file (needs `onnx`)")
    canon.add_argument("source", type=Path)
    canon.add_argument("dest", type=Path)
    parser.add_argument("--weights-dir", type=Path, help="where `ruthctl weights fetch` put the TFLite file")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--venv", type=Path, help="conversion venv (default: a cached one per set of pins)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE_PX, help="pixels (default 0.01)")
    parser.add_argument("--check", action="store_true", help="compare with --output instead of writing it")
    args = parser.parse_args(argv)

    if args.command == "_convert":
        _stage_convert(args.tflite, args.raw, args.out, json.loads(args.metadata))
        return 0
    if args.command == "canonicalise":
        import onnx

        args.dest.write_bytes(canonicalise(onnx.load(str(args.source))).SerializeToString(deterministic=True))
        print(_sha256(args.dest))
        return 0

    sys.path.insert(0, str(REPO_ROOT))
    from python_backends import weights as w
    from python_backends.storage import atomic_write_bytes
    from ruthctl.spec import weight_pins

    movenet = w.pin_named(weight_pins(REPO_ROOT / "config" / "models"), "movenet")
    weights_dir = args.weights_dir or w.default_weights_dir()
    tflite = w.verify(weights_dir / movenet.path, movenet)
    metadata = {
        "source": f"{movenet.path} sha256 {movenet.sha256} (MoveNet MultiPose Lightning, Apache-2.0)",
        "converter": f"{' '.join(CONVERTER_PINS)} opset {OPSET}, scripts/convert_movenet_onnx.py",
    }
    with tempfile.TemporaryDirectory(prefix="ruth-onnx-") as tmp:
        converted = convert(tflite, args.venv or default_venv_dir(), Path(tmp), metadata)
        for line in compare_engines(tflite, converted, args.tolerance):
            print(line)
        digest, size = w.sha256_of(converted), converted.stat().st_size
        print(f"sha256 {digest}  size {size}")
        if args.check:
            committed = w.sha256_of(args.output) if args.output.is_file() else "missing"
            if committed != digest:
                print(f"NOT reproducible: {args.output} has sha256 {committed}", file=sys.stderr)
                return 1
            print(f"reproducible: {args.output} has the same sha256")
            return 0
        atomic_write_bytes(args.output, converted.read_bytes())
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
