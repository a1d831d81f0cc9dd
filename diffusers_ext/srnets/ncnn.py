"""A small, dependency-free reader for ncnn models (``.param`` text graph + ``.bin`` weights).

Only numpy is needed; nothing here runs a network. The reader follows ncnn's own loaders
(``Net::load_param``, ``ModelBinFromDataReader::load`` and each layer's ``load_model``):

* ``.param``: first line the magic ``7767517``, then ``layer_count blob_count``, then one line per
  layer: ``type name n_in n_out in_blobs... out_blobs... k=v ...``. A key ``<= -23300`` marks an
  array parameter ``-(23300 + id)=n,v1,...,vn``; it is stored under its real ``id`` (so
  ``-23310=1,0.1`` becomes ``params[10] == (0.1,)``, the activation parameters), as ncnn does.
* ``.bin``: the weights of every layer that has any, in layer order, with no names or headers.
  A "tagged" blob (convolution and inner-product weights) starts with a 4-byte tag: fp16
  (``0x01306B47``), fp32 (``0x0002C056``), a 256-entry quantisation table (any other non-zero tag)
  or raw fp32 (tag ``0``); fp16 and 8-bit payloads are padded to 4 bytes. Biases, PReLU slopes
  and the like are raw fp32 without a tag.

Public API::

    read_param(path) -> NcnnGraph
    read_bin(graph, path) -> dict[layer name, dict[blob name, np.ndarray float32]]
    load_ncnn(param_path, bin_path=None) -> NcnnModel     # both, bin defaults to <stem>.bin

Convolution-like weights come back shaped ``(num_output, inputs_per_group, kernel_h, kernel_w)``
in ncnn's own order (for ``Deconvolution`` too, which PyTorch stores as ``(in, out, kh, kw)``).
Every problem is an :class:`NcnnFormatError` (a ``ValueError``) naming the file and what is wrong,
or a ``FileNotFoundError`` naming the missing file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Union

import numpy as np

PARAM_MAGIC = 7767517
TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38
TAG_FP32 = 0x0002C056
ARRAY_KEY_BASE = -23300

Scalar = Union[int, float, str]
ParamValue = Union[Scalar, tuple]

#: Layer types known to store nothing in the ``.bin`` (a graph with any other type that has no
#: weight reader below is refused: silently skipping unknown weights would shift every later blob).
WEIGHTLESS_TYPES = frozenset({
    "AbsVal", "BinaryOp", "BNLL", "Cast", "Clip", "Concat", "Crop", "DepthToSpace", "Dropout",
    "ELU", "Eltwise", "Exp", "ExpandDims", "Flatten", "GELU", "HardSigmoid", "HardSwish", "Input",
    "Interp", "Log", "Mish", "Noop", "Normalize", "Packing", "Padding", "Permute", "PixelShuffle",
    "Pooling", "Power", "ReLU", "Reorg", "Reshape", "SELU", "Sigmoid", "Slice", "Softmax",
    "SpaceToDepth", "Split", "Squeeze", "Swish", "TanH", "Threshold", "Tile", "UnaryOp",
})


class NcnnFormatError(ValueError):
    """A ``.param`` or ``.bin`` file is malformed, truncated or uses an unsupported feature."""


@dataclass(frozen=True)
class NcnnLayer:
    """One layer line of a ``.param`` file."""

    type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: Mapping[int, ParamValue]

    def get(self, key: int, default: ParamValue | None = None) -> ParamValue | None:
        """The parameter ``key`` (ncnn's numeric id), or ``default`` when the line omits it."""
        return self.params.get(key, default)


@dataclass(frozen=True)
class NcnnGraph:
    """A parsed ``.param`` file: its layers in file order."""

    path: Path
    layers: tuple[NcnnLayer, ...]
    blob_count: int

    @property
    def input_blobs(self) -> list[str]:
        """Names of the blobs produced by ``Input`` layers (what ``Extractor.input`` takes)."""
        return [blob for layer in self.layers if layer.type == "Input" for blob in layer.outputs]

    @property
    def output_blobs(self) -> list[str]:
        """Names of the blobs that no layer consumes (what ``Extractor.extract`` returns)."""
        consumed = {blob for layer in self.layers for blob in layer.inputs}
        return [blob for layer in self.layers for blob in layer.outputs if blob not in consumed]

    def layers_of_type(self, layer_type: str) -> list[NcnnLayer]:
        """All layers of one type, in file order."""
        return [layer for layer in self.layers if layer.type == layer_type]


LayerWeights = dict[str, np.ndarray]


@dataclass(frozen=True)
class NcnnModel:
    """A graph and its weights: ``weights[layer name][blob name]`` (``weight``, ``bias``, ...)."""

    graph: NcnnGraph
    weights: Mapping[str, LayerWeights]
    bin_path: Path

    @property
    def weighted_layers(self) -> list[NcnnLayer]:
        """The layers that own weights, in file (= ``.bin``) order."""
        return [layer for layer in self.graph.layers if layer.name in self.weights]


# ---------------------------------------------------------------------------------------------
# .param
# ---------------------------------------------------------------------------------------------

def _parse_scalar(text: str) -> Scalar:
    if text.startswith('"'):
        return text.strip('"')
    try:
        return int(text)
    except ValueError:
        return float(text)


def _parse_param_token(token: str, where: str) -> tuple[int, ParamValue]:
    """``k=v`` -> ``(id, value)``; array keys ``-233xx=n,v...`` -> ``(xx, (v, ...))``."""
    key_text, sep, value_text = token.partition("=")
    try:
        key = int(key_text)
        if not sep:
            raise ValueError("no '='")
        if key > ARRAY_KEY_BASE:
            return key, _parse_scalar(value_text)
        count_text, *items = value_text.split(",")
        count, values = int(count_text), tuple(_parse_scalar(item) for item in items)
    except ValueError as exc:
        raise NcnnFormatError(f"{where}: cannot parse parameter {token!r} ({exc})") from None
    if count != len(values):
        raise NcnnFormatError(f"{where}: array parameter {token!r} announces {count} values "
                              f"but has {len(values)}")
    return ARRAY_KEY_BASE - key, values


def _parse_layer_line(line: str, where: str) -> NcnnLayer:
    tokens = line.split()
    if len(tokens) < 4:
        raise NcnnFormatError(f"{where}: expected 'type name n_in n_out ...', got {line!r}")
    layer_type, name = tokens[0], tokens[1]
    try:
        n_in, n_out = int(tokens[2]), int(tokens[3])
    except ValueError:
        raise NcnnFormatError(f"{where}: blob counts {tokens[2]!r} {tokens[3]!r} are not integers") from None
    blobs_end = 4 + n_in + n_out
    if len(tokens) < blobs_end:
        raise NcnnFormatError(f"{where}: layer {name!r} announces {n_in} inputs and {n_out} outputs "
                              f"but lists only {len(tokens) - 4} blob names")
    params = dict(_parse_param_token(token, f"{where} (layer {name!r})") for token in tokens[blobs_end:])
    return NcnnLayer(layer_type, name, tuple(tokens[4:4 + n_in]), tuple(tokens[4 + n_in:blobs_end]), params)


def _require_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ncnn {what} file not found: {path}")
    return path


def read_param(path: str | Path) -> NcnnGraph:
    """Parse a text ``.param`` file (the binary ``.param.bin`` form is not supported)."""
    path = _require_file(path, ".param")
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise NcnnFormatError(f"{path}: not a text ncnn .param file (binary .param.bin files are "
                              f"not supported)") from None
    if not lines or lines[0].strip() != str(PARAM_MAGIC):
        first = lines[0].strip()[:40] if lines else "<empty file>"
        raise NcnnFormatError(f"{path}: not an ncnn .param file: first line is {first!r}, expected "
                              f"the magic number {PARAM_MAGIC}")
    try:
        layer_count, blob_count = (int(v) for v in lines[1].split()) if len(lines) > 1 else (0, 0)
    except ValueError:
        raise NcnnFormatError(f"{path}: line 2 must be 'layer_count blob_count', got {lines[1]!r}") from None
    layers = tuple(_parse_layer_line(line, f"{path}:{i + 3}") for i, line in enumerate(lines[2:]))
    if len(layers) != layer_count:
        raise NcnnFormatError(f"{path}: header announces {layer_count} layers but the file has "
                              f"{len(layers)} layer lines (truncated or edited?)")
    blobs = {blob for layer in layers for blob in layer.outputs}
    if len(blobs) != blob_count:
        raise NcnnFormatError(f"{path}: header announces {blob_count} blobs but the layers produce "
                              f"{len(blobs)}")
    return NcnnGraph(path, layers, blob_count)


# ---------------------------------------------------------------------------------------------
# .bin
# ---------------------------------------------------------------------------------------------

def _align4(n: int) -> int:
    return (n + 3) & ~3


class _BinReader:
    """Sequential reader over a ``.bin`` file that names the layer in every error."""

    def __init__(self, path: Path, graph_path: Path) -> None:
        self.path = path
        self.graph_path = graph_path
        self.data = path.read_bytes()
        self.offset = 0
        self.layer = ""

    def take(self, nbytes: int, what: str) -> bytes:
        end = self.offset + nbytes
        if end > len(self.data):
            raise NcnnFormatError(
                f"{self.path}: truncated: layer {self.layer} needs {nbytes} bytes for {what} at "
                f"offset {self.offset}, but the file has only {len(self.data)} bytes (incomplete "
                f"download, or a .bin that does not belong to this .param?)")
        chunk = self.data[self.offset:end]
        self.offset = end
        return chunk

    def raw(self, count: int, what: str) -> np.ndarray:
        """``count`` untagged little-endian fp32 values (ncnn ``ModelBin::load(w, 1)``)."""
        return np.frombuffer(self.take(4 * count, what), dtype="<f4").astype(np.float32)

    def tagged(self, count: int, what: str) -> np.ndarray:
        """``count`` values behind a 4-byte storage tag (ncnn ``ModelBin::load(w, 0)``)."""
        tag_bytes = self.take(4, f"the storage tag of {what}")
        tag = int.from_bytes(tag_bytes, "little")
        if tag == TAG_FP16:
            chunk = self.take(_align4(2 * count), f"{what} (fp16)")
            return np.frombuffer(chunk[:2 * count], dtype="<f2").astype(np.float32)
        if tag == TAG_INT8:
            raise NcnnFormatError(f"{self.path}: layer {self.layer} stores {what} as int8; "
                                  f"quantised int8 models are not supported")
        if tag in (TAG_FP32, 0):
            return self.raw(count, what)
        # Any other non-zero tag: a 256-entry fp32 table, then one uint8 index per value.
        table = self.raw(256, f"the quantisation table of {what}")
        index = np.frombuffer(self.take(_align4(count), f"{what} (8-bit indices)")[:count], np.uint8)
        return table[index]


def _conv_weights(layer: NcnnLayer, reader: _BinReader) -> LayerWeights:
    """Convolution / Deconvolution (+DepthWise): ``weight`` (out, in/group, kh, kw), ``bias``."""
    if layer.get(19, 0):  # dynamic weight: taken from a second input blob at run time
        return {}
    if layer.get(8, 0):
        raise NcnnFormatError(f"{reader.path}: layer {reader.layer} has int8 scales (8=int8_scale_term);"
                              f" quantised int8 models are not supported")
    out, size = int(layer.get(0, 0)), int(layer.get(6, 0))
    kernel_w = int(layer.get(1, 0))
    kernel_h = int(layer.get(11, kernel_w))
    if out <= 0 or kernel_w <= 0 or size % (out * kernel_h * kernel_w):
        raise NcnnFormatError(f"{reader.graph_path}: layer {reader.layer}: weight_data_size {size} does not"
                              f" fit num_output {out} and kernel {kernel_h}x{kernel_w}")
    weights = {"weight": reader.tagged(size, "weight").reshape(out, -1, kernel_h, kernel_w)}
    if layer.get(5, 0):
        weights["bias"] = reader.raw(out, "bias")
    return weights


def _inner_product_weights(layer: NcnnLayer, reader: _BinReader) -> LayerWeights:
    out, size = int(layer.get(0, 0)), int(layer.get(2, 0))
    weights = {"weight": reader.tagged(size, "weight").reshape(out, -1)}
    if layer.get(1, 0):
        weights["bias"] = reader.raw(out, "bias")
    return weights


def _raw_blobs(count_key: int, *names: str) -> Callable[[NcnnLayer, _BinReader], LayerWeights]:
    """Reader for layers whose blobs are all raw fp32 of length ``params[count_key]``."""
    def read(layer: NcnnLayer, reader: _BinReader) -> LayerWeights:
        count = int(layer.get(count_key, 0))
        return {name: reader.raw(count, name) for name in names}
    return read


def _scale_weights(layer: NcnnLayer, reader: _BinReader) -> LayerWeights:
    count = int(layer.get(0, 0))
    if count == -233:  # scale comes from a second input blob
        return {}
    weights = {"scale": reader.raw(count, "scale")}
    if layer.get(1, 0):
        weights["bias"] = reader.raw(count, "bias")
    return weights


def _memory_data(layer: NcnnLayer, reader: _BinReader) -> LayerWeights:
    """MemoryData (a constant blob): ``data`` shaped ``(c, d, h, w)`` without the unused axes.

    Params ``0=w 1=h 11=d 2=c``; the values are raw fp32 (``21=load_type`` 1, the default).
    """
    if int(layer.get(21, 1)) != 1:
        raise NcnnFormatError(f"{reader.graph_path}: layer {reader.layer} has load_type "
                              f"{layer.get(21)}; only raw fp32 (21=1) is supported")
    shape = tuple(n for n in (int(layer.get(k, 0)) for k in (2, 11, 1, 0)) if n > 0) or (1,)
    return {"data": reader.raw(int(np.prod(shape)), "data").reshape(shape)}


WEIGHT_READERS: dict[str, Callable[[NcnnLayer, _BinReader], LayerWeights]] = {
    "Convolution": _conv_weights,
    "ConvolutionDepthWise": _conv_weights,
    "Deconvolution": _conv_weights,
    "DeconvolutionDepthWise": _conv_weights,
    "InnerProduct": _inner_product_weights,
    "PReLU": _raw_blobs(0, "slope"),
    "BatchNorm": _raw_blobs(0, "slope", "mean", "var", "bias"),
    "Bias": _raw_blobs(0, "bias"),
    "Scale": _scale_weights,
    "MemoryData": _memory_data,
}


def read_bin(graph: NcnnGraph, path: str | Path) -> dict[str, LayerWeights]:
    """Read every layer's weights from ``path`` in layer order, as float32 numpy arrays.

    The whole file must be consumed exactly: a short file is "truncated", leftover bytes mean the
    ``.bin`` belongs to another ``.param``.
    """
    reader = _BinReader(_require_file(path, ".bin"), graph.path)
    weights: dict[str, LayerWeights] = {}
    for layer in graph.layers:
        reader.layer = f"{layer.name!r} ({layer.type})"
        read = WEIGHT_READERS.get(layer.type)
        if read is None:
            if layer.type not in WEIGHTLESS_TYPES:
                raise NcnnFormatError(f"{graph.path}: layer {reader.layer} has a type this reader does "
                                      f"not know, so it cannot tell whether it stores weights")
            continue
        blobs = read(layer, reader)
        if blobs:
            weights[layer.name] = blobs
    if reader.offset != len(reader.data):
        raise NcnnFormatError(f"{reader.path}: {len(reader.data) - reader.offset} bytes left after the "
                              f"last layer's weights: this .bin does not belong to {graph.path}")
    return weights


def load_ncnn(param_path: str | Path, bin_path: str | Path | None = None) -> NcnnModel:
    """Read a ``.param`` and its ``.bin`` (default: same stem, ``.bin`` suffix)."""
    graph = read_param(param_path)
    bin_path = Path(bin_path) if bin_path is not None else Path(param_path).with_suffix(".bin")
    return NcnnModel(graph, read_bin(graph, bin_path), bin_path)
