"""Reader of TensorFlow.js *layers* models: ``model.json`` (Keras topology + weights manifest) and its
binary weight shards.

Format (tfjs-converter, ``tfjs_layers_model``): ``model.json`` holds ``modelTopology`` (the Keras
``model_config``: a functional ``Model`` whose ``layers`` each have ``class_name``, ``name``,
``config`` and ``inbound_nodes``) and ``weightsManifest``, a list of groups, each with ``paths``
(shard files, concatenated in order) and ``weights`` (specs in storage order: ``name``
``"<layer>/<variable>"``, ``shape``, ``dtype``, and optionally ``quantization``). A quantized
weight is stored as ``uint8`` / ``uint16`` codes ``q`` with ``value = min + scale * q``, or as
``float16`` values. Kernels keep Keras' layout (``kh x kw x in x out`` for Conv2D).

>>> model = read_tfjs_model("~/.cache/finpercep/npm/esrgan-legacy-1.0.0/package/models/gans/model.json")  # doctest: +SKIP
>>> model.layer("SR").config["filters"], model.weights["SR/kernel"].shape                                  # doctest: +SKIP
(3, (3, 3, 3, 3))
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class TfjsFormatError(ValueError):
    """A ``model.json`` or weight shard that this reader cannot interpret."""


@dataclass(frozen=True)
class TfjsLayer:
    """One Keras layer of the topology: class, name, config and the names of the layers feeding it."""

    class_name: str
    name: str
    config: dict[str, Any]
    inputs: tuple[str, ...]


@dataclass
class TfjsModel:
    """A parsed layers model: its layers in topology order and its dequantized float32 weights."""

    path: Path
    layers: list[TfjsLayer]
    input_layers: list[str]
    output_layers: list[str]
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    quantization: dict[str, str] = field(default_factory=dict)  # weight name -> storage dtype

    def layer(self, name: str) -> TfjsLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"{self.path}: no layer named {name!r}")

    def layers_of_class(self, class_name: str) -> list[TfjsLayer]:
        return [layer for layer in self.layers if layer.class_name == class_name]

    def layer_weights(self, name: str) -> dict[str, np.ndarray]:
        """``{"kernel": ..., "bias": ...}`` of layer ``name`` (the variables stored under ``name/``)."""
        prefix = f"{name}/"
        return {key[len(prefix):]: value for key, value in self.weights.items() if key.startswith(prefix)}


_PLAIN_DTYPES = {"float32": np.dtype("<f4"), "int32": np.dtype("<i4")}
_QUANT_DTYPES = {"uint8": np.dtype("u1"), "uint16": np.dtype("<u2"), "float16": np.dtype("<f2")}


def _decode(spec: dict[str, Any], buffer: bytes, offset: int, where: str) -> tuple[np.ndarray, int, str]:
    """One weight from ``buffer`` at ``offset``: (float32 array, bytes used, storage dtype)."""
    name, shape, dtype = spec["name"], tuple(int(s) for s in spec["shape"]), spec["dtype"]
    count = int(np.prod(shape, dtype=np.int64))
    quant = spec.get("quantization")
    if quant is None:
        if dtype not in _PLAIN_DTYPES:
            raise TfjsFormatError(f"{where}: weight {name!r} has dtype {dtype!r}; this reader knows "
                                  f"{sorted(_PLAIN_DTYPES)} and quantized weights")
        storage = _PLAIN_DTYPES[dtype]
    else:
        qdtype = quant.get("dtype")
        if qdtype not in _QUANT_DTYPES:
            raise TfjsFormatError(f"{where}: weight {name!r} is quantized as {qdtype!r}; this reader knows "
                                  f"{sorted(_QUANT_DTYPES)}")
        storage = _QUANT_DTYPES[qdtype]
    nbytes = count * storage.itemsize
    if offset + nbytes > len(buffer):
        raise TfjsFormatError(f"{where}: the weight shards end at byte {len(buffer)}, weight {name!r} "
                              f"needs bytes {offset}..{offset + nbytes} (truncated shard?)")
    raw = np.frombuffer(buffer, dtype=storage, count=count, offset=offset)
    if quant is not None and quant["dtype"] in ("uint8", "uint16"):
        if "scale" not in quant or "min" not in quant:
            raise TfjsFormatError(f"{where}: weight {name!r} is {quant['dtype']}-quantized without scale/min")
        values = (float(quant["min"]) + float(quant["scale"]) * raw.astype(np.float64)).astype(np.float32)
    else:
        values = raw.astype(np.float32)
    return values.reshape(shape), nbytes, storage.name


def read_tfjs_model(model_json: str | Path) -> TfjsModel:
    """Parse ``model_json`` and read + dequantize every weight of its manifest.

    Raises FileNotFoundError for a missing file, :class:`TfjsFormatError` for a model that is not a
    layers model, an unknown dtype, a shard that is too short or one with bytes left over.
    """
    path = Path(model_json).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"TF.js model file not found: {path}")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TfjsFormatError(f"{path}: not JSON ({exc})") from None
    topology = doc.get("modelTopology")
    if doc.get("format", "layers-model") != "layers-model" or not isinstance(topology, dict):
        raise TfjsFormatError(f"{path}: not a TF.js layers model (format {doc.get('format')!r}); graph models "
                              f"are not supported")
    config = topology.get("model_config", topology).get("config", {})
    layers = []
    for entry in config.get("layers", []):
        nodes = entry.get("inbound_nodes") or []
        if len(nodes) > 1:
            raise TfjsFormatError(f"{path}: layer {entry.get('name')!r} is called {len(nodes)} times (shared "
                                  f"layers are not supported)")
        inputs = tuple(item[0] for item in nodes[0]) if nodes else ()
        layers.append(TfjsLayer(entry["class_name"], entry["name"], entry.get("config", {}), inputs))
    model = TfjsModel(path, layers, [x[0] for x in config.get("input_layers", [])],
                      [x[0] for x in config.get("output_layers", [])])
    for group in doc.get("weightsManifest", []):
        shards = []
        for rel in group["paths"]:
            shard = path.parent / rel
            if not shard.is_file():
                raise FileNotFoundError(f"{path}: weight shard {shard} is missing")
            shards.append(shard.read_bytes())
        buffer = b"".join(shards)
        where = f"{path} ({', '.join(group['paths'])})"
        offset = 0
        for spec in group["weights"]:
            array, used, storage = _decode(spec, buffer, offset, where)
            if spec["name"] in model.weights:
                raise TfjsFormatError(f"{where}: weight {spec['name']!r} appears twice")
            model.weights[spec["name"]] = array
            model.quantization[spec["name"]] = storage
            offset += used
        if offset != len(buffer):
            raise TfjsFormatError(f"{where}: {len(buffer) - offset} bytes left after the last weight: the "
                                  f"shards do not belong to this model.json")
    return model
