"""Model files of a slim network: ``pt``, ``torchscript`` and ``onnx``, and loading them back.

* ``pt``: a plain dict for ``torch.load(weights_only=True)``: the network as a small list of graph
  operations on standard ``torch.nn`` modules and torch functions (``graph``), its weights
  (``state_dict``) and its metadata (class names, input normalisation, input shape, the JSON
  description). :func:`load_model` rebuilds it with nothing but torch: no pgnas super-network
  class, no pickled code.
* ``torchscript``: ``torch.jit.save`` of the scripted network, metadata as the extra file
  ``pgnas_meta.json``; loads with ``torch.jit.load`` alone.
* ``onnx``: the network with a dynamic batch dimension, metadata in the model's
  ``metadata_props``; needs the optional ``onnx`` extra. When onnxruntime is installed the file is
  run and compared with the PyTorch outputs before it is kept.
"""

from __future__ import annotations

import builtins
import inspect
import io
import json
import operator
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.nn import functional as F

from pgnas.errors import PgnasError

FORMAT = "pgnas-slim-model"
VERSION = 1
FORMATS = ("pt", "torchscript", "onnx")
SUFFIX = {"pt": ".pt", "torchscript": ".torchscript.pt", "onnx": ".onnx"}
META_FILE = "pgnas_meta.json"

# Namespaces a graph's functions may come from, with the names of the few builtins allowed.
_NAMESPACES: dict[str, Any] = {"operator": operator, "torch": torch, "torch.nn.functional": F, "torch._C._nn": torch._C._nn}
_BUILTINS = {"getattr": builtins.getattr}


# ---------------------------------------------------------------------------------- graph <-> op list
def _function_name(fn: Callable) -> str:
    for bname, b in _BUILTINS.items():
        if fn is b:
            return f"builtins:{bname}"
    for ns_name, ns in _NAMESPACES.items():
        name = getattr(fn, "__name__", None)
        if name and getattr(ns, name, None) is fn:
            return f"{ns_name}:{name}"
    for ns_name, ns in _NAMESPACES.items():  # aliases (e.g. F.relu_ == torch.relu_)
        for name in dir(ns):
            if not name.startswith("_") and getattr(ns, name, None) is fn:
                return f"{ns_name}:{name}"
    raise PgnasError(f"cannot save the slim model: function {fn!r} is not from torch or operator")


def _resolve_function(name: str) -> Callable:
    ns_name, _, attr = name.partition(":")
    if ns_name == "builtins":
        if attr in _BUILTINS:
            return _BUILTINS[attr]
    elif ns_name in _NAMESPACES and not attr.startswith("_"):
        fn = getattr(_NAMESPACES[ns_name], attr, None)
        if callable(fn):
            return fn
    raise PgnasError(f"model file names an unknown function {name!r}")


def _encode(a: Any) -> Any:
    if isinstance(a, fx.Node):
        return {"node": a.name}
    if isinstance(a, slice):
        return {"slice": [_encode(a.start), _encode(a.stop), _encode(a.step)]}
    if a is Ellipsis:
        return {"ellipsis": True}
    if isinstance(a, tuple):
        return {"tuple": [_encode(x) for x in a]}
    if isinstance(a, list):
        return [_encode(x) for x in a]
    if isinstance(a, dict):
        return {"dict": {str(k): _encode(v) for k, v in a.items()}}
    if a is None or isinstance(a, (bool, int, float, str)):
        return a
    raise PgnasError(f"cannot save the slim model: graph argument of type {type(a).__name__}")


def _decode(a: Any, env: dict[str, fx.Node]) -> Any:
    if isinstance(a, list):
        return [_decode(x, env) for x in a]
    if isinstance(a, dict):
        if "node" in a:
            return env[a["node"]]
        if "slice" in a:
            return slice(*(_decode(x, env) for x in a["slice"]))
        if "ellipsis" in a:
            return Ellipsis
        if "tuple" in a:
            return tuple(_decode(x, env) for x in a["tuple"])
        if "dict" in a:
            return {k: _decode(v, env) for k, v in a["dict"].items()}
        raise PgnasError(f"model file holds an unknown graph argument {a!r}")
    return a


def _module_init(m: nn.Module) -> dict[str, Any]:
    """Constructor arguments of a standard torch.nn module, read back from its attributes."""
    out: dict[str, Any] = {}
    for name, p in inspect.signature(type(m).__init__).parameters.items():
        if name in ("self", "device", "dtype") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if not hasattr(m, name):
            continue
        v = getattr(m, name)
        if name == "bias" and (v is None or isinstance(v, Tensor)):
            v = v is not None
        if isinstance(v, Tensor):
            continue
        out[name] = list(v) if isinstance(v, tuple) else v
    return out


def graph_spec(gm: fx.GraphModule) -> dict[str, Any]:
    """The slim network as plain data: nodes (op, target, args) and modules (type, init args)."""
    nodes, modules = [], {}
    named = dict(gm.named_modules())
    for n in gm.graph.nodes:
        target: Any = n.target
        if n.op == "call_function":
            target = _function_name(n.target)
        elif n.op == "call_module":
            m = named[n.target]
            if type(m).__module__.split(".")[:2] != ["torch", "nn"] or getattr(nn, type(m).__name__, None) is not type(m):
                raise PgnasError(f"cannot save the slim model: module {n.target} is a {type(m).__name__}, not a standard torch.nn module")
            modules[n.target] = {"type": type(m).__name__, "init": _module_init(m)}
        nodes.append({"name": n.name, "op": n.op, "target": target, "args": _encode(n.args), "kwargs": _encode(n.kwargs)})
    return {"nodes": nodes, "modules": modules}


def build_from_spec(spec: dict[str, Any], state_dict: dict[str, Tensor]) -> fx.GraphModule:
    """Rebuild a slim network from :func:`graph_spec` and its weights, with torch only."""
    root: dict[str, Any] = {}
    for name, m in spec["modules"].items():
        cls = getattr(nn, m["type"], None)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise PgnasError(f"model file names an unknown module type {m['type']!r}")
        root[name] = cls(**m["init"])
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    for nd in spec["nodes"]:
        op, target = nd["op"], nd["target"]
        args, kwargs = _decode(nd["args"], env), _decode(nd["kwargs"], env)
        if op == "placeholder":
            node = graph.placeholder(target)
        elif op == "output":
            node = graph.output(args[0])
        elif op == "get_attr":
            if target not in state_dict:
                raise PgnasError(f"model file lacks the tensor {target!r}")
            root[target] = state_dict[target]
            node = graph.get_attr(target)
        elif op == "call_module":
            node = graph.call_module(target, args, kwargs)
        elif op == "call_function":
            node = graph.call_function(_resolve_function(target), args, kwargs)
        elif op == "call_method":
            if not hasattr(Tensor, target) or target.startswith("_"):
                raise PgnasError(f"model file names an unknown tensor method {target!r}")
            node = graph.call_method(target, args, kwargs)
        else:
            raise PgnasError(f"model file holds an unknown graph operation {op!r}")
        node.name = nd["name"]
        env[nd["name"]] = node
    gm = fx.GraphModule(root, graph, "SlimModel")
    missing, unexpected = gm.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise PgnasError(f"model file weights do not fit its graph (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return gm.eval()


# ---------------------------------------------------------------------------------- writing
def model_bytes(gm: fx.GraphModule, fmt: str, meta: dict[str, Any], example: Tensor) -> bytes:
    """The model file's content in format ``fmt`` (checked where a runtime is available)."""
    gm = gm.eval()
    with warnings.catch_warnings():  # TorchScript/ONNX exporters warn about things that do not matter here
        warnings.simplefilter("ignore")
        return _model_bytes(gm, fmt, meta, example)


class Deployed(nn.Module):
    """A network with its input handling inside: what the TorchScript and ONNX files hold, so they
    take the same images as :class:`ExportedModel` with nothing but torch or onnxruntime. uint8
    pixels (0-255) are divided by 255; float images must be in [0, 1] (anything else raises: a
    0-255 float batch would silently score far worse); then the stored mean and std normalise
    them, and ``net`` runs."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        else:
            x = x.float()
            if bool((x.min() < 0.0) | (x.max() > 1.0)):
                raise ValueError("float images must be in [0, 1] (divide 0-255 pixels by 255, or pass uint8)")
        return self.net((x - self.mean) / self.std)


class _OnnxDeployed(Deployed):
    """The ONNX graph's input handling: ONNX inputs have one type, and images decode to uint8, so the
    ONNX file takes uint8 pixels (``pgnas.load_model`` converts [0, 1] floats for it)."""

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x.float() / 255.0 - self.mean) / self.std)


INPUT_CONTRACT = 2  # meta["input_contract"]: 2 = the TorchScript/ONNX graph normalises its own input


def _model_bytes(gm: fx.GraphModule, fmt: str, meta: dict[str, Any], example: Tensor) -> bytes:
    buf = io.BytesIO()
    if fmt == "pt":
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "graph": graph_spec(gm),
            "state_dict": {k: v.detach().cpu().clone() for k, v in gm.state_dict().items()},
            "meta": json.dumps(meta),
        }
        torch.save(payload, buf)
    elif fmt == "torchscript":
        try:
            net = torch.jit.script(gm)
        except Exception:  # fall back to tracing: the graph has no data-dependent control flow
            net = torch.jit.trace(gm, example, check_trace=False)
        scripted = torch.jit.script(Deployed(net, meta["mean"], meta["std"]).eval())
        torch.jit.save(scripted, buf, _extra_files={META_FILE: json.dumps({**meta, "input_contract": INPUT_CONTRACT})})
    elif fmt == "onnx":
        buf = io.BytesIO(_onnx_bytes(gm, {**meta, "input_contract": INPUT_CONTRACT}, example))
    else:
        raise PgnasError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return buf.getvalue()


def _onnx_bytes(gm: fx.GraphModule, meta: dict[str, Any], example: Tensor) -> bytes:
    try:
        import onnx
    except ImportError:
        raise PgnasError("--format onnx needs the optional onnx extra: pip install 'pgnas[onnx]'") from None
    deployed = _OnnxDeployed(gm, meta["mean"], meta["std"]).eval()
    pixels = (example.clamp(-2, 2) * 60 + 128).round().clamp(0, 255).to(torch.uint8)  # an image-like uint8 batch
    buf = io.BytesIO()
    try:
        torch.onnx.export(
            deployed, (pixels,), buf, input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
        )
    except Exception as exc:
        raise PgnasError(f"ONNX export failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    proto = onnx.load_from_string(buf.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_FILE, json.dumps(meta)
    data = proto.SerializeToString()
    try:
        import onnxruntime as ort  # noqa: F401
    except ImportError:
        return data
    with torch.no_grad():
        want = deployed(pixels)
    got = torch.from_numpy(_onnx_session(data).run(None, {"input": pixels.numpy()})[0])
    scale = float(want.abs().max())
    if not float((got - want).abs().max()) <= 1e-4 * max(scale, 1e-6):
        raise PgnasError("ONNX export check failed: onnxruntime's outputs differ from PyTorch's")
    return data


def _onnx_session(data: bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------- loading
class ExportedModel(nn.Module):
    """An exported network as an ordinary ``nn.Module``.

    Call it on images as you have them: a batch (N, C, H, W) of uint8 pixels (0-255) or of floats
    in [0, 1], at the model's ``input_shape`` (floats outside [0, 1] are an error); it normalises
    them with the mean and std it was trained with (``transform``) and returns logits. It loads in
    eval mode; ``.train()`` and an optimizer train it like any module (``pt`` and ``torchscript``;
    an ``onnx`` file runs in onnxruntime and only predicts). ``net`` is the network itself, which
    takes normalised input (not for ``onnx``, whose graph holds the normalisation).
    """

    def __init__(self, net: nn.Module, meta: dict[str, Any], fmt: str):
        super().__init__()
        self.net = net
        self.meta = meta
        self.format = fmt
        c = int(meta["input_shape"][0])
        self.register_buffer("mean", torch.tensor(meta["mean"], dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(meta["std"], dtype=torch.float32).view(1, c, 1, 1))
        self.eval()

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["input_shape"])

    def transform(self, x: Tensor) -> Tensor:
        """uint8 images (or floats in [0, 1]) -> the normalised input ``net`` was trained on."""
        return (unit_range(x) - self.mean) / self.std

    normalise = transform

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.net, _OnnxNet) and self.meta.get("input_contract") == INPUT_CONTRACT:
            return self.net((unit_range(x) * 255.0).round().to(torch.uint8))  # the ONNX graph takes uint8 pixels
        return self.net(self.transform(x))


def unit_range(x: Tensor) -> Tensor:
    """Images in [0, 1] as float: uint8 pixels divided by 255; floats checked to be in [0, 1]."""
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    x = x.float()
    if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise PgnasError(f"float images must be in [0, 1], got values in [{float(x.min()):.3g}, {float(x.max()):.3g}] "
                         f"(divide 0-255 pixels by 255, or pass uint8)")
    return x


class _OnnxNet(nn.Module):
    """An ONNX file run by onnxruntime behind ``nn.Module`` (predicts; not trainable)."""

    def __init__(self, session):
        super().__init__()
        self.session = session

    def forward(self, x: Tensor) -> Tensor:
        array = x.detach().cpu().numpy() if x.dtype == torch.uint8 else x.detach().float().cpu().numpy()
        out = self.session.run(None, {"input": array})[0]
        return torch.from_numpy(out).to(x.device)


def detect_format(path: Path) -> str:
    if path.suffix == ".onnx":
        return "onnx"
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        raise PgnasError(f"{path} is not a pgnas model file (pt, torchscript or onnx)") from None
    if any(n.endswith(f"extra/{META_FILE}") for n in names) or any("/code/" in n for n in names):
        return "torchscript"
    return "pt"


def load_model(path: str | Path) -> ExportedModel:
    """Load an exported model file (format detected from its content) as an ``nn.Module`` in eval
    mode that takes images (uint8, or floats in [0, 1]) and returns logits."""
    path = Path(path)
    if not path.is_file():
        raise PgnasError(f"no model file at {path}")
    fmt = detect_format(path)
    if fmt == "pt":
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise PgnasError(f"{path} is corrupt or not a pgnas model file ({type(exc).__name__})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PgnasError(f"{path} is not a pgnas model file")
        if data.get("version") != VERSION:
            raise PgnasError(f"model file {path} has format version {data.get('version')}, this pgnas reads {VERSION}")
        gm = build_from_spec(data["graph"], data["state_dict"])
        return ExportedModel(gm, json.loads(data["meta"]), "pt")
    if fmt == "torchscript":
        extra = {META_FILE: ""}
        try:
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as exc:
            raise PgnasError(f"{path} is corrupt or not a TorchScript model ({type(exc).__name__})") from None
        if not extra[META_FILE]:
            raise PgnasError(f"{path} is a TorchScript model without pgnas metadata")
        meta = json.loads(extra[META_FILE])
        net = module.net if meta.get("input_contract") == INPUT_CONTRACT else module  # the network inside its input handling
        return ExportedModel(net, meta, "torchscript")
    try:
        import onnx
    except ImportError:
        raise PgnasError("reading an ONNX model needs the optional onnx extra: pip install 'pgnas[onnx]'") from None
    try:
        proto = onnx.load(str(path))
    except Exception as exc:
        raise PgnasError(f"{path} is corrupt or not an ONNX model ({type(exc).__name__})") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if META_FILE not in meta:
        raise PgnasError(f"{path} is an ONNX model without pgnas metadata")
    try:
        session = _onnx_session(proto.SerializeToString())
    except ImportError:
        raise PgnasError("running an ONNX model needs onnxruntime: pip install 'pgnas[onnx]'") from None
    return ExportedModel(_OnnxNet(session), json.loads(meta[META_FILE]), "onnx")
