"""Test support: ncnn's own inference of a zoo model, the reference our PyTorch ports are checked against."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from diffusers_ext.srnets import model_files, read_ncnn_model


def run_ncnn(name: str, image: np.ndarray, num_threads: Optional[int] = None) -> np.ndarray:
    """ncnn's own fp32 CPU inference of model ``name`` on a 3xHxW float image.

    Plain fp32 direct convolution: no fp16/bf16, no Vulkan, and no winograd/sgemm (their weight
    transforms take ~4 s for x4plus's 351 convolutions and change nothing that is checked here).
    ``num_threads``: ncnn's threads (default: torch's). The caller has done ``pytest.importorskip("ncnn")``.
    """
    import ncnn

    param, bin_ = model_files(name)
    graph = read_ncnn_model(name).graph
    net = ncnn.Net()
    for option in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage",
                   "use_vulkan_compute", "use_winograd_convolution", "use_sgemm_convolution"):
        setattr(net.opt, option, False)
    net.opt.num_threads = torch.get_num_threads() if num_threads is None else num_threads
    assert net.load_param(str(param)) == 0 and net.load_model(str(bin_)) == 0
    extractor = net.create_extractor()
    extractor.input(graph.input_blobs[0], ncnn.Mat(np.ascontiguousarray(image, dtype=np.float32)))
    ret, out = extractor.extract(graph.output_blobs[0])
    assert ret == 0
    return np.array(out)
